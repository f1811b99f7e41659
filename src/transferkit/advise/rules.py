"""The playbook: from data facts and measured domain shift to a strategy, stated step by step.

============================  ============================================================
rule                          fires when (threshold in :class:`AdviceThresholds`)
============================  ============================================================
``small_data``                samples < ``small_data``: linear SVM on frozen features
``large_data``                samples >= ``large_data``: fine-tune every stage (``full``)
``far_domain_shift``          mean BatchNorm shift >= ``far_domain_shift``
``far_domain_entropy``        ImageNet entropy >= ``far_entropy``
``scratch``                   far domain and samples >= ``min_scratch_samples``
``freeze_depth``              some stage's shift >= ``freeze_shift``: freezing stops before it
``small_images``              median image side < the backbone's input size
``head_overfitting``          head parameters >= ``head_parameters_per_sample`` x samples
``imbalance``                 largest / smallest class >= ``imbalance``
``duplicates``                exact duplicates >= ``duplicates``
``time_budget``               the plan's estimated fit time > the budget (only with a
                              :class:`Budget`): smaller images, then ``svm``
============================  ============================================================

Every rule is evaluated and listed (fired or not) in :attr:`Recommendation.rules`, so a report
can show the whole reasoning, not only its outcome.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from torch import nn

from transferkit.advise.facts import DataFacts
from transferkit.advise.probe import DomainShift
from transferkit.backbones import Preprocessing, backbone_stages, feature_dim
from transferkit.errors import ConfigError
from transferkit.selection.cost import Speeds, fit_seconds
from transferkit.strategies.network import PLAYBOOK_LR_FACTOR

AdvisedStrategy = Literal["svm", "head", "finetune", "full", "scratch"]

HEAD_LR = 1e-3
"""Learning rate of the new head (and of every layer when training from scratch)."""


@dataclass(frozen=True)
class AdviceThresholds:
    """Every number the rules compare against; change one to change a rule.

    Parameters
    ----------
    small_data : int, default 1000
        Fewer training images than this: bottleneck features + linear SVM (``svm``).
    large_data : int, default 10000
        At least this many: fine-tune every stage (``full``) instead of the later ones.
    min_scratch_samples : int, default 50000
        A far domain with at least this many images: train from scratch (``scratch``).
    far_domain_shift : float, default 0.5
        Mean BatchNorm shift over the stages at or above this: the domain is far from the
        pretraining data. Measured on EfficientNet-Lite0: natural photos ~0.15, 8x8 digits
        ~1.1, noise ~1.2.
    far_entropy : float, default 0.6
        Mean normalised entropy of the pretrained classifier at or above this: far domain
        (photos ~0.35, digits ~0.8, noise ~0.7 on Lite0).
    freeze_shift : float, default 0.4
        Freezing stops at the first stage whose shift is at or above this.
    max_freeze : int, default 3
        Most block stages ``finetune`` freezes when the domain is near.
    max_freeze_far : int, default 1
        Most block stages ``finetune`` freezes when the domain is far.
    head_parameters_per_sample : float, default 100
        Warn about overfitting when the trained head has at least this many parameters per
        training image (large fully connected layers on small data).
    imbalance : float, default 3
        Largest class / smallest class at or above this: weight the classes (``balanced``).
    duplicates : int, default 1
        Warn when at least this many images are exact copies of another.
    min_image_size : int, default 32
        Images smaller than the backbone's input are trained at their own size, but at least this.
    """

    small_data: int = 1_000
    large_data: int = 10_000
    min_scratch_samples: int = 50_000
    far_domain_shift: float = 0.5
    far_entropy: float = 0.6
    freeze_shift: float = 0.4
    max_freeze: int = 3
    max_freeze_far: int = 1
    head_parameters_per_sample: float = 100.0
    imbalance: float = 3.0
    duplicates: int = 1
    min_image_size: int = 32

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            is_int = item.type in (int, "int")
            valid_type = isinstance(value, int) if is_int else isinstance(value, (int, float))
            if isinstance(value, bool) or not valid_type or value < 0 or (not is_int and not math.isfinite(value)):
                kind = "a non-negative integer" if is_int else "a non-negative number"
                raise ConfigError(f"{item.name}: expected {kind}. Received: {item.name}={value!r}")
        if self.small_data > self.large_data:
            raise ConfigError(
                "small_data must not exceed large_data. "
                f"Received: small_data={self.small_data}, large_data={self.large_data}"
            )


@dataclass(frozen=True)
class BackboneFacts:
    """What the rules need to know about the chosen backbone.

    Attributes
    ----------
    name : str
    input_size : int
        Side of the images its weights were trained at.
    stage_names : tuple of str
        Its stages, input side first (``stem``, ``stage1`` ... ``neck``).
    head_parameters : int
        Parameters that train on top of the pooled features for this task: the new linear
        head, plus timm's ``pre_logits`` layers (large in VGG-style classifiers).
    """

    name: str
    input_size: int
    stage_names: tuple[str, ...] = ()
    head_parameters: int = 0

    @property
    def block_stages(self) -> tuple[str, ...]:
        """The stages ``freeze N`` counts: ``stage1`` ... ``stageN``."""
        return tuple(name for name in self.stage_names if name.startswith("stage"))

    @classmethod
    def from_model(cls, name: str, model: nn.Module, preprocessing: Preprocessing, n_classes: int) -> BackboneFacts:
        """Describe a timm ``model`` that will get an ``n_classes``-way head."""
        pre_logits = getattr(model, "pre_logits", None)
        extra = sum(p.numel() for p in pre_logits.parameters()) if isinstance(pre_logits, nn.Module) else 0
        return cls(
            name=name,
            input_size=preprocessing.input_size,
            stage_names=tuple(stage for stage, _ in backbone_stages(model)),
            head_parameters=(feature_dim(model) + 1) * n_classes + extra,
        )


@dataclass(frozen=True)
class Budget:
    """A time limit for the fit and the speeds measured on this machine.

    The estimate is the one cost model's (:func:`transferkit.selection.cost.fit_seconds`) over
    ``speeds`` (:class:`~transferkit.selection.cost.Speeds`: timed once per image side and shared
    with ``auto``'s search); without ``speeds``, one forward measurement
    (``images_per_second`` at ``measured_size``) scaled by the pixel count.

    Attributes
    ----------
    seconds : float
        Wall time the fit may take.
    images_per_second : float
        Forward-pass throughput of the backbone measured on this machine, at ``measured_size``.
    measured_size : int
        Image side of that measurement.
    epochs : int
        Epochs the network strategies would run (early stopping may end sooner).
    val_fraction : float
        Share of the images held out for validation (forward only).
    speeds : Speeds, optional
    """

    seconds: float
    images_per_second: float
    measured_size: int
    epochs: int = 10
    val_fraction: float = 0.15
    speeds: Speeds | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.seconds > 0 and self.images_per_second > 0 and self.measured_size > 0 and self.epochs >= 1):
            raise ConfigError(f"Budget expects positive seconds, speed, size and epochs. Received: {self}")

    def estimate(self, strategy: str, image_size: int, n_images: int, freeze: int | None, n_blocks: int) -> float:
        """Seconds a fit would take (:func:`~transferkit.selection.cost.fit_seconds`)."""
        speeds = self.speeds or Speeds.from_forward(self.images_per_second, self.measured_size)
        return fit_seconds(speeds, strategy, image_size, n_images, freeze, n_blocks, epochs=self.epochs, val_fraction=self.val_fraction)


BUDGET_SIZES = (192, 160, 128)
"""Smaller image sides the budget rule tries, largest first, before it falls back to ``svm``."""


@dataclass(frozen=True)
class RuleResult:
    """One step of the reasoning: a rule, whether it fired, and the numbers behind it."""

    name: str
    fired: bool
    detail: str


@dataclass(frozen=True)
class Recommendation:
    """What to train, and why.

    Attributes
    ----------
    strategy : {"svm", "head", "finetune", "full", "scratch"}
    backbone : str
    freeze : int or None
        Block stages frozen (with the stem) by ``finetune``; 0 for ``full`` and ``scratch``;
        None for ``svm``, which trains no layer of the network.
    lr : float or None
        Learning rate of the head; None for ``svm``.
    backbone_lr_factor : float or None
        The network's layers learn at ``lr * backbone_lr_factor``; None for ``svm``.
    augment : str
        Augmentation preset (``"none"`` for ``svm``: features are extracted once).
    image_size : int
        Side to train at.
    class_weight : {"balanced"} or None
    reasons : list of str
        One plain line per decision, naming the number that triggered it. After ``auto``'s
        search: the measurements that chose (the rules' own lines move to ``rule_reasons``).
    warnings : list of str
    rules : list of RuleResult
        Every rule, fired or not.
    proposed : str or None
        After ``auto``'s search: what the rules proposed before anything was measured
        (``"svm at 96 px"``), which the search may have overruled; None before a search.
    rule_reasons : list of str
        After ``auto``'s search: the rules' reasons for ``proposed``.
    """

    strategy: AdvisedStrategy
    backbone: str
    freeze: int | None
    lr: float | None
    backbone_lr_factor: float | None
    augment: str
    image_size: int
    class_weight: Literal["balanced"] | None = None
    symmetries: str = "none"
    feature_layers: str = "bottleneck"
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rules: list[RuleResult] = field(default_factory=list)
    proposed: str | None = None
    rule_reasons: list[str] = field(default_factory=list)

    def explanation(self, label: str) -> list[str]:
        """The lines that say why ``label`` was chosen, from this record alone (what ``fit``
        prints is what its JSON holds): the measured reasons under the choice, then the rules'
        proposal under its own heading, never as the reason for the choice."""
        if self.proposed is None:
            return [f"strategy auto -> {label}, because:", *(f"  - {r}" for r in self.reasons)]
        lines = [f"strategy auto -> {label}, chosen by measurement:", *(f"  - {r}" for r in self.reasons)]
        lines.append(f"before measuring, the rules proposed {self.proposed}:")
        lines += [f"  - {r}" for r in self.rule_reasons]
        return lines

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def recommend(
    facts: DataFacts,
    shift: DomainShift,
    thresholds: AdviceThresholds | None = None,
    *,
    backbone: BackboneFacts,
    budget: Budget | None = None,
) -> Recommendation:
    """Apply the playbook to the facts and the measured domain shift.

    Parameters
    ----------
    facts : DataFacts
        From :func:`transferkit.advise.data_facts`.
    shift : DomainShift
        Per-stage shift and ImageNet entropy of ``backbone`` on the data.
    thresholds : AdviceThresholds, optional
        Defaults to ``AdviceThresholds()``.
    backbone : BackboneFacts
        The backbone the recommendation is for.
    budget : Budget, optional
        A time limit: when the plan's estimated fit time exceeds it, train at a smaller image
        size, and failing that use ``svm`` (each step stated with its estimate).

    Returns
    -------
    Recommendation

    Examples
    --------
    >>> facts = DataFacts(n_samples=1968, n_classes=4, class_counts={"a": 984, "b": 984})
    >>> shift = DomainShift({"stem": 0.1, "stage1": 0.2, "stage2": 0.3}, imagenet_entropy=0.3)
    >>> lite0 = BackboneFacts("efficientnet_lite0", 224, ("stem", "stage1", "stage2", "stage3", "neck"), 5124)
    >>> advice = recommend(facts, shift, backbone=lite0)
    >>> advice.strategy, advice.freeze, advice.reasons[0]  # doctest: +NORMALIZE_WHITESPACE
    ('finetune', 3, '1,968 training images (>= 1,000): enough to fine-tune rather than only train an
    SVM on frozen features')
    """
    t = thresholds or AdviceThresholds()
    if not isinstance(t, AdviceThresholds):
        raise ConfigError(f"thresholds: expected an AdviceThresholds. Received: {type(t).__name__}")
    n = facts.n_samples
    rules: list[RuleResult] = []
    reasons: list[str] = []
    warnings: list[str] = []

    # 1. how much data: svm / finetune / full
    small, large = _data_size_rules(n, t, rules, reasons)
    # 2. how far from the pretraining data
    far_shift, far_entropy = _far_domain_rules(shift, t, rules, reasons)
    far = far_shift or far_entropy
    scratch = far and n >= t.min_scratch_samples
    rules.append(
        RuleResult(
            "scratch",
            scratch,
            f"far domain: {'yes' if far else 'no'}; {n:,} training images "
            f"{'>=' if n >= t.min_scratch_samples else '<'} {t.min_scratch_samples:,}",
        )
    )

    strategy = _choose_strategy(n, small=small, large=large, far=far, scratch=scratch, t=t, reasons=reasons, warnings=warnings)

    # 3. what to freeze, at what learning rate
    freeze = _freeze_rule(strategy, shift, t, far, backbone, rules, reasons)
    lr, factor = _learning_rate(strategy, reasons)

    # 4. at what size, with what weights, and what to watch out for
    image_size = _image_size_rule(facts, backbone, t, rules, reasons)
    class_weight = _imbalance_rule(facts, t, rules, reasons)
    _head_rule(facts, backbone, t, strategy, rules, warnings)
    _duplicates_rule(facts, t, rules, warnings)
    if budget is not None:
        strategy, image_size, freeze, lr, factor = _budget_rule(
            budget, facts, backbone, t, strategy, image_size, freeze, (lr, factor), rules, reasons, warnings
        )

    return Recommendation(
        strategy=strategy,
        backbone=backbone.name,
        freeze=freeze,
        lr=lr,
        backbone_lr_factor=factor,
        augment="none" if strategy == "svm" else "standard",
        image_size=image_size,
        class_weight=class_weight,
        reasons=reasons,
        warnings=warnings,
        rules=rules,
    )


def _data_size_rules(n: int, t: AdviceThresholds, rules: list[RuleResult], reasons: list[str]) -> tuple[bool, bool]:
    """Rules small_data and large_data: (fewer than small_data images, at least large_data)."""
    small = n < t.small_data
    large = n >= t.large_data
    rules.append(RuleResult("small_data", small, f"{n:,} training images {'<' if small else '>='} {t.small_data:,}"))
    rules.append(RuleResult("large_data", large, f"{n:,} training images {'>=' if large else '<'} {t.large_data:,}"))
    if small:
        reasons.append(
            f"{n:,} training images (< {t.small_data:,}): too few to fine-tune safely; train a linear "
            "SVM on the frozen bottleneck features"
        )
    else:
        reasons.append(
            f"{n:,} training images (>= {t.small_data:,}): enough to fine-tune rather than only train an "
            "SVM on frozen features"
        )
    return small, large


def _choose_strategy(
    n: int, *, small: bool, large: bool, far: bool, scratch: bool, t: AdviceThresholds, reasons: list[str], warnings: list[str]
) -> AdvisedStrategy:
    """The strategy the data size and the domain call for, with its reason."""
    if small:
        strategy: AdvisedStrategy = "svm"
        if far:
            warnings.append(
                f"the data is far from the pretraining data, but {n:,} images (< {t.small_data:,}) are too "
                "few to fine-tune: frozen features may transfer poorly; compare the LogME scores, and "
                "collect more data if accuracy falls short"
            )
    elif scratch:
        strategy = "scratch"
        reasons.append(
            f"far from the pretraining data and {n:,} training images (>= {t.min_scratch_samples:,}): "
            "enough to train from scratch, where pretrained features would only be a detour"
        )
    elif large:
        strategy = "full"
        reasons.append(f"{n:,} training images (>= {t.large_data:,}): enough to fine-tune every stage (full)")
    elif far:
        strategy = "finetune"
        reasons.append(
            f"far from the pretraining data, but {n:,} training images (< {t.min_scratch_samples:,}) are too "
            "few to train from scratch: fine-tune, unfreezing more layers than for a near domain, with augmentation"
        )
    else:
        strategy = "finetune"
        reasons.append(
            f"{n:,} training images (< {t.large_data:,}): fine-tune the later stages and keep the early "
            "ones frozen, with augmentation"
        )
    return strategy


def _far_domain_rules(
    shift: DomainShift, t: AdviceThresholds, rules: list[RuleResult], reasons: list[str]
) -> tuple[bool, bool]:
    score = shift.score
    far_shift = score is not None and score >= t.far_domain_shift
    if score is None:
        rules.append(RuleResult("far_domain_shift", False, "no BatchNorm statistics to compare with (not measured)"))
    else:
        sign = ">=" if far_shift else "<"
        detail = f"mean BatchNorm shift {score:.2f} {sign} {t.far_domain_shift:.2f}"
        rules.append(RuleResult("far_domain_shift", far_shift, detail))
        verdict = "far from" if far_shift else "close to"
        reasons.append(
            f"domain shift {score:.2f} ({sign} {t.far_domain_shift:.2f}): the images' activation statistics "
            f"are {verdict} those the backbone saw in pretraining"
        )

    entropy = shift.imagenet_entropy
    far_entropy = entropy is not None and entropy >= t.far_entropy
    if entropy is None:
        rules.append(RuleResult("far_domain_entropy", False, "no pretrained classifier (not measured)"))
    else:
        sign = ">=" if far_entropy else "<"
        detail = f"ImageNet entropy {entropy:.2f} {sign} {t.far_entropy:.2f}"
        rules.append(RuleResult("far_domain_entropy", far_entropy, detail))
        verdict = "look like none of" if far_entropy else "resemble some of"
        reasons.append(
            f"ImageNet prediction entropy {entropy:.2f} ({sign} {t.far_entropy:.2f}): the images {verdict} "
            "the pretraining classes"
        )
    return far_shift, far_entropy


def _freeze_rule(
    strategy: str,
    shift: DomainShift,
    t: AdviceThresholds,
    far: bool,
    backbone: BackboneFacts,
    rules: list[RuleResult],
    reasons: list[str],
) -> int | None:
    blocks = backbone.block_stages
    order = ["stem", *blocks]
    measured = [(name, shift.stage_shift[name]) for name in order if name in shift.stage_shift]
    first = next(((name, value) for name, value in measured if value >= t.freeze_shift), None)
    if first is None:
        leading = len(blocks)
        detail = f"no stage's shift reaches {t.freeze_shift:.2f}" if measured else "no per-stage shift measured"
    else:
        name, value = first
        leading = blocks.index(name) if name in blocks else 0
        detail = f"{name} is the first stage whose shift {value:.2f} >= {t.freeze_shift:.2f}"
    rules.append(RuleResult("freeze_depth", first is not None, detail))

    if strategy == "svm":
        reasons.append("svm: every layer stays frozen; the bottleneck features are extracted once")
        return None
    if strategy in ("full", "scratch"):
        reasons.append(f"{strategy}: no stage is frozen (freeze 0)")
        return 0
    cap = min(t.max_freeze_far if far else t.max_freeze, len(blocks))
    freeze = min(leading, cap)
    frozen = "nothing" if freeze == 0 else ", ".join(["stem", *blocks[:freeze]])
    limit = f"at most {cap} stage{'' if cap == 1 else 's'} for a {'far' if far else 'near'} domain"
    reasons.append(f"freeze {freeze} ({frozen}): {detail}; {limit}")
    return freeze


def _learning_rate(strategy: str, reasons: list[str]) -> tuple[float | None, float | None]:
    if strategy == "svm":
        reasons.append("no learning rate: the SVM's regularisation C is chosen by cross-validation")
        return None, None
    if strategy == "scratch":
        reasons.append(f"learning rate {HEAD_LR:g} for every layer (x1.0): there are no pretrained weights to preserve")
        return HEAD_LR, 1.0
    reasons.append(
        f"learning rate {HEAD_LR:g} for the new head and {HEAD_LR * PLAYBOOK_LR_FACTOR:g} "
        f"(x{PLAYBOOK_LR_FACTOR:g}) for the pretrained layers, so fine-tuning adjusts them rather than "
        "overwriting them (the playbook's rule: fit --strategy auto measures it against x1 in a short pilot)"
    )
    return HEAD_LR, PLAYBOOK_LR_FACTOR


def _image_size_rule(
    facts: DataFacts, backbone: BackboneFacts, t: AdviceThresholds, rules: list[RuleResult], reasons: list[str]
) -> int:
    side = facts.median_side
    small = 0 < side < backbone.input_size
    sign = "<" if small else ">="
    rules.append(
        RuleResult("small_images", small, f"median image side {side:g} px {sign} {backbone.input_size} (input size)")
    )
    if not small:
        return backbone.input_size
    size = min(backbone.input_size, max(t.min_image_size, math.ceil(side)))
    reasons.append(
        f"median image side {side:g} px (< {backbone.input_size}, the backbone's input size): train at "
        f"{size} px (the images' own size, at least {t.min_image_size}), "
        f"{(backbone.input_size / size) ** 2:.0f}x less compute per image (a rule of thumb, not measured: "
        "fit --strategy auto measures frozen features at the backbone's size and a trained network at the "
        "sizes its budget affords)"
    )
    return size


def _imbalance_rule(facts: DataFacts, t: AdviceThresholds, rules: list[RuleResult], reasons: list[str]) -> str | None:
    fired = facts.imbalance >= t.imbalance
    sign = ">=" if fired else "<"
    detail = f"largest / smallest class {facts.imbalance:.1f} {sign} {t.imbalance:g}"
    rules.append(RuleResult("imbalance", fired, detail))
    if not fired:
        return None
    reasons.append(
        f"class imbalance {facts.imbalance:.1f} (>= {t.imbalance:g}, largest / smallest class): weight the "
        "classes (class_weight='balanced') so the small ones count"
    )
    return "balanced"


def _head_rule(
    facts: DataFacts,
    backbone: BackboneFacts,
    t: AdviceThresholds,
    strategy: str,
    rules: list[RuleResult],
    warnings: list[str],
) -> None:
    limit = t.head_parameters_per_sample * facts.n_samples
    fired = backbone.head_parameters >= limit
    per_sample = backbone.head_parameters / max(facts.n_samples, 1)
    rules.append(
        RuleResult(
            "head_overfitting",
            fired,
            f"{backbone.head_parameters:,} head parameters, {per_sample:,.1f} per training image "
            f"{'>=' if fired else '<'} {t.head_parameters_per_sample:g}",
        )
    )
    if fired:
        advice = "keep the SVM's C small" if strategy == "svm" else "use dropout, weight decay and early stopping"
        warnings.append(
            f"the classifier has {backbone.head_parameters:,} fully connected parameters for {facts.n_samples:,} "
            f"images ({per_sample:,.0f} per image, >= {t.head_parameters_per_sample:g}): it can memorise the "
            f"training set; {advice}"
        )


def _duplicates_rule(facts: DataFacts, t: AdviceThresholds, rules: list[RuleResult], warnings: list[str]) -> None:
    fired = t.duplicates > 0 and facts.duplicates >= t.duplicates
    rules.append(
        RuleResult(
            "duplicates",
            fired,
            f"{facts.duplicates:,} exact duplicates ({facts.conflicting_duplicates:,} with conflicting labels) "
            f"{'>=' if fired else '<'} {t.duplicates:,}",
        )
    )
    if not fired:
        return
    pairs = facts.duplicate_examples
    example = f", e.g. {pairs[0][0]} = {pairs[0][1]}" if pairs else ""
    warnings.append(
        f"{facts.duplicates:,} images are exact copies of others{example}: they can land on both sides of a "
        "train/test split and inflate the score; remove them"
    )
    if facts.conflicting_duplicates:
        warnings.append(
            f"{facts.conflicting_duplicates:,} groups of identical images carry different labels: check the labels"
        )


def _budget_rule(
    budget: Budget,
    facts: DataFacts,
    backbone: BackboneFacts,
    t: AdviceThresholds,
    strategy: str,
    image_size: int,
    freeze: int | None,
    rates: tuple[float | None, float | None],
    rules: list[RuleResult],
    reasons: list[str],
    warnings: list[str],
) -> tuple[str, int, int | None, float | None, float | None]:
    n, blocks = facts.n_samples, len(backbone.block_stages)
    minutes = budget.seconds / 60
    planned = budget.estimate(strategy, image_size, n, freeze, blocks)
    speed = f"{budget.images_per_second:.0f} images/s forward at {budget.measured_size} px measured here"
    fired = planned > budget.seconds
    rules.append(RuleResult("time_budget", fired, f"{strategy} at {image_size} px: ~{planned / 60:.1f} min "
                                                  f"{'>' if fired else '<='} budget {minutes:.3g} min ({speed})"))
    if not fired:
        reasons.append(f"time budget {minutes:.3g} min: {strategy} at {image_size} px should take ~{planned / 60:.1f} min ({speed})")
        return strategy, image_size, freeze, *rates
    if strategy != "svm":
        for size in (s for s in BUDGET_SIZES if t.min_image_size <= s < image_size):
            estimate = budget.estimate(strategy, size, n, freeze, blocks)
            if estimate <= budget.seconds:
                reasons.append(
                    f"time budget {minutes:.3g} min: {strategy} at {image_size} px would take ~{planned / 60:.1f} min "
                    f"({speed}); at {size} px ~{estimate / 60:.1f} min, so train at {size} px"
                )
                return strategy, size, freeze, *rates
    size = backbone.input_size if strategy != "svm" else image_size
    estimate = budget.estimate("svm", size, n, None, blocks)
    if strategy != "svm":
        smallest = min([image_size, *(s for s in BUDGET_SIZES if t.min_image_size <= s < image_size)])
        reasons.append(
            f"time budget {minutes:.3g} min: {strategy} would take ~{planned / 60:.1f} min at {image_size} px and "
            f"~{budget.estimate(strategy, smallest, n, freeze, blocks) / 60:.1f} min even at {smallest} px ({speed}); "
            f"a linear SVM on frozen bottleneck features at {size} px needs ~{estimate / 60:.1f} min, so svm "
            "(raise the budget to fine-tune)"
        )
    if estimate > budget.seconds:
        warnings.append(f"even svm needs ~{estimate / 60:.1f} min here, more than the budget of {minutes:.3g} min")
    return "svm", size, None, None, None
