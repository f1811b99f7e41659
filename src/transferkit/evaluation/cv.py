"""Cross-validation: identical folds for every strategy, nested choices, per-fold scores.

Folds are made once (:func:`make_folds`) and handed to every strategy, so their scores are
paired. Everything a fold's model chooses — the C of ``svm``, the early-stopping split of the
network strategies — happens inside ``fit`` on the fold's training part only: no leakage.
Images are decoded once for the whole data set; each fold indexes into the same array.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold

from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.metrics import classification_metrics
from transferkit.training.runtime import reproducible_job

Fold = tuple[np.ndarray, np.ndarray]


def make_folds(
    labels: np.ndarray, *, cv: int = 5, repeats: int = 1, groups: np.ndarray | None = None, seed: int = 0
) -> list[Fold]:
    """Stratified k-fold (repeated ``repeats`` times); grouped when ``groups`` is given.

    With groups, all images of one group (e.g. near-duplicates of one object) land on the
    same side of every split (``StratifiedGroupKFold``). Callers pass
    :func:`transferkit.data.duplicate_groups`, so exact copies of a picture always do.
    """
    labels = np.asarray(labels)
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ConfigError(f"cv expected an integer >= 2. Received: cv={cv!r}")
    if not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ConfigError(f"repeats expected a positive integer. Received: repeats={repeats!r}")
    names, counts = np.unique(labels, return_counts=True)
    if counts.min() < cv:
        small = ", ".join(f"{str(n)!r} ({c})" for n, c in zip(names, counts) if c < cv)
        raise DataError(f"{cv}-fold cross-validation needs at least {cv} images per class; too few in {small}. Lower --cv or add images.")
    index = np.arange(len(labels))
    if groups is None:
        splitter = RepeatedStratifiedKFold(n_splits=cv, n_repeats=repeats, random_state=seed)
        return [(train, test) for train, test in splitter.split(index, labels)]
    folds: list[Fold] = []
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed + repeat)
        folds.extend(splitter.split(index, labels, groups=np.asarray(groups)))
    return folds


CI95_METHOD = "Wilson score interval over the images tested (each once per repeat)"
"""How :attr:`CVResult.ci95` is computed, as the JSON and the report say it."""


def wilson_interval(accuracy: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``accuracy`` measured on ``n`` trials (95 % for
    the default ``z``). Unlike the normal approximation it stays inside [0, 1], and at 0 or 1
    it still has a width: 30 of 30 right gives 0.886-1.0.

    >>> [round(v, 3) for v in wilson_interval(1.0, 30)]
    [0.886, 1.0]
    """
    if n <= 0:
        return (0.0, 1.0)
    p = min(max(float(accuracy), 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


@dataclass(frozen=True)
class FoldScore:
    fold: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    fit_seconds: float
    n_train: int
    n_test: int


@dataclass
class CVResult:
    """Scores of one strategy over the folds."""

    strategy: str
    params: dict[str, Any]
    folds: list[FoldScore] = field(default_factory=list)

    def _values(self, key: str) -> np.ndarray:
        return np.array([getattr(f, key) for f in self.folds])

    @property
    def mean(self) -> float:
        return float(self._values("accuracy").mean())

    @property
    def std(self) -> float:
        return float(self._values("accuracy").std(ddof=1)) if len(self.folds) > 1 else 0.0

    @property
    def n_tested(self) -> int:
        """Distinct images the folds scored: every image once per repeat, so at most one fold's
        ``n_train + n_test`` (fewer when a race stopped a strategy before its last fold)."""
        if not self.folds:
            return 0
        return min(int(self._values("n_test").sum()), self.folds[0].n_train + self.folds[0].n_test)

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson score 95% interval of the accuracy (:data:`CI95_METHOD`): always inside [0, 1].

        It counts the test-set uncertainty of ``n_tested`` predictions, not the fold-to-fold
        spread (``std``); a Student-t interval over the fold means ran past 1 (0.96-1.02).
        """
        return wilson_interval(self.mean, self.n_tested)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "cv_mean": self.mean,
            "cv_std": self.std,
            "ci95": list(self.ci95),
            "ci95_method": CI95_METHOD,
            "n_tested": self.n_tested,
            "fold_scores": self._values("accuracy").tolist(),
            "balanced_accuracy": float(self._values("balanced_accuracy").mean()),
            "macro_f1": float(self._values("macro_f1").mean()),
            "fit_seconds": float(self._values("fit_seconds").sum()),
            "folds": [asdict(f) for f in self.folds],
            "params": self.params,
        }


def plain_params(estimator) -> dict[str, Any]:
    """The estimator's JSON-friendly parameters, as a result records them."""
    return json_params(estimator.get_params())


def json_params(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly entries of a parameter mapping (callables and objects left out)."""
    return {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool, type(None)))}


@dataclass(frozen=True)
class FoldJob:
    """One independent unit of work: fit a clone of ``estimator`` on a fold, score its test part."""

    name: str
    estimator: Any
    pixels: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    test: np.ndarray
    number: int


def score_fold(job: FoldJob) -> FoldScore:
    """Run one :class:`FoldJob` (in this process or in a joblib worker).

    Inside :func:`~transferkit.training.runtime.reproducible_job`: a fixed number of torch
    threads and fp32 for ``precision="auto"`` on a CPU, so the score is the same whichever
    worker, backend or ``--jobs`` ran it.
    """
    labels = np.asarray(job.labels).astype(str)
    model = clone(job.estimator)
    with reproducible_job(), warnings.catch_warnings():
        # One picture in two classes is reported once, for the whole data, not by every fold's fit.
        warnings.filterwarnings("ignore", message=".*appear with different labels")
        started = time.perf_counter()
        model.fit(job.pixels[np.sort(job.train)], labels[np.sort(job.train)])
        fit_seconds = time.perf_counter() - started
        predictions = model.predict(job.pixels[job.test])
    metrics = classification_metrics(labels[job.test], predictions, sorted(set(labels)))
    return FoldScore(
        fold=job.number, accuracy=metrics["accuracy"], balanced_accuracy=metrics["balanced_accuracy"],
        macro_f1=metrics["macro_f1"], fit_seconds=fit_seconds, n_train=len(job.train), n_test=len(job.test),
    )


def run_jobs(jobs: list[FoldJob], *, n_jobs: int = 1, backend: str | None = None) -> Iterator[FoldScore]:
    """Score ``jobs`` with joblib, yielding results in the jobs' order as they complete.

    ``n_jobs=1`` runs them one after the other in this process. ``backend`` names any joblib
    backend (``loky``, the default for ``n_jobs > 1``, ``threading``, or ``dask`` / ``ray`` on a
    cluster once registered: see :func:`transferkit.evaluation.jobs.parallel_backend`); folds,
    seeds and therefore scores do not depend on it: every job runs with the same fixed number
    of torch threads (:func:`~transferkit.training.runtime.reproducible_job`), with ``n_jobs=1``
    too.
    """
    from transferkit.evaluation.jobs import run_parallel

    if not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 or n_jobs < -1:
        raise ConfigError(f"jobs expected a positive integer (or -1 for every core). Received: jobs={n_jobs!r}")
    if n_jobs == 1 and backend is None:
        yield from (score_fold(job) for job in jobs)
        return
    yield from run_parallel(score_fold, [(job,) for job in jobs], backend=backend, n_jobs=n_jobs)


def cross_validate(
    estimator,
    pixels: np.ndarray,
    labels: np.ndarray,
    folds: list[Fold],
    *,
    name: str | None = None,
    on_fold: Callable[[str, FoldScore], None] | None = None,
    n_jobs: int = 1,
    backend: str | None = None,
) -> CVResult:
    """Fit a clone of ``estimator`` on each fold's training part and score its test part.

    ``pixels`` are decoded uint8 images at the estimator's image size (decoded once). With
    ``n_jobs > 1`` the folds run in parallel (:func:`run_jobs`); the scores are the same.
    """
    params = plain_params(estimator)
    result = CVResult(strategy=name or params.get("strategy", type(estimator).__name__), params=params)
    jobs = [FoldJob(result.strategy, estimator, pixels, labels, train, test, number) for number, (train, test) in enumerate(folds, start=1)]
    for score in run_jobs(jobs, n_jobs=n_jobs, backend=backend):
        result.folds.append(score)
        if on_fold is not None:
            on_fold(result.strategy, score)
    return result
