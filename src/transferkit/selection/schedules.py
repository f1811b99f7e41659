"""Schedules: which candidates run on which folds, by calling the engine's one evaluation.

scikit-learn's ``_run_search(evaluate_candidates)``: a schedule only chooses candidates and folds;
the engine scores them, the results table keeps them, :func:`~transferkit.selection.winner.choose`
picks. ``auto``'s rounds are the fourth schedule (:func:`transferkit.selection.auto.search_auto`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.selection.candidates import Candidate
from transferkit.selection.engine import Engine
from transferkit.selection.folds import nested_subsets
from transferkit.selection.results import Trial


def every_fold(engine: Engine, candidates: Sequence[Candidate]) -> list[Trial]:
    """``compare`` and ``fit --cv``: every candidate on every fold."""
    return engine.evaluate_candidates(candidates)


def successive_halving(engine: Engine, candidates: Sequence[Candidate], keep_at_least: int = 2) -> tuple[list[Trial], list[list[str]]]:
    """``advise --measure``: every candidate on fold 1, the better half on fold 2, and so on.

    Returns every trial (in ``candidates`` order) and, per round, the strategies that ran it. The
    winner is chosen among the last round's candidates (:func:`last_round`), as scikit-learn's
    ``HalvingGridSearchCV`` overrides ``_select_best_index``.
    """
    alive, rounds = list(candidates), []
    for number in range(len(engine.folds)):
        rounds.append([c.strategy for c in alive])
        trials = engine.evaluate_candidates(alive, [number])
        ranked = sorted(trials, key=lambda t: t.accuracy if t.accuracy is not None else -1.0, reverse=True)
        alive = [t.candidate for t in ranked[: max(keep_at_least, math.ceil(len(alive) / 2))]]
    return [engine.trials[c] for c in candidates], rounds


def last_round(trials: Sequence[Trial]) -> list[Trial]:
    """The trials that ran the most folds: the candidates of a halving schedule's last round."""
    most = max(len(t.folds) for t in trials)
    return [t for t in trials if len(t.folds) == most]


@dataclass
class LearningCurve:
    """Accuracy of one candidate trained on growing parts of each fold's training images, always
    scored on the same held-out images of that fold.

    ``fold_sizes[k, j]`` is the number of training images at step ``k`` on fold ``folds[j]``
    (:attr:`sizes` their mean over the folds); ``scores[k, j]`` the accuracy on that fold's
    held-out part; ``probabilities[k][j]`` its class probabilities (rows: the fold's held-out
    images, sorted).
    """

    candidate: Candidate
    fractions: list[float]
    fold_sizes: np.ndarray
    folds: list[int]
    scores: np.ndarray
    n_test: list[int]
    probabilities: list[list[np.ndarray | None]] = field(default_factory=list, repr=False)

    @property
    def sizes(self) -> list[float]:
        """The mean number of training images at each step."""
        return self.fold_sizes.mean(axis=1).tolist()

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_dict(), "fractions": self.fractions, "sizes": self.sizes, "folds": self.folds,
                "scores": self.scores.tolist(), "mean": self.scores.mean(axis=1).tolist(), "n_test": self.n_test}


def learning_curve(engine: Engine, candidate: Candidate, fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                   folds: Sequence[int] | None = None, seed: int = 0) -> LearningCurve:
    """Score ``candidate`` trained on ``fractions`` of each fold's training part (stratified,
    nested: each part contains the smaller ones), on that fold's whole held-out part.

    Callable on its own: the folds are the engine's (default: all of them), the subsets are drawn
    with ``seed``; nothing is recorded in the engine's results (the candidates there were trained
    on whole training parts).
    """
    numbers = list(range(len(engine.folds))) if folds is None else list(folds)
    fractions = sorted(float(f) for f in fractions)
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"fractions expected values in (0, 1]. Received: {fractions}")
    targets = engine.arena.targets
    scores = np.zeros((len(fractions), len(numbers)))
    sizes = np.zeros((len(fractions), len(numbers)))
    probabilities: list[list[np.ndarray | None]] = [[None] * len(numbers) for _ in fractions]
    for j, number in enumerate(numbers):
        train, test = engine.folds[number]
        wanted = [max(1, int(round(f * len(train)))) for f in fractions]
        for k, subset in enumerate(nested_subsets(train, targets, wanted, seed + number)):
            fitted = engine.score(candidate, (subset, test))
            scores[k, j], sizes[k, j], probabilities[k][j] = fitted.accuracy, len(subset), fitted.probabilities
    return LearningCurve(candidate=candidate, fractions=fractions, fold_sizes=sizes, folds=numbers, scores=scores,
                         n_test=[len(engine.folds[n][1]) for n in numbers], probabilities=probabilities)
