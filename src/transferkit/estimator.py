"""``ImageClassifier``: a scikit-learn estimator that transfers a pretrained network.

It follows scikit-learn's contract: ``__init__`` only stores its arguments, ``fit``
validates them and returns ``self``, and every learned attribute ends in ``_``. So
``clone``, ``cross_val_score`` and ``GridSearchCV`` work on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
from transferkit.strategies.features import FeatureExtractor
from transferkit.strategies.linear import FEATURE_STRATEGIES, fit_linear_classifier, fold_into_head
from transferkit.strategies.network import NETWORK_STRATEGIES, configure_network, uses_pretrained_weights
from transferkit.training.augment import AUGMENT_PRESETS, build_augmentation
from transferkit.training.inputs import predict_logits
from transferkit.training.loop import TrainConfig, train_model
from transferkit.training.prefix import frozen_block_count
from transferkit.training.runtime import resolve_runtime

Strategy = Literal["auto", "svm", "logistic", "head", "finetune", "full", "scratch"]
STRATEGIES: tuple[str, ...] = FEATURE_STRATEGIES + NETWORK_STRATEGIES
FROZEN_BACKBONE_STRATEGIES = (*FEATURE_STRATEGIES, "head")
"""Strategies that leave the pretrained backbone untouched: predict reads the feature cache."""
AUTO_PROBE_IMAGES = 512
"""``strategy="auto"`` measures domain shift and LogME on a stratified sample of this many images."""


class ImageClassifier(ClassifierMixin, BaseEstimator):
    """Classify images with a pretrained backbone and a new K-class head.

    Parameters
    ----------
    backbone : str
        Registry name (``transferkit models`` lists them) or any timm model name.
    strategy : {"auto", "svm", "logistic", "head", "finetune", "full", "scratch"}
        ``auto`` (default) measures the data and follows the advisor
        (:func:`transferkit.advise.advise`; ``advice_`` says why); ``svm``/``logistic``: a
        linear classifier on frozen bottleneck features
        (:mod:`transferkit.strategies.linear`); the others train (part of) the network
        (:mod:`transferkit.strategies.network`).
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
    class_weight : {"balanced", "none"} or None
        "balanced" weights the loss by inverse class frequency for imbalanced data; "none"
        keeps equal weights even when ``strategy="auto"`` would weight; None leaves the choice
        to the advisor (``auto``) and means equal weights otherwise.
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
    C : float or None
        ``svm``/``logistic`` only: regularisation; None picks it by inner 3-fold CV.
    feature_views : int
        ``svm``/``logistic`` only: augmented views per training image (``augment`` preset)
        added to the training features; 0 uses the images as they are.
    prefix_views : int
        ``head``/``finetune``: run the frozen stages once per image for this many augmented
        views and train only the rest on the cached activations (epoch e uses view
        e % prefix_views); 0 runs the plain loop. See :mod:`transferkit.training.prefix`.
    budget_minutes : float or None
        ``strategy="auto"`` only: the advisor times its forward pass on this machine and, when
        the advised plan would take longer than this, trains at a smaller image size or falls
        back to ``svm`` (saying so). The advisor's own measurement is not counted.
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
    settings_ : dict
        The strategy, freeze, image size and class weight actually used.
    advice_ : Advice or None
        The advisor's measurements and reasons when ``strategy="auto"``.
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
        strategy: Strategy = "auto",
        freeze: int | None = None,
        epochs: int = 10,
        lr: float = 1e-3,
        backbone_lr_factor: float = 0.1,
        image_size: int | None = None,
        augment: str = "standard",
        batch_size: int = 32,
        val_fraction: float = 0.15,
        patience: int = 3,
        class_weight: Literal["balanced", "none"] | None = None,
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
        C: float | None = None,
        feature_views: int = 0,
        prefix_views: int = 0,
        budget_minutes: float | None = None,
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
        self.C = C
        self.feature_views = feature_views
        self.prefix_views = prefix_views
        self.budget_minutes = budget_minutes
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

        images = resolve_data(X, y, skip_bad=self.skip_bad)
        if images.labels is None:
            raise DataError("fit needs labelled images; got images without labels. Pass y=labels, or a folder/CSV with labels.")
        pixels, skipped = None, []
        self.advice_ = None
        if self.strategy == "auto":
            # Bad files are dropped (or reported) before the advisor measures anything.
            pixels, images, skipped = self._decode(X, images, spec.preprocessing.input_size)
            self.advice_ = self._advise(images, console)
        self.settings_ = self._settings(spec)
        size = self.settings_["image_size"]
        if pixels is None or pixels.shape[1] != size:
            pixels, images, more_skipped = self._decode(X, images, size)
            skipped += more_skipped
        strategy = self.settings_["strategy"]
        needs_split = self.val_fraction > 0 if strategy in NETWORK_STRATEGIES else self.C is None
        check_classes(images, min_per_class=2 if needs_split else 1, purpose="a stratified split")
        for item in skipped:
            console.print(f"skipped {item.path}: {item.reason}")

        classes = np.array(images.classes)
        targets = np.searchsorted(classes, np.asarray(images.labels))
        console.print(
            f"data: {len(images)} images, {len(classes)} classes; {size}x{size} px; {runtime.describe()}"
        )
        torch.manual_seed(self.seed)  # the new head's (and scratch's) initial weights
        if strategy in FEATURE_STRATEGIES:
            model, preprocessing, history, plan = self._fit_features(pixels, targets, len(classes), runtime, console)
        else:
            model, preprocessing, history, plan = self._fit_network(images, pixels, targets, classes, runtime, console)

        self.classes_ = classes
        self.model_ = model.cpu().eval()
        self.preprocessing_ = preprocessing
        self.image_size_ = size
        self.history_ = history
        self.plan_ = plan
        self.skipped_ = skipped
        self.n_train_ = len(targets)
        self.validation_score_ = validation_score(history)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _fit_network(self, images, pixels, targets, classes, runtime, console):
        train_idx, val_idx = self._split(images, targets)
        console.print(f"training on {len(train_idx)}, validating on {len(val_idx)}")
        settings = self.settings_
        pretrained = uses_pretrained_weights(settings["strategy"])
        model, preprocessing = create_backbone(
            self.backbone,
            num_classes=len(classes),
            pretrained=pretrained,
            weights_path=self.weights if pretrained else None,
            drop_rate=self.dropout,
        )
        head, backbone, plan = configure_network(
            model, settings["strategy"], freeze_stages=settings["freeze"], backbone_lr_factor=self.backbone_lr_factor
        )
        console.print(plan.describe())

        class_weights = None
        if settings["class_weight"] == "balanced":
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
            prefix_views=self.prefix_views,
        )
        # Sort the indices so a memmap is read in order; the loader shuffles anyway.
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
        train_data = (pixels[train_idx], targets[train_idx])
        val_data = (pixels[val_idx], targets[val_idx]) if len(val_idx) else None
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
            fingerprint=self._fingerprint(len(targets), classes),
            prefix_start=frozen_block_count(model, plan.frozen_stages),
            pooled_features=self._shared_features(settings["strategy"], runtime),
            verbose=self.verbose,
        )
        return model, preprocessing, result.to_dict(), plan

    def _shared_features(self, strategy: str, runtime):
        """``head`` on cached views reads and writes the bottleneck-feature cache of ``svm``."""
        if strategy != "head" or self.prefix_views == 0:
            return None
        return FeatureExtractor(self.backbone, weights=self.weights, runtime=runtime, cache_dir=self.cache_dir).transform

    def _fit_features(self, pixels, targets, n_classes, runtime, console):
        extractor = FeatureExtractor(self.backbone, weights=self.weights, runtime=runtime, cache_dir=self.cache_dir)
        started = time.perf_counter()
        features = [extractor.transform(pixels)]
        labels, groups = [targets], [np.arange(len(targets))]
        augment = build_augmentation(self.augment)
        for view in range(self.feature_views if augment is not None else 0):
            torch.manual_seed(self.seed * 1000 + view)
            views = np.stack([augment(torch.from_numpy(np.array(image)).permute(2, 0, 1)).permute(1, 2, 0).numpy() for image in pixels])
            features.append(extractor.transform(views))
            labels.append(targets)
            groups.append(np.arange(len(targets)))
        extract_seconds = time.perf_counter() - started
        pipeline, info = fit_linear_classifier(
            np.concatenate(features), np.concatenate(labels), np.concatenate(groups),
            strategy=self.settings_["strategy"], C=self.C, seed=self.seed, class_weight=self.settings_["class_weight"],
        )
        model = extractor.model
        fold_into_head(model, pipeline, n_classes)
        plan = FeaturePlan(
            strategy=self.settings_["strategy"], C=float(info["C"]), inner_cv=info["inner_cv"], views=len(features) - 1,
            feature_dim=extractor.dim, extract_seconds=extract_seconds,
        )
        console.print(plan.describe())
        history = {"history": [], "best_epoch": 0, "stopped_early": False, "resumed_from_epoch": 0, "linear": info}
        return model, extractor.preprocessing, history, plan

    # ------------------------------------------------------------ predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_images, n_classes), columns in ``classes_`` order."""
        self._check_fitted()
        pixels = load_pixels(X, self.image_size_, cache_dir=self.cache_dir, progress=self.verbose)
        runtime = resolve_runtime(self.device, self.precision)
        if getattr(self, "settings_", {}).get("strategy") in FROZEN_BACKBONE_STRATEGIES:
            # The backbone is the pretrained one: its features may already sit in the cache.
            extractor = FeatureExtractor.from_model(self.model_, self.preprocessing_, runtime=runtime, cache_dir=self.cache_dir)
            features = runtime.to_device(torch.from_numpy(extractor.transform(pixels)))
            with torch.no_grad():
                logits = extractor.model.get_classifier()(features).float().cpu()
            self.model_ = extractor.model.cpu()
        else:
            model = runtime.prepare_model(self.model_)
            logits = predict_logits(model, pixels, self.preprocessing_, runtime, batch_size=self.batch_size * 2)
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
    def _decode(self, X: Any, images: ImageSet, size: int) -> tuple[np.ndarray, ImageSet, list]:
        """Pixels at ``size``, the images kept, and the files skipped (``skip_bad``)."""
        if is_decoded(X, size) and len(X) == len(images):
            return X, images, []
        decoded = decode_images(images, size, skip_bad=self.skip_bad, cache_dir=self.cache_dir, progress=self.verbose)
        return decoded.pixels, images.subset(decoded.indices), list(images.skipped) + list(decoded.skipped)

    def _advise(self, images: ImageSet, console: Console):
        from transferkit.advise import advise

        advice = advise(
            images, backbones=[self.backbone], weights_path=self.weights, device=self.device,
            max_images=AUTO_PROBE_IMAGES, seed=self.seed, epochs=self.epochs,
            budget_seconds=None if self.budget_minutes is None else 60.0 * self.budget_minutes,
        )
        recommendation = advice.recommendation
        console.print(f"strategy auto -> {recommendation.strategy}, because:")
        for reason in recommendation.reasons:
            console.print(f"  - {reason}")
        for warning in recommendation.warnings:
            console.print(f"  warning: {warning}")
        return advice

    def _settings(self, spec) -> dict[str, Any]:
        """The effective strategy, freeze, image size and class weight: the user's where given,
        else the advisor's (``strategy="auto"``), else the defaults."""
        advised = self.advice_.recommendation if self.advice_ is not None else None
        strategy = advised.strategy if advised is not None else self.strategy
        freeze = self.freeze
        if advised is not None:
            # The advisor's depth unless the user set one; only finetune freezes a chosen depth.
            freeze = (advised.freeze if freeze is None else freeze) if strategy == "finetune" else None
        return {
            "strategy": strategy,
            "freeze": freeze,
            "image_size": self.image_size or (advised.image_size if advised else None) or spec.preprocessing.input_size,
            "class_weight": None if self.class_weight == "none" else (self.class_weight or (advised.class_weight if advised else None)),
        }

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "model_")
        except Exception as exc:  # sklearn raises its own NotFittedError
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(...) or transferkit.load(path) first."
            ) from exc

    def _console(self) -> Console:
        return Console(stderr=True, emoji=False, markup=False, highlight=False, quiet=not self.verbose)  # user text printed literally

    def _validate_params(self) -> None:
        if self.strategy not in ("auto", *STRATEGIES):
            raise ConfigError(f"unknown strategy; expected auto or one of {', '.join(STRATEGIES)}. Received: strategy={self.strategy!r}")
        if self.C is not None and not self.C > 0:
            raise ConfigError(f"C expected a positive number (or None). Received: C={self.C!r}")
        for name in ("feature_views", "prefix_views"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"{name} expected a non-negative integer. Received: {name}={value!r}")
        if self.augment not in AUGMENT_PRESETS:
            raise ConfigError(f"unknown augmentation preset; expected one of {', '.join(AUGMENT_PRESETS)}. Received: augment={self.augment!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} expected a positive integer. Received: {name}={value!r}")
        if self.patience < 1:
            raise ConfigError(f"patience expected a positive integer. Received: patience={self.patience!r}")
        if self.budget_minutes is not None and not (isinstance(self.budget_minutes, (int, float)) and self.budget_minutes > 0):
            raise ConfigError(f"budget_minutes expected a positive number (or None). Received: budget_minutes={self.budget_minutes!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr expected a positive number. Received: lr={self.lr!r}")
        if not self.backbone_lr_factor > 0:
            raise ConfigError(f"backbone_lr_factor expected a positive number. Received: backbone_lr_factor={self.backbone_lr_factor!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction expected a number in [0, 1). Received: val_fraction={self.val_fraction!r}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size expected an integer >= 16 (or None). Received: image_size={self.image_size!r}")
        if self.class_weight not in (None, "balanced", "none"):
            raise ConfigError(f"class_weight expected None, 'balanced' or 'none'. Received: class_weight={self.class_weight!r}")
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
                "augment", "batch_size", "val_fraction", "seed", "class_weight", "dropout", "label_smoothing", "weight_decay", "prefix_views")
        fingerprint = {key: getattr(self, key) for key in keys}
        fingerprint.update(self.settings_, n_images=n_images, classes=[str(c) for c in classes])
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


@dataclass(frozen=True)
class FeaturePlan:
    """What a feature strategy fitted, for logs and config.json."""

    strategy: str
    C: float
    inner_cv: dict[str, float] | None
    views: int
    feature_dim: int
    extract_seconds: float

    def describe(self) -> str:
        how = "chosen by inner CV" if self.inner_cv else "given"
        views = f" + {self.views} augmented views per image" if self.views else ""
        return (
            f"{self.strategy} on {self.feature_dim}-d frozen bottleneck features{views}; C={self.C:g} ({how}); "
            f"features in {self.extract_seconds:.1f} s"
        )


def validation_score(history: dict[str, Any]) -> float | None:
    """Held-out accuracy seen during fit: the best epoch's validation accuracy, or the inner-CV
    accuracy of the chosen C for the feature strategies; None when there was neither."""
    linear = history.get("linear")
    if linear and linear.get("inner_cv"):
        return max(linear["inner_cv"].values())
    epochs = history.get("history") or []
    if epochs and history.get("best_epoch"):
        return epochs[history["best_epoch"] - 1]["val_accuracy"]
    return None


def is_decoded(X: Any, size: int) -> bool:
    """Whether X is already what decode_images would make: uint8 (N, size, size, 3)."""
    return isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim == 4 and X.shape[1:] == (size, size, 3)


def load_pixels(X: Any, size: int, *, cache_dir: str | bool | None = None, progress: bool = False) -> np.ndarray:
    """Decoded uint8 (N, size, size, 3) pixels of X (any input :func:`as_unlabelled` takes)."""
    if is_decoded(X, size):
        return X
    return decode_images(as_unlabelled(X), size, skip_bad=False, cache_dir=cache_dir, progress=progress).pixels
