"""The feature strategies: a linear classifier (``svm`` or ``logistic``) on frozen bottleneck features.

The playbook's recipe for fewer than ~1,000 samples. Standardisation and the classifier form
one scikit-learn pipeline; ``C`` is chosen by an inner stratified CV over a small grid, grouped
so that the augmented views of one image never sit on both sides of an inner split.

After fitting, the pipeline is *folded into the network's head*: standardisation and the
linear map compose into one linear layer, so a feature-strategy model is an ordinary timm
network with a K-class head. It saves, loads and predicts exactly like a fine-tuned one
(safetensors, no pickled scikit-learn object).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn

from transferkit.errors import ConfigError
from transferkit.strategies.features import FeatureExtractor, symmetric_features
from transferkit.strategies.registry import FitOutcome, FitRequest, Strategy, register_strategy
from transferkit.training.augment import build_augmentation

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
        scoring="accuracy",
        refit=True,
        n_jobs=min(2, os.cpu_count() or 1),
    )
    search.fit(features, targets, groups=groups)
    scores = {str(c): float(s) for c, s in zip(C_GRID, search.cv_results_["mean_test_score"])}
    best_C = search.best_params_[f"{pipeline_step(strategy)}__C"]
    return search.best_estimator_, {"C": best_C, "inner_cv": scores, "inner_folds": n_splits}


def pipeline_step(strategy: str) -> str:
    return "linearsvc" if strategy == "svm" else "logisticregression"


def fold_into_head(model: nn.Module, pipeline: Pipeline, n_classes: int) -> None:
    """Replace ``model``'s head by one linear layer computing the pipeline's decision values.

    ``w . (x - mean) / scale + b == (w / scale) . x + (b - w . mean / scale)``. A binary
    classifier has one decision value d; the head outputs logits ``[0, d]``, whose softmax is
    exactly the logistic model's probability.
    """
    scaler, linear = pipeline[0], pipeline[-1]
    coef = np.atleast_2d(linear.coef_).astype(np.float64)
    intercept = np.atleast_1d(linear.intercept_).astype(np.float64)
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    if n_classes == 2 and weight.shape[0] == 1:
        weight = np.vstack([np.zeros_like(weight), weight])
        bias = np.concatenate([[0.0], bias])
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

    def describe(self) -> str:
        how = "chosen by inner CV" if self.inner_cv else "given"
        views = f" + {self.views} augmented views per image" if self.views else ""
        return (
            f"{self.strategy} on {self.feature_dim}-d frozen bottleneck features{views}; C={self.C:g} ({how}); "
            f"features in {self.extract_seconds:.1f} s"
        )


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

    def fit(self, request: FitRequest) -> FitOutcome:
        params, pixels, targets = request.params, request.pixels, request.targets
        extractor = FeatureExtractor(params["backbone"], weights=params["weights"], runtime=request.runtime, cache_dir=params["cache_dir"])
        started = time.perf_counter()
        features, labels, groups = _augmented_features(extractor, pixels, targets, params, request.settings.symmetries)
        extract_seconds = time.perf_counter() - started
        C = None if params["C"] == "auto" else params["C"]
        pipeline, info = fit_linear_classifier(
            features, labels, groups, strategy=self.name, C=C, seed=params["seed"], class_weight=request.settings.class_weight,
        )
        model = extractor.model
        fold_into_head(model, pipeline, len(request.classes))
        plan = FeaturePlan(
            strategy=self.name, C=float(info["C"]), inner_cv=info["inner_cv"], views=len(features) // len(targets) - 1,
            feature_dim=extractor.dim, extract_seconds=extract_seconds,
        )
        request.console.print(plan.describe())
        history = {"history": [], "best_epoch": 0, "stopped_early": False, "resumed_from_epoch": 0, "linear": info,
                   "precision": extractor.runtime.precision, "precision_why": extractor.runtime.precision_reason,
                   "precision_measured": extractor.runtime.measured}
        return FitOutcome(model=model, preprocessing=extractor.preprocessing, history=history, plan=plan)


def _augmented_features(
    extractor: FeatureExtractor, pixels: np.ndarray, targets: np.ndarray, params, symmetries: str
) -> tuple[np.ndarray, ...]:
    """Features of the images and of ``feature_views`` augmented views of each; the groups keep
    an image's views together in the inner CV."""
    features = [symmetric_features(extractor, pixels, symmetries)]
    labels, groups = [targets], [np.arange(len(targets))]
    augment = build_augmentation(params["augment"])
    for view in range(params["feature_views"] if augment is not None else 0):
        torch.manual_seed(params["seed"] * 1000 + view)
        views = np.stack([augment(torch.from_numpy(np.array(image)).permute(2, 0, 1)).permute(1, 2, 0).numpy() for image in pixels])
        features.append(extractor.transform(views))
        labels.append(targets)
        groups.append(np.arange(len(targets)))
    return np.concatenate(features), np.concatenate(labels), np.concatenate(groups)


@register_strategy
class Svm(FeatureStrategy):
    name = "svm"
    summary = "a linear SVM on cached bottleneck features (C by inner CV)"


@register_strategy
class Logistic(FeatureStrategy):
    name = "logistic"
    summary = "logistic regression on cached bottleneck features"
