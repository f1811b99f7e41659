"""Which images to label next: typical images of regions the labelled set does not cover, then uncertain ones.

At small budgets (a few hundred labels) picking the most uncertain images does worse than
picking at random: they are outliers and look-alikes of one boundary (Hacohen, Dekel, Weinshall,
ICML 2022, "Active learning on a budget", TypiClust). The ranking here:

1. cluster the labelled and unlabelled images' L2-normalised features into
   ``n_labelled + n`` clusters (k-means);
2. visit the clusters that hold no labelled image, largest first, and take from each its most
   *typical* unlabelled image (highest inverse mean distance to its 20 nearest neighbours in
   the cluster), breaking ties by uncertainty;
3. rank the remaining images by margin uncertainty ``1 - (p_1 - p_2)`` (Scheffer et al. 2001).

The score written out is a priority in (0, 1]: 1 for the first image, falling with the rank.
"""

from __future__ import annotations

import numpy as np

TYPICALITY_NEIGHBOURS = 20


def margin_uncertainty(proba: np.ndarray) -> np.ndarray:
    """``1 - (p_1 - p_2)`` per row of ``proba`` (n, K): 0 when sure, 1 when two classes tie."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] < 2:
        return np.zeros(len(proba))
    top = -np.partition(-proba, 1, axis=1)[:, :2]
    return 1.0 - (top[:, 0] - top[:, 1])


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _typicality(points: np.ndarray) -> np.ndarray:
    if len(points) == 1:
        return np.ones(1)
    k = min(TYPICALITY_NEIGHBOURS, len(points) - 1)
    distances = np.sqrt(np.maximum(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(distances, np.inf)
    nearest = np.partition(distances, k - 1, axis=1)[:, :k]
    return 1.0 / (nearest.mean(axis=1) + 1e-12)


def rank_for_labelling(
    unlabelled_features: np.ndarray, unlabelled_proba: np.ndarray, labelled_features: np.ndarray, n: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(order, scores): positions of the ``n`` unlabelled images to label first, and their priorities.

    Parameters
    ----------
    unlabelled_features : (m, D) features of the unlabelled images.
    unlabelled_proba : (m, K) the current model's probabilities for them.
    labelled_features : (l, D) features of the images already labelled (l may be 0).
    n : how many to rank (at most m).
    """
    from sklearn.cluster import KMeans

    m = len(unlabelled_features)
    n = int(min(n, m))
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    uncertainty = margin_uncertainty(unlabelled_proba)
    pool = _normalised(unlabelled_features)
    labelled = _normalised(labelled_features) if len(labelled_features) else np.zeros((0, pool.shape[1]), np.float32)
    everything = np.concatenate([labelled, pool])
    k = min(len(labelled) + n, len(everything))
    clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(everything)
    covered = set(clusters[: len(labelled)].tolist())
    pool_clusters = clusters[len(labelled) :]
    sizes = np.bincount(clusters, minlength=k)
    chosen: list[int] = []
    for cluster in sorted(set(pool_clusters.tolist()) - covered, key=lambda c: (-sizes[c], c)):
        members = np.flatnonzero(pool_clusters == cluster)
        typical = _typicality(pool[members])
        best = members[np.lexsort((-uncertainty[members], -typical))[0]]
        chosen.append(int(best))
        if len(chosen) == n:
            break
    taken = set(chosen)
    rest = [int(i) for i in np.argsort(-uncertainty, kind="stable") if int(i) not in taken]
    order = np.array((chosen + rest)[:n], dtype=np.int64)
    scores = 1.0 - np.arange(len(order)) / max(len(order), 1)
    return order, scores
