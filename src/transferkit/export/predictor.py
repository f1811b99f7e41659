"""Predict with an exported ``.onnx`` model: onnxruntime and Pillow, no torch.

The model file carries what it needs (see :mod:`transferkit.export.onnx`): class names, image
size, mean, std and interpolation in its metadata, and the novelty reference and threshold
when the model has a score. Images are decoded exactly as for the PyTorch model
(:func:`transferkit.data.decode_images`), so both see the same pixels, and novelty is scored by
the same numpy code (:mod:`transferkit.evaluation.novelty`) on the graph's ``features`` output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data import ImageSet, decode_images, resolve_data
from transferkit.data.views import SYMMETRIES, mean_over_views, view
from transferkit.errors import MissingExtraError, ModelFileError
from transferkit.evaluation.novelty import NoveltyScorer

METADATA_PREFIX = "transferkit."
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"


def import_onnxruntime():
    """onnxruntime, or a message saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise MissingExtraError("ONNX support needs onnxruntime; install it with: pip install 'transferkit[export]'") from exc
    return onnxruntime


def read_metadata(session) -> dict[str, Any]:
    """The ``transferkit.*`` metadata of an onnxruntime session, JSON values decoded."""
    raw = session.get_modelmeta().custom_metadata_map
    metadata = {key.removeprefix(METADATA_PREFIX): json.loads(value) for key, value in raw.items() if key.startswith(METADATA_PREFIX)}
    missing = [key for key in ("classes", "image_size", "preprocessing") if key not in metadata]
    if missing:
        raise ModelFileError(f"the ONNX model lacks the metadata {', '.join(missing)}; was it written by `transferkit export`?")
    return metadata


class OnnxClassifier:
    """A fitted classifier read from an ``.onnx`` file written by ``transferkit export``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file.
    threads : int or None
        onnxruntime intra-op threads (None: its default, one per core).

    Attributes
    ----------
    classes_ : ndarray of str
    image_size_ : int
    metadata_ : dict
        Everything the exporter stored: backbone, strategy, preprocessing, metrics, ...
    novelty_ : NoveltyScorer or None
        The novelty reference and threshold (None: the model was exported without a score).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"no ONNX model at {self.path}; expected a file written by `transferkit export`.")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session_ = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelFileError(f"cannot load {self.path} with onnxruntime: {exc}") from exc
        self.metadata_ = read_metadata(self.session_)
        self.classes_ = np.array(self.metadata_["classes"])
        self.image_size_ = int(self.metadata_["image_size"])
        preprocessing = self.metadata_["preprocessing"]
        self._mean = np.asarray(preprocessing["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(preprocessing["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        outputs = {output.name for output in self.session_.get_outputs()}
        record = self.metadata_.get("novelty")
        self.novelty_ = NoveltyScorer.from_metadata(record) if record and FEATURES_NAME in outputs else None

    def decode(self, X: Any) -> np.ndarray:
        """uint8 (N, S, S, 3) pixels of X: paths, a folder or CSV, an ImageSet, or pixels already."""
        size = self.image_size_
        if isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim == 4 and X.shape[1:] == (size, size, 3):
            return X
        if isinstance(X, (list, tuple)):
            X = ImageSet(sources=[x if isinstance(x, np.ndarray) else str(x) for x in X], labels=None)
        elif not isinstance(X, ImageSet):
            X = resolve_data(X)
        # decode_images' default resize, as ImageClassifier.predict_proba uses: same pixels, same answer.
        return decode_images(X, size, cache_dir=False, progress=False).pixels

    def logits(self, X: Any, *, batch_size: int = 32) -> np.ndarray:
        """Raw network outputs, shape (n_images, n_classes), float32.

        A model fitted with ``symmetries`` (flips, dihedral) averaged its features over those
        views of each image; its head is linear, so the mean of the views' logits is the logit of
        the mean features, and that is what this returns (the same answer as transferkit's)."""
        return self.outputs(X, batch_size=batch_size)[0]

    def outputs(self, X: Any, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (n_images, n_classes) and, for a model with a novelty score, its pooled features
        (n_images, n_features), both float32 and averaged over the model's symmetry views."""
        pixels = self.decode(X)
        views = SYMMETRIES.get(str(self.metadata_.get("symmetries", "none")), SYMMETRIES["none"])
        names = [OUTPUT_NAME] if self.novelty_ is None else [OUTPUT_NAME, FEATURES_NAME]
        logits, features = [np.empty((0, len(self.classes_)), np.float32)], []
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size]
            runs = [self.session_.run(names, {INPUT_NAME: self.normalise(view(batch, name))}) for name in views]
            logits.append(mean_over_views([run[0] for run in runs]))
            if self.novelty_ is not None:
                features.append(mean_over_views([run[1] for run in runs]))
        return np.concatenate(logits), (np.concatenate(features) if features else None)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) to the graph's input: float32 (N, 3, S, S), ``(x / 255 - mean) / std``."""
        batch = np.asarray(pixels).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return np.ascontiguousarray((batch - self._mean) / self._std, dtype=np.float32)

    def predict_proba(self, X: Any, *, return_novelty: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities, columns in ``classes_`` order.

        With ``return_novelty=True``: ``(probabilities, novelty)`` as
        :meth:`transferkit.ImageClassifier.predict_proba` returns them (``novelty`` None when
        the file has no score; ``novelty_.unknown(novelty)`` flags)."""
        logits, features = self.outputs(X)
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        if not return_novelty:
            return probabilities
        return probabilities, None if features is None else self.novelty_.score(features)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class name of each image."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
