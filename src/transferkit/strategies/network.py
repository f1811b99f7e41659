"""Strategies that train (part of) the network: which stages freeze, which learning rates.

=========  ==========  =====================  ====================================
strategy   weights     frozen                 learning rates
=========  ==========  =====================  ====================================
head       pretrained  every backbone stage   head at lr
finetune   pretrained  stem + first N stages  head at lr, the rest at lr * factor
full       pretrained  nothing                head at lr, the rest at lr * factor
scratch    random      nothing                everything at lr
=========  ==========  =====================  ====================================

``factor`` is ``backbone_lr_factor``: ``"auto"`` is :data:`PLAYBOOK_LR_FACTOR` (0.1, the
playbook's "about 10x smaller than for scratch training") for a strategy the user names; under
strategy ``auto`` a short pilot measures it against 1 (``selection/auto.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from transferkit.backbones import backbone_stages, create_backbone
from transferkit.data import pixel_groups
from transferkit.errors import ConfigError, DataError
from transferkit.strategies.features import FeatureExtractor, pooled_features
from transferkit.training.freezing import freeze, trainable_parameter_count
from transferkit.strategies.registry import (
    FitOutcome, FitRequest, FoldFit, Strategy, decision_probabilities, get_strategy, register_strategy,
)
from transferkit.training.augment import build_augmentation
from transferkit.training.callbacks import Checkpoint
from transferkit.training.inputs import TrainData, pixels_to_tensor, predict_logits, to_model_input
from transferkit.training.runtime import fastest_training_precision
from transferkit.training.loop import TrainConfig, train_model
from transferkit.training.regularize import resolve_regularization

DEFAULT_FREEZE = 3
"""Stages frozen by ``finetune`` unless the user or the advisor says otherwise (see docs/ARCHITECTURE.md)."""


@dataclass(frozen=True)
class NetworkPlan:
    """What :func:`configure_network` did, for logs and the model's config.json."""

    strategy: str
    frozen_stages: tuple[str, ...]
    trainable_stages: tuple[str, ...]
    trainable_parameters: int
    total_parameters: int
    backbone_lr_factor: float

    def describe(self) -> str:
        frozen = ", ".join(self.frozen_stages) or "nothing"
        head_only = self.trainable_stages in ((), ("head",))
        rates = "the new head only" if head_only else f"pretrained layers at lr x {self.backbone_lr_factor:g}"
        return (
            f"{self.strategy}: frozen {frozen}; training {self.trainable_parameters:,} of "
            f"{self.total_parameters:,} parameters ({rates})"
        )


PLAYBOOK_LR_FACTOR = 0.1
"""Pretrained layers learn this much slower than the new head: adjust them, do not overwrite
(the playbook's rule; ``auto`` measures it against 1 in a pilot before it trains a network)."""


def lr_factor_value(backbone_lr_factor: float | str) -> float:
    """``backbone_lr_factor`` as a number: ``"auto"`` is :data:`PLAYBOOK_LR_FACTOR`."""
    return PLAYBOOK_LR_FACTOR if backbone_lr_factor == "auto" else float(backbone_lr_factor)


class NetworkStrategy(Strategy):
    """Trains (part of) the network with the epoch loop; subclasses say which stages freeze."""

    def frozen_stages(self, stages: list[str], freeze_stages: int | None) -> list[str]:
        """Names of the stages (of ``stages``, input side first) that get no gradient."""
        if freeze_stages not in (None, 0):
            raise ConfigError(f"strategy {self.name!r} trains every layer; freeze does not apply. Received: freeze={freeze_stages}")
        return []

    def lr_factor(self, backbone_lr_factor: float) -> float:
        """Learning-rate multiplier of the pretrained layers relative to the head's."""
        return backbone_lr_factor

    def fit(self, request: FitRequest) -> FitOutcome:
        params, targets, classes = request.params, request.targets, request.classes
        if request.validation is not None:
            train_idx, val_idx = np.arange(len(targets)), np.arange(0)
        else:
            train_idx, val_idx = _split(request.strata, targets, params["val_fraction"], params["seed"])
            train_idx, val_idx = _copies_together(pixel_groups(request.pixels), train_idx, val_idx)
        n_val = len(val_idx) if request.validation is None else len(request.validation[1])
        request.console.print(f"training on {len(train_idx)}, validating on {n_val}")
        setting = resolve_regularization(params.get("regularization", "auto"))
        model, preprocessing = create_backbone(
            params["backbone"], num_classes=len(classes), pretrained=self.pretrained,
            weights_path=params["weights"] if self.pretrained else None, drop_rate=params["dropout"],
            drop_path_rate=setting.drop_path_rate,
        )
        probe = None
        if self.pretrained and params["head_init"] == "probe":
            probe = probe_head(model, request.subset(train_idx), preprocessing)
            request.console.print(probe.describe() if probe else "head starts at random: a class has no training image, "
                                  "so the linear probe would have no row for it")
        head, backbone, plan = configure_network(
            model, self.name, freeze_stages=request.settings.freeze,
            backbone_lr_factor=lr_factor_value(params["backbone_lr_factor"]),
        )
        request.console.print(plan.describe())
        class_weights = None
        if request.settings.class_weight == "balanced":
            class_weights = torch.as_tensor(compute_class_weight("balanced", classes=np.arange(len(classes)), y=targets[train_idx]))
        config = TrainConfig(
            epochs=params["epochs"], lr=params["lr"], backbone_lr_factor=plan.backbone_lr_factor,
            weight_decay=params["weight_decay"], batch_size=params["batch_size"], patience=params["patience"],
            label_smoothing=params["label_smoothing"], seed=params["seed"], prefix_views=params["prefix_views"],
            regularization=setting, balanced_sampling=params.get("sampling", "auto") == "balanced",
        )
        pixels = request.pixels
        validation = request.validation or ((pixels[val_idx], targets[val_idx]) if len(val_idx) else None)
        data = TrainData(
            train=(pixels[train_idx], targets[train_idx]),
            val=validation,
            preprocessing=preprocessing,
            augment=build_augmentation(params["augment"]),
            class_weights=class_weights,
            pooled_features=self.shared_features(request),
        )
        callbacks = list(request.callbacks)
        if params["checkpoint_dir"]:
            callbacks.append(Checkpoint(params["checkpoint_dir"], resume=params["resume"], fingerprint=request.fingerprint))
        runtime = _training_runtime(request, model, preprocessing, data)
        result = train_model(model, (head, backbone), data, config=config, runtime=runtime, callbacks=callbacks, verbose=params["verbose"])
        preset = params.get("regularization", "auto")
        history = {**result.to_dict(), "regularization": {"preset": "none" if preset == "auto" else preset, **setting.to_dict()},
                   "sampling": "balanced" if config.balanced_sampling else "shuffle", "precision": runtime.precision, "precision_why": runtime.precision_reason,
                   "precision_measured": runtime.measured, "head_init": probe.to_dict() if probe else "random"}
        return FitOutcome(model=model, preprocessing=preprocessing, history=history, plan=plan,
                          held_out=np.sort(val_idx) if len(val_idx) else None)

    def shared_features(self, request: FitRequest):
        """A cached bottleneck-feature function the frozen-prefix path may reuse (``head`` only)."""
        return None

    def score(self, request: FitRequest, train: np.ndarray, test: np.ndarray) -> FoldFit:
        """Train on the training part, stopping early on the test part, and keep the network.

        The score is the restored best epoch's accuracy on the test part, which also chose that
        epoch: a slightly optimistic number (the search asks a network to win by a margin). The
        fitted network is kept in the result, so that when it wins the search it is the model,
        with no second training.
        """
        started = time.perf_counter()
        train, test = np.sort(train), np.sort(test)
        validation = (request.pixels[test], request.targets[test])
        outcome = self.fit(request.subset(train, validation=validation))
        logits = predict_logits(outcome.model, validation[0], outcome.preprocessing, request.runtime)
        probabilities = decision_probabilities(logits.numpy(), np.arange(len(request.classes)), len(request.classes))
        predictions = probabilities.argmax(1)
        stopped = next((getattr(c, "reason", None) for c in request.callbacks if getattr(c, "stopped", False)), None)
        if len(outcome.history.get("history") or []) >= request.params["epochs"]:
            stopped = None  # every planned epoch ran: whatever a callback said, nothing was cut short
        return FoldFit(accuracy=float((predictions == validation[1]).mean()), seconds=time.perf_counter() - started,
                       predictions=predictions, probabilities=probabilities, outcome=outcome, stopped=stopped)


@register_strategy
class Head(NetworkStrategy):
    name = "head"
    summary = "only the new K-class layer (frozen BN in eval)"
    frozen_backbone = True
    compare_defaults = MappingProxyType({"image_size": 160, "epochs": 5, "augment": "light", "prefix_views": 2})

    def frozen_stages(self, stages: list[str], freeze_stages: int | None) -> list[str]:
        return list(stages)

    def passes_per_image(self, freeze: int | None, n_blocks: int) -> float:
        return 1.0

    def shared_features(self, request: FitRequest):
        # head on cached views reads and writes the bottleneck-feature cache of svm
        if request.params["prefix_views"] == 0:
            return None
        return FeatureExtractor.from_params(request.params, request.runtime).transform


@register_strategy
class Finetune(NetworkStrategy):
    name = "finetune"
    summary = "stages after the first --freeze N, at lr x 0.1; head at lr"
    accepts_freeze = True
    compare_defaults = MappingProxyType({"image_size": 128, "epochs": 4, "prefix_views": 2})

    def frozen_stages(self, stages: list[str], freeze_stages: int | None) -> list[str]:
        blocks = [name for name in stages if name.startswith("stage")]
        n = DEFAULT_FREEZE if freeze_stages is None else freeze_stages
        if not 0 <= n <= len(blocks):
            raise ConfigError(
                f"freeze must be between 0 and {len(blocks)} (the number of stages of this backbone). Received: freeze={n}"
            )
        return ["stem", *blocks[:n]] if n > 0 else []


@register_strategy
class Full(NetworkStrategy):
    name = "full"
    summary = "everything, pretrained layers at lr x 0.1"
    compare_defaults = MappingProxyType({"image_size": 128, "epochs": 4})


@register_strategy
class Scratch(NetworkStrategy):
    name = "scratch"
    summary = "everything from random weights at lr"
    pretrained = False
    compare_defaults = MappingProxyType({"image_size": 128, "epochs": 6, "lr": 3e-3})

    def lr_factor(self, backbone_lr_factor: float) -> float:
        return 1.0  # no pretrained layers: every layer trains at the head's rate


@dataclass(frozen=True)
class HeadProbe:
    """The linear probe a network's new head started from (:func:`probe_head`)."""

    C: float
    train_accuracy: float
    images: int
    seconds: float

    def describe(self) -> str:
        return (f"head starts from a linear probe (logistic regression, C={self.C:g}) on the network's own features "
                f"of {self.images} training images: train accuracy {self.train_accuracy:.3f}, {self.seconds:.1f} s")

    def to_dict(self) -> dict:
        return {"init": "probe", "C": self.C, "train_accuracy": self.train_accuracy, "images": self.images, "seconds": self.seconds}


def probe_head(model: nn.Module, request: FitRequest, preprocessing) -> HeadProbe | None:
    """Start ``model``'s new K-class head from a linear probe: linear probing, then fine-tuning.

    LP-FT (Kumar et al., ICLR 2022): a randomly initialised head sends large, random gradients
    into the pretrained layers during the first steps and distorts the features before the
    head is any good; a head that starts as the best linear classifier on those features lets
    training refine them instead, and spends none of a short schedule on learning the head.
    The probe is the ``logistic`` strategy's classifier (C from ``request.params["C"]``, by
    inner CV when "auto"; the class weights of the fit) on the pooled features that feed the
    head -- the network itself in eval mode, at the training size, without augmentation: one
    forward pass over ``request.pixels`` (N, H, W, C) uint8 -- folded into the head's weights
    (:func:`~transferkit.strategies.linear.fold_into_head`). Replaces the head module, so call it
    before the optimiser's parameter groups are built. None (head left random) when a class has
    no training image: the probe has no row for it.
    """
    from transferkit.strategies.linear import fit_linear_classifier, fold_into_head

    n_classes, targets = len(request.classes), request.targets
    if len(np.unique(targets)) < n_classes:
        return None
    started = time.perf_counter()
    features = predict_logits(model, request.pixels, preprocessing, request.runtime, forward=pooled_features).numpy()
    params = request.params
    pipeline, info = fit_linear_classifier(
        features, targets, pixel_groups(request.pixels), strategy="logistic",
        C=None if params["C"] == "auto" else params["C"], seed=params["seed"], class_weight=request.settings.class_weight,
    )
    fold_into_head(model, pipeline, n_classes)
    accuracy = float((pipeline.predict(features) == targets).mean())
    return HeadProbe(C=float(info["C"]), train_accuracy=accuracy, images=len(targets), seconds=time.perf_counter() - started)


def configure_network(
    model: nn.Module, strategy: str, *, freeze_stages: int | None, backbone_lr_factor: float
) -> tuple[list[nn.Parameter], list[nn.Parameter], NetworkPlan]:
    """Freeze the stages ``strategy`` asks for and split parameters into head and backbone.

    Returns ``(head_parameters, backbone_parameters, plan)``; the two lists are the
    optimiser's learning-rate groups.
    """
    entry = get_strategy(strategy)
    if not isinstance(entry, NetworkStrategy):
        raise ConfigError(f"configure_network expected a strategy that trains the network. Received: strategy={strategy!r}")
    stages = backbone_stages(model)
    frozen = entry.frozen_stages([name for name, _ in stages], freeze_stages)
    freeze(module for name, modules in stages if name in frozen for module in modules)

    head_ids = {id(p) for p in model.get_classifier().parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    plan = NetworkPlan(
        strategy=strategy,
        frozen_stages=tuple(frozen),
        trainable_stages=tuple(name for name, _ in stages if name not in frozen),
        trainable_parameters=trainable_parameter_count(model),
        total_parameters=sum(p.numel() for p in model.parameters()),
        backbone_lr_factor=entry.lr_factor(backbone_lr_factor),
    )
    return head, backbone, plan


def _split(strata: np.ndarray | None, targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted stratified train/validation indices; by strata (e.g. label + cell type) when each has 2+.

    Sorted so a memmap is read in order; the loader shuffles anyway.
    """
    indices = np.arange(len(targets))
    if val_fraction == 0:
        return indices, indices[:0]
    strata = targets if strata is None else np.asarray(strata)
    if np.unique(strata, return_counts=True)[1].min() < 2:
        strata = targets
    n_val = max(len(np.unique(targets)), int(round(val_fraction * len(targets))))
    try:
        train, val = train_test_split(indices, test_size=n_val, stratify=strata, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot make a stratified validation split of {n_val} images from {len(targets)} "
            f"({exc}); add images, lower val_fraction, or set val_fraction=0."
        ) from exc
    return np.sort(train), np.sort(val)


def _copies_together(groups: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the training copies of validation images into the validation part: a copy the model
    trains on is no validation (the held-out accuracy and early stopping would see it)."""
    copied = np.isin(groups[train], groups[val])
    if not copied.any() or copied.all():
        return train, val
    return train[~copied], np.sort(np.concatenate([val, train[copied]]))


def _training_runtime(request: FitRequest, model: nn.Module, preprocessing, data: TrainData):
    """The request's runtime, with bf16 on a CPU kept only where it measured faster for training."""
    batch = data.train[0][: max(2, min(8, len(data.train[0])))]
    inputs = to_model_input(pixels_to_tensor(batch), preprocessing, request.runtime)
    runtime = fastest_training_precision(request.runtime, request.runtime.prepare_model(model), inputs)
    if runtime.measured:
        seconds, n = runtime.measured["training_step_seconds"], runtime.measured["images"]
        # name the batch: these are a few images, not the training batch, so img/s is the comparable figure
        request.console.print(
            f"precision for training: {runtime.precision} (forward + backward of {n} images: "
            f"fp32 {seconds['fp32']:.2f} s = {n / seconds['fp32']:.0f} img/s, bf16 {seconds['bf16']:.2f} s = {n / seconds['bf16']:.0f} img/s)"
        )
    return runtime
