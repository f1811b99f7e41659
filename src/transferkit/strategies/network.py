"""Strategies that train (part of) the network: which stages freeze, which learning rates.

=========  ==========  =====================  ====================================
strategy   weights     frozen                 learning rates
=========  ==========  =====================  ====================================
head       pretrained  every backbone stage   head at lr
finetune   pretrained  stem + first N stages  head at lr, the rest at lr * factor
full       pretrained  nothing                head at lr, the rest at lr * factor
scratch    random      nothing                everything at lr
=========  ==========  =====================  ====================================

``factor`` is ``backbone_lr_factor`` (default 0.1: the playbook's "about 10x smaller than
for scratch training").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferkit.backbones import backbone_stages
from transferkit.errors import ConfigError
from transferkit.strategies.freezing import freeze, trainable_parameter_count

NETWORK_STRATEGIES: tuple[str, ...] = ("head", "finetune", "full", "scratch")

DEFAULT_FREEZE = 3
"""Stages frozen by ``finetune`` unless the user says otherwise (see docs/ARCHITECTURE.md)."""


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
        return (
            f"{self.strategy}: frozen {frozen}; training {self.trainable_parameters:,} of "
            f"{self.total_parameters:,} parameters (pretrained layers at lr x {self.backbone_lr_factor:g})"
        )


def uses_pretrained_weights(strategy: str) -> bool:
    return strategy != "scratch"


def configure_network(
    model: nn.Module, strategy: str, *, freeze_stages: int | None, backbone_lr_factor: float
) -> tuple[list[nn.Parameter], list[nn.Parameter], NetworkPlan]:
    """Freeze the stages ``strategy`` asks for and split parameters into head and backbone.

    Returns ``(head_parameters, backbone_parameters, plan)``; the two lists are the
    optimiser's learning-rate groups.
    """
    if strategy not in NETWORK_STRATEGIES:
        raise ConfigError(f"unknown network strategy; expected one of {', '.join(NETWORK_STRATEGIES)}. Received: strategy={strategy!r}")
    stages = backbone_stages(model)
    block_stages = [name for name, _ in stages if name.startswith("stage")]

    if strategy == "head":
        frozen = [name for name, _ in stages]
    elif strategy == "finetune":
        n = DEFAULT_FREEZE if freeze_stages is None else freeze_stages
        if not 0 <= n <= len(block_stages):
            raise ConfigError(
                f"freeze must be between 0 and {len(block_stages)} (the number of stages of this backbone). Received: freeze={n}"
            )
        frozen = ["stem", *block_stages[:n]] if n > 0 else []
    else:
        if freeze_stages not in (None, 0):
            raise ConfigError(f"strategy {strategy!r} trains every layer; freeze does not apply. Received: freeze={freeze_stages}")
        frozen = []
    freeze(module for name, modules in stages if name in frozen for module in modules)

    factor = 1.0 if strategy == "scratch" else backbone_lr_factor
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    plan = NetworkPlan(
        strategy=strategy,
        frozen_stages=tuple(frozen),
        trainable_stages=tuple(name for name, _ in stages if name not in frozen),
        trainable_parameters=trainable_parameter_count(model),
        total_parameters=sum(p.numel() for p in model.parameters()),
        backbone_lr_factor=factor,
    )
    return head, backbone, plan
