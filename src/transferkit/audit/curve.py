"""Learning curves: accuracy against the number of training images, and what more images would buy.

Accuracy at training-set size n is modelled as a power law ``acc(n) = a - b * n**(-c)`` (Cortes
et al. 1993; Hestness et al. 2017), fitted by least squares to every measured point with
``acc(n_max) <= a <= 1``, ``b >= 0`` and ``0 < c <= 2``. The interval of a prediction combines
a bootstrap over the measurements (points resampled within each size, refitted) with the
binomial spread of an accuracy measured on ``n_eval`` held-out images (in quadrature).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

BOOTSTRAP = 200
"""Refits behind each interval."""
Z90 = 1.645


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a - b * n**(-c)``: accuracy at n training images."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


def fit_power_law(sizes: np.ndarray, accuracies: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) of :func:`power_law` fitted to measured (size, accuracy) points (sizes > 0).

    With fewer than 3 distinct sizes, or when the fit fails, a flat curve at the mean accuracy
    of the largest size: (acc, 0, 1).
    """
    sizes, accuracies = np.asarray(sizes, np.float64), np.asarray(accuracies, np.float64)
    largest = accuracies[sizes == sizes.max()].mean()
    if len(np.unique(sizes)) < 3:
        return float(largest), 0.0, 1.0
    low_a = min(max(largest, accuracies.max() - 0.05), 1.0 - 1e-6)
    start = (min(1.0, max(low_a, largest + 0.02)), max(1e-3, (largest - accuracies.min()) * sizes.min() ** 0.5), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(power_law, sizes, accuracies, p0=start, bounds=([low_a, 0.0, 1e-3], [1.0, np.inf, 2.0]),
                                  maxfev=5000)
    except (RuntimeError, ValueError):
        return float(largest), 0.0, 1.0
    return tuple(float(v) for v in params)


@dataclass(frozen=True)
class CurvePrediction:
    """Predicted accuracy at ``n_images`` training images, with a 90 % interval [low, high]."""

    n_images: int
    accuracy: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"n_images": self.n_images, "accuracy": round(self.accuracy, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


def predict_accuracy(
    sizes: np.ndarray, accuracies: np.ndarray, targets: list[int], *, n_eval: int, seed: int = 0
) -> tuple[tuple[float, float, float], list[CurvePrediction]]:
    """Fit the power law to measured points and predict the accuracy at each size in ``targets``.

    ``sizes``/``accuracies`` (m,) are every measurement (repeats included); ``n_eval`` is the
    number of held-out images each accuracy was measured on. Returns the fitted (a, b, c) and one
    :class:`CurvePrediction` per target, accuracies in [0, 1].
    """
    sizes, accuracies = np.asarray(sizes, np.float64), np.asarray(accuracies, np.float64)
    params = fit_power_law(sizes, accuracies)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(sizes == s) for s in np.unique(sizes)]
    draws = np.empty((BOOTSTRAP, len(targets)))
    for b in range(BOOTSTRAP):
        pick = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        draws[b] = power_law(np.array(targets), *fit_power_law(sizes[pick], accuracies[pick]))
    predictions = []
    for t, target in enumerate(targets):
        value = float(power_law(np.array([target]), *params)[0])
        spread_low, spread_high = np.percentile(draws[:, t], [5, 95])
        binomial = Z90 * np.sqrt(max(value * (1 - value), 1e-4) / max(n_eval, 1))
        low = value - np.hypot(value - spread_low, binomial)
        high = value + np.hypot(spread_high - value, binomial)
        predictions.append(CurvePrediction(int(target), value, float(max(0.0, low)), float(min(1.0, high))))
    return params, predictions
