"""The one evaluation: every (candidate, fold) pair through the strategy's own ``score``.

After scikit-learn's ``BaseSearchCV.fit``, which builds one ``evaluate_candidates`` and hands it
to ``_run_search``: :class:`Engine` owns the evaluation (:meth:`Engine.evaluate_candidates`: each
pair in this process or through joblib, within a time budget, recorded in one
:class:`~transferkit.selection.results.Results` table with every held-out image's class
probabilities), and a *schedule* (:mod:`transferkit.selection.schedules`, ``auto``'s rounds in
:mod:`transferkit.selection.auto`) decides which candidates run on which folds by calling it,
possibly several times, with candidates that depend on what was measured so far. The winner is
:func:`transferkit.selection.winner.choose`, for every schedule.

Each strategy scores itself as cheaply as it can (:meth:`transferkit.strategies.Strategy.score`):
feature classifiers read cached features, a trained network keeps its weights so that, if it
wins, it *is* the model.
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
from transferkit.selection.candidates import Candidate
from transferkit.selection.folds import Fold
from transferkit.selection.results import Results, Trial
from transferkit.selection.winner import choose
from transferkit.strategies import FitRequest, FoldFit, get_strategy
from transferkit.training.allocator import release_freed_memory
from transferkit.training.callbacks import Deadline, FallingBehind
from transferkit.training.runtime import Runtime, reproducible_job, resolve_runtime

BEHIND_MARGIN = 0.15
"""A network still this far behind the leader after two thirds of its epochs is stopped."""


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


class Engine:
    """Score candidates on folds within a time budget; keeps every :class:`Trial` in ``results``.

    Parameters
    ----------
    arena : Arena
    folds : list of (train, test) index arrays
        The same for every candidate (paired scores).
    repeats : int
        How many times ``folds`` cover the images (repeated k-fold), for the per-image view of
        :class:`~transferkit.selection.results.Results`.
    budget_seconds : float or None
        Wall time the whole search may take from ``started`` (default: construction; the
        estimator passes the start of ``fit``, so the probe counts too); None: no bound.
    cost : callable, optional
        ``cost(candidate, n_train, n_test, trials) -> seconds``
        (:class:`~transferkit.selection.cost.CostModel`): the estimate that decides whether a
        candidate still fits what is left, given the trials so far (whose cached features cost
        nothing again); None: every candidate runs.
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
        self, arena: Arena, folds: Sequence[Fold], *, repeats: int = 1, budget_seconds: float | None = None,
        cost: Callable[[Candidate, int, int, Mapping[Candidate, Trial]], float] | None = None, reserve_seconds: float = 0.0,
        n_jobs: int = 1,
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
        self.results = Results(self.folds, arena.targets, len(arena.classes), repeats)

    @property
    def trials(self) -> dict[Candidate, Trial]:
        """Every candidate's trial, in the order first evaluated (``results.trials``)."""
        return self.results.trials

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
            trial.estimate = self.cost(candidate, len(train), len(test), self.trials)
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

    def record(self, candidate: Candidate, number: int, fitted: FoldFit) -> Trial:
        """Record a measurement of ``candidate`` on fold ``number`` made without a fit of its own
        (auto's ensemble: its members' held-out probabilities, averaged); returns its trial."""
        trial = self.trials.setdefault(candidate, Trial(candidate))
        self._record(trial, number, fitted)
        self.on_event(f"{self.stamp()} {candidate.label}: {fitted.accuracy:.3f} held-out accuracy ({candidate.proposed_by})")
        return trial

    def _record(self, trial: Trial, number: int, fitted: FoldFit) -> None:
        trial.scores.append(fitted.accuracy)
        trial.folds.append(number)
        trial.predictions.append(fitted.predictions)
        trial.probabilities.append(fitted.probabilities)
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
        """The best-scoring trial so far (:func:`~transferkit.selection.winner.choose`'s ``best``), or
        None before any ran."""
        measured = [t for t in self.trials.values() if t.accuracy is not None]
        return choose(self.results, measured).best if measured else None

    def score(self, candidate: Candidate, fold: Fold) -> FoldFit:
        """Score ``candidate`` on any ``fold`` without recording it (a learning curve's subsets)."""
        return score_candidate(self.arena, candidate, fold, reproducible=self.reproducible)


def _minutes(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"
