"""Pretrained networks: the registry, offline weight packages, and the stages that freeze.

>>> from transferkit.backbones import create_backbone, backbone_stages
>>> model, preprocessing = create_backbone("efficientnet_lite0", num_classes=2, pretrained=False)
>>> [name for name, _ in backbone_stages(model)][:2]
['stem', 'stage1']
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
from transferkit.backbones.stages import Suffix, backbone_stages, frozen_prefix_depth, prefix_forward

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "Preprocessing",
    "Suffix",
    "WeightsSource",
    "backbone_stages",
    "create_backbone",
    "feature_dim",
    "frozen_prefix_depth",
    "get_backbone_spec",
    "list_backbones",
    "prefix_forward",
    "register_backbone",
    "weights_available",
]
