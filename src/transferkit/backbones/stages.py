"""The stages of a backbone: ``stem``, ``stage1`` ... ``stageN``, ``neck``, the units of freezing.

They come from timm's own grouping (``model.group_matcher(coarse=True)``, the same groups
timm's layer-wise learning-rate decay uses), so any timm model works without a table per
architecture. timm folds trailing layers marked "belongs to the previous group" (EfficientNet's
``conv_head``/``bn2``, a ViT's final ``norm``) into the last block group; here they become
the ``neck``, together with any layer timm leaves unmatched that is not the classifier.

Splitting a network at a stage boundary (:func:`frozen_prefix_depth`, :func:`prefix_forward`,
:class:`Suffix`, used by the frozen-prefix cache of :mod:`transferkit.training.prefix`) needs
its forward pass, so it is the one architecture-specific part: timm's EfficientNet family
(EfficientNet-Lite included). Other models report "cannot split" and train the plain way.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from transferkit.backbones.multilayer import inner_network
from transferkit.backbones.weights import classifier_prefixes
from transferkit.errors import BackboneError

# timm's MATCH_PREV_GROUP: the ordinal suffix meaning "same group as the one before"
_MATCH_PREVIOUS = 99999.0
_UNMATCHED = (math.inf,)
_CLASSIFIER = "classifier"

OrdinalKey = tuple[float, ...]


def backbone_stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Split a timm model into its ordered freezable stages, classifier excluded.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model (it must have ``group_matcher`` and ``get_classifier``), or a
        :class:`~transferkit.backbones.multilayer.StagePooledNetwork` (the stages of the
        network it wraps).

    Returns
    -------
    list of (str, list of torch.nn.Module)
        ``[("stem", [...]), ("stage1", [...]), ..., ("stageN", [...]), ("neck", [...])]``,
        input side first; ``stem`` and ``neck`` appear when the architecture has them. Each
        list holds the largest sub-modules lying wholly in that stage, so every parameter
        outside the classifier is in exactly one stage (parameters held directly by the
        model, like a ViT's ``cls_token``, come in a small holder module sharing them).

    Examples
    --------
    >>> import timm
    >>> [name for name, _ in backbone_stages(timm.create_model("tf_efficientnet_lite0"))]
    ['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'stage5', 'stage6', 'stage7', 'neck']
    """
    model = inner_network(model)  # multi-layer features: the stages are the wrapped network's
    if not callable(getattr(model, "group_matcher", None)) or not callable(getattr(model, "get_classifier", None)):
        raise BackboneError(
            f"backbone_stages expected a timm model (with group_matcher and get_classifier). "
            f"Received: {type(model).__name__}"
        )
    labels = _parameter_labels(model)
    modules = _whole_modules(model, labels)
    order = sorted({label for label in labels.values() if label != _CLASSIFIER}, key=_stage_order)
    return [(label, modules[label]) for label in order]


def _stage_order(label: str) -> tuple[int, int]:
    if label == "stem":
        return (0, 0)
    if label == "neck":
        return (2, 0)
    return (1, int(label.removeprefix("stage")))


def _parameter_labels(model: nn.Module) -> dict[str, str]:
    """Map every parameter name to its stage (or to the classifier)."""
    key_of, stem_ordinal = _ordinal_function(model.group_matcher(coarse=True))
    head = classifier_prefixes(model)
    keys = {name: _CLASSIFIER if name.startswith(head) else key_of(name) for name, _ in model.named_parameters()}

    block_keys = sorted({k for k in keys.values() if k != _CLASSIFIER and k != _UNMATCHED and k[0] != stem_ordinal})
    regular = [k for k in block_keys if k[-1] != _MATCH_PREVIOUS]
    label_of: dict[OrdinalKey, str] = {}
    stage = 0
    for key in block_keys:
        if key[-1] != _MATCH_PREVIOUS or stage == 0:
            stage += 1
            label_of[key] = f"stage{stage}"
        elif regular and key > regular[-1]:
            label_of[key] = "neck"  # trailing layers after the last block group
        else:
            label_of[key] = f"stage{stage}"

    def label(key: OrdinalKey | str) -> str:
        if key == _CLASSIFIER:
            return _CLASSIFIER
        if key == _UNMATCHED:
            return "neck"
        if key[0] == stem_ordinal:
            return "stem"
        return label_of[key]

    return {name: label(key) for name, key in keys.items()}


def _ordinal_function(matcher: dict | Callable) -> tuple[Callable[[str], OrdinalKey], float | None]:
    """Turn a timm group matcher into name -> ordinal key, as ``timm.models.group_with_matcher`` does.

    Also returns the ordinal of the stem group (None if the matcher has none).
    """
    if callable(matcher):
        # callable matchers (Inception, CaiT) give 0 to the stem and inf to the rest

        def from_callable(name: str) -> OrdinalKey:
            ordinal = matcher(name)
            return tuple(float(o) for o in ordinal) if isinstance(ordinal, (tuple, list)) else (float(ordinal),)

        return from_callable, 0.0
    compiled = []
    stem_ordinal = None
    for ordinal, (group, spec) in enumerate(matcher.items()):
        if group == "stem":
            stem_ordinal = float(ordinal)
        if spec is None:
            continue
        for pattern, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
            compiled.append((re.compile(pattern), float(ordinal), suffix))

    def from_dict(name: str) -> OrdinalKey:
        for pattern, ordinal, suffix in compiled:
            match = pattern.match(name)
            if match:
                captures = tuple(float(g) for g in match.groups() if g is not None)
                return (ordinal, *captures, *(float(s) for s in suffix or ()))
        return _UNMATCHED

    return from_dict, stem_ordinal


class _SharedParameters(nn.Module):
    """Holds parameters that belong to the model itself (no sub-module), shared not copied."""

    def __init__(self, parameters: dict[str, nn.Parameter]) -> None:
        super().__init__()
        for name, parameter in parameters.items():
            self.register_parameter(name.replace(".", "_"), parameter)


def _whole_modules(model: nn.Module, labels: dict[str, str]) -> dict[str, list[nn.Module]]:
    """For each stage, the largest sub-modules whose parameters all lie in that stage."""
    subtree_labels: dict[str, set[str]] = defaultdict(set)
    for name, label in labels.items():
        parts = name.split(".")
        for depth in range(1, len(parts)):
            subtree_labels[".".join(parts[:depth])].add(label)

    modules: dict[str, list[nn.Module]] = defaultdict(list)
    covered: set[str] = set()
    for name, module in model.named_modules():
        if not name or _has_ancestor_in(name, covered):
            continue
        found = subtree_labels.get(name, set())
        if len(found) == 1 and _CLASSIFIER not in found:
            modules[next(iter(found))].append(module)
            covered.add(name)

    loose: dict[str, dict[str, nn.Parameter]] = defaultdict(dict)
    for name, parameter in model.named_parameters():
        if labels[name] != _CLASSIFIER and not _has_ancestor_in(name, covered):
            loose[labels[name]][name] = parameter
    for label, parameters in loose.items():
        modules[label].insert(0, _SharedParameters(parameters))
    return modules


def _has_ancestor_in(name: str, names: set[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:depth]) in names for depth in range(1, len(parts)))


# ---------------------------------------------------------------- splitting at a stage boundary


def frozen_prefix_depth(model: nn.Module) -> int | None:
    """How many block stages the frozen prefix of ``model`` covers, read from ``requires_grad``.

    The prefix is the stem and the block stages after it that train no parameter. Returns
    ``-1`` when every stage (neck included) is frozen, so only the head trains; None when
    the model cannot be split (not an EfficientNet, or its stem trains).
    """
    from timm.models.efficientnet import EfficientNet  # timm is loaded by whoever built the model

    if not isinstance(model, EfficientNet):
        return None
    depth = 0
    for name, modules in backbone_stages(model):
        if any(p.requires_grad for module in modules for p in module.parameters()):
            return depth if name != "stem" else None
        if name.startswith("stage"):
            depth += 1
    return -1


@torch.no_grad()
def prefix_forward(model: nn.Module, x: torch.Tensor, depth: int) -> torch.Tensor:
    """The activations after the stem and ``depth`` block stages (``-1``: pooled features)."""
    x = model.bn1(model.conv_stem(x))
    if depth < 0:
        return model.global_pool(model.bn2(model.conv_head(model.blocks(x))))
    for block in model.blocks[:depth]:
        x = block(x)
    return x


class Suffix(nn.Module):
    """The rest of ``model`` after :func:`prefix_forward` (``depth=-1``: the head alone).

    ``Suffix(model, d)(prefix_forward(model, x, d)) == model(x)``; the parameters are shared.
    """

    def __init__(self, model: nn.Module, depth: int):
        super().__init__()
        self.model = model
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.depth >= 0:
            for block in model.blocks[self.depth :]:
                x = block(x)
            return model.forward_head(model.bn2(model.conv_head(x)))
        # x are pooled features: forward_head's pooling would be the identity on them.
        if model.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=model.drop_rate, training=self.training)
        return model.get_classifier()(x)
