"""One candidate search: every way to fit, scored on the same held-out images, within a budget.

``auto`` (the default of ``fit``), ``compare`` and ``advise --measure`` all run candidates
through :class:`CandidateSearch`, after scikit-learn's ``BaseSearchCV``: the search owns the
one evaluation (:meth:`CandidateSearch.evaluate_candidates`: every (candidate, fold) pair
through the strategy's own ``score``, in this process or through joblib, within a time budget),
and a *schedule* decides which candidates run on which folds by calling it, possibly several
times, with candidates that depend on what was measured so far:

- :func:`every_fold` (``compare``): every candidate on every fold;
- :func:`successive_halving` (``advise --measure``): every candidate on the first fold, the
  better half on the next, and so on;
- ``auto`` (:mod:`transferkit.advise.plan`): the rules propose candidates in rounds (frozen
  features first, then what their results call for: flips, pixels, a trained network), all
  scored on one held-out fold, each only if its estimated cost fits what is left of the budget.

A candidate is a strategy with its settings (image size, class weights, symmetries, freeze)
and the estimator parameters it changes (epochs, augmentation, learning rate), plus the rule
that proposed it. Each strategy scores itself as cheaply as it can
(:meth:`transferkit.strategies.Strategy.score`): feature classifiers read cached features, a
trained network keeps its weights so that, if it wins, it *is* the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from rich.console import Console

from transferkit.errors import ConfigError
from transferkit.strategies import FitOutcome, FitRequest, FoldFit, Settings, get_strategy
from transferkit.training.allocator import release_freed_memory
from transferkit.training.callbacks import Deadline, FallingBehind
from transferkit.training.runtime import Runtime, reproducible_job, resolve_runtime

Fold = tuple[np.ndarray, np.ndarray]
TIE = 0.002
"""Accuracies within this of the best are a tie, which the cheaper, earlier candidate wins."""
BEHIND_MARGIN = 0.15
"""A network still this far behind the leader after two thirds of its epochs is stopped."""
NETWORK_MARGIN = 0.01
"""A trained network's score also chose its best epoch (slightly optimistic): it must beat the
best other candidate by this much on the same held-out images to win."""


@dataclass(frozen=True)
class Candidate:
    """One way to fit: a strategy, its settings, the estimator parameters it changes, and why.

    ``params`` are :class:`~transferkit.ImageClassifier` parameters (``epochs``, ``augment``,
    ``lr`` ...) as a tuple of pairs, so that a candidate is hashable.
    """

    strategy: str
    image_size: int
    proposed_by: str
    class_weight: str | None = None
    symmetries: str = "none"
    freeze: int | None = None
    params: tuple[tuple[str, Any], ...] = ()
    feature_layers: str = "bottleneck"

    @property
    def label(self) -> str:
        """A short name: ``svm 224 px, flips`` or ``full 128 px, 12 epochs``."""
        extra = dict(self.params)
        parts = [f"{self.strategy} {self.image_size} px"]
        if self.freeze:
            parts.append(f"freeze {self.freeze}")
        if self.class_weight:
            parts.append("balanced")
        if self.feature_layers != "bottleneck":
            parts.append(f"{self.feature_layers} features")
        if self.symmetries != "none":
            parts.append(self.symmetries)
        if "epochs" in extra and get_strategy(self.strategy).trains_network:
            parts.append(f"{extra['epochs']} epochs")
        if "backbone_lr_factor" in extra:
            parts.append(f"pretrained lr x{extra['backbone_lr_factor']:g}")
        return ", ".join(parts)

    def settings(self) -> Settings:
        return Settings(strategy=self.strategy, freeze=self.freeze, image_size=self.image_size,
                        class_weight=self.class_weight, symmetries=self.symmetries, feature_layers=self.feature_layers)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "image_size": self.image_size, "class_weight": self.class_weight,
                "symmetries": self.symmetries, "feature_layers": self.feature_layers, "freeze": self.freeze,
                "params": dict(self.params),
                "proposed_by": self.proposed_by, "label": self.label}


@dataclass
class Trial:
    """What the search measured of one candidate.

    ``scores`` holds the accuracy on each fold it ran (fold order); ``estimate`` the seconds the
    cost model predicted before it ran; ``skipped`` why it did not run. ``outcome`` keeps a
    trained network (fitted on the first fold's training part) so that the winner needs no
    second training; it is never serialised.
    """

    candidate: Candidate
    scores: list[float] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    """Predicted class indices of each fold's test part (sorted indices), for other metrics."""
    fold_seconds: list[float] = field(default_factory=list, repr=False)
    seconds: float = 0.0
    extract_seconds: float = 0.0
    estimate: float | None = None
    skipped: str | None = None
    stopped: str | None = None
    outcome: FitOutcome | None = field(default=None, repr=False, compare=False)

    @property
    def accuracy(self) -> float | None:
        """Mean accuracy over the folds it ran; None when it never ran."""
        return float(np.mean(self.scores)) if self.scores else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.candidate.to_dict(), "accuracy": self.accuracy, "scores": list(self.scores), "folds": list(self.folds),
            "seconds": round(self.seconds, 1), "extract_seconds": round(self.extract_seconds, 1),
            "estimate": None if self.estimate is None else round(self.estimate, 1), "skipped": self.skipped,
            "stopped": self.stopped,
        }


@dataclass
class Arena:
    """The data every candidate is scored on, and how to run.

    ``pixels_at(size)`` returns the decoded uint8 images at ``size`` (cached by the caller);
    ``params`` are the estimator parameters every candidate starts from.
    """

    pixels_at: Callable[[int], np.ndarray]
    targets: np.ndarray
    classes: np.ndarray
    params: Mapping[str, Any]
    runtime: Runtime
    strata: np.ndarray | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True, quiet=True))

    def request(self, candidate: Candidate, callbacks: Sequence[Any] = ()) -> FitRequest:
        """The fit request of ``candidate`` on every image (a schedule's folds index into it)."""
        params = {**self.params, **dict(candidate.params), "strategy": candidate.strategy, "image_size": candidate.image_size}
        return FitRequest(
            pixels=self.pixels_at(candidate.image_size), targets=self.targets, classes=self.classes,
            settings=candidate.settings(), params=params, runtime=self.runtime, console=self.console,
            strata=self.strata, callbacks=tuple(callbacks),
        )


def score_candidate(arena: Arena, candidate: Candidate, fold: Fold, callbacks: Sequence[Any] = (), *,
                    reproducible: bool = False) -> FoldFit:
    """Fit ``candidate`` on the fold's training part and score its test part (any process).

    ``reproducible``: inside :func:`~transferkit.training.runtime.reproducible_job` (fixed torch
    threads, fp32 for ``precision="auto"``), so the score does not depend on ``--jobs``, the
    backend or the machine's thread count.
    """
    import contextlib

    import torch

    with reproducible_job() if reproducible else contextlib.nullcontext():
        if reproducible:  # the precision too is the job's: "auto" is fp32 there
            arena = replace(arena, runtime=resolve_runtime(arena.params.get("device", "auto"), arena.params.get("precision", "auto")))
        torch.manual_seed(int(arena.params.get("seed", 0)))  # a new head's initial weights
        return get_strategy(candidate.strategy).score(arena.request(candidate, callbacks), *fold)


def _score_job(arena_state: dict[str, Any], pixels: np.ndarray, candidate: Candidate, fold: Fold) -> FoldFit:
    """A joblib worker's job: rebuild the arena around the pixels it was sent."""
    arena = Arena(
        pixels_at=lambda size: pixels, targets=arena_state["targets"], classes=arena_state["classes"],
        params=arena_state["params"], strata=arena_state["strata"],
        runtime=resolve_runtime(arena_state["params"].get("device", "auto"), arena_state["params"].get("precision", "auto")),
    )
    fitted = score_candidate(arena, candidate, fold, reproducible=arena_state["reproducible"])
    fitted.outcome = None  # models stay in the worker: only scores travel back
    return fitted


class CandidateSearch:
    """Score candidates on folds within a time budget; keeps every :class:`Trial`.

    Parameters
    ----------
    arena : Arena
    folds : list of (train, test) index arrays
        The same for every candidate (paired scores).
    budget_seconds : float or None
        Wall time the whole search may take from ``started`` (default: construction; the
        estimator passes the start of ``fit``, so the probe counts too); None: no bound.
    cost : callable, optional
        ``cost(candidate, n_train, n_test, done) -> seconds``: the estimate that decides whether
        a candidate still fits what is left, given the candidates already scored (whose cached
        features cost nothing again); None: every candidate runs.
    reserve_seconds : float
        Kept back from the budget for the final fit.
    n_jobs, backend :
        Run (candidate, fold) jobs through joblib (:mod:`transferkit.evaluation.jobs`); the
        scores do not depend on it. A budgeted search runs in this process, one job at a time,
        so that each decision sees the time actually left.
    on_event : callable, optional
        Called with one line of progress (elapsed and left of the budget, what runs, results).
    on_fit : callable, optional
        Called with (trial, fold number) after each fold is scored.
    clock : callable
        Injectable, so that the budget mechanism is testable without waiting.
    reproducible : bool
        Score every job inside ``reproducible_job()`` (``compare`` and the race: their tables
        must not depend on ``--jobs``); ``auto`` keeps every thread, for speed.
    """

    def __init__(
        self, arena: Arena, folds: Sequence[Fold], *, budget_seconds: float | None = None,
        cost: Callable[[Candidate, int, int, list[Candidate]], float] | None = None, reserve_seconds: float = 0.0, n_jobs: int = 1,
        backend: str | None = None, on_event: Callable[[str], None] | None = None,
        on_fit: Callable[[Trial, int], None] | None = None, clock: Callable[[], float] = time.perf_counter,
        started: float | None = None, reproducible: bool = False,
    ):
        if not folds:
            raise ConfigError("a search needs at least one (train, test) fold")
        self.arena, self.folds = arena, list(folds)
        self.budget_seconds, self.cost, self.reserve = budget_seconds, cost, reserve_seconds
        self.n_jobs, self.backend = n_jobs, backend
        self.on_event, self.clock = on_event or (lambda line: None), clock
        self.on_fit = on_fit or (lambda trial, number: None)
        self.started = clock() if started is None else started
        self.reproducible = reproducible
        self.trials: dict[Candidate, Trial] = {}

    # ----------------------------------------------------------------- time
    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        """Seconds of the budget left for measuring (the final fit's reserve excluded)."""
        if self.budget_seconds is None:
            return math.inf
        return self.budget_seconds - self.reserve - self.elapsed()

    def stamp(self) -> str:
        """``[1:05 / 10:00]``: elapsed and budget, for progress lines."""
        total = "no bound" if self.budget_seconds is None else _minutes(self.budget_seconds)
        return f"[{_minutes(self.elapsed())} / {total}]"

    # ------------------------------------------------------- the evaluation
    def evaluate_candidates(self, candidates: Sequence[Candidate], folds: Sequence[int] | None = None) -> list[Trial]:
        """Score each candidate on the folds numbered ``folds`` (default all); returns their trials.

        A candidate already scored on a fold is not scored again. Under a budget each candidate
        is first costed and skipped (saying why) when its estimate exceeds what is left, and a
        network gets a :class:`~transferkit.training.callbacks.Deadline` at the budget's end and
        a :class:`~transferkit.training.callbacks.FallingBehind` check against the leader.
        """
        numbers = list(range(len(self.folds))) if folds is None else list(folds)
        trials = [self.trials.setdefault(c, Trial(c)) for c in candidates]
        if self.budget_seconds is None and (self.n_jobs != 1 or self.backend is not None):
            self._evaluate_parallel(trials, numbers)
            return trials
        for trial in trials:
            for number in numbers:
                if trial.skipped is None and number not in trial.folds:
                    self._evaluate_one(trial, number)
        return trials

    def _evaluate_one(self, trial: Trial, number: int) -> None:
        candidate, (train, test) = trial.candidate, self.folds[number]
        if self.cost is not None and self.budget_seconds is not None:
            done = [t.candidate for t in self.trials.values() if t.scores]
            trial.estimate = self.cost(candidate, len(train), len(test), done)
            if trial.estimate > self.left():
                trial.skipped = f"skipped: ~{trial.estimate:.0f} s to measure, {max(self.left(), 0):.0f} s of the budget left"
                self.on_event(f"{self.stamp()} {candidate.label}: {trial.skipped}")
                return
        estimate = f" (~{trial.estimate:.0f} s)" if trial.estimate is not None else ""
        self.on_event(f"{self.stamp()} measuring {candidate.label}{estimate}: {candidate.proposed_by}")
        release_freed_memory()  # the costing's timed steps, the last candidate's network: each pass peaks on its own
        fitted = score_candidate(self.arena, candidate, (train, test), self._callbacks(candidate), reproducible=self.reproducible)
        release_freed_memory()
        self._record(trial, number, fitted)
        self.on_event(f"{self.stamp()} {candidate.label}: {fitted.accuracy:.3f} held-out accuracy in {fitted.seconds:.0f} s"
                      + (f" ({fitted.stopped})" if fitted.stopped else ""))

    def _callbacks(self, candidate: Candidate) -> list[Any]:
        # only a budgeted search cuts networks short: compare and the race train every fold in full
        if not get_strategy(candidate.strategy).trains_network or self.budget_seconds is None:
            return []
        callbacks: list[Any] = [Deadline(self.started + self.budget_seconds - self.reserve, clock=self.clock)]
        leader = self.leader()
        if leader is not None:
            epochs = int(dict(candidate.params).get("epochs", self.arena.params.get("epochs", 10)))
            # late: a cosine schedule does much of its work in the last third of the epochs
            callbacks.append(FallingBehind(leader.accuracy, after=max(3, (2 * epochs) // 3), margin=BEHIND_MARGIN))
        return callbacks

    def _record(self, trial: Trial, number: int, fitted: FoldFit) -> None:
        trial.scores.append(fitted.accuracy)
        trial.folds.append(number)
        trial.predictions.append(fitted.predictions)
        trial.fold_seconds.append(fitted.seconds)
        trial.seconds += fitted.seconds
        trial.extract_seconds += fitted.extract_seconds
        trial.stopped = trial.stopped or fitted.stopped
        if fitted.outcome is not None and trial.outcome is None:
            trial.outcome = fitted.outcome
        self.on_fit(trial, number)

    def _evaluate_parallel(self, trials: list[Trial], numbers: list[int]) -> None:
        from transferkit.evaluation.jobs import run_parallel

        state = {"targets": self.arena.targets, "classes": self.arena.classes, "params": dict(self.arena.params),
                 "strata": self.arena.strata, "reproducible": self.reproducible}
        jobs = [(trial, number) for trial in trials for number in numbers if number not in trial.folds]
        # every (candidate, fold) is independent: joblib runs them here or on a cluster (--jobs, --backend)
        arguments = [(state, self.arena.pixels_at(t.candidate.image_size), t.candidate, self.folds[n]) for t, n in jobs]
        for (trial, number), fitted in zip(jobs, run_parallel(_score_job, arguments, backend=self.backend, n_jobs=self.n_jobs)):
            self._record(trial, number, fitted)

    # -------------------------------------------------------------- results
    def leader(self) -> Trial | None:
        """The best trial so far (see :func:`winner`), or None before any ran."""
        measured = [t for t in self.trials.values() if t.accuracy is not None]
        return winner(measured) if measured else None


def winner(trials: Sequence[Trial]) -> Trial:
    """The best mean accuracy; within :data:`TIE` the cheaper, earlier candidate; a trained
    network must beat the best other candidate by :data:`NETWORK_MARGIN`.

    With no trial measured, the first one (the budget allowed nothing: it is fitted unmeasured).
    """
    measured = [t for t in trials if t.accuracy is not None]
    if not measured:
        return trials[0]
    others = [t for t in measured if not get_strategy(t.candidate.strategy).trains_network]
    floor = max((t.accuracy for t in others), default=-math.inf)

    def effective(trial: Trial) -> float:
        if get_strategy(trial.candidate.strategy).trains_network and others:
            return trial.accuracy - NETWORK_MARGIN if trial.accuracy > floor else trial.accuracy - 1.0
        return trial.accuracy

    best = max(effective(t) for t in measured)
    return next(t for t in measured if effective(t) >= best - TIE)


# ------------------------------------------------------------------ schedules
def every_fold(search: CandidateSearch, candidates: Sequence[Candidate]) -> list[Trial]:
    """``compare``'s schedule: every candidate on every fold."""
    return search.evaluate_candidates(candidates)


def successive_halving(search: CandidateSearch, candidates: Sequence[Candidate], keep_at_least: int = 2) -> tuple[list[Trial], list[list[str]]]:
    """``advise --measure``'s schedule: all candidates on fold 1, the better half on fold 2, ...

    Returns every trial and, per round, the labels of the candidates that ran it.
    """
    alive, rounds = list(candidates), []
    for number in range(len(search.folds)):
        rounds.append([c.strategy for c in alive])
        trials = search.evaluate_candidates(alive, [number])
        ranked = sorted(trials, key=lambda t: t.accuracy if t.accuracy is not None else -1.0, reverse=True)
        alive = [t.candidate for t in ranked[: max(keep_at_least, math.ceil(len(alive) / 2))]]
    return [search.trials[c] for c in candidates], rounds


def with_params(candidate: Candidate, **params: Any) -> Candidate:
    """``candidate`` with estimator parameters added or replaced."""
    merged = {**dict(candidate.params), **params}
    return replace(candidate, params=tuple(sorted(merged.items())))


def _minutes(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"
