"""Pretrained networks: the registry, offline weight packages, and the stages that freeze.

>>> from transferkit.backbones import create_backbone, backbone_stages
>>> model, preprocessing = create_backbone("efficientnet_lite0", num_classes=2, pretrained=False)
>>> [name for name, _ in backbone_stages(model)][:2]
['stem', 'stage1']

The registry and the specs are imported with the package and need no torch, so that
``transferkit models`` and ``transferkit info`` list the backbones in well under 2 s; the
stage helpers, which do, load on first use (PEP 562, as the top-level package does).
"""

from transferkit.backbones.registry import (
    DEFAULT_BACKBONE,
    create_backbone,
    feature_dim,
    get_backbone_spec,
    list_backbones,
    register_backbone,
    weights_available,
)
from transferkit.backbones.spec import BackboneSpec, Preprocessing, WeightsSource

__all__ = [
    "DEFAULT_BACKBONE",
    "FEATURE_LAYERS",
    "BackboneSpec",
    "Preprocessing",
    "StagePooledNetwork",
    "Suffix",
    "WeightsSource",
    "backbone_stages",
    "create_backbone",
    "feature_dim",
    "frozen_prefix_depth",
    "get_backbone_spec",
    "inner_network",
    "list_backbones",
    "prefix_forward",
    "register_backbone",
    "weights_available",
    "with_feature_layers",
]

_LAZY = {"Suffix", "backbone_stages", "frozen_prefix_depth", "prefix_forward"}
"""Names of :mod:`transferkit.backbones.stages` (torch at import), loaded on first use."""
_LAZY_MULTILAYER = {"FEATURE_LAYERS", "StagePooledNetwork", "inner_network", "with_feature_layers"}
"""Names of :mod:`transferkit.backbones.multilayer` (torch at import), loaded on first use."""


def __getattr__(name: str):
    if name in _LAZY:
        from transferkit.backbones import stages

        return getattr(stages, name)
    if name in _LAZY_MULTILAYER:
        from transferkit.backbones import multilayer

        return getattr(multilayer, name)
    raise AttributeError(f"module 'transferkit.backbones' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
