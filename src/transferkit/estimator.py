"""``ImageClassifier``: a scikit-learn estimator that transfers a pretrained network.

It follows scikit-learn's contract: ``__init__`` only stores its arguments, ``fit``
validates them and returns ``self``, and every learned attribute ends in ``_``. So
``clone``, ``cross_val_score`` and ``GridSearchCV`` work on it.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable, Literal

import numpy as np
import torch
from rich.console import Console
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.advise import Advice, advise
from transferkit.backbones import Preprocessing, get_backbone_spec
from transferkit.constraints import AUTO
from transferkit.data import (
    ImageSet, check_classes, content_digests, decode_images, describe_conflicts, duplicate_groups, is_decoded,
    label_conflicts, load_pixels, pixel_groups, resolve_data, thumbnails,
)
from transferkit.errors import ConfigError, DataError, NotFittedError
from transferkit.evaluation.metrics import balanced_accuracy, imbalance_note, majority_class_rate
from transferkit.evaluation.novelty import NoveltyScorer, fit_novelty
from transferkit.lines import Wrapped
from transferkit.defaults import DEFAULTS
from transferkit.selection.auto import search_auto
from transferkit.selection.cost import Speeds, estimated_fit_seconds
from transferkit.selection.engine import Arena
from transferkit.strategies import FitRequest, Settings, get_strategy, list_strategies
from transferkit.strategies.features import FeatureExtractor, symmetric_features
from transferkit.strategies.linear import settle_feature_precision
from transferkit.strategies.parameters import PARAMETER_CONSTRAINTS, check_params
from transferkit.training.inputs import network_outputs
from transferkit.training.runtime import is_main_process, prediction_runtime, resolve_runtime

Strategy = Literal["auto", "svm", "logistic", "head", "finetune", "full", "scratch", "pixels", "ensemble"]
AUTO_PROBE_IMAGES = 512
"""``strategy="auto"`` measures domain shift and LogME on a stratified sample of this many images."""
DEFAULT_BUDGET_MINUTES = 10.0
"""``strategy="auto"`` plans within this many minutes unless ``budget_minutes`` says otherwise:
a few thousand images on a 2-core laptop, the network candidate included."""
RUNTIME_PARAMS = ("device", "precision", "checkpoint_dir", "resume", "cache_dir", "verbose")
"""Parameters that say where and how this process runs, not what the model is: never saved."""


class ImageClassifier(ClassifierMixin, BaseEstimator):
    """Classify images with a pretrained backbone and a new K-class head.

    Every parameter after ``backbone`` is keyword-only; their constraints are declared once,
    in ``_parameter_constraints``, and checked at the start of ``fit``.

    Parameters
    ----------
    backbone : str
        Registry name (``transferkit models`` lists them) or any timm model name.
    strategy : {"auto", "svm", "logistic", "head", "finetune", "full", "scratch", "pixels", "ensemble"}
        ``auto`` (default) measures the data and follows the advisor
        (:func:`transferkit.advise.advise`; ``advice_`` says why); otherwise a name from the
        strategy registry (:func:`transferkit.strategies.list_strategies`): ``svm``/``logistic``
        fit a linear classifier on frozen bottleneck features
        (:mod:`transferkit.strategies.linear`); ``ensemble`` averages the probabilities of a
        trained network and an ``svm`` on frozen features (:mod:`transferkit.strategies.ensemble`;
        ``symmetries``, ``feature_layers`` and ``C`` are its svm's); the others train (part of) the
        network (:mod:`transferkit.strategies.network`).
    freeze : int or "auto"
        ``finetune`` only (and ``ensemble``'s network, which is ``full`` without it): the stem
        and the first ``freeze`` stages get no gradient.
        ``"auto"``: the advisor's depth with ``strategy="auto"``, else the default (3).
    epochs : int
        Maximum number of epochs; early stopping may end sooner.
    lr : float
        Learning rate of the new head (and of every layer for ``scratch``).
    backbone_lr_factor : float or "auto"
        Pretrained layers train at ``lr * backbone_lr_factor``. ``"auto"``: with
        ``strategy="auto"``, a pilot (2 short trainings at a small side on the held-out fold)
        measures the playbook's 0.1 (10x smaller) against 1 and the network uses the better,
        keeping 0.1 unless 1 wins beyond the fold's noise; otherwise 0.1.
    image_size : int or "auto"
        Side of the square images fed to the network; ``"auto"``: the advisor's choice with
        ``strategy="auto"``, else the backbone's own size.
    augment : "auto", preset, composition or callable
        Training-time augmentation of the network strategies: a preset (``none``, ``light``,
        ``standard``, ``strong``), a comma-separated composition of ``hflip``, ``vflip``,
        ``rot90`` (a random multiple of 90 degrees), ``rotate`` (a small angle), ``translate``,
        ``scale``, ``color`` (e.g. ``"rotate,translate"``: no flips),
        or a callable on uint8 (C, H, W) tensors such as a torchvision ``v2.Compose``.
        ``"auto"``: with ``strategy="auto"``, translation and rotation plus the flips and the
        90-degree turns that the symmetry test found to keep the class; otherwise
        ``standard``. Validation and test images are never augmented. See
        :mod:`transferkit.training.augment`.
    batch_size : int
    val_fraction : float
        Stratified hold-out share of the training data used for early stopping; 0 trains on
        everything for ``epochs`` epochs.
    patience : int
        Epochs without a lower validation loss before training stops; the best weights are
        restored.
    class_weight : {"auto", "balanced", "none"}
        "balanced" weights the loss by inverse class frequency for imbalanced data; "none"
        keeps equal weights even when ``strategy="auto"`` would weight; "auto" leaves the
        choice to the advisor (``strategy="auto"``) and means equal weights otherwise.
    dropout : float
        Dropout before the new head.
    head_init : {"random", "probe"}
        ``head``/``finetune``/``full``: how the new K-class head starts. ``"random"``: timm's
        initialisation. ``"probe"``: as the linear probe on the network's own features of the
        training images (logistic regression, ``C`` as for ``logistic``; one extra forward
        pass), then training refines it (LP-FT). Not the default: measured, it helped ``head``
        on 150 face crops (0.86 -> 0.98) but not ``head`` on 8-px digits (0.80 -> 0.76) nor
        ``full`` on ELPV (0.71 -> 0.68); see benchmarks/RESULTS.md. The trainable stages'
        BatchNorm statistics move in training, so for finetune/full it is a starting point
        only. ``scratch`` always starts random.
    label_smoothing, weight_decay : float
    regularization : {"auto", "none", "light", "strong"}
        Network strategies: the regularisers of modern small-data recipes, as presets of
        :data:`transferkit.training.regularize.REGULARIZATION`: ``"light"`` adds stochastic
        depth 0.05 and a weight average (EMA, validated beside the raw weights, the better
        kept); ``"strong"`` adds mixup 0.2 / cutmix 1.0 on half the batches, random erasing 0.25
        and stochastic depth 0.1. ``"auto"``: with ``strategy="auto"`` a short pilot trains the
        network with each setting and keeps the strongest whose held-out accuracy is within the
        noise of the best (``selection/auto.py``); a named network strategy trains with
        ``"none"`` (the recipe before these existed).
    sampling : {"auto", "shuffle", "balanced"}
        Network strategies: each image once per epoch in random order, or class-balanced draws
        (rare classes seen more often; the alternative to ``class_weight="balanced"``).
        ``"auto"``: with ``strategy="auto"`` on imbalanced classes a pilot measures balanced draws
        against plain ones on balanced accuracy; otherwise ``"shuffle"``.
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
        "auto", "cpu", "cuda" or "cuda:N". Not saved with the model: a model fitted on a GPU
        predicts on a CPU-only machine.
    precision : {"auto", "fp32", "bf16", "fp16"}
    C : float or "auto"
        ``svm``/``logistic`` only: regularisation; ``"auto"`` picks it by inner 3-fold CV.
    feature_views : int
        ``svm``/``logistic`` only: augmented views per training image (``augment`` preset)
        added to the training features; 0 uses the images as they are.
    prefix_views : int
        ``head``/``finetune``: run the frozen stages once per image for this many augmented
        views and train only the rest on the cached activations (epoch e uses view
        e % prefix_views); 0 runs the plain loop. See :mod:`transferkit.training.prefix`.
    symmetries : {"auto", "none", "flips", "dihedral"}
        ``svm``/``logistic``: average the features over these image symmetries at fit and at
        predict (test-time augmentation; ``flips``: horizontal, vertical, 180 degrees;
        ``dihedral``: those and the four views turned by 90 degrees, 8 in all; see
        :mod:`transferkit.data.views`).
        ``"auto"``: what the measurement of ``strategy="auto"`` chose, else ``"none"``.
    feature_layers : {"auto", "bottleneck", "stages"}
        ``svm``/``logistic``: the features the classifier reads. ``"bottleneck"``: the pooled
        layer before the pretrained classifier (the playbook's); ``"stages"``: that plus the
        mean- and max-pooled output of every stage at stride 4 or deeper (multi-layer features,
        2,816 values for Lite0: what earlier, more general layers see, for data far from
        ImageNet; :class:`~transferkit.backbones.multilayer.StagePooledNetwork`). ``"auto"``: what
        the search of ``strategy="auto"`` measured best, else ``"bottleneck"``.
    budget_minutes : float, "auto" or None
        ``strategy="auto"`` only: wall time of the whole fit (probe, candidate search, final
        fit), in minutes. Candidates are priced with speeds measured on this machine and skipped
        when they no longer fit; a network in training stops before the budget ends. ``"auto"``:
        :data:`DEFAULT_BUDGET_MINUTES` (10); None: no bound.
    verbose : bool
        Print progress bars and one line per epoch to stderr.

    Attributes
    ----------
    classes_ : ndarray, shape (n_classes,)
        The class labels, sorted, of the type ``y`` had (ints stay ints, as in scikit-learn);
        ``str`` for folders, CSV files and built-in names. ``predict`` returns these values.
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
    validation_ : dict or None
        What ``validation_score_`` is (``"inner CV"`` of the chosen C, or the ``"held-out
        split"`` of early stopping), with its balanced accuracy where measured and the
        majority-class rate of the training data (:func:`validation_summary`).
    class_counts_ : dict of str to int
        Training images per class (after ``skip_bad``).
    training_digests_ : list of str or None
        Content hashes of the training images (``transferkit.data.content_digests``), saved
        with the model so that ``evaluate`` counts the test images it was trained on.
    novelty_ : NoveltyScorer or None
        The training images' features and the threshold above which an image is flagged
        unknown (:mod:`transferkit.evaluation.novelty`; ``predict_proba(X, return_novelty=True)``).
        None for the ``pixels`` strategy (no pooled features) and for models saved before
        novelty existed: they have no score.
    training_thumbnails_ : uint8 array (n_train, 24, 24) or None
        Grey thumbnails of the training images (``transferkit.data.thumbnails``), saved with
        the model so that ``evaluate`` names test images that are near-copies of them.
    training_names_ : list of str or None
        The training images' paths (or ``array[i]``), in the order of the thumbnails.

    Examples
    --------
    >>> clf = ImageClassifier(epochs=3).fit("elpv:train")  # doctest: +SKIP
    >>> clf.score("elpv:test")  # doctest: +SKIP
    """

    _parameter_constraints: dict[str, list] = dict(PARAMETER_CONSTRAINTS)
    """The one table (:data:`transferkit.strategies.parameters.PARAMETER_CONSTRAINTS`)."""

    def __init__(
        self,
        backbone: str = DEFAULTS["backbone"],
        *,
        strategy: Strategy = DEFAULTS["strategy"],
        freeze: int | Literal["auto"] = DEFAULTS["freeze"],
        epochs: int = DEFAULTS["epochs"],
        lr: float = DEFAULTS["lr"],
        backbone_lr_factor: float | str = DEFAULTS["backbone_lr_factor"],
        image_size: int | Literal["auto"] = DEFAULTS["image_size"],
        augment: str | Callable = DEFAULTS["augment"],
        batch_size: int = DEFAULTS["batch_size"],
        val_fraction: float = DEFAULTS["val_fraction"],
        patience: int = DEFAULTS["patience"],
        class_weight: Literal["auto", "balanced", "none"] = DEFAULTS["class_weight"],
        dropout: float = DEFAULTS["dropout"],
        head_init: Literal["random", "probe"] = DEFAULTS["head_init"],
        label_smoothing: float = DEFAULTS["label_smoothing"],
        regularization: str = DEFAULTS["regularization"],
        sampling: Literal["auto", "shuffle", "balanced"] = DEFAULTS["sampling"],
        weight_decay: float = DEFAULTS["weight_decay"],
        seed: int = DEFAULTS["seed"],
        weights: str | None = DEFAULTS["weights"],
        skip_bad: bool = DEFAULTS["skip_bad"],
        cache_dir: str | bool | None = DEFAULTS["cache_dir"],
        checkpoint_dir: str | None = DEFAULTS["checkpoint_dir"],
        resume: bool = DEFAULTS["resume"],
        device: str = DEFAULTS["device"],
        precision: str = DEFAULTS["precision"],
        C: float | Literal["auto"] = DEFAULTS["C"],
        feature_views: int = DEFAULTS["feature_views"],
        prefix_views: int = DEFAULTS["prefix_views"],
        budget_minutes: float | Literal["auto"] | None = DEFAULTS["budget_minutes"],
        symmetries: str = DEFAULTS["symmetries"],
        feature_layers: str = DEFAULTS["feature_layers"],
        verbose: bool = DEFAULTS["verbose"],
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
        self.head_init = head_init
        self.label_smoothing = label_smoothing
        self.regularization = regularization
        self.sampling = sampling
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
        self.symmetries = symmetries
        self.feature_layers = feature_layers
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> "ImageClassifier":
        """Train on ``X`` (folder, CSV, built-in name, list of paths, uint8 array, ImageSet).

        ``y`` holds the labels when ``X`` is a list of paths or an array. Reads: resolve the
        data, decode it, let the advisor resolve ``"auto"``, then ``get_strategy(name).fit``.
        """
        started = time.perf_counter()
        check_params(self.get_params(), owner=type(self).__name__)
        console = self._console()
        runtime = resolve_runtime(self.device, self.precision)
        spec = get_backbone_spec(self.backbone)

        images = resolve_data(X, y, skip_bad=self.skip_bad)
        if images.labels is None:
            raise DataError("fit needs labelled images; got images without labels. Pass y=labels, or a folder/CSV with labels.")
        pixels, skipped, advice, digests = None, [], None, None
        if self.strategy == AUTO:
            # Bad files are dropped (or reported) before the advisor measures anything.
            first_size = spec.preprocessing.input_size if self.image_size == AUTO else self.image_size
            pixels, images, skipped = self._decode(X, images, first_size)
            digests = content_digests(images)  # groups copies in the search's folds; kept with the model below
            # Exact copies in one fold. Not near-copies here (yet): ELPV images some cells twice
            # (the same defects a few grey levels apart; 6.6 % of its paper test part re-images a
            # training cell), and grouping them moved the held-out fifth and auto's choice from
            # multi-layer features + flips (test 0.802) to plain svm (0.741) under the old tie rule;
            # `fit --cv`, compare and the race do group them.
            groups = duplicate_groups(images, digests)
            # bf16 features only where a classifier's predictions from them hold up on these labelled images
            runtime = settle_feature_precision(runtime, self.get_params(), pixels, images.targets(), seed=self.seed)
            # torchrun: one decision, rank 0's (the search trains no network there: see select.search_auto)
            speeds = Speeds(self.backbone, self.weights, runtime)  # timed once, for the rules' budget and the search
            advice = runtime.run_on_main(
                lambda: self._search(images, pixels, self._advise(images, console, speeds), runtime, console, started, groups, speeds)
            )
        chosen = advice.search.chosen if advice is not None and advice.search is not None else None
        # auto fits the winning candidate itself: its settings and the parameters it changed
        settings = chosen.candidate.settings() if chosen is not None else self._settings(spec)
        params = {**self.get_params(), **(dict(chosen.candidate.params) if chosen is not None else {})}
        strategy = get_strategy(settings.strategy)
        if pixels is None or pixels.shape[1] != settings.image_size:
            pixels, images, more_skipped = self._decode(X, images, settings.image_size)
            skipped += more_skipped
        needs_split = self.val_fraction > 0 if strategy.trains_network else self.C == AUTO
        check_classes(images, min_per_class=2 if needs_split else 1, purpose="a stratified split")
        for item in skipped:
            console.print(f"skipped {item.path}: {item.reason}")
        if digests is None or len(digests) != len(images):  # hashed once, unless files were skipped since
            digests = content_digests(images)  # kept with the model: evaluate says which test images it has seen
        conflicts = label_conflicts(images, digests)
        if conflicts:
            warnings.warn(describe_conflicts(images, conflicts), stacklevel=2)

        classes = np.array(images.classes)
        targets = images.targets()
        if strategy.frozen_backbone:
            runtime = settle_feature_precision(runtime, self.get_params(), pixels, targets, seed=self.seed)
        console.print(f"data: {len(images)} images, {len(classes)} classes; network input {settings.image_size}x{settings.image_size} px "
                      f"(every image resized to it); {runtime.describe()}")
        note = imbalance_note(images.labels)  # for every strategy: accuracy alone misleads here
        if note is not None:
            console.print(f"note: {note}")
        torch.manual_seed(self.seed)  # the new head's (and scratch's) initial weights
        request = FitRequest(
            pixels=pixels, targets=targets, classes=classes, settings=settings, params=params,
            runtime=runtime, console=console, strata=images.strata,
            fingerprint=self._fingerprint(len(targets), classes, settings),
        )
        # A network trained by the search is the model: training it again would double the time.
        searched = chosen.outcome if chosen is not None else None
        outcome = strategy.fit_after_search(request, searched)
        self._set_fitted(
            classes=class_values(images), model=outcome.model, preprocessing=outcome.preprocessing, image_size=settings.image_size,
            settings=settings.to_dict(), history=outcome.history, plan=outcome.plan, advice=advice, skipped=skipped,
            n_train=len(targets), fit_seconds=time.perf_counter() - started, training_digests=digests,
            # kept with the model: evaluate names test images that are near-copies of these
            training_thumbnails=thumbnails(pixels), training_names=[images.source_name(i) for i in range(len(images))],
            class_counts={str(c): int(n) for c, n in zip(classes, np.bincount(targets, minlength=len(classes)))},
        )
        self.validation_ = validation_summary(self.history_, self.class_counts_)
        if searched is not None:  # the search's own measurement of the model it kept: an ensemble's, not its network member's
            self.validation_ = searched_validation(advice.search, self.class_counts_) or self.validation_
        # held_out indexes the request's pixels: those of this fit, unless the search trained the network
        self.novelty_ = self._fit_novelty(pixels, runtime, held_out=outcome.held_out if searched is None else None)
        return self

    def _fit_novelty(self, pixels: np.ndarray, runtime, held_out: np.ndarray | None) -> NoveltyScorer | None:
        """What "like the training images" means, and where it ends: one more inference pass over
        the training images (for a frozen backbone the features are cached already). In the fit's
        runtime, whose features are in the cache (a bf16 the fit's judgement kept changes few
        predictions, and its features differ from fp32's far less than novel images do from the
        training ones; another precision would extract every training image again)."""
        features = self._outputs(pixels, runtime)[1]
        return None if features is None else fit_novelty(features, pixel_groups(pixels), held_out=held_out, seed=self.seed)

    def _set_fitted(
        self, *, classes, model, preprocessing: Preprocessing, image_size: int, settings: dict[str, Any],
        history: dict[str, Any], plan=None, advice: Advice | None = None, skipped=(), n_train: int | None = None,
        fit_seconds: float | None = None, metrics: dict[str, Any] | None = None, training_digests=None,
        training_thumbnails: np.ndarray | None = None, training_names: list[str] | None = None,
        class_counts: dict[str, int] | None = None, novelty: NoveltyScorer | None = None,
    ) -> None:
        """Set every fitted attribute; ``fit`` and :func:`transferkit.load` both come through here."""
        self.classes_ = np.asarray(classes)
        self.model_ = model.cpu().eval()
        self.preprocessing_ = preprocessing
        self.image_size_ = int(image_size)
        self.settings_ = dict(settings)
        self.history_ = history
        self.plan_ = plan
        self.advice_ = advice
        self.skipped_ = list(skipped)
        self.n_train_ = n_train
        self.class_counts_ = class_counts
        self.validation_score_ = validation_score(history)
        self.validation_ = None  # fit labels it (validation_summary); a loaded model keeps metrics_
        self.fit_seconds_ = fit_seconds
        self.estimated_fit_seconds_ = estimated_fit_seconds(advice)
        self.metrics_ = dict(metrics or {})
        self.training_digests_ = None if training_digests is None else list(training_digests)
        self.novelty_ = novelty
        self.training_thumbnails_ = training_thumbnails
        self.training_names_ = None if training_names is None else list(training_names)

    # ------------------------------------------------------------ predict
    def predict_proba(self, X: Any, *, return_novelty: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities, shape (n_images, n_classes), columns in ``classes_`` order.

        With ``return_novelty=True``: ``(probabilities, novelty)``, where ``novelty`` (n_images,)
        float64 says how unlike the training images each image is (0: like one of them; up to 2),
        from the same forward pass; ``novelty_.unknown(novelty)`` flags those above the
        calibrated threshold. ``novelty`` is None when the model has no score (``novelty_`` is
        None: a model saved before novelty existed, or the ``pixels`` strategy).
        """
        self._check_fitted()
        pixels = load_pixels(X, self.image_size_, cache_dir=self.cache_dir, progress=self.verbose)
        logits, features = self._outputs(pixels, prediction_runtime(self.device, self.precision))  # the one precision of every prediction path
        probabilities = torch.softmax(logits, dim=1).numpy()
        if not return_novelty:
            return probabilities
        scorer = getattr(self, "novelty_", None)
        return probabilities, None if scorer is None or features is None else scorer.score(features)

    def _outputs(self, pixels: np.ndarray, runtime) -> tuple[torch.Tensor, np.ndarray | None]:
        """Logits (N, K) and the pooled features (N, D) the novelty score reads (None: none)."""
        strategy = self.settings_.get("strategy")
        if strategy in list_strategies() and get_strategy(strategy).frozen_backbone:
            # The backbone is the pretrained one: its features may already sit in the cache.
            extractor = FeatureExtractor.from_model(self.model_, self.preprocessing_, runtime=runtime, cache_dir=self.cache_dir)
            features = symmetric_features(extractor, pixels, self.settings_.get("symmetries", "none"))
            features = runtime.to_device(torch.from_numpy(features))
            with torch.no_grad():
                logits = extractor.model.get_classifier()(features).float().cpu()
            self.model_ = extractor.model.cpu()
            return logits, features
        model = runtime.prepare_model(self.model_)
        logits, features = network_outputs(model, pixels, self.preprocessing_, runtime, batch_size=self.batch_size * 2)
        self.model_ = model.cpu()
        return logits, features

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class name of each image."""
        probabilities = self.predict_proba(X)
        return self.classes_[probabilities.argmax(axis=1)]

    def score(self, X: Any, y: Any = None, sample_weight=None) -> float:
        """Accuracy on ``X``; labels come from ``y`` or from ``X`` itself (folder, CSV, name).

        Labels are compared by name (``str``), so ``y`` may hold the values the model was
        fitted with (``3``) or their names (``"3"``).
        """
        if y is None:
            images = resolve_data(X)
            X, y = images, images.labels
        names = np.asarray(self.predict(X)).astype(str)
        return float(np.average(names == np.asarray(y).astype(str), weights=sample_weight))

    # ------------------------------------------------------------ helpers
    def _decode(self, X: Any, images: ImageSet, size: int) -> tuple[np.ndarray, ImageSet, list]:
        """Pixels at ``size``, the images kept, and the files skipped (``skip_bad``)."""
        if is_decoded(X, size) and len(X) == len(images):
            return X, images, []
        decoded = decode_images(images, size, skip_bad=self.skip_bad, cache_dir=self.cache_dir, progress=self.verbose)
        return decoded.pixels, images.subset(decoded.indices), list(images.skipped) + list(decoded.skipped)

    def _budget_seconds(self) -> float | None:
        if self.budget_minutes == AUTO:
            return 60.0 * DEFAULT_BUDGET_MINUTES
        return None if self.budget_minutes is None else 60.0 * float(self.budget_minutes)

    def _advise(self, images: ImageSet, console: Console, speeds: Speeds) -> Advice:
        """The probe and the rules (no training): what the candidate search starts from."""
        budget = self._budget_seconds()
        bound = "no time bound" if budget is None else f"a budget of {budget / 60:g} minutes"
        console.print(f"auto: measuring {len(images):,} images and this machine, then racing candidates within {bound}")
        return advise(
            images, backbones=[self.backbone], weights_path=self.weights, device=self.device,
            max_images=AUTO_PROBE_IMAGES, seed=self.seed, epochs=self.epochs, budget_seconds=budget, speeds=speeds,
        )

    def _search(
        self, images: ImageSet, pixels: np.ndarray, advice: Advice, runtime, console: Console, started: float, groups: np.ndarray | None,
        speeds: Speeds,
    ) -> Advice:
        """Race the candidates the rules propose (:mod:`transferkit.selection.auto`); the winner is
        recorded in the recommendation, with every measurement as its reasons (what ``fit`` prints
        and its JSON holds), and fitted from its own ``settings()``."""
        spec = get_backbone_spec(self.backbone)
        decoded = {int(pixels.shape[1]): pixels}

        def pixels_at(size: int) -> np.ndarray:
            if size not in decoded:
                decoded[size] = decode_images(images, size, cache_dir=self.cache_dir, progress=False).pixels
            return decoded[size]

        classes = np.array(images.classes)
        arena = Arena(pixels_at=pixels_at, targets=images.targets(), classes=classes,
                      params=self.get_params(), runtime=runtime, strata=images.strata)
        budget = self._budget_seconds()
        found = search_auto(
            arena, advice.facts, advice.recommendation, backbone_size=spec.preprocessing.input_size,
            fixed=self._fixed_settings(), speeds=speeds if budget is not None else None,
            budget_seconds=budget, groups=groups,
            on_event=lambda line: console.print(line, markup=False, highlight=False), started=started,
        )
        recommendation = advice.recommendation
        chosen = found.chosen.candidate
        extra = dict(chosen.params)
        decided = dataclasses.replace(
            recommendation, strategy=chosen.strategy, image_size=chosen.image_size, class_weight=chosen.class_weight,
            symmetries=chosen.symmetries, feature_layers=chosen.feature_layers, freeze=chosen.freeze, augment=extra.get("augment", "none"),
            lr=None if not get_strategy(chosen.strategy).trains_network else recommendation.lr,
            backbone_lr_factor=(None if not get_strategy(chosen.strategy).trains_network
                                else extra.get("backbone_lr_factor", recommendation.backbone_lr_factor)),
            reasons=list(found.reasons), proposed=f"{recommendation.strategy} at {recommendation.image_size} px",
            rule_reasons=list(recommendation.reasons), warnings=_answered_warnings(recommendation.warnings, found.chosen),
        )
        for line in decided.explanation(chosen.label):
            console.print(Wrapped.prose(line[4:], first="  - ") if line.startswith("  - ") else line, markup=False, highlight=False)
        for warning in decided.warnings:
            console.print(Wrapped.prose(warning, first="  warning: "))
        return dataclasses.replace(advice, recommendation=decided, search=found)

    def _fixed_settings(self) -> dict[str, Any]:
        """What the user set, which every candidate of the search keeps."""
        fixed: dict[str, Any] = {}
        if self.image_size != AUTO:
            fixed["image_size"] = int(self.image_size)
        if self.class_weight != AUTO:
            fixed["class_weight"] = None if self.class_weight == "none" else self.class_weight
        if self.symmetries != AUTO:
            fixed["symmetries"] = self.symmetries
        if self.feature_layers != AUTO:
            fixed["feature_layers"] = self.feature_layers
        if not (isinstance(self.augment, str) and self.augment == AUTO):
            fixed["augment"] = self.augment
        if self.backbone_lr_factor != AUTO:
            fixed["backbone_lr_factor"] = float(self.backbone_lr_factor)
        for name in ("regularization", "sampling"):  # the network's: the pilot measures only what is left to choose
            if getattr(self, name) != AUTO:
                fixed[name] = getattr(self, name)
        return fixed

    def _settings(self, spec) -> Settings:
        """The settings of a named strategy: the user's where given (not ``"auto"``), else the
        defaults. (``strategy="auto"`` fits the chosen candidate's ``settings()`` instead.)"""
        entry = get_strategy(self.strategy)
        if self.freeze != AUTO and not entry.accepts_freeze and self.freeze != 0:
            raise ConfigError(
                f"freeze applies to finetune only; strategy {self.strategy!r} "
                f"{'freezes the whole backbone' if entry.frozen_backbone else 'trains every layer'}. "
                f"Received: freeze={self.freeze}"
            )
        image_size = self.image_size if self.image_size != AUTO else entry.default_image_size or spec.preprocessing.input_size
        accepts = entry.accepts_symmetries
        return Settings(
            strategy=self.strategy, freeze=self.freeze if self.freeze != AUTO and entry.accepts_freeze else None,
            image_size=int(image_size), class_weight=self.class_weight if self.class_weight == "balanced" else None,
            symmetries=self.symmetries if self.symmetries != AUTO and accepts else "none",
            feature_layers=self.feature_layers if self.feature_layers != AUTO and accepts else "bottleneck",
        )

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "model_")
        except Exception as exc:  # sklearn raises its own NotFittedError
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(...) or transferkit.load(path) first."
            ) from exc

    def _console(self) -> Console:
        quiet = not self.verbose or not is_main_process()  # under torchrun, rank 0 speaks
        return Console(stderr=True, emoji=False, markup=False, highlight=False, quiet=quiet)  # user text printed literally

    def _fingerprint(self, n_images: int, classes: np.ndarray, settings: Settings) -> dict[str, Any]:
        """Settings that must not change between a run and its resume."""
        keys = ("backbone", "strategy", "freeze", "epochs", "lr", "backbone_lr_factor", "image_size",
                "augment", "batch_size", "val_fraction", "seed", "class_weight", "dropout", "head_init", "label_smoothing", "weight_decay",
                "prefix_views", "regularization", "sampling")
        fingerprint = {key: getattr(self, key) for key in keys}
        fingerprint.update(settings.to_dict(), n_images=n_images, classes=[str(c) for c in classes])
        return fingerprint


def _answered_warnings(warnings: list[str], chosen) -> list[str]:
    """The rules' warnings, less the doubt the search has answered: "frozen features may transfer
    poorly" is a guess before measuring; once a frozen-feature candidate won on held-out images,
    the measurement is said instead."""
    if chosen.accuracy is None or not get_strategy(chosen.candidate.strategy).frozen_backbone:
        return list(warnings)
    kept = [w for w in warnings if "transfer poorly" not in w]
    if len(kept) < len(warnings):
        kept.append(f"the rules doubted frozen features here (domain shift); measured, {chosen.candidate.label} reached "
                    f"{chosen.accuracy:.3f} on held-out images, so the doubt did not hold on this data")
    return kept


def class_values(images: ImageSet) -> np.ndarray:
    """``classes_`` of a fit on ``images``: the labels as given (ints stay ints, a pandas
    Categorical gives its categories' values), in :attr:`ImageSet.classes` order; str otherwise."""
    if images.label_values is None:
        return np.array(images.classes)
    return np.array([images.label_values[name] for name in images.classes])


def validation_summary(history: dict[str, Any], labels) -> dict[str, Any] | None:
    """``validation_score`` labelled by what it is, next to the majority-class rate of ``labels``.

    ``{"kind": "inner CV" | "held-out split", "accuracy", "balanced_accuracy" (None where not
    measured), "majority_class_rate", "majority_class"}``; None when there was no validation.
    """
    score = validation_score(history)
    if score is None:
        return None
    rate, majority = majority_class_rate(labels)
    linear = history.get("linear") or {}
    if linear.get("inner_cv"):
        best = max(linear["inner_cv"], key=linear["inner_cv"].get)
        balanced = (linear.get("inner_cv_balanced") or {}).get(best)
        kind = "inner CV"
    else:
        balanced, kind = _best_epoch(history).get("val_balanced_accuracy"), "held-out split"
    return {"kind": kind, "accuracy": score, "balanced_accuracy": balanced, "majority_class_rate": rate, "majority_class": majority}


def searched_validation(search, labels) -> dict[str, Any] | None:
    """:func:`validation_summary`'s record for a model ``auto``'s search trained: the chosen
    trial's accuracy and balanced accuracy on its held-out images (for an ensemble, the average's;
    its network member's history holds only the network's). None where it was not measured."""
    chosen, results = search.chosen, search.results
    if results is None or not chosen.predictions:
        return None
    targets = results.targets[np.sort(results.folds[chosen.folds[0]][1])]
    rate, majority = majority_class_rate(labels)
    return {"kind": "held-out split", "accuracy": float(chosen.scores[0]),
            "balanced_accuracy": balanced_accuracy(targets, chosen.predictions[0]),
            "majority_class_rate": rate, "majority_class": majority}


def validation_score(history: dict[str, Any]) -> float | None:
    """Held-out accuracy seen during fit: the best epoch's validation accuracy, or the inner-CV
    accuracy of the chosen C for the feature strategies; None when there was neither."""
    linear = history.get("linear")
    if linear and linear.get("inner_cv"):
        return max(linear["inner_cv"].values())
    best = _best_epoch(history)
    return None if best is None else best["val_accuracy"]


def _best_epoch(history: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the epoch whose weights were kept; None without epochs or a best one."""
    epochs = history.get("history") or []
    return epochs[history["best_epoch"] - 1] if epochs and history.get("best_epoch") else None
