"""What runs behind the server: a model folder on PyTorch, or an ``.onnx`` file on onnxruntime.

Both decode uploads as their own ``predict`` does and return, for uint8 pixels, the class
probabilities and the novelty score of each image from one forward pass. The ONNX network
never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data import ImageSet, load_pixels


class OnnxNetwork:
    """An ``.onnx`` file written by ``transferkit export``, run by onnxruntime (no torch)."""

    can_explain = False

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        from transferkit.export import OnnxClassifier

        self.classifier = OnnxClassifier(path, threads=threads)
        self.classes = [str(c) for c in self.classifier.classes_]
        self.image_size = self.classifier.image_size_
        self.novelty = self.classifier.novelty_
        metadata = self.classifier.metadata_
        self.description = {"backbone": metadata.get("backbone"), "strategy": metadata.get("strategy"),
                            "preprocessing": metadata["preprocessing"], "metrics": metadata.get("metrics") or {},
                            "probabilities": None, "runtime": "onnxruntime"}

    def decode(self, images: list) -> np.ndarray:
        """uint8 (N, S, S, 3) pixels of PIL images, as ``OnnxClassifier.predict_proba`` decodes them."""
        return self.classifier.decode(ImageSet(sources=list(images), labels=None))

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, K) float64 and novelty (N,) float64 or None."""
        return self.classifier.predict_proba(pixels, return_novelty=True)


class TorchNetwork:
    """A model folder, answering exactly as ``transferkit predict`` does: its ``predict_proba``
    (the same views, the same precision decision, :func:`~transferkit.training.runtime.prediction_runtime`)."""

    can_explain = True

    def __init__(self, model_dir: str | os.PathLike, *, precision: str = "auto", device: str = "cpu", threads: int | None = None) -> None:
        import torch

        from transferkit.card import probability_note
        from transferkit.persistence import load_model, read_config
        from transferkit.training.runtime import prediction_runtime

        self.classifier = load_model(model_dir, device=device, precision=precision, cache_dir=False)
        if threads is not None and prediction_runtime(device, precision).device.type == "cpu":
            torch.set_num_threads(threads)  # one setting for the whole process
        config = read_config(model_dir)
        self.classes = [str(c) for c in self.classifier.classes_]
        self.image_size = int(self.classifier.image_size_)
        self.novelty = self.classifier.novelty_
        self.description = {"backbone": config["backbone"], "strategy": config.get("strategy"),
                            "preprocessing": config["preprocessing"], "metrics": config.get("metrics") or {},
                            "probabilities": probability_note(config.get("history")), "runtime": "pytorch"}

    def decode(self, images: list) -> np.ndarray:
        """uint8 (N, S, S, 3) pixels of PIL images, as ``transferkit predict`` decodes files."""
        return np.asarray(load_pixels(ImageSet(sources=list(images), labels=None), self.image_size, cache_dir=False))

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, K) float64 and novelty (N,) float64 or None, from ``predict_proba``.
        Not thread-safe: the server calls it from one thread at a time."""
        probabilities, novelty = self.classifier.predict_proba(pixels, return_novelty=True)
        return probabilities.astype(np.float64), novelty

    def heatmaps(self, pixels: np.ndarray, predicted: np.ndarray) -> list[tuple[np.ndarray | None, str]]:
        """Per image: the Grad-CAM overlay of the ``predicted`` class (None when the map would be
        a flat tint) and where it comes from."""
        from transferkit.report.cam import heatmaps, overlay

        found = heatmaps(self.classifier.model_, pixels, self.classifier.preprocessing_, predicted)
        return [(overlay(image, heatmap) if found.useful[i] else None, found.describe(i))
                for i, (image, heatmap) in enumerate(zip(pixels, found.maps))]


def open_network(path: str | os.PathLike, *, precision: str = "auto", device: str = "cpu", threads: int | None = None) -> Any:
    """:class:`OnnxNetwork` for an ``.onnx`` file, else :class:`TorchNetwork` for a model folder.
    ``threads``: the network's intra-op threads on a CPU (None: the runtime's default)."""
    if Path(path).suffix == ".onnx":
        return OnnxNetwork(path, threads=threads)
    return TorchNetwork(path, precision=precision, device=device, threads=threads)
