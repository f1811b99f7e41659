"""Check the rules by measurement: a race of candidate strategies under CV (``advise --measure``).

The rules in :mod:`transferkit.advise.rules` trust the playbook; the race measures it on the
user's data: the engine with the candidates ``auto`` races (:func:`transferkit.selection.auto.auto_strategies`)
and a successive-halving schedule. It cross-validates them on a stratified sample: every
candidate runs on the first fold, the better half goes on to the next fold, and so on, so the
budget goes to the strategies still in contention. All candidates see the same folds, and the
per-strategy settings are ``compare``'s (small image sizes and few epochs for the network
strategies), so a race of ~600 images takes a few minutes on 2 CPU cores.

The schedule is :func:`transferkit.selection.schedules.successive_halving`, run by the same
:class:`~transferkit.selection.engine.Engine` as ``compare`` and ``auto``, and the winner is the one
rule's among the last round's candidates. It halves over
*folds* rather than over samples (scikit-learn's ``HalvingGridSearchCV``): the strategies each
need their own decoded image size, and every fold score is kept to compare with the advice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.data import ImageSet, check_classes, duplicate_groups, stratified_sample, thumbnail_pixels
from transferkit.errors import ConfigError
from transferkit.selection.candidates import candidates_for
from transferkit.selection.compare import arena_for, cv_result, report_folds
from transferkit.selection.engine import Engine
from transferkit.selection.folds import make_folds
from transferkit.selection.results import CVResult, FoldScore
from transferkit.selection.schedules import last_round, successive_halving
from transferkit.selection.winner import choose
from transferkit.strategies import get_strategy, list_strategies

RACE_CANDIDATES = ("svm", "head", "finetune")
"""Always raced besides the advised strategy: the cheapest, the frozen and the usual default."""


@dataclass
class Race:
    """Outcome of :func:`race_strategies`.

    Attributes
    ----------
    advised : str
        The strategy the rules chose.
    results : list of CVResult
        One per candidate; eliminated candidates have fewer fold scores.
    rounds : list of list of str
        The candidates that ran on each fold.
    n_images : int
        Images raced (a stratified sample of the data).
    seconds : float
    chosen : str
        The winner rule's choice among the last round's candidates.
    reason : str
        Why (:attr:`transferkit.selection.winner.Decision.reason`).
    """

    advised: str
    results: list[CVResult]
    rounds: list[list[str]]
    n_images: int
    seconds: float
    chosen: str
    reason: str = ""

    @property
    def winner(self) -> CVResult:
        """The chosen strategy's cross-validation result."""
        return next(r for r in self.results if r.strategy == self.chosen)

    @property
    def agrees(self) -> bool:
        return self.winner.strategy == self.advised

    def verdict(self) -> str:
        """One plain line: does the measurement back the rule?"""
        winner = self.winner
        if self.agrees:
            return (f"the measurement agrees with the rule: {winner.strategy} won the race "
                    f"({winner.mean:.3f} accuracy over {len(winner.folds)} folds)")
        advised = next(r for r in self.results if r.strategy == self.advised)
        shared = min(len(advised.folds), len(winner.folds))
        ahead = np.mean([w.accuracy - a.accuracy for w, a in zip(winner.folds[:shared], advised.folds[:shared])])
        return (f"the measurement disagrees with the rule: {winner.strategy} beat the advised {self.advised} "
                f"by {ahead:+.3f} accuracy on the same {shared} fold{'s' if shared > 1 else ''} "
                f"({winner.strategy} {winner.mean:.3f}, {self.advised} {advised.mean:.3f}); "
                f"consider --strategy {winner.strategy}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "advised": self.advised,
            "winner": self.winner.strategy,
            "agrees": self.agrees,
            "verdict": self.verdict(),
            "why": self.reason,
            "rounds": self.rounds,
            "n_images": self.n_images,
            "seconds": round(self.seconds, 1),
            "results": [r.to_dict() for r in self.results],
        }


def race_strategies(
    images: ImageSet,
    advised: str,
    *,
    candidates: Sequence[str] | None = None,
    cv: int = 3,
    max_images: int | None = 600,
    base: dict[str, Any] | None = None,
    advised_params: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    on_fold: Callable[[str, FoldScore], None] | None = None,
    n_jobs: int = 1,
    backend: str | None = None,
) -> Race:
    """Race ``advised`` against the usual alternatives with successive halving over folds.

    Parameters
    ----------
    images : ImageSet
        Labelled images.
    advised : str
        The strategy the rules recommend; always raced.
    candidates : sequence of str, optional
        The others; default :data:`RACE_CANDIDATES`.
    cv : int, default 3
        Folds of the stratified split of the sample; also the number of rounds.
    max_images : int or None, default 600
        Race on a stratified sample of about this many images (None: all).
    base : dict, optional
        ImageClassifier parameters for every candidate (backbone, seed, device, cache_dir ...).
    advised_params : dict, optional
        Extra parameters of the advised candidate (e.g. the advised freeze depth).
    overrides : dict, optional
        Replace ``compare``'s per-strategy defaults for every candidate (e.g. epochs).
    on_fold : callable, optional
        Called with (strategy, FoldScore) after each fold.
    n_jobs, backend :
        Run each round's candidates in parallel through joblib (see
        :func:`transferkit.evaluation.jobs.run_parallel`).
    """
    started = time.perf_counter()
    names = list(dict.fromkeys([advised, *(RACE_CANDIDATES if candidates is None else candidates)]))
    unknown = [name for name in names if name not in list_strategies()]
    if unknown:
        raise ConfigError(f"race candidates expected names from {', '.join(list_strategies())}. Received: {unknown}")
    base = dict(base or {})
    extra = {advised: dict(advised_params or {})} if advised_params else {}
    if advised in extra and not get_strategy(advised).accepts_freeze:
        extra[advised].pop("freeze", None)
    proposed = candidates_for(names, base, dict(overrides or {}), proposed_by="race", extra=extra)  # checked before any work
    sample = stratified_sample(images, max_images, base.get("seed", 0))
    check_classes(sample, min_per_class=cv, purpose=f"a {cv}-fold race")
    groups = duplicate_groups(sample, pixels=thumbnail_pixels(sample, base.get("cache_dir")))  # copies and near-copies: one fold
    folds = make_folds(np.asarray(sample.labels), cv=cv, groups=groups, seed=base.get("seed", 0))
    engine = Engine(arena_for(sample, proposed, base), folds, n_jobs=n_jobs, backend=backend, reproducible=True)
    report_folds(engine, on_fold)
    trials, rounds = successive_halving(engine, proposed)
    decision = choose(engine.results, last_round(trials))
    return Race(
        advised=advised, results=[cv_result(t, engine) for t in trials], rounds=rounds, n_images=len(sample),
        seconds=time.perf_counter() - started, chosen=decision.chosen.candidate.strategy, reason=decision.reason,
    )
