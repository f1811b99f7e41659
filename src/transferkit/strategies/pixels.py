"""``pixels``: a kernel classifier on the raw pixels, for small images far from ImageNet.

The playbook's "very specific domain, no suitable pretrained network -> train from scratch",
sized to the data it is for. On tiny images (8x8 digits, 25 px face crops) an RBF kernel on the
pixels beats features of a network pretrained on 224 px photos, in seconds; a from-scratch CNN
of EfficientNet's size needs far more data and time.

The images are decoded at a small side (``image_size``, default 32), turned grey when every
image is grey, scaled to [0, 1], and classified by scikit-learn's ``SVC`` (RBF kernel, gamma
"scale", C by inner CV). Measured on 8x8 digits: 0.989 test accuracy in about a second, where a
Nystroem map + logistic regression took 80-120 s for 0.978, so the exact kernel machine is
kept. Its decision function is a fixed function of the pixels (support vectors, dual
coefficients, intercepts), so it becomes :class:`PixelKernel`, an ordinary ``nn.Module`` of
buffers: it saves to safetensors, predicts, exports to ONNX and serves like every other model,
with no pickled scikit-learn object. Its outputs are SVC's one-vs-rest scores (votes plus
confidences, scikit-learn's own transform), used as logits: the class ranking is SVC's,
the softmax is a score, not a calibrated probability.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.svm import SVC
from torch import nn

from transferkit.backbones import Preprocessing, get_backbone_spec
from transferkit.data import pixel_groups
from transferkit.strategies.registry import FitOutcome, FitRequest, FoldFit, Strategy, decision_probabilities, register_strategy
from transferkit.strategies.linear import inner_jobs

C_GRID: tuple[float, ...] = (1.0, 10.0, 100.0)
DEFAULT_SIDE = 32


@dataclass(frozen=True)
class PixelPlan:
    """What ``pixels`` fitted, for logs and config.json (and the shapes ``load`` rebuilds)."""

    strategy: str
    side: int
    grey: bool
    n_inputs: int
    n_support: int
    gamma: float
    C: float
    inner_cv: dict[str, float] | None

    def describe(self) -> str:
        return (
            f"pixels: RBF SVM (gamma {self.gamma:.3g}, {self.n_support} support vectors) on {self.side}x{self.side} "
            f"{'grey' if self.grey else 'RGB'} pixels; C={self.C:g} (inner CV)"
        )


class PixelKernel(nn.Module):
    """Normalised images -> an RBF support-vector machine's one-vs-rest scores.

    Takes the same input as the backbones (N, 3, S, S), normalised with ``preprocessing``'s
    mean and std, so the rest of transferkit feeds it like any network. ``pairs`` are the
    one-vs-one classifiers (i, j) in libsvm's order; ``weights`` (n_support, n_pairs) hold each
    support vector's dual coefficient in the pairs it takes part in.
    """

    def __init__(self, *, side: int, grey: bool, n_support: int, n_classes: int, preprocessing: Preprocessing):
        super().__init__()
        n_inputs = side * side * (1 if grey else 3)
        n_pairs = n_classes * (n_classes - 1) // 2
        self.side, self.grey, self.n_classes = side, grey, n_classes
        self.register_buffer("image_mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))
        self.register_buffer("support", torch.zeros(n_support, n_inputs))
        self.register_buffer("weights", torch.zeros(n_support, n_pairs))
        self.register_buffer("intercepts", torch.zeros(n_pairs))
        self.register_buffer("gamma", torch.ones(()))
        first, second = zip(*[(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)])
        self.register_buffer("first", nn.functional.one_hot(torch.tensor(first), n_classes).float())  # (pairs, K)
        self.register_buffer("second", nn.functional.one_hot(torch.tensor(second), n_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() * self.image_std + self.image_mean).clamp(0, 1)  # back to [0, 1] pixels
        if self.grey:
            x = x.mean(dim=1, keepdim=True)
        x = x.flatten(1)
        distance = (x * x).sum(1, keepdim=True) - 2 * x @ self.support.T + (self.support * self.support).sum(1)
        decision = torch.exp(-self.gamma * distance.clamp_min(0)) @ self.weights + self.intercepts  # one-vs-one
        if self.n_classes == 2:
            return torch.stack([torch.zeros_like(decision[:, 0]), -decision[:, 0]], dim=1)
        # scikit-learn's _ovr_decision_function(decision < 0, -decision, K): votes + squashed confidences
        second_wins = (decision < 0).float()
        votes = (1 - second_wins) @ self.first + second_wins @ self.second
        confidence = decision @ self.first - decision @ self.second
        return votes + confidence / (3 * (confidence.abs() + 1))


def _inputs(pixels: np.ndarray, grey: bool) -> np.ndarray:
    values = pixels.astype(np.float32) / 255.0
    values = values.mean(axis=3) if grey else values.transpose(0, 3, 1, 2)  # the module's (C, H, W) order
    return values.reshape(len(pixels), -1)


def fit_pixel_classifier(pixels: np.ndarray, targets: np.ndarray, *, seed: int, class_weight: str | None, inner_folds: int = 3):
    """Fit an RBF ``SVC`` on the [0, 1] pixels with C by inner CV.

    Returns the fitted SVC, whether the images were grey, and the inner-CV accuracy per C.
    """
    grey = bool(np.all(pixels[..., :1] == pixels))
    inputs = _inputs(pixels, grey)
    smallest = int(np.bincount(targets).min())
    groups = pixel_groups(pixels)  # copies of one picture stay in one inner fold (folds unchanged without copies)
    copies = groups.max() + 1 < len(groups)
    splitter = StratifiedGroupKFold if copies else StratifiedKFold
    search = GridSearchCV(
        SVC(kernel="rbf", gamma="scale", class_weight=class_weight), {"C": list(C_GRID)},
        cv=splitter(n_splits=max(2, min(inner_folds, smallest)), shuffle=True, random_state=seed),
        scoring="accuracy", n_jobs=inner_jobs(len(pixels)),
    )
    search.fit(inputs, targets, groups=groups if copies else None)
    scores = {str(c): float(s) for c, s in zip(C_GRID, search.cv_results_["mean_test_score"])}
    return search.best_estimator_, grey, scores


def pixel_kernel_from(svc: SVC, *, side: int, grey: bool, n_classes: int, preprocessing: Preprocessing) -> PixelKernel:
    """The fitted SVC as a :class:`PixelKernel` computing the same decision values."""
    model = PixelKernel(side=side, grey=grey, n_support=len(svc.support_vectors_), n_classes=n_classes, preprocessing=preprocessing)
    # libsvm's one-vs-one layout: in pair (i, j) the support vectors of class i weigh with row
    # j - 1 of the dual coefficients and those of class j with row i (its private, unflipped copy).
    dual, bounds = svc._dual_coef_, np.concatenate([[0], np.cumsum(svc.n_support_)])
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    weights = np.zeros((len(svc.support_vectors_), len(pairs)))
    for k, (i, j) in enumerate(pairs):
        weights[bounds[i]:bounds[i + 1], k] = dual[j - 1, bounds[i]:bounds[i + 1]]
        weights[bounds[j]:bounds[j + 1], k] = dual[i, bounds[j]:bounds[j + 1]]
    with torch.no_grad():
        model.support.copy_(torch.as_tensor(svc.support_vectors_))
        model.weights.copy_(torch.as_tensor(weights))
        model.intercepts.copy_(torch.as_tensor(svc._intercept_))
        model.gamma.fill_(float(svc._gamma))
    return model.eval()


@register_strategy
class Pixels(Strategy):
    name = "pixels"
    summary = "an RBF kernel classifier on the raw pixels (small images, far domain)"
    pretrained = False
    trains_network = False
    compare_defaults = MappingProxyType({"image_size": DEFAULT_SIDE})
    default_image_size = DEFAULT_SIDE

    def passes_per_image(self, freeze: int | None, n_blocks: int) -> float:
        return 0.0  # no network pass at all

    def fit(self, request: FitRequest) -> FitOutcome:
        params = request.params
        started = time.perf_counter()
        svc, grey, scores = fit_pixel_classifier(
            request.pixels, request.targets, seed=params["seed"], class_weight=request.settings.class_weight
        )
        preprocessing = get_backbone_spec(params["backbone"]).preprocessing
        side = int(request.pixels.shape[1])
        model = pixel_kernel_from(svc, side=side, grey=grey, n_classes=len(request.classes), preprocessing=preprocessing)
        plan = PixelPlan(
            strategy=self.name, side=side, grey=grey, n_inputs=int(svc.support_vectors_.shape[1]),
            n_support=int(len(svc.support_vectors_)), gamma=float(svc._gamma), C=float(svc.C), inner_cv=scores,
        )
        request.console.print(f"{plan.describe()}; {time.perf_counter() - started:.1f} s")
        history = {"history": [], "best_epoch": 0, "stopped_early": False, "resumed_from_epoch": 0,
                   "linear": {"C": plan.C, "inner_cv": scores}}
        return FitOutcome(model=model, preprocessing=preprocessing, history=history, plan=plan)

    def score(self, request: FitRequest, train: np.ndarray, test: np.ndarray) -> FoldFit:
        """The SVC (C by inner CV on the training part) scored on the test part's pixels."""
        started = time.perf_counter()
        train, test = np.sort(train), np.sort(test)
        svc, grey, _ = fit_pixel_classifier(
            request.pixels[train], request.targets[train], seed=request.params["seed"], class_weight=request.settings.class_weight
        )
        probabilities = decision_probabilities(svc.decision_function(_inputs(request.pixels[test], grey)), svc.classes_,
                                               len(request.classes))
        predictions = probabilities.argmax(1)
        accuracy = float((predictions == request.targets[test]).mean())
        return FoldFit(accuracy=accuracy, seconds=time.perf_counter() - started, predictions=predictions,
                       probabilities=probabilities)

    def empty_model(self, config: dict[str, Any]) -> tuple[nn.Module, Preprocessing]:
        plan = config.get("plan") or {}
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
        model = PixelKernel(side=int(plan["side"]), grey=bool(plan["grey"]), n_support=int(plan["n_support"]),
                            n_classes=len(config["classes"]), preprocessing=preprocessing)
        return model, preprocessing
