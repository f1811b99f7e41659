"""What a search measured: one table of trials, per-fold scores, intervals and out-of-fold probabilities.

scikit-learn's ``cv_results_`` is one table every search fills; here it is :class:`Results`, which
the engine fills with one :class:`Trial` per candidate, and every schedule and the one winner rule
read it. Beside the accuracy of each (candidate, fold) it keeps the class probabilities of every
image the fold held out, so that the winner rule compares candidates image by image, and
calibration, label-issue detection and learning curves read the same numbers:

>>> results.oof_proba(candidate)        # doctest: +SKIP
array([[0.9, 0.1], [nan, nan], ...])     # (n_images, n_classes); NaN rows: never held out
>>> results.held_out_fold(candidate)     # doctest: +SKIP
array([0, 3, -1, ...])                   # the fold of repeat 0 that held each image out; -1: none
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferkit.selection.candidates import Candidate
from transferkit.selection.folds import Fold
from transferkit.strategies import FitOutcome


@dataclass
class Trial:
    """What the engine measured of one candidate.

    ``scores`` holds the accuracy on each fold it ran (in the order run), ``folds`` their numbers;
    ``predictions`` and ``probabilities`` each fold's test part (rows in sorted index order);
    ``estimate`` the seconds the cost model predicted before it ran; ``skipped`` why it did not
    run. ``outcome`` keeps a trained network (fitted on the first fold's training part) so that
    the winner needs no second training; it is never serialised.
    """

    candidate: Candidate
    scores: list[float] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    probabilities: list[np.ndarray | None] = field(default_factory=list, repr=False)
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


class Results:
    """Every trial of one search over fixed folds, and the per-image view of them.

    Parameters
    ----------
    folds : list of (train, test)
        The search's folds; fold ``j`` belongs to repeat ``j // (len(folds) // repeats)``.
    targets : ndarray of int
        Class index of every image.
    n_classes : int
    repeats : int
        How many times the folds cover the images (1: plain k-fold or one held-out fold).
    """

    def __init__(self, folds: list[Fold], targets: np.ndarray, n_classes: int, repeats: int = 1):
        self.folds, self.targets, self.n_classes = list(folds), np.asarray(targets), int(n_classes)
        self.repeats = max(1, int(repeats))
        self.trials: dict[Candidate, Trial] = {}

    @property
    def n_images(self) -> int:
        return len(self.targets)

    def repeat_of(self, number: int) -> int:
        """The repeat fold ``number`` belongs to."""
        return number // max(1, len(self.folds) // self.repeats)

    def trial(self, candidate: Candidate) -> Trial:
        return self.trials[candidate]

    def oof_proba(self, candidate: Candidate, repeat: int | None = None) -> np.ndarray:
        """Out-of-fold class probabilities of ``candidate``, shape (n_images, n_classes).

        Row ``i`` comes from the model of the fold that held image ``i`` out (averaged over the
        repeats that did, or of ``repeat`` alone); rows of images never held out are NaN. See
        :attr:`transferkit.strategies.FoldFit.probabilities` for what the numbers are.
        """
        total = np.zeros((self.n_images, self.n_classes))
        count = np.zeros(self.n_images)
        trial = self.trials[candidate]
        for number, probabilities in zip(trial.folds, trial.probabilities):
            if probabilities is None or (repeat is not None and self.repeat_of(number) != repeat):
                continue
            test = np.sort(self.folds[number][1])
            total[test] += probabilities
            count[test] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count[:, None]

    def held_out_fold(self, candidate: Candidate, repeat: int = 0) -> np.ndarray:
        """The number of the fold (of ``repeat``) that held each image out for ``candidate``; -1
        where no fold it ran did."""
        where = np.full(self.n_images, -1)
        trial = self.trials[candidate]
        for number in trial.folds:
            if self.repeat_of(number) == repeat:
                where[self.folds[number][1]] = number
        return where

    def correct(self, candidate: Candidate) -> np.ndarray:
        """Per (repeat, image): 1.0 where the held-out prediction was right, 0.0 where wrong,
        NaN where the image was not held out in that repeat; shape (repeats, n_images)."""
        outcome = np.full((self.repeats, self.n_images), np.nan)
        trial = self.trials[candidate]
        for number, predictions in zip(trial.folds, trial.predictions):
            test = np.sort(self.folds[number][1])
            outcome[self.repeat_of(number), test] = (np.asarray(predictions) == self.targets[test]).astype(float)
        return outcome

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate (scikit-learn's ``cv_results_``, as rows): what it is and what it scored."""
        return [trial.to_dict() for trial in self.trials.values()]


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



def json_params(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly entries of a parameter mapping (callables and objects left out)."""
    return {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool, type(None)))}
