"""THE SEAM between the audit and model selection: out-of-fold probabilities and learning-curve points.

Everything else in :mod:`transferkit.audit` takes arrays; this module alone decides which model
scores the images. Today it uses the candidate that ``fit --strategy auto`` chooses on most small
data sets, a linear classifier on the frozen backbone's cached bottleneck features, through the
existing fold machinery (:func:`transferkit.selection.folds.make_folds` with the duplicate groups,
:func:`transferkit.strategies.linear.fit_linear_classifier`). When the selection engine (issue
29: one engine over (candidate, fold) pairs with per-image out-of-fold probabilities and a
learning-curve schedule) is merged, pointing :func:`out_of_fold_probabilities` and
:func:`learning_curve_points` at it is a change to this one file.

The classifier is ``logistic`` (probabilities, not SVM margins), C chosen once by the inner
grouped CV of the first fold's training part and kept for every fold and curve point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from transferkit.selection.folds import make_folds
from transferkit.strategies.linear import fit_linear_classifier, make_linear_pipeline

STRATEGY = "logistic"
CURVE_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
"""Shares of the training part at which the learning curve is measured."""
CURVE_REPEATS = 3
"""Random subsets per fraction below 1 (one fit each on cached features: cheap)."""


@dataclass(frozen=True)
class OutOfFold:
    """Probabilities (n, K) of every image from a model that did not train on it."""

    proba: np.ndarray
    folds: int
    strategy: str
    C: float
    seconds: float


def _fit_predict(features, targets, train, test, C, seed, n_classes) -> np.ndarray:
    pipeline = make_linear_pipeline(STRATEGY, C, seed).fit(features[train], targets[train])
    proba = np.zeros((len(test), n_classes))
    proba[:, pipeline.classes_] = pipeline.predict_proba(features[test])
    return proba


def choose_C(features: np.ndarray, targets: np.ndarray, groups: np.ndarray | None, seed: int) -> float:
    """C of the linear classifier by inner grouped CV on ``features`` (n, D) and int ``targets`` (n,)."""
    group_ids = np.arange(len(targets)) if groups is None else np.asarray(groups)
    _, info = fit_linear_classifier(features, targets, group_ids, strategy=STRATEGY, C=None, seed=seed)
    return float(info["C"])


def out_of_fold_probabilities(
    features: np.ndarray, targets: np.ndarray, groups: np.ndarray | None, *, cv: int = 5, seed: int = 0,
    on_fold: Callable[[int, int], None] | None = None,
) -> OutOfFold:
    """Out-of-fold probabilities of every image: ``cv`` grouped stratified folds (copies and
    near-copies in one fold), each scored by a model fitted on the others.

    ``features`` (n, D) float, ``targets`` (n,) int in 0..K-1, ``groups`` (n,) or None.
    Raises :class:`~transferkit.errors.DataError` when a class has fewer than ``cv`` images.
    """
    started = time.perf_counter()
    n_classes = int(targets.max()) + 1
    folds = make_folds(targets, cv=cv, groups=groups, seed=seed)
    C = choose_C(features[folds[0][0]], targets[folds[0][0]], None if groups is None else groups[folds[0][0]], seed)
    proba = np.zeros((len(targets), n_classes))
    for index, (train, test) in enumerate(folds):
        proba[test] = _fit_predict(features, targets, train, test, C, seed, n_classes)
        if on_fold is not None:
            on_fold(index + 1, len(folds))
    return OutOfFold(proba=proba, folds=len(folds), strategy=STRATEGY, C=C, seconds=time.perf_counter() - started)


def learning_curve_points(
    features: np.ndarray, targets: np.ndarray, groups: np.ndarray | None, *, C: float, seed: int = 0,
    fractions: tuple[float, ...] = CURVE_FRACTIONS, repeats: int = CURVE_REPEATS, holdout_folds: int = 5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Accuracy at growing shares of one training part, all on the same held-out images.

    The held-out part is one fold of ``holdout_folds`` (grouped, stratified); each fraction below
    1 is a stratified random subset of the rest (``repeats`` draws). Returns (sizes, accuracies,
    n_eval): one entry per fit, and the number of held-out images.
    """
    from sklearn.model_selection import train_test_split

    train, test = make_folds(targets, cv=holdout_folds, groups=groups, seed=seed)[0]
    n_classes = int(targets.max()) + 1
    sizes, accuracies = [], []
    for fraction in fractions:
        for repeat in range(1 if fraction >= 1 else repeats):
            if fraction >= 1:
                part = train
            else:
                size = max(int(round(fraction * len(train))), 2 * n_classes)
                try:
                    part, _ = train_test_split(train, train_size=size, stratify=targets[train], random_state=seed + repeat)
                except ValueError:  # a class too small to stratify at this size
                    part, _ = train_test_split(train, train_size=size, random_state=seed + repeat)
            if len(np.unique(targets[part])) < 2:
                continue
            proba = _fit_predict(features, targets, part, test, C, seed, n_classes)
            sizes.append(len(part))
            accuracies.append(float((proba.argmax(axis=1) == targets[test]).mean()))
    return np.array(sizes), np.array(accuracies), len(test)
