"""``ImageClassifier``: a scikit-learn estimator that transfers a pretrained network.

It follows scikit-learn's contract: ``__init__`` only stores its arguments, ``fit``
validates them and returns ``self``, and every learned attribute ends in ``_``. So
``clone``, ``cross_val_score`` and ``GridSearchCV`` work on it.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted

from transferkit.backbones import create_backbone, get_backbone_spec
from transferkit.data import ImageSet, check_classes, decode_images, resolve_data
from transferkit.errors import ConfigError, DataError, NotFittedError
from transferkit.strategies.network import NETWORK_STRATEGIES, configure_network, uses_pretrained_weights
from transferkit.training.augment import AUGMENT_PRESETS, build_augmentation
from transferkit.training.inputs import predict_logits
from transferkit.training.loop import TrainConfig, train_model
from transferkit.training.runtime import resolve_runtime

Strategy = Literal["head", "finetune", "full", "scratch"]


class ImageClassifier(ClassifierMixin, BaseEstimator):
    """Classify images with a pretrained backbone and a new K-class head.

    Parameters
    ----------
    backbone : str
        Registry name (``transferkit models`` lists them) or any timm model name.
    strategy : {"head", "finetune", "full", "scratch"}
        Which parameters train (see :mod:`transferkit.strategies.network`).
    freeze : int or None
        ``finetune`` only: the stem and the first ``freeze`` stages get no gradient.
        None uses the default (3).
    epochs : int
        Maximum number of epochs; early stopping may end sooner.
    lr : float
        Learning rate of the new head (and of every layer for ``scratch``).
    backbone_lr_factor : float
        Pretrained layers train at ``lr * backbone_lr_factor`` (default 10x smaller).
    image_size : int or None
        Side of the square images fed to the network; None uses the backbone's own size.
    augment : {"none", "light", "standard", "strong"}
        Training-time augmentation preset; validation and test images are never augmented.
    batch_size : int
    val_fraction : float
        Stratified hold-out share of the training data used for early stopping; 0 trains on
        everything for ``epochs`` epochs.
    patience : int
        Epochs without a lower validation loss before training stops; the best weights are
        restored.
    class_weight : {"balanced"} or None
        "balanced" weights the loss by inverse class frequency for imbalanced data.
    dropout : float
        Dropout before the new head.
    label_smoothing, weight_decay : float
    seed : int
        Fixes the split, initialisation, shuffling and augmentation: same seed, same model.
    weights : str or None
        A local weights file (.safetensors or .pth) to use instead of the registry's.
    skip_bad : bool
        Leave unreadable images out (listed in ``skipped_``) instead of stopping with an error.
    cache_dir : str, False or None
        Where decoded images are cached (None: the default cache; False: no cache).
    checkpoint_dir : str or None
        Write a checkpoint there after every epoch; with ``resume=True`` continue from it.
    device : str
        "auto", "cpu", "cuda" or "cuda:N".
    precision : {"auto", "fp32", "bf16", "fp16"}
    verbose : bool
        Print progress bars and one line per epoch to stderr.

    Attributes
    ----------
    classes_ : ndarray of str
    model_ : torch.nn.Module
    preprocessing_ : Preprocessing
    image_size_ : int
    history_ : dict
        Per-epoch losses, accuracies, images/s; best epoch; whether it stopped early.
    plan_ : NetworkPlan
        Which stages were frozen and how many parameters trained.
    skipped_ : list of SkippedFile
        Images left out by ``skip_bad``.
    fit_seconds_ : float

    Examples
    --------
    >>> clf = ImageClassifier(epochs=3).fit("elpv:train")  # doctest: +SKIP
    >>> clf.score("elpv:test")  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        strategy: Strategy = "finetune",
        freeze: int | None = None,
        epochs: int = 10,
        lr: float = 1e-3,
        backbone_lr_factor: float = 0.1,
        image_size: int | None = None,
        augment: str = "standard",
        batch_size: int = 32,
        val_fraction: float = 0.15,
        patience: int = 3,
        class_weight: Literal["balanced"] | None = None,
        dropout: float = 0.2,
        label_smoothing: float = 0.1,
        weight_decay: float = 1e-4,
        seed: int = 0,
        weights: str | None = None,
        skip_bad: bool = False,
        cache_dir: str | bool | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        device: str = "auto",
        precision: str = "auto",
        verbose: bool = False,
    ):
        self.backbone = backbone
        self.strategy = strategy
        self.freeze = freeze
        self.epochs = epochs
        self.lr = lr
        self.backbone_lr_factor = backbone_lr_factor
        self.image_size = image_size
        self.augment = augment
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.class_weight = class_weight
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.seed = seed
        self.weights = weights
        self.skip_bad = skip_bad
        self.cache_dir = cache_dir
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.device = device
        self.precision = precision
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> "ImageClassifier":
        """Train on ``X`` (folder, CSV, built-in name, list of paths, uint8 array, ImageSet).

        ``y`` holds the labels when ``X`` is a list of paths or an array.
        """
        started = time.perf_counter()
        self._validate_params()
        console = self._console()
        runtime = resolve_runtime(self.device, self.precision)
        spec = get_backbone_spec(self.backbone)
        size = self.image_size or spec.preprocessing.input_size

        images = resolve_data(X, y, skip_bad=self.skip_bad)
        if images.labels is None:
            raise DataError("fit needs labelled images; got images without labels. Pass y=labels, or a folder/CSV with labels.")
        decoded = decode_images(images, size, skip_bad=self.skip_bad, cache_dir=self.cache_dir, progress=self.verbose)
        skipped = list(images.skipped) + list(decoded.skipped)
        images = images.subset(decoded.indices)
        pixels = decoded.pixels
        check_classes(images, min_per_class=2 if self.val_fraction > 0 else 1, purpose="a stratified validation split")
        for item in skipped:
            console.print(f"[yellow]skipped[/] {item.path}: {item.reason}")

        classes = np.array(images.classes)
        targets = np.searchsorted(classes, np.asarray(images.labels))
        train_idx, val_idx = self._split(images, targets)
        console.print(
            f"data: {len(images)} images, {len(classes)} classes; training on {len(train_idx)}, "
            f"validating on {len(val_idx)}; {size}x{size} px; {runtime.describe()}"
        )

        pretrained = uses_pretrained_weights(self.strategy)
        torch.manual_seed(self.seed)  # the new head's (and scratch's) initial weights
        model, preprocessing = create_backbone(
            self.backbone,
            num_classes=len(classes),
            pretrained=pretrained,
            weights_path=self.weights if pretrained else None,
            drop_rate=self.dropout,
        )
        head, backbone, plan = configure_network(
            model, self.strategy, freeze_stages=self.freeze, backbone_lr_factor=self.backbone_lr_factor
        )
        console.print(plan.describe())

        class_weights = None
        if self.class_weight == "balanced":
            class_weights = torch.as_tensor(
                compute_class_weight("balanced", classes=np.arange(len(classes)), y=targets[train_idx])
            )
        config = TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            backbone_lr_factor=plan.backbone_lr_factor,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            patience=self.patience,
            label_smoothing=self.label_smoothing,
            seed=self.seed,
        )
        # Sort the indices so a memmap is read in order; the loader shuffles anyway.
        train_data = (pixels[np.sort(train_idx)], targets[np.sort(train_idx)])
        val_data = (pixels[np.sort(val_idx)], targets[np.sort(val_idx)]) if len(val_idx) else None
        result = train_model(
            model,
            head,
            backbone,
            train_data,
            val_data,
            preprocessing=preprocessing,
            config=config,
            runtime=runtime,
            augment=build_augmentation(self.augment),
            class_weights=class_weights,
            checkpoint_dir=self.checkpoint_dir,
            resume=self.resume,
            fingerprint=self._fingerprint(len(images), classes),
            verbose=self.verbose,
        )

        self.classes_ = classes
        self.model_ = model.cpu().eval()
        self.preprocessing_ = preprocessing
        self.image_size_ = size
        self.history_ = result.to_dict()
        self.plan_ = plan
        self.skipped_ = skipped
        self.n_train_ = len(train_idx)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    # ------------------------------------------------------------ predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_images, n_classes), columns in ``classes_`` order."""
        self._check_fitted()
        images = as_unlabelled(X)
        decoded = decode_images(images, self.image_size_, skip_bad=False, cache_dir=self.cache_dir, progress=self.verbose)
        runtime = resolve_runtime(self.device, self.precision)
        model = runtime.prepare_model(self.model_)
        logits = predict_logits(model, decoded.pixels, self.preprocessing_, runtime, batch_size=self.batch_size * 2)
        self.model_ = model.cpu()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class name of each image."""
        probabilities = self.predict_proba(X)
        return self.classes_[probabilities.argmax(axis=1)]

    def score(self, X: Any, y: Any = None, sample_weight=None) -> float:
        """Accuracy on ``X``; labels come from ``y`` or from ``X`` itself (folder, CSV, name)."""
        if y is None:
            images = resolve_data(X)
            X, y = images, images.labels
        return super().score(X, np.asarray(y).astype(str), sample_weight=sample_weight)

    # ------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "model_")
        except Exception as exc:  # sklearn raises its own NotFittedError
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(...) or transferkit.load(path) first."
            ) from exc

    def _console(self) -> Console:
        return Console(stderr=True, quiet=not self.verbose)

    def _validate_params(self) -> None:
        if self.strategy not in NETWORK_STRATEGIES:
            raise ConfigError(f"unknown strategy; expected one of {', '.join(NETWORK_STRATEGIES)}. Received: strategy={self.strategy!r}")
        if self.augment not in AUGMENT_PRESETS:
            raise ConfigError(f"unknown augmentation preset; expected one of {', '.join(AUGMENT_PRESETS)}. Received: augment={self.augment!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} expected a positive integer. Received: {name}={value!r}")
        if self.patience < 1:
            raise ConfigError(f"patience expected a positive integer. Received: patience={self.patience!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr expected a positive number. Received: lr={self.lr!r}")
        if not self.backbone_lr_factor > 0:
            raise ConfigError(f"backbone_lr_factor expected a positive number. Received: backbone_lr_factor={self.backbone_lr_factor!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction expected a number in [0, 1). Received: val_fraction={self.val_fraction!r}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size expected an integer >= 16 (or None). Received: image_size={self.image_size!r}")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight expected None or 'balanced'. Received: class_weight={self.class_weight!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout expected a number in [0, 1). Received: dropout={self.dropout!r}")

    def _split(self, images: ImageSet, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stratified train/validation indices; by strata (e.g. label + cell type) when each has 2+."""
        indices = np.arange(len(targets))
        if self.val_fraction == 0:
            return indices, indices[:0]
        strata = np.asarray(images.strata if images.strata is not None else images.labels)
        _, counts = np.unique(strata, return_counts=True)
        if counts.min() < 2:
            strata = targets
        n_val = max(len(np.unique(targets)), int(round(self.val_fraction * len(targets))))
        try:
            return train_test_split(indices, test_size=n_val, stratify=strata, random_state=self.seed)
        except ValueError as exc:
            raise DataError(
                f"cannot make a stratified validation split of {n_val} images from {len(targets)} "
                f"({exc}); add images, lower val_fraction, or set val_fraction=0."
            ) from exc

    def _fingerprint(self, n_images: int, classes: np.ndarray) -> dict[str, Any]:
        """Settings that must not change between a run and its resume."""
        keys = ("backbone", "strategy", "freeze", "epochs", "lr", "backbone_lr_factor", "image_size",
                "augment", "batch_size", "val_fraction", "seed", "class_weight", "dropout")
        fingerprint = {key: getattr(self, key) for key in keys}
        fingerprint.update(n_images=n_images, classes=[str(c) for c in classes])
        return fingerprint


def as_unlabelled(X: Any) -> ImageSet:
    """Images to predict: an ImageSet, a labelled source (labels ignored), paths or an array."""
    if isinstance(X, ImageSet):
        return X
    if isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim in (3, 4):
        return ImageSet(sources=list(X), labels=None)
    if isinstance(X, (list, tuple)):
        return ImageSet(sources=[str(x) if not isinstance(x, np.ndarray) else x for x in X], labels=None)
    return resolve_data(X)
