"""THE SEAM between the audit and model selection: out-of-fold probabilities and learning-curve points.

Everything else in :mod:`transferkit.audit` takes arrays; this module alone decides which model
scores the images, and it scores them through the selection engine
(:class:`transferkit.selection.Engine`), as ``compare`` and ``fit --cv`` do: one candidate, the
linear probe that ``fit --strategy auto`` starts from on small data (logistic regression on the
frozen backbone's cached bottleneck features: probabilities, not SVM margins), on grouped
stratified folds (:func:`transferkit.selection.folds.make_folds`: copies and near-copies in one
fold); the engine keeps every held-out image's class probabilities
(:meth:`~transferkit.selection.results.Results.oof_proba`).

The learning curve follows the model ``fit`` would choose among frozen features, not the probe:
auto's first round (svm and logistic on the bottleneck features, svm on multi-layer features,
:func:`transferkit.selection.auto.frozen_feature_candidates`) scored on auto's held-out folds and
decided by the one winner rule (:func:`transferkit.selection.winner.choose`); its curve is the
engine's schedule (:func:`transferkit.selection.schedules.learning_curve`) on every fold, so each
image is held out once per point. The probe's own curve predicted the probe on 2N within 0.006
but a default ``fit`` on 2N within 0.03 on one set of three; this one did on three of four
(benchmarks/RESULTS.md, "The learning curve follows fit's choice").

C is chosen once, by the inner grouped CV of the first fold's training part, and kept for every
fold and curve point: choosing it again in each fit would cost five times the fits and make the
curve's points differ by their C as well as by their images.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from transferkit.selection.auto import cheap_repeats, frozen_feature_candidates
from transferkit.selection.candidates import Candidate, with_params
from transferkit.selection.engine import Arena, Engine
from transferkit.selection.folds import holdout_folds, make_folds
from transferkit.selection.results import Trial
from transferkit.selection.schedules import learning_curve
from transferkit.selection.winner import choose
from transferkit.strategies.features import symmetric_features
from transferkit.strategies.linear import feature_extractor, fit_linear_classifier
from transferkit.training.runtime import Runtime

STRATEGY = "logistic"
CURVE_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
"""Shares of the training part at which the learning curve is measured."""
CURVE_REPEATS = 1
"""Draws of the nested subsets on every fold (each fraction below 1 is fitted once per fold per
draw); the folds already give one point per fold and fraction."""


@dataclass(frozen=True)
class OutOfFold:
    """Probabilities (n, K) of every image from a model that did not train on it."""

    proba: np.ndarray
    folds: int
    strategy: str
    C: float
    seconds: float


def audit_arena(pixels: np.ndarray, targets: np.ndarray, classes, *, params: Mapping[str, Any], runtime: Runtime) -> Arena:
    """The engine's view of the audited images: uint8 ``pixels`` (n, S, S, 3), int ``targets``
    (n,) in 0..K-1, the K ``classes``; ``params`` are estimator parameters (backbone, weights,
    cache_dir, seed ...) over the defaults."""
    from transferkit.strategies.parameters import full_params

    return Arena(pixels_at=lambda size: pixels, targets=np.asarray(targets), classes=np.asarray(classes),
                 params=full_params(params), runtime=runtime)


def probe_candidate(arena: Arena, C: float) -> Candidate:
    """The audit's one candidate: logistic regression on the bottleneck features at the pixels' side, ``C`` fixed."""
    side = int(arena.pixels_at(0).shape[1])  # an audit arena holds one decoded side, whatever size is asked
    return with_params(Candidate(STRATEGY, side, "the audit: a linear probe on the frozen backbone's features"), C=float(C))


def probe_features(arena: Arena, candidate: Candidate | None = None) -> np.ndarray:
    """The features (n, D) ``candidate`` reads (None: the probe's bottleneck features): the arena's
    images through the engine's own extractor (:func:`~transferkit.strategies.linear.feature_extractor`,
    kept for the engine's folds), cached."""
    request = arena.request(candidate or Candidate(STRATEGY, int(arena.pixels_at(0).shape[1]), "the audit"))
    return symmetric_features(feature_extractor(request), request.pixels, "none")


def choose_C(arena: Arena, train: np.ndarray, groups: np.ndarray | None, candidate: Candidate | None = None) -> float:
    """C of ``candidate`` (None: the linear probe) by inner grouped CV on the ``train`` images' cached features."""
    features = probe_features(arena, candidate)
    train = np.sort(train)
    group_ids = train if groups is None else np.asarray(groups)[train]
    _, info = fit_linear_classifier(features[train], arena.targets[train], group_ids, strategy=candidate.strategy if candidate else STRATEGY,
                                    C=None, seed=int(arena.params["seed"]))
    return float(info["C"])


def out_of_fold_probabilities(
    arena: Arena, groups: np.ndarray | None, *, cv: int = 5, seed: int = 0, C: float | None = None,
    on_fold: Callable[[int, int], None] | None = None,
) -> OutOfFold:
    """Out-of-fold probabilities of every image of ``arena``: ``cv`` grouped stratified folds, each
    fold's images scored by the probe fitted on the others, through the selection engine.

    ``groups`` (n,) or None puts images of one group in one fold. ``C`` None: chosen once
    (:func:`choose_C`) on the first fold's training part. Raises
    :class:`~transferkit.errors.DataError` when a class has fewer than ``cv`` images.
    """
    started = time.perf_counter()
    folds = make_folds(arena.targets, cv=cv, groups=groups, seed=seed)
    C = choose_C(arena, folds[0][0], groups) if C is None else float(C)
    candidate = probe_candidate(arena, C)
    engine = Engine(arena, folds)
    if on_fold is not None:
        engine.on_fit = lambda trial, number: on_fold(len(trial.folds), len(folds))
    engine.evaluate_candidates([candidate])
    return OutOfFold(proba=engine.results.oof_proba(candidate), folds=len(folds), strategy=STRATEGY, C=C,
                     seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class CurveChoice:
    """The candidate the learning curve follows, and the trials that chose it."""

    candidate: Candidate
    trials: list[Trial]
    seconds_per_fit: float

    def describe(self) -> str:
        scores = ", ".join(f"{t.candidate.label} {t.accuracy:.3f}" for t in self.trials if t.accuracy is not None)
        C = dict(self.candidate.params).get("C")
        fixed = "" if C is None else f", C={C:g}"
        return f"{self.candidate.label}{fixed} (fit's choice among frozen features: {scores})"


def curve_candidate(arena: Arena, groups: np.ndarray | None, *, seed: int = 0) -> CurveChoice:
    """The candidate ``fit --strategy auto`` would choose among frozen features on ``arena``:
    auto's first round on auto's held-out folds (every image, repeated, on a small set), decided
    by the one winner rule.

    Each candidate's C is chosen by inner CV on the first fold's training part, as the engine
    chooses it there, but once, and the candidate carries it: the curve's points keep that C (a
    share of 1/8 may hold too few images a class for an inner CV of its own) and the choice needs
    no second search. A trained network is not raced here (the audit's budget is minutes): where
    ``fit`` would train one, the curve describes the frozen features.
    """
    side = int(arena.pixels_at(0).shape[1])
    first = holdout_folds(arena.targets, groups, seed)
    repeats = cheap_repeats(len(arena.targets), len(first[0][1]))
    folds = holdout_folds(arena.targets, groups, seed, repeats) if repeats else first[:1]
    candidates = [with_params(c, C=choose_C(arena, folds[0][0], groups, c)) for c in frozen_feature_candidates(side)]
    engine = Engine(arena, folds, repeats=max(repeats, 1))
    trials = engine.evaluate_candidates(candidates)
    chosen = choose(engine.results).chosen
    return CurveChoice(candidate=chosen.candidate, trials=trials, seconds_per_fit=float(np.mean(chosen.fold_seconds)))


def learning_curve_points(
    arena: Arena, groups: np.ndarray | None, candidate: Candidate, *, seed: int = 0,
    fractions: tuple[float, ...] = CURVE_FRACTIONS, repeats: int = CURVE_REPEATS, cv: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Accuracy of ``candidate`` at growing shares of each fold's training part, on that fold's
    held-out part.

    The folds are auto's grouped stratified k-fold (``cv`` None: auto's k); the training parts
    are the engine's learning-curve schedule (stratified, nested), drawn ``repeats`` times for
    the fractions below 1. Returns (sizes, accuracies, n_eval): one entry per fit, and the
    number of held-out images each accuracy was measured on (the smallest fold's).
    """
    folds = holdout_folds(arena.targets, groups, seed) if cv is None else make_folds(arena.targets, cv=cv, groups=groups, seed=seed)
    engine = Engine(arena, folds)
    sizes: list[float] = []
    accuracies: list[float] = []
    for repeat in range(max(1, repeats)):
        wanted = [f for f in fractions if f < 1] if repeat else list(fractions)
        if not wanted:
            break
        curve = learning_curve(engine, candidate, wanted, seed=seed + repeat)
        sizes += curve.fold_sizes.T.ravel().tolist()  # fold by fold, as the scores below
        accuracies += curve.scores.T.ravel().tolist()
    return np.array(sizes, dtype=np.float64), np.array(accuracies), min(len(test) for _, test in folds)
