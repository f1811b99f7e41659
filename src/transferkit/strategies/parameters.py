"""What each ``ImageClassifier`` parameter accepts: one declared table, checked in one place.

scikit-learn's ``_parameter_constraints`` (``svm/_classes.py``): the estimator checks it at the
start of ``fit``, and the candidate builder of :mod:`transferkit.selection` checks every
candidate of ``compare`` and the race against it before any work. It lives beside the registry
because the valid strategy names are the registry's (:func:`list_strategies`), never a list
written by hand. The defaults are :data:`transferkit.defaults.DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from transferkit.backbones.multilayer import FEATURE_LAYERS
from transferkit.constraints import AUTO, InstanceOf, Interval, Options, Registered, Satisfies, validate_params
from transferkit.data.views import SYMMETRIES
from transferkit.defaults import DEFAULTS
from transferkit.strategies.registry import list_strategies
from transferkit.training.augment import is_augmentation
from transferkit.training.regularize import REGULARIZATION

PARAMETER_CONSTRAINTS: Mapping[str, list] = MappingProxyType({
    "backbone": [InstanceOf((str,), "a backbone name")],
    "strategy": [Options(AUTO), Registered(list_strategies, "a registered strategy")],
    "freeze": [Options(AUTO), Interval(int, 0, None)],
    "epochs": [Interval(int, 1, None)],
    "lr": [Interval(float, 0, None, closed="neither")],
    "backbone_lr_factor": [Options(AUTO), Interval(float, 0, None, closed="neither")],
    "image_size": [Options(AUTO), Interval(int, 16, None)],
    "augment": [Options(AUTO), Satisfies(is_augmentation, "a preset (none, light, standard, strong), a composition "
                                         "such as 'rotate,translate', or a callable transform")],
    "batch_size": [Interval(int, 1, None)],
    "val_fraction": [Interval(float, 0, 1, closed="left")],
    "patience": [Interval(int, 1, None)],
    "class_weight": [Options(AUTO, "balanced", "none")],
    "dropout": [Interval(float, 0, 1, closed="left")],
    "head_init": [Options("random", "probe")],
    "label_smoothing": [Interval(float, 0, 1, closed="left")],
    "regularization": [Options(AUTO, *REGULARIZATION)],
    "sampling": [Options(AUTO, "shuffle", "balanced")],
    "weight_decay": [Interval(float, 0, None)],
    "seed": [Interval(int, 0, None)],
    "weights": [Options(None), InstanceOf((str,), "a weights file path")],
    "skip_bad": [InstanceOf((bool,), "True or False")],
    "cache_dir": [Options(None, False), InstanceOf((str,), "a folder path")],
    "checkpoint_dir": [Options(None), InstanceOf((str,), "a folder path")],
    "resume": [InstanceOf((bool,), "True or False")],
    "device": [InstanceOf((str,), "a device name")],
    "precision": [Options(AUTO, "fp32", "bf16", "fp16")],
    "C": [Options(AUTO), Interval(float, 0, None, closed="neither")],
    "feature_views": [Interval(int, 0, None)],
    "prefix_views": [Interval(int, 0, None)],
    "budget_minutes": [Options(AUTO, None), Interval(float, 0, None, closed="neither")],
    "symmetries": [Options(AUTO, *SYMMETRIES)],
    "feature_layers": [Options(AUTO, *FEATURE_LAYERS)],
    "verbose": [InstanceOf((bool,), "True or False")],
})
"""Parameter -> the forms it may take (any one of the list); every parameter of
:data:`~transferkit.defaults.DEFAULTS` has an entry."""

assert set(PARAMETER_CONSTRAINTS) == set(DEFAULTS), "every ImageClassifier parameter has a default and a constraint"


def check_params(params: Mapping[str, Any], owner: str = "ImageClassifier") -> None:
    """Raise a :class:`~transferkit.errors.ConfigError` for the first parameter its constraints refuse."""
    validate_params(params, PARAMETER_CONSTRAINTS, owner=owner)


def full_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` over :data:`~transferkit.defaults.DEFAULTS`: every parameter, the given ones winning
    (timm's ``resolve_pretrained_cfg``: overrides laid on the defaults)."""
    return {**DEFAULTS, **params}
