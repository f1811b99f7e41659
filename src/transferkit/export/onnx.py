"""Write a fitted model as ONNX, with its preprocessing in the metadata, and check it.

Every strategy saves an ordinary network (``svm``/``logistic`` are folded into the head), so
one export covers them all. The graph takes float32 ``pixels`` (N, 3, S, S), RGB scaled to
[0, 1] and normalised with the stored mean and std, and returns ``logits`` (N, K) and, for a
model with a novelty score, its pooled pre-logits ``features`` (N, D). The metadata
(``transferkit.classes``, ``.image_size``, ``.preprocessing``, ``.backbone``, ``.strategy``,
``.input``, ``.novelty``: the threshold and the training features as base64 float16) makes the
file usable without transferkit's config.json.

The export uses PyTorch's TorchScript-based exporter (``dynamo=False``): it handles timm's
EfficientNet without extra packages, while the torch.export-based one needs onnxscript.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.data.views import SYMMETRIES, mean_over_views, view
from transferkit.errors import ConfigError, MissingExtraError
from transferkit.export.predictor import FEATURES_NAME, INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, OnnxClassifier
from transferkit.training.inputs import has_pooled_features, logits_and_pooled, predict_logits
from transferkit.training.runtime import resolve_runtime

OPSET = 17
PARITY_TOLERANCE = 1e-4
"""Largest absolute logit difference accepted between onnxruntime and PyTorch in fp32."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how closely onnxruntime matches PyTorch."""

    path: str
    opset: int
    size_mb: float
    checked_images: int
    max_abs_diff: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    check_images: Any = None,
    max_check_images: int = 32,
    opset: int = OPSET,
) -> ExportResult:
    """Export a fitted ImageClassifier (or its model folder) to ``path`` and verify it.

    Parameters
    ----------
    model : ImageClassifier, str or os.PathLike
        A fitted classifier or a folder written by ``transferkit fit --out``.
    path : str or os.PathLike
        The ``.onnx`` file to write.
    check_images : any input ``predict`` takes, optional
        Real images to compare onnxruntime's logits with PyTorch's on (at most
        ``max_check_images`` of them); without them a few random pixel images are used.
    opset : int
        ONNX opset version.

    Returns
    -------
    ExportResult
        ``max_abs_diff`` is the largest absolute logit difference (fp32).
    """
    try:
        import onnx
    except ImportError as exc:
        raise MissingExtraError("ONNX export needs onnx; install it with: pip install 'transferkit[export]'") from exc

    from transferkit.persistence import load_model, read_config

    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        metrics = read_config(model).get("metrics") or {}
        classifier = load_model(model)
    else:
        classifier = model
        classifier._check_fitted()
    size = int(classifier.image_size_)
    network = classifier.model_.cpu().float().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, size, size)
    novelty = getattr(classifier, "novelty_", None)
    outputs = [OUTPUT_NAME]
    if novelty is not None and has_pooled_features(network):
        network, outputs = LogitsAndFeatures(network), [OUTPUT_NAME, FEATURES_NAME]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            network, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
        )
    proto = onnx.load(str(path))
    metadata = {
        "classes": [str(c) for c in classifier.classes_],
        "image_size": size,
        "preprocessing": classifier.preprocessing_.to_dict(),
        "backbone": classifier.backbone,
        "strategy": (getattr(classifier, "settings_", None) or {}).get("strategy"),
        # the graph is the network on one view; a model fitted with symmetries="flips" averages
        # its features over 4 flipped views in transferkit (dihedral: 8): OnnxClassifier averages
        # the views' logits, which a linear head makes the same answer
        "symmetries": (getattr(classifier, "settings_", None) or {}).get("symmetries", "none"),
        "input": f"float32 (N, 3, {size}, {size}) RGB: pixels / 255, minus mean, divided by std",
        "metrics": metrics,
    }
    if len(outputs) == 2:
        metadata["novelty"] = novelty.to_metadata()
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + key: json.dumps(value) for key, value in metadata.items()})
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)

    pixels = _check_pixels(classifier, check_images, max_check_images, size)
    diff = max_abs_difference(classifier, OnnxClassifier(path), pixels)
    return ExportResult(
        path=str(path), opset=opset, size_mb=round(path.stat().st_size / 2**20, 2), checked_images=len(pixels),
        max_abs_diff=diff, seconds=round(time.perf_counter() - started, 2),
    )


class LogitsAndFeatures(torch.nn.Module):
    """A timm network that returns its logits and its pooled pre-logits features (for novelty)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_and_pooled(self.network, inputs)


def torch_logits(classifier, pixels: np.ndarray) -> np.ndarray:
    """The PyTorch model's fp32 logits on the CPU for uint8 (N, S, S, 3) pixels, averaged over
    the views of the model's ``symmetries`` (as :class:`OnnxClassifier` averages them)."""
    runtime = resolve_runtime("cpu", "fp32")
    model = classifier.model_.cpu().float()
    views = SYMMETRIES[(getattr(classifier, "settings_", None) or {}).get("symmetries", "none")]
    logits = [predict_logits(model, view(pixels, name), classifier.preprocessing_, runtime).numpy() for name in views]
    return mean_over_views(logits)


def max_abs_difference(classifier, onnx_model: OnnxClassifier, pixels: np.ndarray) -> float:
    """Largest absolute difference between PyTorch's and onnxruntime's logits on ``pixels``."""
    return float(np.abs(torch_logits(classifier, pixels) - onnx_model.logits(pixels)).max())


def _check_pixels(classifier, images: Any, limit: int, size: int) -> np.ndarray:
    from transferkit.data import load_pixels

    if images is None:
        return np.random.default_rng(0).integers(0, 256, size=(4, size, size, 3), dtype=np.uint8)
    if limit < 1:
        raise ConfigError(f"max_check_images expected a positive integer. Received: {limit}")
    pixels = load_pixels(images, size, cache_dir=classifier.cache_dir)
    step = max(1, len(pixels) // limit)  # spread over the data, not just the first class
    return np.asarray(pixels[::step][:limit])
