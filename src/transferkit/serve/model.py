"""The model behind the server: load once; batch concurrent requests into one forward pass."""

from __future__ import annotations

import base64
import io
import os
import threading
from typing import Any, Sequence

import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController

from transferkit.serve.batcher import MAX_BATCH_SIZE, MAX_DELAY_MS, Batcher
from transferkit.serve.networks import open_network


class ServedModel:
    """A fitted model folder, or an ``.onnx`` file (onnxruntime, no torch), ready to answer requests.

    Decoding and resizing uploads run in parallel in the server's threads; the network runs in
    one :class:`~transferkit.serve.batcher.Batcher` thread, on the images of every request that
    arrived together. Heatmaps (``explain``) run one request at a time under the same lock as
    the batches, because Grad-CAM hooks into the model's layers and no other forward pass may
    see them.

    Parameters
    ----------
    model : str or os.PathLike
        A model folder or an ``.onnx`` file.
    precision : {"auto", "fp32", "bf16", "fp16"}
    device : str
        For a model folder, as ``transferkit predict --precision`` and ``--device``.
    unknown_threshold : float or None
        Novelty above which an answer says ``"unknown": true`` (None: the model's calibrated one).
    max_batch_size : int
        Most images per forward pass.
    max_delay_ms : float
        How long a request waits for others to share its forward pass, in milliseconds.
    threads : int or None
        The network's intra-op threads on a CPU (torch's setting is one for the whole process;
        None: leave the runtime's default). ``transferkit serve`` passes :func:`serving_threads`.
    """

    def __init__(self, model: str | os.PathLike, *, precision: str = "auto", device: str = "cpu", unknown_threshold: float | None = None,
                 max_batch_size: int = MAX_BATCH_SIZE, max_delay_ms: float = MAX_DELAY_MS, threads: int | None = None) -> None:
        self.network = open_network(model, precision=precision, device=device, threads=threads)
        self.classes = self.network.classes
        self.unknown_threshold = unknown_threshold
        self._lock = threading.Lock()
        self._blas = ThreadpoolController()
        self.batcher = Batcher(self._forward_batch, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms)

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` shows: classes, backbone, strategy, input size, preprocessing,
        metrics, probabilities, the novelty threshold (None: the model has no score), the runtime
        (pytorch or onnxruntime) and the batching so far (forward passes and images)."""
        novelty = self.network.novelty
        return {
            "classes": self.classes,
            **{key: self.network.description[key] for key in ("backbone", "strategy")},
            "image_size": int(self.network.image_size),
            **{key: self.network.description[key] for key in ("preprocessing", "metrics", "probabilities")},
            "novelty": None if novelty is None else {
                "threshold": self.threshold, "calibrated_threshold": novelty.threshold,
                "false_alarm_rate": novelty.false_alarm_rate, "method": novelty.to_config()["method"],
            },
            "runtime": self.network.description["runtime"],
            "batching": {"max_batch_size": self.batcher.max_batch_size, "max_delay_ms": 1000 * self.batcher.max_delay,
                         "batches": self.batcher.batches, "images": self.batcher.images},
        }

    @property
    def threshold(self) -> float | None:
        """The novelty threshold in use (None: the model has no score)."""
        if self.network.novelty is None:
            return None
        return self.network.novelty.threshold if self.unknown_threshold is None else float(self.unknown_threshold)

    def decode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """uint8 (N, S, S, 3) pixels of PIL images, decoded as ``transferkit predict`` decodes files."""
        return self.network.decode(list(images))

    def submit(self, pixels: np.ndarray):
        """Queue decoded pixels for the next batch; a future of one (probabilities, novelty) per image."""
        return self.batcher.submit(pixels)

    def predict(self, images: Sequence[Image.Image], *, top_k: int = 3, explain: bool = False) -> list[dict[str, Any]]:
        """Top-k classes and probabilities, novelty and ``unknown`` per image (blocking), with a
        heatmap overlay PNG (data URI) if ``explain``."""
        pixels = self.decode(images)
        if explain:
            return self.explain(pixels, top_k=top_k)
        return self.answers(self.submit(pixels).result(), top_k=top_k)

    def explain(self, pixels: np.ndarray, *, top_k: int = 3) -> list[dict[str, Any]]:
        """As :meth:`predict` with heatmaps, one request at a time (not batched)."""
        if not self.network.can_explain:
            from transferkit.errors import ConfigError

            raise ConfigError("heatmaps need the model folder (the network's gradients), not an .onnx file.")
        with self._lock:
            probabilities, novelty = self.network.forward(pixels)
            found = self.network.heatmaps(pixels, probabilities.argmax(axis=1))
        answers = self.answers(_rows(probabilities, novelty), top_k=top_k)
        for answer, (picture, note) in zip(answers, found):
            answer["heatmap"] = None if picture is None else _data_uri(picture)  # None: Grad-CAM found no evidence anywhere
            answer["heatmap_note"] = note
        return answers

    def answers(self, rows: Sequence[tuple[np.ndarray, float | None]], *, top_k: int = 3) -> list[dict[str, Any]]:
        """One JSON answer per (probabilities, novelty) row: label, probability, top_k, novelty, unknown."""
        k = min(top_k, len(self.classes))
        threshold = self.threshold
        answers = []
        for row, novelty in rows:
            order = row.argsort()[::-1][:k]
            top = [{"label": self.classes[i], "probability": round(float(row[i]), 6)} for i in order]
            answers.append({
                "label": top[0]["label"], "probability": top[0]["probability"], "top_k": top,
                "novelty": None if novelty is None else round(float(novelty), 6),
                "unknown": None if novelty is None else bool(novelty > threshold),
            })
        return answers

    def close(self) -> None:
        """Stop the batching thread (after the requests already queued)."""
        self.batcher.close()

    def _forward_batch(self, pixels: np.ndarray) -> list[tuple[np.ndarray, float | None]]:
        # One BLAS thread for the batch's small numpy products (novelty, the linear head): with
        # more, OpenBLAS's idle workers spin on the cores that the HTTP loop and the decoding
        # threads need; on 2 cores one thread answered 130-136 images/s against 105-106
        # (benchmarks/serve_load.py, RESULTS.md). Torch's threads are ``threads``'s (serve: one core left free).
        with self._lock, self._blas.limit(limits=1, user_api="blas"):
            probabilities, novelty = self.network.forward(pixels)
        return _rows(probabilities, novelty)


def serving_threads() -> int:
    """The network's CPU threads that ``transferkit serve`` uses by default: the usable CPUs
    less one (at least one), leaving a core to the HTTP loop and the decoding threads, which
    otherwise wait while the network's threads hold every core (on 2 cores one network thread
    answered 154-176 images/s against 113-153 with two: benchmarks/serve_load.py, RESULTS.md)."""
    from transferkit.training.machine import usable_cpus

    return max(1, usable_cpus() - 1)


def _rows(probabilities: np.ndarray, novelty: np.ndarray | None) -> list[tuple[np.ndarray, float | None]]:
    return [(row, None if novelty is None else float(novelty[i])) for i, row in enumerate(probabilities)]


def _data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
