"""Outliers: images far from every other image in feature space (Sun et al., ICML 2022, deep nearest neighbours).

The score of an image is the cosine distance (``1 - cos``) of its L2-normalised feature vector
to its k-th nearest other image. An image is an outlier when its score is far above the data's
own: more than ``median + 5 x MAD`` of all scores (robust; no fixed distance, which would depend
on the backbone), and it is among the top :data:`MAX_SHARE` of scores.
"""

from __future__ import annotations

import numpy as np

K_NEIGHBOUR = 5
"""The neighbour whose distance is the score (k-th nearest other image)."""
MAX_SHARE = 0.02
"""At most this share of the images are called outliers."""
_CHUNK = 1024


def knn_distances(features: np.ndarray, k: int = K_NEIGHBOUR) -> np.ndarray:
    """Cosine distance (n,) of each row of ``features`` (n, D) to its k-th nearest other row.

    With fewer than k + 1 rows, the farthest other row; one row: 0.
    """
    x = np.asarray(features, dtype=np.float32)
    if len(x) < 2:
        return np.zeros(len(x))
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(x) - 1)
    out = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        sims = x[start : start + _CHUNK] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        out[start : start + len(sims)] = 1.0 - kth
    return out


def find_outliers(features: np.ndarray, k: int = K_NEIGHBOUR) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the outliers among the rows of ``features`` (n, D), highest score first.

    Scores are :func:`knn_distances`, in [0, 2].
    """
    scores = knn_distances(features, k)
    if len(scores) < 3:
        return np.zeros(0, np.int64), np.zeros(0)
    median = np.median(scores)
    mad = np.median(np.abs(scores - median)) * 1.4826
    limit = median + 5.0 * max(mad, 1e-6)
    order = np.argsort(-scores, kind="stable")[: max(1, int(MAX_SHARE * len(scores)))]
    chosen = order[scores[order] > limit]
    return chosen, scores[chosen]
