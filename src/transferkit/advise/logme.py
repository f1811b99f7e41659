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

For a fixed ``t`` the best ``beta`` has a closed form, ``beta = N / S(t)`` with
``S(t) = sum t x_i^2 / (sigma_i + t) + r`` and ``r = |y|^2 - |x|^2`` the part of ``y`` outside
the span of the features, which leaves a function of ``t`` alone (the "profile" evidence):

- ``E(t) = -1/2 sum log(1 + sigma_i / t) + N/2 log(N / S(t)) - N/2 - N/2 log(2 pi)``

MacKay's fixed point ``alpha = gamma / |m|^2``, ``beta = (N - gamma) / |F m - y|^2`` (the
paper's algorithm) finds a stationary point of it quickly, but where ``r`` is rounding noise it
can stop short: with fewer images than dimensions the features span every ``y`` (``r`` is
exactly 0), while ``|y|^2 - |x|^2`` computed in floating point is a tiny number of either sign
that depends on the BLAS (issue 16: a 1 % lower score on an Intel CPU than on an AMD one).
So ``r`` is set to 0 when ``rank(F) = N`` and otherwise computed from the residual vector, not
by subtraction; the fixed point stops on a relative change of ``log t``; and a bounded 1-D
search over ``log t`` (a grid, then Brent's method in the best bracket) runs as well. The
larger of the two evidences is returned, so a stalled fixed point cannot lower the score.
The decomposition of ``F`` is computed once for all classes.

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

_MAX_ITERATIONS = 500
_LOG_T_TOLERANCE = 1e-9  # change of log(alpha / beta) at which the fixed point has converged
_GRID_POINTS = 241  # log t grid of the 1-D search: spacing ~0.2 over its ~55 nats
_ROUNDING_SHARE = 1e-20  # a residual below this share of |y|^2 is rounding, not data
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

    sigma, projected, outside = _spectrum(features, targets)
    evidences = [
        _max_log_evidence(sigma, projected[:, c], float(outside[c]), n_samples) for c in range(targets.shape[1])
    ]
    return float(np.mean(evidences) / n_samples)


def log_evidence(
    sigma: np.ndarray, projected: np.ndarray, outside: float, n_samples: int, alpha: float, beta: float
) -> float:
    """Log evidence of one target for given ``alpha``, ``beta`` (see the module docstring).

    Parameters
    ----------
    sigma : numpy.ndarray
        The non-zero squared singular values of the features.
    projected : numpy.ndarray
        ``U^T y``: the target's coordinates along the left singular vectors.
    outside : float
        ``r``: the squared norm of the part of ``y`` outside the span of the features.
    n_samples : int
        N.
    alpha, beta : float
        Prior precision of the weights and precision of the noise, both positive.
    """
    t = alpha / beta
    shrink = t / (sigma + t)
    m_norm2 = float(np.sum(sigma * projected**2 / (sigma + t) ** 2))
    residual = float(np.sum((shrink * projected) ** 2)) + outside
    return (
        -0.5 * float(np.sum(np.log1p(sigma / t)))
        + 0.5 * n_samples * math.log(beta)
        - 0.5 * beta * residual
        - 0.5 * alpha * m_norm2
        - 0.5 * n_samples * math.log(2 * math.pi)
    )


def _profile_log_evidence(
    log_t: np.ndarray, sigma: np.ndarray, projected: np.ndarray, outside: float, n_samples: int
) -> np.ndarray:
    """The evidence at its best ``beta = N / S(t)`` for each ``log t`` (vectorised)."""
    t = np.exp(np.atleast_1d(log_t))[:, None]
    fit_cost = np.sum(t * projected**2 / (sigma + t), axis=1) + outside  # S(t)
    return (
        -0.5 * np.sum(np.log1p(sigma / t), axis=1)
        + 0.5 * n_samples * np.log(n_samples / np.maximum(fit_cost, _TINY))
        - 0.5 * n_samples * (1.0 + math.log(2 * math.pi))
    )


def _max_log_evidence(sigma: np.ndarray, projected: np.ndarray, outside: float, n_samples: int) -> float:
    """Maximise the evidence over (alpha, beta): MacKay's fixed point and a 1-D search over t."""
    if sigma.size == 0:  # features that are all zero explain nothing: the evidence at t -> inf
        return float(_profile_log_evidence(np.array([0.0]), np.zeros(1), np.zeros(1), outside, n_samples)[0])
    # Beyond the features' own scale (or below the smallest singular value, with the
    # targets' fit cost) the evidence no longer changes: the search stays inside.
    scale = float(sigma.max())
    log_low = math.log(scale) - 12 * math.log(10)
    if outside > 0:
        explained = float(np.sum(projected**2 / sigma))  # S(t) ~ t * explained + outside near 0
        log_low = min(log_low, math.log(max(outside / max(explained, _TINY), _TINY)) - 2 * math.log(10))
    log_high = math.log(scale) + 12 * math.log(10)
    candidates = [_fixed_point_log_t(sigma, projected, outside, n_samples, log_low, log_high)]
    candidates.append(_search_log_t(sigma, projected, outside, n_samples, log_low, log_high))
    values = _profile_log_evidence(np.array(candidates), sigma, projected, outside, n_samples)
    return float(values.max())


def _fixed_point_log_t(
    sigma: np.ndarray, projected: np.ndarray, outside: float, n_samples: int, log_low: float, log_high: float
) -> float:
    """MacKay's fixed point, as in the paper; stops when log t moves less than a set tolerance."""
    log_t = 0.0
    for _ in range(_MAX_ITERATIONS):
        t = math.exp(log_t)
        gamma = float(np.sum(sigma / (sigma + t)))
        m_norm2 = float(np.sum(sigma * projected**2 / (sigma + t) ** 2))
        residual = float(np.sum((t * projected / (sigma + t)) ** 2)) + outside
        alpha = gamma / max(m_norm2, _TINY)
        beta = max(n_samples - gamma, _TINY) / max(residual, _TINY)
        new_log_t = min(max(math.log(alpha / beta), log_low), log_high)
        converged = abs(new_log_t - log_t) <= _LOG_T_TOLERANCE
        log_t = new_log_t
        if converged:
            break
    return log_t


def _search_log_t(
    sigma: np.ndarray, projected: np.ndarray, outside: float, n_samples: int, log_low: float, log_high: float
) -> float:
    """A bounded 1-D search: the best point of a log-t grid, refined by Brent's method in its bracket.

    The grid guards against a second local maximum; scipy's bounded Brent finishes to 1e-10.
    """
    from scipy.optimize import minimize_scalar

    grid = np.linspace(log_low, log_high, _GRID_POINTS)
    values = _profile_log_evidence(grid, sigma, projected, outside, n_samples)
    best = int(np.argmax(values))
    bracket = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    result = minimize_scalar(
        lambda log_t: -float(_profile_log_evidence(np.array([log_t]), sigma, projected, outside, n_samples)[0]),
        bounds=bracket,
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(result.x) if -result.fun >= values[best] else float(grid[best])


def _spectrum(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero squared singular values of F, ``U^T Y``, and each target's squared norm outside
    the span of F, for all classes at once."""
    n_samples, n_dims = features.shape
    eps = np.finfo(np.float64).eps
    if n_samples > n_dims:
        # the D x D Gram matrix is much cheaper than the SVD of a tall N x D matrix
        sigma, v = np.linalg.eigh(features.T @ features)
        keep = sigma > max(float(sigma.max()), 0.0) * n_samples * eps * 10
        sigma, v = sigma[keep], v[:, keep]
        u = (features @ v) / np.sqrt(sigma)
    else:
        u, s, _ = np.linalg.svd(features, full_matrices=False)
        keep = s > (float(s.max()) if s.size else 0.0) * n_dims * eps
        sigma, u = s[keep] ** 2, u[:, keep]
    projected = u.T @ targets
    if sigma.size == n_samples:
        # the features span every target: nothing lies outside, exactly (not rounding noise)
        outside = np.zeros(targets.shape[1])
    else:
        outside = np.sum((targets - u @ projected) ** 2, axis=0)
        # a target inside the span leaves only rounding behind: count it as exactly inside
        outside[outside <= _ROUNDING_SHARE * np.sum(targets**2, axis=0)] = 0.0
    return sigma, projected, outside


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
