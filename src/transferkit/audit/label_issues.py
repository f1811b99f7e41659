"""Label issues by confident learning (Northcutt, Jiang, Chuang, JAIR 2021), from out-of-fold probabilities.

The rule, on probabilities ``p`` (n, K) that no image's own model trained on:

1. per-class threshold ``t_j`` = the mean of ``p[i, j]`` over the images labelled ``j``
   (the class's mean self-confidence);
2. each image's *confident class* is the class ``j`` with the largest ``p[i, j]`` among those
   with ``p[i, j] >= t_j`` (none: the image stays out of the confident joint);
3. an image whose confident class differs from its label sits off the diagonal of the
   confident joint: a label issue (cleanlab's ``filter_by="confident_learning"``);
4. issues are ranked by self-confidence ``p[i, label_i]``, least confident first.

cleanlab (AGPL-3.0) is not a dependency: ``benchmarks/label_issues.py`` compares this rule with
``cleanlab.filter.find_label_issues`` on the same probabilities, in a separate environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferkit.errors import DataError


@dataclass(frozen=True)
class LabelIssues:
    """Images whose label confident learning doubts, most suspicious first.

    ``indices`` (m,) positions in the data; ``suggested`` (m,) the confident class of each (an
    index into the columns); ``scores`` (m,) ``1 - p[i, label_i]`` in [0, 1], higher = more
    suspicious; ``thresholds`` (K,) the per-class thresholds ``t_j``.
    """

    indices: np.ndarray
    suggested: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray


def class_thresholds(targets: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """``t_j``: mean predicted probability of class j over the images labelled j, shape (K,).

    A class without images gets threshold 1.0 (nothing can be confidently it).
    """
    thresholds = np.ones(proba.shape[1])
    for j in range(proba.shape[1]):
        members = targets == j
        if members.any():
            thresholds[j] = float(proba[members, j].mean())
    return thresholds


def confident_classes(proba: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each image's confident class (n,): the most probable class above its threshold, -1 if none."""
    above = proba >= thresholds[None, :] - 1e-12
    masked = np.where(above, proba, -np.inf)
    chosen = masked.argmax(axis=1)
    return np.where(above.any(axis=1), chosen, -1)


def find_label_issues(targets: np.ndarray, proba: np.ndarray) -> LabelIssues:
    """The confident-learning rule (module docstring) on integer labels and out-of-fold probabilities.

    Parameters
    ----------
    targets : int array (n,)
        Label of each image as a column index of ``proba`` (0 .. K-1).
    proba : float array (n, K)
        Out-of-fold class probabilities (rows sum to 1).

    Raises
    ------
    DataError
        When the shapes disagree, a label is out of range or a probability is not finite.
    """
    targets, proba = np.asarray(targets), np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or targets.shape != (len(proba),):
        raise DataError(f"expected labels (n,) and probabilities (n, K). Received: {targets.shape} and {proba.shape}")
    if len(targets) and (targets.min() < 0 or targets.max() >= proba.shape[1]):
        raise DataError(f"labels must be column indices 0..{proba.shape[1] - 1}. Received: {targets.min()}..{targets.max()}")
    if not np.isfinite(proba).all():
        raise DataError("probabilities must be finite numbers; got NaN or infinity.")
    thresholds = class_thresholds(targets, proba)
    confident = confident_classes(proba, thresholds)
    issue = (confident >= 0) & (confident != targets)
    indices = np.flatnonzero(issue)
    self_confidence = proba[indices, targets[indices]]
    order = np.argsort(self_confidence, kind="stable")
    indices = indices[order]
    return LabelIssues(indices=indices, suggested=confident[indices], scores=1.0 - proba[indices, targets[indices]],
                       thresholds=thresholds)
