"""Bottleneck features: the pooled output of the layer before the classifier, cached per image.

A frozen pretrained backbone is a fixed function of the image, so its features need computing
only once per (backbone weights, image size, precision, image content). :class:`FeatureCache`
stores them on disk keyed by a hash of exactly those things — the network's weights and each
image's decoded pixels, never paths — so CV folds, the C grid, repeated runs and ``compare``
reuse them, and a changed image or backbone never hits a stale entry.

The cache is per image, not per data set: a CV fold's training part, a subset or a second
data set that shares images all hit the entries written by the first extraction. It is
written by hand because no library offers a content-addressed array store that is this small;
entries are append-only shards (``<id>.npy`` + ``<id>.json`` naming the image hashes, the JSON
written last), so a crash mid-write leaves no entry rather than a wrong one. A shard is the
unit the cache's size cap evicts (:mod:`transferkit.data.cache_limit`): reading a row marks its
shard used, and a shard another process evicted is computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn

from transferkit.backbones import Preprocessing, create_backbone, get_backbone_spec
from transferkit.backbones.multilayer import inner_network, with_feature_layers
from transferkit.data import default_cache_dir, load_pixels, release_pages
from transferkit.data.cache_limit import enforce_cap, note_used
from transferkit.data.decode import pixels_digest
from transferkit.data.views import SYMMETRIES, mean_over_views
from transferkit.data.views import view as view_of
from transferkit.errors import ConfigError
from transferkit.files import atomic_write
from transferkit.training.allocator import release_freed_memory
from transferkit.training.inputs import pixels_to_tensor, to_model_input
from transferkit.training.runtime import INFERENCE_BATCH, Judge, Runtime, measured_inference_precision, resolve_runtime

def symmetric_features(extractor: "FeatureExtractor", pixels: np.ndarray, symmetries: str = "none") -> np.ndarray:
    """The extractor's features of ``pixels``, averaged over the views of ``symmetries``.

    Each view is made chunk by chunk inside :meth:`FeatureExtractor.transform`: a flipped copy
    of the whole array is never held in memory.
    """
    if symmetries not in SYMMETRIES:
        raise ConfigError(f"symmetries expected one of {', '.join(SYMMETRIES)}. Received: symmetries={symmetries!r}")
    views = [extractor.transform(pixels, view=name) for name in SYMMETRIES[symmetries]]
    return mean_over_views(views)


EXTRACT_CHUNK = 512
"""Images hashed and extracted per step of :meth:`FeatureExtractor.transform`: the pixels it holds
at once, whatever the data's size (a memory-mapped cache is read chunk by chunk and its pages
released, so peak memory does not grow with the number of images beyond the features)."""

UNJUDGED_REASON = ("auto: fp32 for frozen features here: bf16 is chosen only by a fit, which judges it on its labelled "
                   "images (a classifier's predictions from bf16 and fp32 features)")

FEATURE_CACHE_VERSION = 2  # 2: each shard's JSON holds the SHA-256 of its values, checked on load


def pooled_features(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The bottleneck features of a timm model: pooled, pre-classifier."""
    return model.forward_head(model.forward_features(inputs), pre_logits=True)


def model_digest(model: nn.Module, extra: str = "") -> str:
    """SHA-256 of a model's non-classifier weights and buffers (plus ``extra`` settings)."""
    digest = hashlib.sha256(f"{type(model).__name__}|{extra}".encode())
    classifier_ids = {id(t) for t in model.get_classifier().state_dict(keep_vars=True).values()}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in classifier_ids:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_digests(pixels: np.ndarray) -> list[str]:
    """One SHA-1 per decoded image (content, not path)."""
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in pixels]


class FeatureCache:
    """Content-addressed on-disk store of feature vectors for one model key.

    Parameters
    ----------
    root : path or None
        Cache root (``<root>/features/<model_key>/``); None disables the disk (memory only).
    model_key : str
        Identifies the network weights, image size and precision.
    """

    def __init__(self, root: Path | None, model_key: str):
        self._root = None if root is None else Path(root)
        self.folder = None if root is None else Path(root) / "features" / model_key
        self._rows: dict[str, np.ndarray] = {}
        self._shard_of: dict[str, Path] = {}  # image digest -> its shard's .json (marked used on read)
        if self.folder is not None and self.folder.is_dir():
            for keys_path in sorted(self.folder.glob("*.json")):
                self._load_shard(keys_path)

    def _load_shard(self, keys_path: Path) -> None:
        try:
            meta = json.loads(keys_path.read_text())
            keys = meta["images"]
            values = np.load(keys_path.with_suffix(".npy"), mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError):
            return  # foreign or half-written shard: ignore, it is recomputed
        if len(values) != len(keys):
            return
        if meta.get("sha256") != pixels_digest(values):
            # A flipped bit would silently change answers: drop the shard, recompute, say so.
            warnings.warn(
                f"feature cache shard {keys_path.with_suffix('.npy')} is damaged (its content does not "
                "match its checksum); it is ignored and its features are computed again.",
                stacklevel=4,
            )
            for path in (keys_path, keys_path.with_suffix(".npy")):
                path.unlink(missing_ok=True)  # shards are immutable: no writer is using it
            return
        self._rows.update(zip(keys, values))
        self._shard_of.update(dict.fromkeys(keys, keys_path))

    def missing(self, digests: list[str]) -> list[int]:
        return [i for i, d in enumerate(digests) if d not in self._rows]

    def get(self, digests: list[str]) -> np.ndarray:
        for shard in {self._shard_of[d] for d in digests if d in self._shard_of}:
            note_used(shard)
        return np.stack([np.asarray(self._rows[d], dtype=np.float32) for d in digests])

    def put(self, digests: list[str], values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32)
        self._rows.update(zip(digests, values))
        if self.folder is None or not digests:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            shard = self.folder / uuid.uuid4().hex
            _atomic(shard.with_suffix(".npy"), lambda handle: np.save(handle, values))
            meta = {"images": digests, "sha256": pixels_digest(values)}
            _atomic(shard.with_suffix(".json"), lambda handle: handle.write(json.dumps(meta).encode()))
            self._shard_of.update(dict.fromkeys(digests, shard.with_suffix(".json")))
            note_used(shard.with_suffix(".json"))
            enforce_cap(self._root)
        except OSError:
            pass  # a read-only cache costs speed, never correctness

    @property
    def size(self) -> int:
        return len(self._rows)


def _atomic(path: Path, write) -> None:
    """:func:`transferkit.files.atomic_write` with ``write`` given an open binary file."""

    def to_file(tmp: str) -> None:
        with open(tmp, "wb") as out:
            write(out)

    atomic_write(path, to_file)


class FeatureExtractor:
    """A frozen pretrained backbone that turns uint8 pixels into cached bottleneck features.

    ``layers="stages"`` wraps the backbone in
    :class:`~transferkit.backbones.multilayer.StagePooledNetwork` (multi-layer features); its
    features end with the plain bottleneck's, which it also writes to the bottleneck cache, so
    a ``"bottleneck"`` extractor of the same backbone finds them computed.
    """

    def __init__(
        self,
        backbone: str,
        *,
        weights: str | None = None,
        runtime: Runtime,
        cache_dir: str | bool | None = None,
        batch_size: int = INFERENCE_BATCH,
        layers: str = "bottleneck",
    ):
        model, preprocessing = create_backbone(backbone, num_classes=1, pretrained=True, weights_path=weights)
        self._setup(with_feature_layers(model, layers), preprocessing, runtime, cache_dir, batch_size)

    @classmethod
    def from_params(cls, params: Any, runtime: Runtime, *, layers: str = "bottleneck") -> "FeatureExtractor":
        """The extractor an estimator's parameters name (``backbone``, ``weights``, ``cache_dir``:
        a mapping like ``ImageClassifier.get_params()``), with the features ``layers`` asks for."""
        return cls(params["backbone"], weights=params["weights"], runtime=runtime, cache_dir=params["cache_dir"], layers=layers)

    @classmethod
    def from_model(
        cls, model: nn.Module, preprocessing: Preprocessing, *, runtime: Runtime, cache_dir: str | bool | None = None,
        batch_size: int = INFERENCE_BATCH,
    ) -> "FeatureExtractor":
        """The extractor of an existing timm model (e.g. a fitted ``svm`` or ``head`` model).

        Its cache key is the digest of the model's own weights, so a model whose backbone is
        the untouched pretrained one shares the entries of the registry's extractor.
        """
        extractor = cls.__new__(cls)
        extractor._setup(model, preprocessing, runtime, cache_dir, batch_size)
        return extractor

    def _setup(self, model, preprocessing, runtime, cache_dir, batch_size) -> None:
        # No parameter needs a gradient, so the runtime never wraps it in DDP under torchrun.
        self.model: nn.Module = runtime.prepare_model(model.eval().requires_grad_(False))
        self.preprocessing: Preprocessing = preprocessing
        self.runtime = runtime
        self.batch_size = batch_size
        root = None if cache_dir is False else (default_cache_dir() if cache_dir in (None, True) else Path(cache_dir))
        self._root = root
        self._caches: dict[tuple[str, int], FeatureCache] = {}
        self._set_keys()
        self._precision_settled = False

    def _set_keys(self) -> None:
        """The cache keys of this model's features and, for multi-layer features, of the bottleneck's."""
        precision = self.runtime.precision
        inner = inner_network(self.model)
        if self._root is None:
            # Memory only: the entries live and die with this extractor, so the key needs no digest
            # of the weights (40 ms for Lite0: a server that predicts per batch skips it).
            self._base_key = f"memory|{precision}"
            self._bottleneck_key = None if inner is self.model else f"memory-bottleneck|{precision}"
        else:
            self._base_key = model_digest(self.model, f"v{FEATURE_CACHE_VERSION}|{precision}")
            self._bottleneck_key = None if inner is self.model else model_digest(inner, f"v{FEATURE_CACHE_VERSION}|{precision}")
        self._caches.clear()

    def _settle_precision(self) -> None:
        """Once per extractor, before its first features: where ``precision="auto"`` proposed a
        CPU's native bf16, take the fit's verdict (``runtime.feature_verdict``, judged on its
        labelled images by :func:`transferkit.strategies.linear.settle_feature_precision`), or
        fp32 where no labelled images judged it (bf16 is kept only when what matters was
        measured: the predictions made from its features)."""
        if self._precision_settled:
            return
        self._precision_settled = True
        if not (self.runtime.auto_precision and self.runtime.precision == "bf16" and self.runtime.device.type == "cpu"):
            return  # fp32, an explicit choice or a GPU: nothing to decide
        verdict = self.runtime.feature_verdict
        if verdict is None:
            self.runtime = dataclasses.replace(self.runtime, precision="fp32", auto_precision=False,
                                               precision_reason=UNJUDGED_REASON)
        else:
            self.runtime = dataclasses.replace(self.runtime, precision=verdict["precision"], auto_precision=False,
                                               measured=verdict["measured"], precision_reason=verdict["why"])
        self._set_keys()

    def measure_precision(self, pixels: np.ndarray, judge: Judge) -> Runtime:
        """This extractor's runtime with the precision :func:`measured_inference_precision`
        chooses on ``pixels`` (uint8 (N, S, S, 3), all judged) by ``judge`` (fp32 vs bf16
        features, (N, D) each). The extractor itself is unchanged."""
        model_key = model_digest(self.model, f"v{FEATURE_CACHE_VERSION}")
        return measured_inference_precision(
            self.runtime, self._forward, pixels_to_tensor(pixels), key=f"features|{model_key}|{pixels.shape[1]}",
            judge=judge, cache_root=self._root,
        )

    def _forward(self, runtime: Runtime, batch: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return pooled_features(self.model, to_model_input(batch, self.preprocessing, runtime))

    @property
    def precision_record(self) -> dict:
        """The precision features were computed in, why, and what was measured."""
        return self.runtime.precision_record()

    @property
    def dim(self) -> int:
        return int(self.model.num_features)

    def cache_for(self, image_size: int, bottleneck: bool = False) -> FeatureCache:
        """The feature cache at ``image_size``; ``bottleneck``: that of the plain bottleneck features
        (the same cache for a ``"bottleneck"`` extractor)."""
        base = self._bottleneck_key if bottleneck and self._bottleneck_key is not None else self._base_key
        if (base, image_size) not in self._caches:
            key = hashlib.sha256(f"{base}|{image_size}".encode()).hexdigest()[:32]
            self._caches[base, image_size] = FeatureCache(self._root, key)
        return self._caches[base, image_size]

    @torch.no_grad()
    def transform(self, pixels: np.ndarray, view: str = "identity", rows: np.ndarray | None = None) -> np.ndarray:
        """Features (N, D) float32 of uint8 (N, S, S, 3) pixels; only cache misses are computed.

        ``view`` (a name of :data:`SYMMETRIES`' views) flips each image first; ``rows`` (integer
        indices) takes the features of those images only, in that order, without copying them
        out of ``pixels`` first. The pixels are read :data:`EXTRACT_CHUNK` images at a time: each
        chunk is viewed, hashed, its misses computed and written to the cache as one shard, and
        the pages of a memory-mapped ``pixels`` released, so the memory held is a chunk's pixels
        plus the features.
        """
        count = len(pixels) if rows is None else len(rows)
        if count == 0:
            return np.zeros((0, self.dim), np.float32)

        def read(start: int, stop: int) -> np.ndarray:
            part = pixels[start:stop] if rows is None else pixels[np.asarray(rows[start:stop])]
            return view_of(part, view)

        self._settle_precision()
        cache = self.cache_for(int(pixels.shape[1]))
        shared = self.cache_for(int(pixels.shape[1]), bottleneck=True) if self._bottleneck_key is not None else None
        digests: list[str] = []
        computed_any = False
        for start in range(0, count, EXTRACT_CHUNK):
            chunk = read(start, start + EXTRACT_CHUNK)
            chunk_digests = image_digests(chunk)
            digests += chunk_digests
            # De-duplicate identical images inside this chunk too.
            first = {d: i for i, d in reversed(list(enumerate(chunk_digests)))}
            unique = list(dict.fromkeys(chunk_digests[i] for i in cache.missing(chunk_digests)))
            if unique and not computed_any:
                release_freed_memory()  # what the passes before this one freed: this pass's peak is not added to theirs
                computed_any = True
            computed = []
            for batch_start in range(0, len(unique), self.batch_size):
                index = [first[d] for d in unique[batch_start : batch_start + self.batch_size]]
                computed.append(self._forward(self.runtime, pixels_to_tensor(chunk[index])).float().cpu().numpy())
            if unique:
                values = np.concatenate(computed)
                cache.put(unique, values)
                if shared is not None:  # multi-layer features end with the bottleneck's: keep those for it too
                    keep = shared.missing(unique)
                    if keep:
                        shared.put([unique[i] for i in keep], values[keep][:, self.model.bottleneck_columns])
            del chunk
            release_pages(pixels)
        if computed_any:
            release_freed_memory()
        return cache.get(digests)


class BottleneckFeatures(TransformerMixin, BaseEstimator):
    """Images in, bottleneck features of a frozen pretrained backbone out (scikit-learn transformer).

    ``make_pipeline(BottleneckFeatures(), StandardScaler(), LinearSVC())`` is the playbook's
    "fewer than ~1000 samples" recipe. Features are cached on disk per image content.

    Parameters
    ----------
    backbone : str
    image_size : int or None
        None uses the backbone's own input size.
    weights : str or None
        Local weights file instead of the registry's.
    cache_dir : str, False or None
        Feature and image cache root (None: the default cache; False: memory only).
    device, precision : str
        See :func:`transferkit.training.runtime.resolve_runtime`.
    batch_size : int, default 16
        Images per forward pass (:data:`~transferkit.training.runtime.INFERENCE_BATCH`); the
        pass's peak memory grows with it (about 20 MB per image at 224 px).
    feature_layers : {"bottleneck", "stages"}
        ``"stages"``: multi-layer features, the bottleneck plus the mean- and max-pooled output
        of every stage at stride 4 or deeper
        (:class:`~transferkit.backbones.multilayer.StagePooledNetwork`; 2,816 values for Lite0).

    Attributes
    ----------
    n_features_out_ : int
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        image_size: int | None = None,
        weights: str | None = None,
        cache_dir: str | bool | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = INFERENCE_BATCH,
        feature_layers: str = "bottleneck",
    ):
        self.backbone = backbone
        self.image_size = image_size
        self.weights = weights
        self.cache_dir = cache_dir
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.feature_layers = feature_layers

    def fit(self, X: Any = None, y: Any = None) -> "BottleneckFeatures":
        """Load the backbone (nothing is learned: the network stays frozen)."""
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size expected an integer >= 16 (or None). Received: image_size={self.image_size!r}")
        runtime = resolve_runtime(self.device, self.precision)
        self.extractor_ = FeatureExtractor(
            self.backbone, weights=self.weights, runtime=runtime, cache_dir=self.cache_dir, batch_size=self.batch_size,
            layers=self.feature_layers,
        )
        self.image_size_ = self.image_size or get_backbone_spec(self.backbone).preprocessing.input_size
        self.n_features_out_ = self.extractor_.dim
        return self

    def transform(self, X: Any) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "extractor_")
        pixels = load_pixels(X, self.image_size_, cache_dir=self.cache_dir)
        return self.extractor_.transform(pixels)


__all__ = ["BottleneckFeatures", "FeatureCache", "FeatureExtractor", "SYMMETRIES", "image_digests", "model_digest",
           "pooled_features", "symmetric_features"]
