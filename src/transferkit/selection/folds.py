"""Folds: identical (train, test) partitions for every candidate, so that their scores are paired.

Made once per search and handed to every candidate. Everything a fold's model chooses (the C of
``svm``, a network's best epoch) happens inside its fit, on the fold's training part only.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold

from transferkit.errors import ConfigError, DataError

Fold = tuple[np.ndarray, np.ndarray]
HOLDOUT_FOLDS = 5
"""``auto``'s held-out fold is one of this many stratified folds: a fifth of the images."""


def make_folds(
    labels: np.ndarray, *, cv: int = 5, repeats: int = 1, groups: np.ndarray | None = None, seed: int = 0
) -> list[Fold]:
    """Stratified k-fold (repeated ``repeats`` times); grouped when ``groups`` is given.

    Fold ``j`` belongs to repeat ``j // cv``; each repeat holds every image out once. With groups,
    all images of one group (e.g. copies of one picture) land on the same side of every split
    (``StratifiedGroupKFold``). Callers pass :func:`transferkit.data.duplicate_groups`, so exact
    copies of a picture always do. The first repeat does not depend on ``repeats``: fold 0 is
    the same held-out part whether or not more repeats follow.
    """
    labels = np.asarray(labels)
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ConfigError(f"cv expected an integer >= 2. Received: cv={cv!r}")
    if not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ConfigError(f"repeats expected a positive integer. Received: repeats={repeats!r}")
    names, counts = np.unique(labels, return_counts=True)
    if counts.min() < cv:
        small = ", ".join(f"{str(n)!r} ({c})" for n, c in zip(names, counts) if c < cv)
        raise DataError(f"{cv}-fold cross-validation needs at least {cv} images per class; too few in {small}. Lower --cv or add images.")
    index = np.arange(len(labels))
    if groups is None:
        splitter = RepeatedStratifiedKFold(n_splits=cv, n_repeats=repeats, random_state=seed)
        return [(train, test) for train, test in splitter.split(index, labels)]
    folds: list[Fold] = []
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed + repeat)
        folds.extend(splitter.split(index, labels, groups=np.asarray(groups)))
    return folds


def holdout_cv(targets: np.ndarray) -> int:
    """Folds of ``auto``'s split: :data:`HOLDOUT_FOLDS`, fewer when the smallest class has fewer images."""
    return max(2, min(HOLDOUT_FOLDS, int(np.bincount(targets).min())))


def holdout_folds(targets: np.ndarray, groups: np.ndarray | None, seed: int, repeats: int = 1) -> list[Fold]:
    """``auto``'s folds: stratified (grouped) k-fold, ``repeats`` times; fold 0 is the held-out
    fifth every candidate is scored on, the others are for the cheap candidates on small data."""
    return make_folds(targets, cv=holdout_cv(targets), groups=groups, seed=seed, repeats=repeats)


def nested_subsets(train: np.ndarray, targets: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Stratified subsets of ``train`` of each size, each containing the smaller ones (a learning
    curve's training parts): every class keeps its share and at least one image."""
    rng = np.random.default_rng(seed)
    train = np.asarray(train)
    order = {c: rng.permutation(train[targets[train] == c]) for c in np.unique(targets[train])}
    subsets = []
    for size in sizes:
        share = min(1.0, size / len(train))
        subsets.append(np.sort(np.concatenate([members[: max(1, int(round(share * len(members))))] for members in order.values()])))
    return subsets
