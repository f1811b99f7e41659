"""``compare``: every candidate on every fold of the same cross-validation, as one table.

The engine's ``every_fold`` schedule over one candidate per strategy (:func:`candidates_for`:
each registry entry's ``compare_defaults``, replaced by the user's overrides). The feature
strategies see the backbone's full resolution (features are computed once and cached, so folds
cost only the linear fit); the network strategies train at a smaller image size and for a few
epochs, because each fold trains a network. The best row is the one winner rule's
(:func:`transferkit.selection.winner.choose`), the same as ``auto``'s.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from transferkit.data import ImageSet, check_classes, decode_images, duplicate_groups, thumbnail_pixels
from transferkit.errors import ConfigError
from transferkit.evaluation.metrics import classification_metrics
from transferkit.selection.candidates import Candidate, candidates_for
from transferkit.selection.engine import Arena, Engine
from transferkit.selection.folds import Fold, make_folds
from transferkit.selection.results import CVResult, FoldScore, Trial, json_params
from transferkit.selection.schedules import every_fold
from transferkit.selection.winner import Decision, choose
from transferkit.strategies import list_strategies
from transferkit.strategies.parameters import full_params
from transferkit.training.runtime import resolve_runtime


@dataclass
class Comparison:
    """Outcome of :func:`compare_strategies`: one :class:`CVResult` per strategy, the winner
    rule's choice (``best``) and its reason."""

    results: list[CVResult]
    cv: int
    repeats: int
    n: int
    classes: list[str]
    seconds: float
    chosen: str
    reason: str = ""

    @property
    def best(self) -> CVResult:
        return next(r for r in self.results if r.strategy == self.chosen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [r.to_dict() for r in self.results],
            "best": self.best.strategy,
            "why": self.reason,
            "cv": self.cv,
            "repeats": self.repeats,
            "n": self.n,
            "classes": self.classes,
            "seconds": self.seconds,
        }


def parse_strategies(text: str) -> list[str]:
    """``"svm,pixels"`` -> ``["svm", "pixels"]``; ``"all"``: every registered strategy, in registry order."""
    if text.strip().lower() == "all":
        return list(list_strategies())
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in list_strategies()]
    if unknown or not names:
        raise ConfigError(f"strategies expected a comma-separated list of {', '.join(list_strategies())}. Received: {text!r}")
    return list(dict.fromkeys(names))


def arena_for(images: ImageSet, candidates: list[Candidate], base: Mapping[str, Any], progress: bool = False) -> Arena:
    """The engine's arena over ``images``: each candidate's image size decoded once and shared."""
    params = full_params(base)
    decoded = {size: decode_images(images, size, cache_dir=params["cache_dir"], progress=progress).pixels
               for size in dict.fromkeys(c.image_size for c in candidates)}
    return Arena(pixels_at=lambda size: decoded[size], targets=images.targets(), classes=np.array(images.classes),
                 params=params, runtime=resolve_runtime(params["device"], params["precision"]), strata=images.strata)


def fold_score(engine: Engine, trial: Trial, position: int) -> FoldScore:
    """The metrics of the ``position``-th fold a trial ran (accuracy, balanced accuracy, macro-F1)."""
    number, classes = trial.folds[position], engine.arena.classes
    train, test = engine.folds[number]
    test = np.sort(test)
    metrics = classification_metrics(classes[engine.arena.targets[test]], classes[trial.predictions[position]], list(classes))
    return FoldScore(
        fold=number + 1, accuracy=metrics["accuracy"], balanced_accuracy=metrics["balanced_accuracy"],
        macro_f1=metrics["macro_f1"], fit_seconds=trial.fold_seconds[position], n_train=len(train), n_test=len(test),
    )


def cv_result(trial: Trial, engine: Engine) -> CVResult:
    """A trial's folds as a :class:`CVResult`, with the parameters its candidate ran with."""
    candidate = trial.candidate
    params = {**json_params(dict(engine.arena.params)), **dict(candidate.params), "strategy": candidate.strategy,
              "image_size": candidate.image_size}
    return CVResult(strategy=candidate.strategy, params=params,
                    folds=[fold_score(engine, trial, position) for position in range(len(trial.folds))])


def report_folds(engine: Engine, on_fold: Callable[[str, FoldScore], None] | None) -> None:
    """Call ``on_fold(strategy, FoldScore)`` as each of the engine's folds is scored."""
    if on_fold is not None:
        engine.on_fit = lambda trial, number: on_fold(trial.candidate.strategy, fold_score(engine, trial, trial.folds.index(number)))


def cv_folds(images: ImageSet, cv: int, repeats: int, seed: int, cache_dir=None) -> list[Fold]:
    """Stratified ``cv``-fold folds of ``images``, ``repeats`` times; copies and near-copies of one
    picture in one fold (thumbnails cached under ``cache_dir``)."""
    check_classes(images, min_per_class=cv, purpose=f"{cv}-fold cross-validation")
    groups = duplicate_groups(images, pixels=thumbnail_pixels(images, cache_dir))
    return make_folds(np.asarray(images.labels), cv=cv, repeats=repeats, groups=groups, seed=seed)


def cross_validate(
    images: ImageSet, candidates: list[Candidate], *, cv: int = 5, repeats: int = 1, base: Mapping[str, Any] | None = None,
    on_fold: Callable[[str, FoldScore], None] | None = None, n_jobs: int = 1, backend: str | None = None,
) -> tuple[Engine, list[Trial], Decision]:
    """Every candidate on every fold of ``images`` (the ``every_fold`` schedule), then the winner.

    The one path of ``compare`` and ``fit --cv``. Every job runs inside ``reproducible_job()``, so
    the table does not depend on ``n_jobs`` or the backend. Returns the engine (its ``results``
    hold the out-of-fold probabilities), the trials in ``candidates`` order and the decision.
    """
    base = dict(base or {})
    folds = cv_folds(images, cv, repeats, int(base.get("seed", 0)), base.get("cache_dir"))
    arena = arena_for(images, candidates, base, progress=bool(base.get("verbose", False)))
    engine = Engine(arena, folds, repeats=repeats, n_jobs=n_jobs, backend=backend, reproducible=True)
    report_folds(engine, on_fold)
    trials = every_fold(engine, candidates)
    return engine, trials, choose(engine.results, trials)


def compare_strategies(
    images: ImageSet,
    strategies: list[str],
    *,
    cv: int = 5,
    repeats: int = 1,
    base: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    on_fold: Callable[[str, FoldScore], None] | None = None,
    n_jobs: int = 1,
    backend: str | None = None,
) -> Comparison:
    """Cross-validate each strategy on the same folds of ``images``.

    Parameters
    ----------
    images : ImageSet
        Labelled images; ``groups`` (CSV column ``group``) makes the folds grouped.
    strategies : list of str
    cv, repeats : int
        Stratified ``cv``-fold CV, repeated ``repeats`` times with different shuffles.
    base : dict
        ImageClassifier parameters shared by all strategies (backbone, seed, device, ...).
    overrides : dict
        Parameters that replace the per-strategy defaults for every strategy.
    n_jobs, backend :
        Run the (strategy, fold) jobs in parallel through joblib (see
        :func:`transferkit.evaluation.jobs.parallel_backend`); the table is the same as with
        ``n_jobs=1``.
    """
    started = time.perf_counter()
    candidates = candidates_for(strategies, dict(base or {}), dict(overrides or {}))
    engine, trials, decision = cross_validate(images, candidates, cv=cv, repeats=repeats, base=base, on_fold=on_fold,
                                              n_jobs=n_jobs, backend=backend)
    return Comparison(
        results=[cv_result(t, engine) for t in trials], cv=cv, repeats=repeats, n=len(images),
        classes=images.classes, seconds=time.perf_counter() - started, chosen=decision.chosen.candidate.strategy,
        reason=decision.reason,
    )
