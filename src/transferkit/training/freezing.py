"""Freezing helpers in the spirit of Lightning's ``BaseFinetuning``.

A frozen module gets no gradient *and* its BatchNorm layers stay in eval mode, so their
running statistics keep the pretrained values. Leaving frozen BatchNorm in train mode is the
best-known way to lose accuracy in transfer learning (keras #11590, Lightning #19996): the
running statistics drift towards the new data while the affine weights that were tuned for the
old statistics stay fixed.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)


def freeze(modules: Iterable[nn.Module]) -> None:
    """Stop gradients for every parameter of ``modules``."""
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def unfreeze(modules: Iterable[nn.Module]) -> None:
    """Let every parameter of ``modules`` train again."""
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(True)


def is_frozen(module: nn.Module) -> bool:
    """A module is frozen when it has parameters and none of them trains."""
    parameters = list(module.parameters())
    return bool(parameters) and not any(p.requires_grad for p in parameters)


def train_mode(model: nn.Module) -> nn.Module:
    """Put ``model`` in train mode, but keep every frozen BatchNorm layer in eval mode.

    Call this instead of ``model.train()``. Which layers are frozen is read from
    ``requires_grad``, so the rule holds whatever froze them.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, _BATCHNORM) and is_frozen(module):
            module.eval()
    return model


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
