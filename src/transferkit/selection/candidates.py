"""What the selection wing chooses between: a :class:`Candidate` is a strategy with its settings.

After scikit-learn's ``ParameterGrid`` entries: a candidate is just parameters, and the model it
stands for is ``ImageClassifier(**params)`` fitted with :meth:`Candidate.settings` (the estimator
fits ``candidate.settings()`` directly; no intermediate record). :func:`candidates_for` is the one
builder from estimator parameters (``compare``, ``fit --cv`` and the race); ``auto``'s rounds
(:mod:`transferkit.selection.auto`) propose theirs with the rule that proposed each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from transferkit.backbones import get_backbone_spec
from transferkit.constraints import AUTO
from transferkit.strategies import Settings, get_strategy
from transferkit.strategies.parameters import check_params, full_params

SETTING_KEYS = ("strategy", "image_size", "class_weight", "symmetries", "feature_layers", "freeze")
"""Parameters a candidate holds as settings; every other changed parameter goes to ``params``."""


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
        if extra.get("regularization", AUTO) != AUTO:
            parts.append(f"regularization {extra['regularization']}")
        if extra.get("sampling") == "balanced":
            parts.append("balanced batches")
        if "seed" in extra and get_strategy(self.strategy).trains_network:  # a second network, trained from another seed
            parts.append(f"seed {extra['seed']}")
        if extra.get("networks", 1) > 1:  # an ensemble whose network member averages several
            parts.append(f"{extra['networks']} networks")
        if extra.get("calibrated"):  # scored with its fitted head's temperature (an ensemble's member)
            parts.append("calibrated")
        if extra.get("network_symmetries", "none") != "none":  # an ensemble's network, test-time augmented
            parts.append(f"network averaged over {extra['network_symmetries']}")
        if "feature_strategy" in extra:  # an ensemble's feature member
            member = [extra["feature_strategy"]]
            if extra.get("feature_layers", "bottleneck") not in ("bottleneck", AUTO):
                member.append(f"on {extra['feature_layers']} features")
            if extra.get("symmetries", "none") not in ("none", AUTO):
                member.append(f"averaged over {extra['symmetries']}")
            parts.append("with " + " ".join(member))
        return ", ".join(parts)

    @property
    def kind(self) -> str:
        """``"features"`` (a classifier on frozen pretrained features), ``"pixels"`` (no pretrained
        network) or ``"network"`` (trains one): what the playbook's order ranks."""
        entry = get_strategy(self.strategy)
        if entry.trains_network:
            return "network"
        return "features" if entry.frozen_backbone else "pixels"

    def settings(self) -> Settings:
        """What the estimator fits when this candidate is chosen."""
        return Settings(strategy=self.strategy, freeze=self.freeze, image_size=self.image_size,
                        class_weight=self.class_weight, symmetries=self.symmetries, feature_layers=self.feature_layers)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "image_size": self.image_size, "class_weight": self.class_weight,
                "symmetries": self.symmetries, "feature_layers": self.feature_layers, "freeze": self.freeze,
                "params": dict(self.params), "proposed_by": self.proposed_by, "label": self.label}


def with_params(candidate: Candidate, **params: Any) -> Candidate:
    """``candidate`` with estimator parameters added or replaced."""
    merged = {**dict(candidate.params), **params}
    return replace(candidate, params=tuple(sorted(merged.items())))


def strategy_params(strategy: str, base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The ImageClassifier parameters one strategy runs with in ``compare`` and the race: its
    registry entry's ``compare_defaults`` over ``base``, replaced by ``overrides``."""
    return {**base, **get_strategy(strategy).compare_defaults, **overrides, "strategy": strategy}


def candidate_from_params(params: Mapping[str, Any], proposed_by: str, reference: Mapping[str, Any] | None = None) -> Candidate:
    """The candidate that ``ImageClassifier(**params)`` fits (``params["strategy"]`` a registered name).

    ``"auto"`` settings resolve as a fit with that strategy resolves them without the advisor:
    the image size to the strategy's own or the backbone's, class weights, symmetries and feature
    layers to none, freeze to the strategy's default. Parameters that differ from ``reference``
    (default: :data:`~transferkit.defaults.DEFAULTS`) travel in ``Candidate.params``. Checked
    against the one constraints table first.
    """
    values = full_params(params)
    check_params(values)
    reference = full_params(reference or {})
    entry = get_strategy(values["strategy"])
    size = values["image_size"]
    if size == AUTO:
        size = entry.default_image_size or get_backbone_spec(values["backbone"]).preprocessing.input_size
    changed = {k: v for k, v in values.items() if reference.get(k) != v and k not in SETTING_KEYS}
    return Candidate(
        values["strategy"], int(size), proposed_by,
        class_weight="balanced" if values["class_weight"] == "balanced" else None,
        symmetries=values["symmetries"] if values["symmetries"] != AUTO and entry.accepts_symmetries else "none",
        feature_layers=values["feature_layers"] if values["feature_layers"] != AUTO and entry.accepts_symmetries else "bottleneck",
        freeze=values["freeze"] if values["freeze"] != AUTO and entry.accepts_freeze else None,
        params=tuple(sorted(changed.items())),
    )


def candidates_for(strategies: Sequence[str], base: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
                   proposed_by: str = "compare", extra: Mapping[str, Mapping[str, Any]] | None = None) -> list[Candidate]:
    """One candidate per strategy with ``compare``'s settings (:func:`strategy_params`), plus
    ``extra[strategy]`` for that strategy alone (the race: the advised freeze depth)."""
    extra = extra or {}
    return [candidate_from_params({**strategy_params(name, base, overrides or {}), **extra.get(name, {})}, proposed_by, base)
            for name in strategies]
