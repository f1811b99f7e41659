"""Decide by measurement: the rules propose candidates, held-out folds of the user's data pick one.

The playbook's rules (:mod:`transferkit.advise.rules`) trust rules of thumb written for other
data. Here they only *propose*: a small set of cheap candidates, each a (strategy, image size,
class weighting), is scored by stratified inner cross-validation on the user's own images,
and the best accuracy wins (ties go to the cheaper candidate). Always among them:

- ``svm`` on the bottleneck features at the backbone's input size (small images upsampled:
  pretrained features need the size they were trained at) -- so ``auto`` is never worse than
  that baseline by more than the noise of the folds;
- ``logistic`` on the same cached features;
- ``pixels`` (an RBF SVM on the raw pixels) for data sets small enough for a kernel machine;
- ``svm`` at 128 px when the images are large (smaller inputs cost less and, on ELPV, scored
  better), and balanced class weights when the imbalance rule fired;
- ``svm`` and ``logistic`` with features averaged over flips (test-time augmentation): whether
  the data allows that symmetry is measured, not assumed.

It is cheap because nothing is wasted: features are computed once per (image, size) and
cached on disk, and the final fit of the winner reads the same cache. A time budget bounds the
measurement: each candidate's extraction time is estimated from a forward pass timed at its
size on this machine, and candidates that no longer fit are skipped, saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from transferkit.advise.facts import DataFacts
from transferkit.advise.rules import Recommendation
from transferkit.data import ImageSet, decode_images, pixel_groups
from transferkit.strategies.features import SYMMETRIES, FeatureExtractor, symmetric_features
from transferkit.strategies.linear import fit_linear_classifier
from transferkit.strategies.pixels import DEFAULT_SIDE, fit_pixel_classifier
from transferkit.training.runtime import Runtime

MAX_PIXEL_IMAGES = 5_000
"""A kernel machine's fit grows with the square of the images: ``pixels`` is proposed up to here."""
LARGE_IMAGE_SIDE = 160
"""Images whose median side reaches this also get an ``svm`` candidate at :data:`SMALL_SIDE`."""
SMALL_SIDE = 128
SHARE_FOR_MEASURING = 0.7
"""Share of a time budget the measurement may use; the rest is for the final fit."""


@dataclass(frozen=True)
class Candidate:
    """One way to fit, proposed by a rule: what runs, at which size, with which class weights."""

    strategy: str
    image_size: int
    class_weight: str | None
    proposed_by: str
    symmetries: str = "none"

    @property
    def label(self) -> str:
        weights = ", balanced" if self.class_weight else ""
        flips = ", flips" if self.symmetries != "none" else ""
        return f"{self.strategy} {self.image_size} px{weights}{flips}"


@dataclass
class Trial:
    """A candidate's measurement: inner-CV accuracy (None when skipped) and its cost."""

    candidate: Candidate
    accuracy: float | None
    seconds: float
    skipped: str | None = None
    extract_seconds: float = 0.0
    """The part of ``seconds`` spent decoding and computing features: a fit reads them cached."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.candidate), "accuracy": self.accuracy, "seconds": round(self.seconds, 1), "skipped": self.skipped,
                "extract_seconds": round(self.extract_seconds, 1)}


def propose(facts: DataFacts, recommendation: Recommendation, backbone_size: int) -> list[Candidate]:
    """The candidates worth measuring for this data, cheapest measurement first."""
    median_side = int(min(facts.height[1], facts.width[1])) if facts.height[1] else backbone_size
    weights = recommendation.class_weight
    candidates = [Candidate("svm", backbone_size, None, "always: the playbook's bottleneck features + linear SVM")]
    if median_side >= LARGE_IMAGE_SIDE:
        candidates.append(Candidate("svm", SMALL_SIDE, None, f"large images (median side {median_side} px): a smaller input"))
    candidates.append(Candidate("logistic", backbone_size, None, "the same features, logistic regression"))
    for strategy in ("svm", "logistic"):
        candidates.append(Candidate(strategy, backbone_size, None, "test-time augmentation: do flips keep the class?", "flips"))
    if weights:
        candidates.append(Candidate("svm", backbone_size, weights, "the imbalance rule: balanced class weights"))
    if facts.n_samples <= MAX_PIXEL_IMAGES:
        side = max(16, min(DEFAULT_SIDE, median_side))
        candidates.append(Candidate("pixels", side, None, "train from scratch, sized to the data: an RBF SVM on the pixels"))
    return candidates


def measure(
    images: ImageSet,
    candidates: list[Candidate],
    *,
    backbone: str,
    weights: str | None,
    runtime: Runtime,
    cache_dir: str | bool | None,
    seed: int,
    budget_seconds: float | None = None,
    seconds_per_image: Callable[[int], float] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Trial]:
    """Score every candidate by inner CV on ``images``, within ``budget_seconds`` if given.

    ``seconds_per_image(size)`` estimates a forward pass per image at ``size`` on this machine
    (measured by the caller); a candidate whose estimate no longer fits the remaining budget is
    skipped. ``clock`` is injectable so that the budget mechanism is testable.
    """
    started = clock()
    targets = np.searchsorted(np.array(images.classes), np.asarray(images.labels))
    extractor = None
    extracted_views: set[tuple[int, str]] = set()  # (size, view) whose features are cached by now
    trials: list[Trial] = []
    for candidate in candidates:
        begun = clock()
        if budget_seconds is not None:
            left = SHARE_FOR_MEASURING * budget_seconds - (begun - started)
            new_views = [view for view in SYMMETRIES[candidate.symmetries] if (candidate.image_size, view) not in extracted_views]
            if candidate.strategy == "pixels" or seconds_per_image is None or not new_views:
                cost = 0.0
            else:
                cost = len(new_views) * len(images) * seconds_per_image(candidate.image_size)
            if left <= 0 or cost > left:
                trials.append(Trial(candidate, None, 0.0, f"skipped: ~{cost:.0f} s to measure, {max(left, 0):.0f} s of the budget left"))
                continue
        pixels = decode_images(images, candidate.image_size, cache_dir=cache_dir, progress=False).pixels
        if candidate.strategy == "pixels":
            extracted = clock()
            _, _, scores = fit_pixel_classifier(pixels, targets, seed=seed, class_weight=candidate.class_weight)
        else:
            extractor = extractor or FeatureExtractor(backbone, weights=weights, runtime=runtime, cache_dir=cache_dir)
            features = symmetric_features(extractor, pixels, candidate.symmetries)
            extracted_views.update((candidate.image_size, view) for view in SYMMETRIES[candidate.symmetries])
            extracted = clock()
            _, info = fit_linear_classifier(
                features, targets, pixel_groups(pixels), strategy=candidate.strategy, C=None, seed=seed,
                class_weight=candidate.class_weight,
            )
            scores = info["inner_cv"]
        trials.append(Trial(candidate, max(scores.values()), clock() - begun, extract_seconds=extracted - begun))
    return trials


def winner(trials: list[Trial]) -> Trial:
    """The best inner-CV accuracy; on a tie (within 0.002) the cheaper, earlier candidate.

    When the budget left no candidate measured, the first (``svm`` at the backbone's size).
    """
    measured = [trial for trial in trials if trial.accuracy is not None]
    if not measured:
        return trials[0]
    best = max(trial.accuracy for trial in measured)
    return next(trial for trial in measured if trial.accuracy >= best - 0.002)


def reasons(trials: list[Trial], chosen: Trial, n_images: int) -> list[str]:
    """One line per candidate (who proposed it, what it measured) and one for the decision."""
    lines = []
    for trial in trials:
        result = trial.skipped or f"{trial.accuracy:.3f} inner-CV accuracy in {trial.seconds:.0f} s"
        lines.append(f"candidate {trial.candidate.label} ({trial.candidate.proposed_by}): {result}")
    if chosen.accuracy is None:
        lines.append(f"no candidate could be measured within the budget: auto fits {chosen.candidate.label} unmeasured")
    else:
        lines.append(
            f"measured on {n_images:,} images: {chosen.candidate.label} scored best ({chosen.accuracy:.3f}); "
            "auto fits it"
        )
    return lines
