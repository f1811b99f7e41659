"""Label issues by confident learning (Northcutt, Jiang, Chuang, JAIR 2021), from out-of-fold probabilities.

The rule, on probabilities ``p`` (n, K) that no image's own model trained on:

1. per-class threshold ``t_j`` = the mean of ``p[i, j]`` over the images labelled ``j``
   (the class's mean self-confidence);
2. each image's *confident class* is the class ``j`` with the largest ``p[i, j]`` among those
   with ``p[i, j] >= t_j`` (none: the image stays out of the confident joint);
3. the *confident joint* ``C[i][j]`` counts the images labelled ``i`` whose confident class is
   ``j``; ``method="confident_joint"`` calls every image off its diagonal a label issue (the
   paper's C_confusion-like baseline, cleanlab's ``filter_by="confident_learning"``);
4. ``method="prune_by_noise_rate"`` (the default; the paper's Cl:PBNR, section 3.2): the joint
   is calibrated so that each row sums to the number of images with that label
   (``C~[i][j] = C[i][j] / sum_j C[i][j] * n_i``), and for every off-diagonal entry the
   ``round(C~[i][j])`` images labelled ``i`` with the largest margin ``p[., j] - p[., i]`` are
   issues. An image the model itself predicts as its label (``argmax p == label``) is never one:
   the estimate says the label is wrong somewhere in the class, the model says not here;
5. issues are ranked by self-confidence ``p[i, label_i]``, least confident first.

Measured on three sets with 10 % of the labels moved (benchmarks/RESULTS.md, issue 30): the
off-diagonal rule found 0.55 of the moved labels on 1,000 animal silhouettes at precision 0.65;
pruning by the noise rate found 0.80 at precision 0.63 (figures there), so it is the default.

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


def find_label_issues(targets: np.ndarray, proba: np.ndarray, *, method: str = "prune_by_noise_rate") -> LabelIssues:
    """The confident-learning rule (module docstring) on integer labels and out-of-fold probabilities.

    Parameters
    ----------
    targets : int array (n,)
        Label of each image as a column index of ``proba`` (0 .. K-1).
    proba : float array (n, K)
        Out-of-fold class probabilities (rows sum to 1).
    method : {"prune_by_noise_rate", "confident_joint"}
        Step 4 or step 3 of the module docstring.

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
    if method not in ("prune_by_noise_rate", "confident_joint"):
        raise DataError(f"method expected 'prune_by_noise_rate' or 'confident_joint'. Received: {method!r}")
    thresholds = class_thresholds(targets, proba)
    confident = confident_classes(proba, thresholds)
    if method == "confident_joint":
        issue = (confident >= 0) & (confident != targets)
        suggested = confident
    else:
        issue, suggested = _prune_by_noise_rate(targets, proba, confident)
    indices = np.flatnonzero(issue)
    self_confidence = proba[indices, targets[indices]]
    order = np.argsort(self_confidence, kind="stable")
    indices = indices[order]
    return LabelIssues(indices=indices, suggested=suggested[indices], scores=1.0 - proba[indices, targets[indices]],
                       thresholds=thresholds)


def _prune_by_noise_rate(targets: np.ndarray, proba: np.ndarray, confident: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 of the module docstring: a mask of issues (n,) and each image's suggested class (n,),
    written from the paper (Northcutt et al. 2021, section 3.2), not from cleanlab's code."""
    n, k = proba.shape
    joint = np.zeros((k, k))
    counted = confident >= 0
    np.add.at(joint, (targets[counted], confident[counted]), 1.0)
    per_label = np.bincount(targets, minlength=k).astype(float)
    rows = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * per_label[:, None]
    issue = np.zeros(n, dtype=bool)
    suggested = np.full(n, -1)
    best_margin = np.full(n, -np.inf)
    for given in range(k):
        members = np.flatnonzero(targets == given)
        for other in range(k):
            count = int(round(calibrated[given, other]))
            if other == given or count <= 0 or not len(members):
                continue
            margin = proba[members, other] - proba[members, given]
            picked = members[np.argsort(-margin, kind="stable")[:count]]
            issue[picked] = True
            better = proba[picked, other] - proba[picked, given] > best_margin[picked]
            suggested[picked[better]] = other
            best_margin[picked[better]] = (proba[picked, other] - proba[picked, given])[better]
    issue &= proba.argmax(axis=1) != targets  # the model agrees with the label: not here
    return issue, suggested
