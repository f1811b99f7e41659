"""The feature strategies: a linear classifier (``svm`` or ``logistic``) on frozen bottleneck features.

The playbook's recipe for fewer than ~1,000 samples. Standardisation and the classifier form
one scikit-learn pipeline; ``C`` is chosen by an inner stratified CV over a small grid, grouped
so that the augmented views of one image never sit on both sides of an inner split.

After fitting, the pipeline is *folded into the network's head*: standardisation and the
linear map compose into one linear layer, so a feature-strategy model is an ordinary timm
network with a K-class head. It saves, loads and predicts exactly like a fine-tuned one
(safetensors, no pickled scikit-learn object).

Probabilities are calibrated by *temperature scaling* (Guo et al. 2017; scikit-learn 1.8's
``CalibratedClassifierCV(method="temperature")``): one number T, fitted on out-of-fold decision
values of the chosen pipeline (the same grouped folds as the inner CV) to minimise their log
loss, divides the logits. Raw SVM decision values are no probabilities at all, and logistic
regression on 1,280 standardised features put 1.000 on confident mistakes. Dividing by T is
folded into the head's weights too, so the calibration survives save, load and ONNX export;
it changes no prediction (the argmax is the same), only how sure the model says it is.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn

from transferkit.backbones import Preprocessing, create_backbone
from transferkit.backbones.multilayer import with_feature_layers
from transferkit.data import pixel_groups, stratified_indices
from transferkit.errors import ConfigError
from transferkit.strategies.features import FeatureExtractor, symmetric_features
from transferkit.strategies.registry import FitOutcome, FitRequest, FoldFit, Strategy, decision_probabilities, register_strategy
from transferkit.training.augment import build_augmentation
from transferkit.training.runtime import Judge, Runtime, judge_predictions

C_GRID: tuple[float, ...] = (0.0003, 0.001, 0.003, 0.01, 0.03)
"""Inner-CV grid for C. Standardised 1,280-d features favour strong regularisation: on ELPV
(1,968 images) C >= 0.1 fits the training set perfectly and takes liblinear 10-100x longer
(0.1: 18 s, 1.0: 41 s per fit against 2.5 s at 0.001), so the grid stops at 0.03."""


def make_linear_pipeline(strategy: str, C: float = 1.0, seed: int = 0, class_weight: str | None = None) -> Pipeline:
    if strategy == "svm":
        # The dual solver: "auto" picks the primal when samples outnumber features, which on
        # ELPV's 1,968 x 1,280 features is 2-15x slower for the same solution.
        classifier = LinearSVC(C=C, dual=True, max_iter=5000, random_state=seed, class_weight=class_weight)
    elif strategy == "logistic":
        classifier = LogisticRegression(C=C, max_iter=2000, class_weight=class_weight)
    else:
        raise ConfigError(f"unknown feature strategy; expected svm or logistic. Received: strategy={strategy!r}")
    return make_pipeline(StandardScaler(), classifier)


PARALLEL_INNER_CV = 1_000
"""From this many images the inner CV's fits run in 2 processes; below it they run here: on 150
images a fit takes milliseconds and starting the workers' jobs cost more (a search of 150 folds
spent 50 of its 100 s waiting on joblib)."""


def inner_jobs(n_images: int) -> int:
    """joblib workers for an inner cross-validation of ``n_images`` images (:data:`PARALLEL_INNER_CV`)."""
    return min(2, os.cpu_count() or 1) if n_images >= PARALLEL_INNER_CV else 1


def fit_linear_classifier(
    features: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    *,
    strategy: str,
    C: float | None,
    seed: int,
    inner_folds: int = 3,
    class_weight: str | None = None,
) -> tuple[Pipeline, dict[str, Any]]:
    """Fit the pipeline; with ``C=None`` pick C from :data:`C_GRID` by inner grouped CV.

    ``class_weight="balanced"`` weights each class by its inverse frequency (the same option as
    the network strategies').

    Returns the fitted pipeline and a summary (chosen C, inner-CV score per C).
    """
    if C is not None:
        pipeline = make_linear_pipeline(strategy, C, seed, class_weight).fit(features, targets)
        return pipeline, {"C": C, "inner_cv": None}
    smallest = int(np.bincount(targets).min())
    n_splits = max(2, min(inner_folds, smallest))
    search = GridSearchCV(
        make_linear_pipeline(strategy, 1.0, seed, class_weight),
        {f"{pipeline_step(strategy)}__C": list(C_GRID)},
        cv=StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed),
        scoring={"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy"},
        refit="accuracy",
        n_jobs=inner_jobs(len(features)),
    )
    search.fit(features, targets, groups=groups)
    scores = {str(c): float(s) for c, s in zip(C_GRID, search.cv_results_["mean_test_accuracy"])}
    balanced = {str(c): float(s) for c, s in zip(C_GRID, search.cv_results_["mean_test_balanced_accuracy"])}
    best_C = search.best_params_[f"{pipeline_step(strategy)}__C"]
    return search.best_estimator_, {"C": best_C, "inner_cv": scores, "inner_cv_balanced": balanced, "inner_folds": n_splits}


def head_logits(decision: np.ndarray) -> np.ndarray:
    """The head's logits for a pipeline's decision values (binary: one value d -> ``[0, d]``)."""
    decision = np.asarray(decision, dtype=np.float64)
    return np.stack([np.zeros_like(decision), decision], axis=1) if decision.ndim == 1 else decision


def log_loss_at(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits / temperature)``."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_probabilities = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(targets)), targets].mean())


def fit_temperature(
    features: np.ndarray, targets: np.ndarray, groups: np.ndarray, *, strategy: str, C: float, seed: int,
    class_weight: str | None = None, folds: int = 3,
) -> dict[str, Any]:
    """Temperature scaling of the pipeline's probabilities, fitted on out-of-fold decision values.

    Returns ``{"method": "temperature", "temperature": T, "folds": k, "log_loss_before": ...,
    "log_loss_after": ...}``, or ``{"method": None, "reason": ...}`` when there are too few
    images per class for held-out decision values.
    """
    from scipy.optimize import minimize_scalar

    smallest = int(np.bincount(targets).min())
    n_splits = min(folds, smallest, len(np.unique(groups)))
    if n_splits < 2:
        return {"method": None, "reason": f"too few images per class ({smallest}) for held-out scores"}
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        decision = cross_val_predict(make_linear_pipeline(strategy, C, seed, class_weight), features, targets, groups=groups,
                                     cv=splitter, method="decision_function", n_jobs=min(2, os.cpu_count() or 1))
    except ValueError as error:  # a fold without some class: no comparable decision values
        return {"method": None, "reason": f"held-out scores unavailable ({error})"}
    logits = head_logits(decision)
    if logits.shape[1] != len(np.unique(targets)):
        return {"method": None, "reason": "a held-out fold lacked a class"}
    found = minimize_scalar(lambda log_t: log_loss_at(logits, targets, float(np.exp(log_t))), bounds=(-4.0, 6.0), method="bounded")
    temperature = float(np.exp(found.x))
    return {"method": "temperature", "temperature": temperature, "folds": n_splits,
            "log_loss_before": log_loss_at(logits, targets, 1.0), "log_loss_after": log_loss_at(logits, targets, temperature)}


def pipeline_step(strategy: str) -> str:
    return "linearsvc" if strategy == "svm" else "logisticregression"


def fold_into_head(model: nn.Module, pipeline: Pipeline, n_classes: int, temperature: float = 1.0) -> None:
    """Replace ``model``'s head by one linear layer computing the pipeline's decision values / ``temperature``.

    ``w . (x - mean) / scale + b == (w / scale) . x + (b - w . mean / scale)``. A binary
    classifier has one decision value d; the head outputs logits ``[0, d]``, whose softmax is
    exactly the logistic model's probability (at temperature 1).
    """
    scaler, linear = pipeline[0], pipeline[-1]
    coef = np.atleast_2d(linear.coef_).astype(np.float64)
    intercept = np.atleast_1d(linear.intercept_).astype(np.float64)
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    if n_classes == 2 and weight.shape[0] == 1:
        weight = np.vstack([np.zeros_like(weight), weight])
        bias = np.concatenate([[0.0], bias])
    weight, bias = weight / temperature, bias / temperature
    model.reset_classifier(n_classes)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


@dataclass(frozen=True)
class FeaturePlan:
    """What a feature strategy fitted, for logs and config.json."""

    strategy: str
    C: float
    inner_cv: dict[str, float] | None
    views: int
    feature_dim: int
    extract_seconds: float
    feature_layers: str = "bottleneck"

    def describe(self) -> str:
        how = "chosen by inner CV" if self.inner_cv else "given"
        views = f" + {self.views} augmented views per image" if self.views else ""
        kind = "bottleneck" if self.feature_layers == "bottleneck" else "multi-layer (stages + bottleneck)"
        return (
            f"{self.strategy} on {self.feature_dim}-d frozen {kind} features{views}; C={self.C:g} ({how}); "
            f"features in {self.extract_seconds:.1f} s"
        )


def _loss(value: float) -> str:
    """A log loss for people: 3 decimals, never "-0.000" (a loss is >= 0; below 0.0005 it reads "< 0.001")."""
    value = max(0.0, float(value))
    return "< 0.001" if value < 0.0005 else f"{value:.3f}"


def calibration_text(calibration: dict[str, Any] | None) -> str:
    """How a feature model's probabilities were calibrated, in a few words."""
    if calibration and calibration.get("method") == "temperature":
        return (f"calibrated by temperature scaling (T={calibration['temperature']:.3g}, on {calibration['folds']}-fold "
                f"held-out scores: log loss {_loss(calibration['log_loss_before'])} -> {_loss(calibration['log_loss_after'])})")
    reason = (calibration or {}).get("reason", "fitted before calibration existed")
    return f"not calibrated ({reason}): softmax of the classifier's decision values, read them as scores"


class FeatureStrategy(Strategy):
    """A linear classifier on the frozen backbone's cached bottleneck features, folded into the head.

    The playbook's "fewer than ~1,000 samples" recipe. One forward pass per image (plus one per
    augmented view with ``feature_views``), then a scikit-learn fit.
    """

    frozen_backbone = True
    trains_network = False

    accepts_symmetries = True

    def passes_per_image(self, freeze: int | None, n_blocks: int) -> float:
        return 1.0

    def empty_model(self, config: Mapping[str, Any]) -> tuple[nn.Module, Preprocessing] | None:
        """A saved model with multi-layer features loads into the same wrapper (else: the backbone's own)."""
        layers = (config.get("settings") or {}).get("feature_layers", "bottleneck")
        if layers == "bottleneck":
            return None
        model, preprocessing = create_backbone(config["backbone"], num_classes=len(config["classes"]), pretrained=False)
        return with_feature_layers(model, layers), preprocessing

    def fit(self, request: FitRequest) -> FitOutcome:
        params, pixels, targets = request.params, request.pixels, request.targets
        extractor = feature_extractor(request)
        started = time.perf_counter()
        features, labels, groups = _augmented_features(extractor, pixels, targets, params, request.settings.symmetries)
        extract_seconds = time.perf_counter() - started
        C = None if params["C"] == "auto" else params["C"]
        pipeline, info = fit_linear_classifier(
            features, labels, groups, strategy=self.name, C=C, seed=params["seed"], class_weight=request.settings.class_weight,
        )
        info["calibration"] = fit_temperature(
            features, labels, groups, strategy=self.name, C=float(info["C"]), seed=params["seed"],
            class_weight=request.settings.class_weight,
        )
        model = extractor.model
        fold_into_head(model, pipeline, len(request.classes), info["calibration"].get("temperature", 1.0))
        plan = FeaturePlan(
            strategy=self.name, C=float(info["C"]), inner_cv=info["inner_cv"], views=len(features) // len(targets) - 1,
            feature_dim=extractor.dim, extract_seconds=extract_seconds, feature_layers=request.settings.feature_layers,
        )
        request.console.print(plan.describe())
        request.console.print(f"probabilities: {calibration_text(info['calibration'])}")
        history = {"history": [], "best_epoch": 0, "stopped_early": False, "resumed_from_epoch": 0, "linear": info,
                   "precision": extractor.runtime.precision, "precision_why": extractor.runtime.precision_reason,
                   "precision_measured": extractor.runtime.measured}
        return FitOutcome(model=model, preprocessing=extractor.preprocessing, history=history, plan=plan)

    def score(self, request: FitRequest, train: np.ndarray, test: np.ndarray) -> FoldFit:
        """Features of every image once (cached on disk), then one pipeline fit (C by inner CV
        on the training part) scored on the test part: no network pass per fold.

        The probabilities are the softmax of the decision values; with the parameter
        ``calibrated=True`` (auto's ensemble member) they are first divided by the temperature
        that :func:`fit_temperature` fits on the training part, as :meth:`fit` folds it into the head."""
        params = request.params
        started = time.perf_counter()
        extractor = feature_extractor(request)
        features = symmetric_features(extractor, request.pixels, request.settings.symmetries)
        extracted = time.perf_counter()
        train, test = np.sort(train), np.sort(test)
        groups = pixel_groups(request.pixels, train)
        pipeline, info = fit_linear_classifier(
            features[train], request.targets[train], groups, strategy=self.name,
            C=None if params["C"] == "auto" else params["C"], seed=params["seed"], class_weight=request.settings.class_weight,
        )
        decision = pipeline.decision_function(features[test])
        if params.get("calibrated"):
            # the probabilities a fitted model gives: its temperature, fitted on the training part's held-out decision values
            # (auto's ensemble averages them with a network's, so their scale matters, not only their argmax)
            calibration = fit_temperature(features[train], request.targets[train], groups, strategy=self.name, C=float(info["C"]),
                                          seed=params["seed"], class_weight=request.settings.class_weight)
            decision = decision / calibration.get("temperature", 1.0)
        probabilities = decision_probabilities(decision, pipeline.classes_, len(request.classes))
        predictions = probabilities.argmax(1)
        accuracy = float((predictions == request.targets[test]).mean())
        return FoldFit(accuracy=accuracy, seconds=time.perf_counter() - started, predictions=predictions,
                       probabilities=probabilities, extract_seconds=extracted - started)


_EXTRACTORS: dict[tuple, tuple[Any, FeatureExtractor]] = {}
EXTRACTORS_KEPT = 2
"""Extractors kept for reuse in this process (bottleneck and multi-layer): a search scores each
candidate on many folds, and building the backbone again for each cost more than the fit."""


def feature_extractor(request: FitRequest) -> FeatureExtractor:
    """The frozen backbone of ``request`` with the features its settings ask for (``feature_layers``).

    Reused while the same runtime object asks again (the folds of one search); a new runtime (a
    reproducible job makes its own) gets a new extractor."""
    params, layers = request.params, request.settings.feature_layers
    key = (params["backbone"], params["weights"], params["cache_dir"], layers, id(request.runtime))
    kept = _EXTRACTORS.get(key)
    if kept is not None and kept[0] is request.runtime:
        return kept[1]
    extractor = FeatureExtractor.from_params(params, request.runtime, layers=layers)
    while len(_EXTRACTORS) >= EXTRACTORS_KEPT:
        _EXTRACTORS.pop(next(iter(_EXTRACTORS)))
    _EXTRACTORS[key] = (request.runtime, extractor)
    return extractor


def _augmented_features(
    extractor: FeatureExtractor, pixels: np.ndarray, targets: np.ndarray, params, symmetries: str
) -> tuple[np.ndarray, ...]:
    """Features of the images and of ``feature_views`` augmented views of each; the groups keep
    an image's views, and identical copies of one picture, together in the inner CV."""
    features = [symmetric_features(extractor, pixels, symmetries)]
    same = pixel_groups(pixels)
    labels, groups = [targets], [same]
    augment = build_augmentation(params["augment"])
    for view in range(params["feature_views"] if augment is not None else 0):
        torch.manual_seed(params["seed"] * 1000 + view)
        views = np.stack([augment(torch.from_numpy(np.array(image)).permute(2, 0, 1)).permute(1, 2, 0).numpy() for image in pixels])
        features.append(extractor.transform(views))
        labels.append(targets)
        groups.append(same)
    return np.concatenate(features), np.concatenate(labels), np.concatenate(groups)


@register_strategy
class Svm(FeatureStrategy):
    name = "svm"
    summary = "a linear SVM on cached bottleneck features (C by inner CV)"


@register_strategy
class Logistic(FeatureStrategy):
    name = "logistic"
    summary = "logistic regression on cached bottleneck features"


# ---------------------------------------------------------------------------------------------
# The precision of frozen features, judged by what they are for: a classifier's predictions

JUDGE_SAMPLE = 256
"""Labelled images (a stratified sample of a fit's) on which bf16 features are judged against fp32's."""


def judge_by_predictions(targets: np.ndarray, seed: int = 0) -> Judge:
    """A judge of bf16 features against fp32's on the labelled images ``targets`` (N,).

    A logistic regression (C = 1) fitted on the fp32 features of one half predicts the other
    half from its fp32 and from its bf16 features, in 2 stratified folds, so every image gets
    both predictions; :func:`~transferkit.training.runtime.judge_predictions` decides (agreement,
    and accuracy within the noise). Each class needs 2 images: with fewer the judge refuses bf16.
    """
    targets = np.asarray(targets)

    def judge(fp32: torch.Tensor, bf16: torch.Tensor) -> tuple[bool, dict]:
        counts = np.unique(targets, return_counts=True)[1]
        if len(counts) < 2 or counts.min() < 2:
            return False, {"images": len(targets), "why": "too few labelled images per class to judge bf16's predictions"}
        exact, rounded = fp32.float().numpy(), bf16.float().numpy()
        predictions = {"fp32": np.empty(len(targets), np.int64), "bf16": np.empty(len(targets), np.int64)}
        folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
        for train, test in folds.split(exact, targets):
            pipeline = make_linear_pipeline("logistic", 1.0, seed).fit(exact[train], targets[train])
            predictions["fp32"][test] = pipeline.predict(exact[test])
            predictions["bf16"][test] = pipeline.predict(rounded[test])
        return judge_predictions(predictions["fp32"], predictions["bf16"], targets)

    return judge


def settle_feature_precision(runtime: Runtime, params: Mapping[str, Any], pixels: np.ndarray, targets: np.ndarray,
                             *, seed: int = 0) -> Runtime:
    """``runtime`` with the verdict on frozen features' precision (``runtime.feature_verdict``),
    which every :class:`FeatureExtractor` built on it adopts.

    Only where ``precision="auto"`` proposed a CPU's native bf16 and no verdict was reached yet;
    otherwise ``runtime`` is returned unchanged. ``pixels`` uint8 (N, S, S, 3) and ``targets``
    (N,) are the fit's; a stratified sample of at most :data:`JUDGE_SAMPLE` of them is extracted
    in both precisions (the winner's features land in the cache: only the loser's pass is
    extra) and :func:`judge_by_predictions` decides, with bf16's speed (timed once per machine
    and network). ``params``: the estimator's (backbone, weights, cache_dir).
    """
    if runtime.device.type != "cpu" or runtime.precision != "bf16" or not runtime.auto_precision or runtime.feature_verdict:
        return runtime
    targets = np.asarray(targets)
    rows = stratified_indices(targets, JUDGE_SAMPLE, seed, at_least=2)
    extractor = FeatureExtractor.from_params(params, runtime)
    chosen = extractor.measure_precision(pixels[rows], judge_by_predictions(targets[rows], seed))
    return dataclasses.replace(runtime, feature_verdict={"precision": chosen.precision, "why": chosen.precision_reason,
                                                         "measured": chosen.measured})
