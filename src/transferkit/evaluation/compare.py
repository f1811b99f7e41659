"""Run several strategies under the same cross-validation folds and rank them.

Per-strategy defaults keep a full five-strategy, 5-fold compare of ~2,000 images practical
on a 2-core CPU. The feature strategies see the backbone's full resolution (features are
computed once and cached, so folds cost only the linear fit); the network strategies train
at a smaller image size and for a few epochs, because each fold trains a network; ``head``
and ``finetune`` compute their frozen stages once for 2 augmented views per image and train
the rest on those (:mod:`transferkit.training.prefix`), halving the frozen forward passes.
``overrides`` (e.g. ``image_size`` or ``epochs`` from the command line) apply to every
strategy and replace these defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from transferkit.backbones import get_backbone_spec
from transferkit.constraints import validate_params
from transferkit.data import ImageSet, check_classes, decode_images, duplicate_groups, thumbnail_pixels
from transferkit.errors import ConfigError
from transferkit.estimator import ImageClassifier
from transferkit.evaluation.cv import CVResult, FoldScore, json_params, make_folds
from transferkit.evaluation.metrics import classification_metrics
from transferkit.search import Arena, Candidate, CandidateSearch, Trial, every_fold
from transferkit.strategies import get_strategy, list_strategies
from transferkit.training.runtime import resolve_runtime


@dataclass
class Comparison:
    results: list[CVResult]
    cv: int
    repeats: int
    n: int
    classes: list[str]
    seconds: float

    @property
    def best(self) -> CVResult:
        return max(self.results, key=lambda r: r.mean)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [r.to_dict() for r in self.results],
            "best": self.best.strategy,
            "cv": self.cv,
            "repeats": self.repeats,
            "n": self.n,
            "classes": self.classes,
            "seconds": self.seconds,
        }


def parse_strategies(text: str) -> list[str]:
    """``"svm,pixels"`` -> ``["svm", "pixels"]``; ``"all"``: every registered strategy, in registry order."""
    if text.strip().lower() == "all":
        return list_strategies()
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in list_strategies()]
    if unknown or not names:
        raise ConfigError(f"strategies expected a comma-separated list of {', '.join(list_strategies())}. Received: {text!r}")
    return list(dict.fromkeys(names))


def strategy_params(strategy: str, base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The ImageClassifier parameters one strategy runs with inside ``compare`` (its registry
    entry's ``compare_defaults``, replaced by ``overrides``)."""
    return {**base, **get_strategy(strategy).compare_defaults, **overrides, "strategy": strategy}


def decode_for(images: ImageSet, params: dict[str, Any], decoded: dict[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """The pixels of ``images`` at the size ``params`` train at (default: the backbone's), and
    that size; ``decoded`` keeps each size's pixels so strategies share them."""
    backbone = params.get("backbone") or "efficientnet_lite0"
    size = params.get("image_size", "auto")
    if size in ("auto", None):
        size = get_backbone_spec(backbone).preprocessing.input_size
    if size not in decoded:
        decoded[size] = decode_images(images, size, cache_dir=params.get("cache_dir"), progress=params.get("verbose", False)).pixels
    return decoded[size], size


def candidates_for(
    images: ImageSet, strategies: list[str], base: dict[str, Any], overrides: dict[str, Any], decoded: dict[int, np.ndarray],
    proposed_by: str = "compare",
) -> tuple[Arena, list[Candidate]]:
    """The search arena of ``images`` and one candidate per strategy with ``compare``'s settings.

    Each candidate's parameters are its registry entry's ``compare_defaults`` replaced by
    ``overrides``; they are validated by :class:`ImageClassifier`'s constraints up front.
    """
    reference = ImageClassifier(**base).get_params()
    candidates = []
    for strategy in strategies:
        params = strategy_params(strategy, base, overrides)
        _, params["image_size"] = decode_for(images, params, decoded)
        estimator = ImageClassifier(**params)
        validate_params(estimator.get_params(), ImageClassifier._parameter_constraints, owner="ImageClassifier")
        settings = estimator.get_params()
        changed = {k: v for k, v in settings.items() if reference.get(k) != v and k not in ("strategy", "image_size")}
        entry = get_strategy(strategy)
        candidates.append(Candidate(
            strategy, params["image_size"], proposed_by,
            class_weight="balanced" if settings["class_weight"] == "balanced" else None,
            symmetries=settings["symmetries"] if settings["symmetries"] != "auto" and entry.accepts_symmetries else "none",
            feature_layers=(settings["feature_layers"] if settings["feature_layers"] != "auto" and entry.accepts_symmetries
                            else "bottleneck"),
            freeze=settings["freeze"] if settings["freeze"] != "auto" and entry.accepts_freeze else None,
            params=tuple(sorted(changed.items())),
        ))
    classes = np.array(images.classes)
    arena = Arena(
        pixels_at=lambda size: decoded[size], targets=images.targets(), classes=classes,
        params=reference, runtime=resolve_runtime(reference["device"], reference["precision"]), strata=images.strata,
    )
    return arena, candidates


def fold_score(search: CandidateSearch, trial: Trial, position: int) -> FoldScore:
    """The metrics of the ``position``-th fold a trial ran (accuracy, balanced accuracy, macro-F1)."""
    number, classes = trial.folds[position], search.arena.classes
    train, test = search.folds[number]
    test = np.sort(test)
    metrics = classification_metrics(classes[search.arena.targets[test]], classes[trial.predictions[position]], list(classes))
    return FoldScore(
        fold=number + 1, accuracy=metrics["accuracy"], balanced_accuracy=metrics["balanced_accuracy"],
        macro_f1=metrics["macro_f1"], fit_seconds=trial.fold_seconds[position], n_train=len(train), n_test=len(test),
    )


def cv_result(trial: Trial, search: CandidateSearch) -> CVResult:
    """A trial's folds as a :class:`CVResult`, with the parameters its candidate ran with."""
    candidate = trial.candidate
    params = {**json_params(dict(search.arena.params)), **dict(candidate.params), "strategy": candidate.strategy,
              "image_size": candidate.image_size}
    return CVResult(strategy=candidate.strategy, params=params,
                    folds=[fold_score(search, trial, position) for position in range(len(trial.folds))])


def report_folds(search: CandidateSearch, on_fold: Callable[[str, FoldScore], None] | None) -> None:
    """Call ``on_fold(strategy, FoldScore)`` as each of the search's folds is scored."""
    if on_fold is not None:
        search.on_fit = lambda trial, number: on_fold(trial.candidate.strategy, fold_score(search, trial, trial.folds.index(number)))


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
    """Cross-validate each strategy on the same folds of ``images`` (the search's ``every_fold``
    schedule, :mod:`transferkit.search`).

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
    base, overrides = dict(base or {}), dict(overrides or {})
    check_classes(images, min_per_class=cv, purpose=f"{cv}-fold cross-validation")
    labels = np.asarray(images.labels)
    groups = duplicate_groups(images, pixels=thumbnail_pixels(images, base.get("cache_dir")))  # copies and near-copies: one fold
    folds = make_folds(labels, cv=cv, repeats=repeats, groups=groups, seed=base.get("seed", 0))
    decoded: dict[int, np.ndarray] = {}
    arena, candidates = candidates_for(images, strategies, base, overrides, decoded)
    search = CandidateSearch(arena, folds, n_jobs=n_jobs, backend=backend, reproducible=True)
    report_folds(search, on_fold)
    trials = every_fold(search, candidates)
    return Comparison(
        results=[cv_result(t, search) for t in trials], cv=cv, repeats=repeats, n=len(images),
        classes=images.classes, seconds=time.perf_counter() - started,
    )
