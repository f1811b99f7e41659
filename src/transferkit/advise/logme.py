"""LogME: how well frozen features suit a labelling, from Bayesian evidence, without training.

LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
ICML 2021) fits one Bayesian linear regression per class, from the features ``F`` (N x D) to
the class's one-hot column ``y``: weights ``w ~ N(0, I / alpha)``, noise ``N(0, 1 / beta)``.
The marginal likelihood ("evidence") of ``y`` is maximised over ``alpha`` and ``beta`` and
divided by N; the score is its mean over the classes. Higher means the features separate the
classes better; scores of different backbones on the same data are comparable.

With the singular values ``s_i`` of ``F`` (``sigma_i = s_i**2``), ``x = U^T y`` and
``t = alpha / beta``, everything is a sum over the ``k = rank(F)`` singular values:

- ``gamma = sum sigma_i / (sigma_i + t)`` (effective number of parameters)
- ``|m|^2 = sum sigma_i x_i^2 / (sigma_i + t)^2`` (squared norm of the posterior mean)
- ``|F m - y|^2 = sum (t x_i / (sigma_i + t))^2 + (|y|^2 - |x|^2)``
- evidence ``= -1/2 sum log(1 + sigma_i / t) + N/2 log beta - beta/2 |F m - y|^2
  - alpha/2 |m|^2 - N/2 log(2 pi)``

and MacKay's fixed point ``alpha = gamma / |m|^2``, ``beta = (N - gamma) / |F m - y|^2``,
repeated until ``t`` stops moving, finds the maximum. The decomposition of ``F`` is computed
once for all classes.

Unlike thuml/LogME's faster ``_fit_fixed_point``, which keeps ``D/2 log alpha`` while summing
only over the ``min(N, D)`` non-zero singular values, the zero singular values are counted
exactly here (each adds ``log alpha`` to ``log |A|``, which cancels against ``D/2 log alpha``),
as in the paper's algorithm; with more dimensions than samples (D > N) the two differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from transferkit.errors import DataError

_MAX_ITERATIONS = 1_000
_TOLERANCE = 1e-10  # relative change of t = alpha / beta at which the fixed point has converged
_TINY = 1e-300  # keeps a division finite when a class is exactly (or not at all) explained


def logme_score(features: np.ndarray, labels: Sequence | np.ndarray) -> float:
    """LogME transferability of ``features`` for the classification ``labels``.

    Parameters
    ----------
    features : numpy.ndarray
        Shape ``(N, D)``, finite: e.g. a backbone's pooled bottleneck features, one row per
        image. Used as they are (no centring or scaling), as in the paper.
    labels : sequence or numpy.ndarray
        ``N`` class labels of any hashable type, at least 2 distinct ones.

    Returns
    -------
    float
        Mean over classes of the maximum log evidence, divided by ``N``. Typically between
        about -2 (features say nothing) and 2 or more (features separate the classes).

    Raises
    ------
    DataError
        ``features`` is not a finite 2-D array with at least 2 rows, ``labels`` has another
        length, or there are fewer than 2 classes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1], 50)
    >>> separable = np.eye(2)[labels] + 0.01 * rng.normal(size=(100, 2))
    >>> noise = rng.normal(size=(100, 2))
    >>> bool(logme_score(separable, labels) > logme_score(noise, labels))
    True
    """
    features = _check_features(features)
    targets = _one_hot(labels, len(features))
    n_samples = features.shape[0]

    sigma, projected = _spectrum(features, targets)
    evidences = [
        _max_log_evidence(sigma, projected[:, c], float(targets[:, c] @ targets[:, c]), n_samples)
        for c in range(targets.shape[1])
    ]
    return float(np.mean(evidences) / n_samples)


def log_evidence(
    sigma: np.ndarray, projected: np.ndarray, y_norm2: float, n_samples: int, alpha: float, beta: float
) -> float:
    """Log evidence of one target for given ``alpha``, ``beta`` (see the module docstring).

    Parameters
    ----------
    sigma : numpy.ndarray
        The non-zero squared singular values of the features.
    projected : numpy.ndarray
        ``U^T y``: the target's coordinates along the left singular vectors.
    y_norm2 : float
        ``|y|^2``.
    n_samples : int
        N.
    alpha, beta : float
        Prior precision of the weights and precision of the noise, both positive.
    """
    t = alpha / beta
    shrink = t / (sigma + t)
    m_norm2 = float(np.sum(sigma * projected**2 / (sigma + t) ** 2))
    residual = float(np.sum((shrink * projected) ** 2)) + max(y_norm2 - float(projected @ projected), 0.0)
    return (
        -0.5 * float(np.sum(np.log1p(sigma / t)))
        + 0.5 * n_samples * math.log(beta)
        - 0.5 * beta * residual
        - 0.5 * alpha * m_norm2
        - 0.5 * n_samples * math.log(2 * math.pi)
    )


def _max_log_evidence(sigma: np.ndarray, projected: np.ndarray, y_norm2: float, n_samples: int) -> float:
    """Maximise the evidence over (alpha, beta) by MacKay's fixed-point iteration."""
    alpha, beta = 1.0, 1.0
    # t is kept inside the features' own scale: beyond it the evidence no longer changes,
    # and on pure noise the iteration would otherwise walk t to infinity
    scale = float(sigma.max()) if sigma.size else 1.0
    low, high = scale * 1e-12, scale * 1e12
    t = alpha / beta
    for _ in range(_MAX_ITERATIONS):
        gamma = float(np.sum(sigma / (sigma + t)))
        m_norm2 = float(np.sum(sigma * projected**2 / (sigma + t) ** 2))
        residual = float(np.sum((t * projected / (sigma + t)) ** 2)) + max(y_norm2 - float(projected @ projected), 0.0)
        alpha = gamma / max(m_norm2, _TINY)
        beta = max(n_samples - gamma, _TINY) / max(residual, _TINY)
        new_t = min(max(alpha / beta, low), high)
        converged = abs(new_t - t) <= _TOLERANCE * t
        t = new_t
        if converged:
            break
    alpha = t * beta
    return log_evidence(sigma, projected, y_norm2, n_samples, alpha, beta)


def _spectrum(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero squared singular values of F and ``U^T Y`` for all classes at once."""
    n_samples, n_dims = features.shape
    eps = np.finfo(np.float64).eps
    if n_samples > n_dims:
        # the D x D Gram matrix is much cheaper than the SVD of a tall N x D matrix
        sigma, v = np.linalg.eigh(features.T @ features)
        keep = sigma > max(float(sigma.max()), 0.0) * n_samples * eps * 10
        sigma, v = sigma[keep], v[:, keep]
        projected = (v.T @ (features.T @ targets)) / np.sqrt(sigma)[:, None]
    else:
        u, s, _ = np.linalg.svd(features, full_matrices=False)
        keep = s > (float(s.max()) if s.size else 0.0) * n_dims * eps
        sigma = s[keep] ** 2
        projected = u[:, keep].T @ targets
    return sigma, projected


def _check_features(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise DataError(
            f"logme_score expected features of shape (N, D) with N >= 2 and D >= 1. Received: shape={array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"logme_score expected real-valued features. Received: dtype={array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise DataError(f"logme_score expected finite features. Received: {bad} row(s) with NaN or infinity")
    return array


def _one_hot(labels: Sequence | np.ndarray, n_samples: int) -> np.ndarray:
    values = np.asarray(labels, dtype=object) if not isinstance(labels, np.ndarray) else labels
    if values.ndim != 1 or len(values) != n_samples:
        raise DataError(
            f"logme_score expected one label per feature row ({n_samples}). Received: labels of shape {values.shape}"
        )
    _, index = np.unique(values.astype(str), return_inverse=True)
    n_classes = int(index.max()) + 1
    if n_classes < 2:
        raise DataError(f"logme_score expected at least 2 classes. Received: 1 class ({values[0]!r})")
    return np.eye(n_classes)[index]
