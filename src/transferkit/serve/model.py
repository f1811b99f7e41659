"""The model behind the server: load once, predict (and explain) one request at a time."""

from __future__ import annotations

import base64
import io
import os
import threading
from typing import Any, Sequence

import numpy as np
from PIL import Image

from transferkit.card import probability_note
from transferkit.data import ImageSet, load_pixels
from transferkit.persistence import load_model, read_config


class ServedModel:
    """A fitted model folder ready to answer requests.

    Decoding and resizing uploads run in parallel in the server's threads; the network itself
    runs under one lock, because Grad-CAM hooks into the model's layers and two requests must
    never see each other's activations.
    """

    def __init__(self, model_dir: str | os.PathLike, *, precision: str = "auto", device: str = "cpu") -> None:
        # The classifier predicts exactly as `transferkit predict` does (predict_proba: the same
        # views, the same precision decision).
        self.classifier = load_model(model_dir, device=device, precision=precision, cache_dir=False)
        self.config = read_config(model_dir)
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` shows: classes, backbone, strategy, input size, preprocessing, metrics."""
        return {
            "classes": [str(c) for c in self.classifier.classes_],
            "backbone": self.config["backbone"],
            "strategy": self.config.get("strategy"),
            "image_size": int(self.classifier.image_size_),
            "preprocessing": self.config["preprocessing"],
            "metrics": self.config.get("metrics") or {},
            "probabilities": probability_note(self.config.get("history")),
        }

    def predict(self, images: Sequence[Image.Image], *, top_k: int = 3, explain: bool = False) -> list[dict[str, Any]]:
        """Top-k classes and probabilities per image, with a heatmap overlay PNG (data URI) if ``explain``."""
        classifier = self.classifier
        # Same decoding as `transferkit predict`: the same pixels give the same answer.
        pixels = np.asarray(load_pixels(ImageSet(sources=list(images), labels=None), classifier.image_size_, cache_dir=False))
        with self._lock:
            probabilities = classifier.predict_proba(pixels)
            heatmaps = self._heatmaps(pixels, probabilities.argmax(axis=1)) if explain else [None] * len(pixels)
        k = min(top_k, len(classifier.classes_))
        answers = []
        for row, image, heatmap in zip(probabilities, pixels, heatmaps):
            order = row.argsort()[::-1][:k]
            top = [{"label": str(classifier.classes_[i]), "probability": round(float(row[i]), 6)} for i in order]
            answer: dict[str, Any] = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
            if heatmap is not None:
                picture, note = heatmap
                answer["heatmap"] = None if picture is None else _data_uri(picture)  # None: Grad-CAM found no evidence anywhere
                answer["heatmap_note"] = note
            answers.append(answer)
        return answers

    def _heatmaps(self, pixels: np.ndarray, predicted: np.ndarray) -> list[tuple[np.ndarray | None, str]]:
        """Per image: the overlay (None when the map would be a flat tint) and where it comes from."""
        from transferkit.report.cam import heatmaps, overlay

        found = heatmaps(self.classifier.model_, pixels, self.classifier.preprocessing_, predicted)
        return [(overlay(image, heatmap) if found.useful[i] else None, found.describe(i))
                for i, (image, heatmap) in enumerate(zip(pixels, found.maps))]


def _data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
