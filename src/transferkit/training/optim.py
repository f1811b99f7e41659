"""The optimiser and its learning-rate schedule.

Up to four parameter groups: two learning rates (the new head at ``lr``, pretrained layers at
``lr * backbone_lr_factor``) times two weight decays (none on biases and normalisation
weights, the rule of timm's ``param_groups_weight_decay`` and nanoGPT's ``configure_optimizers``:
decaying them pulls a layer's scale or offset towards zero and only hurts).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


def param_groups_weight_decay(parameters: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """The trainable ``parameters`` in two groups: matrices and kernels decay, vectors (``ndim <= 1``) do not."""
    trainable = [p for p in parameters if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(head: list[nn.Parameter], backbone: list[nn.Parameter], config) -> torch.optim.Optimizer:
    """AdamW: the new head at ``config.lr``, pretrained layers at ``lr * backbone_lr_factor``.

    Each group's ``name`` says which learning rate it has (``head`` or ``backbone``); within a
    name, one group decays by ``config.weight_decay`` and one does not.
    """
    groups = []
    for name, parameters, lr in (
        ("head", head, config.lr),
        ("backbone", backbone, config.lr * config.backbone_lr_factor),
    ):
        for group in param_groups_weight_decay(parameters, config.weight_decay):
            groups.append({**group, "name": name, "lr": lr, "initial_lr": lr})
    return torch.optim.AdamW(groups)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_epochs: float, epochs: int, steps_per_epoch: int):
    """Per-step :func:`warmup_cosine` over the whole run."""
    total_steps = steps_per_epoch * epochs
    warmup_steps = max(1, int(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps))
