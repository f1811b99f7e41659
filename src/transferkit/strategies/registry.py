"""The strategy registry: one entry per way of transferring a pretrained network.

A strategy is a small object with a name, what it freezes, the settings it runs with in
``compare`` and the race, a cost model for the time budget, and a ``fit`` that turns decoded
pixels into a network with a K-class head. It registers itself on import, the way timm's
models do (``register_model`` / ``create_model``)::

    @register_strategy
    class Svm(FeatureStrategy):
        name = "svm"
        ...

so adding a strategy is adding one file to :mod:`transferkit.strategies` (and one import line
in its ``__init__``); nothing else compares strategy names. ``ImageClassifier.fit`` reads:
resolve data -> decode -> ``get_strategy(name).fit(request)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
from rich.console import Console
from torch import nn

from transferkit.backbones import Preprocessing
from transferkit.errors import ConfigError
from transferkit.training.runtime import Runtime


@dataclass(frozen=True)
class Settings:
    """What a fit actually uses after ``"auto"`` is resolved (by the user, the advisor or a default)."""

    strategy: str
    freeze: int | None
    image_size: int
    class_weight: str | None
    symmetries: str = "none"
    """Feature strategies: average the features over these image symmetries (``SYMMETRIES``)."""
    feature_layers: str = "bottleneck"
    """Feature strategies: the bottleneck alone, or multi-layer ``"stages"`` features (``FEATURE_LAYERS``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "freeze": self.freeze, "image_size": self.image_size,
                "class_weight": self.class_weight, "symmetries": self.symmetries, "feature_layers": self.feature_layers}


@dataclass
class FitRequest:
    """Everything a strategy's ``fit`` needs: the decoded data, the settings, and where to run.

    ``params`` are the estimator's own parameters (``ImageClassifier.get_params()``).
    """

    pixels: np.ndarray
    targets: np.ndarray
    classes: np.ndarray
    settings: Settings
    params: Mapping[str, Any]
    runtime: Runtime
    console: Console
    strata: np.ndarray | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    validation: tuple[np.ndarray, np.ndarray] | None = None
    """Held-out (pixels, targets) for early stopping, instead of a split of ``pixels`` (the search
    passes the fold every candidate is scored on)."""
    callbacks: tuple[Any, ...] = ()
    """Extra training callbacks (the search's deadline and learning-curve check)."""

    def subset(self, indices: np.ndarray, **changes: Any) -> "FitRequest":
        """The same request on ``pixels[indices]`` (strata and targets follow)."""
        indices = np.sort(np.asarray(indices))
        return dataclasses.replace(
            self, pixels=self.pixels[indices], targets=self.targets[indices],
            strata=None if self.strata is None else np.asarray(self.strata)[indices], **changes,
        )


@dataclass
class FoldFit:
    """A strategy's accuracy on one fold's test part after a fit on its training part.

    ``outcome`` is the fitted model where keeping it is worth it (a trained network that may win
    the search and then needs no second training); ``extract_seconds`` the part of ``seconds``
    spent computing frozen features, which a later fit reads from the cache.
    """

    accuracy: float
    seconds: float
    predictions: np.ndarray | None = None
    """Predicted class indices of the test part, in the order of its sorted indices."""
    probabilities: np.ndarray | None = None
    """Class probabilities of the test part, shape (n_test, n_classes), rows as ``predictions``:
    the softmax of the model's decision values (a network's logits, a linear classifier's or an
    SVC's decision function; not temperature-scaled inside a fold)."""
    extract_seconds: float = 0.0
    outcome: "FitOutcome | None" = None
    stopped: str | None = None
    """Why training ended before its planned epochs (deadline, falling behind), if it did."""


@dataclass
class FitOutcome:
    """A fitted network (backbone + K-class head) and what the strategy did to get it."""

    model: nn.Module
    preprocessing: Preprocessing
    history: dict[str, Any]
    plan: Any
    """A ``NetworkPlan`` or ``FeaturePlan``: has ``describe()``; its fields go to config.json."""
    held_out: np.ndarray | None = None
    """Indices of the request's images the network did not train on (its validation split), where
    the novelty threshold is calibrated; None: none (a frozen backbone's features trained on none)."""


class Strategy:
    """One way to transfer a pretrained backbone. Subclasses set the class attributes and ``fit``.

    Attributes
    ----------
    name : str
        Registry name (``--strategy``).
    summary : str
        What trains, in a few words (``transferkit models`` and the docs).
    pretrained : bool
        Starts from pretrained weights (False only for training from scratch).
    frozen_backbone : bool
        The backbone stays the untouched pretrained one, so prediction may read the
        bottleneck-feature cache.
    trains_network : bool
        Trains with the epoch loop (needs a validation split for early stopping).
    accepts_freeze : bool
        ``freeze`` (stages frozen) applies.
    compare_defaults : Mapping
        ``ImageClassifier`` parameters this strategy runs with in ``compare`` and the race,
        unless the user overrides them (small images, few epochs for the trained ones).
    default_image_size : int or None
        Its image side when nobody chose one (None: the backbone's input size).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    pretrained: ClassVar[bool] = True
    frozen_backbone: ClassVar[bool] = False
    trains_network: ClassVar[bool] = True
    accepts_freeze: ClassVar[bool] = False
    accepts_symmetries: ClassVar[bool] = False
    """Averages its features over image symmetries (``symmetries``) at fit and predict, and takes
    multi-layer features (``feature_layers``)."""
    init_refusal: ClassVar[str | None] = None
    """Why ``fit --init`` cannot start from a model of this strategy, in words ("an ensemble
    (...)"); None: it can."""
    compare_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    default_image_size: ClassVar[int | None] = None
    """Image side when neither the user nor the advisor sets one (None: the backbone's)."""

    def empty_model(self, config: Mapping[str, Any]) -> tuple[nn.Module, Preprocessing] | None:
        """The untrained network a saved model's weights load into (None: the backbone's own)."""
        return None

    def passes_per_image(self, freeze: int | None, n_blocks: int) -> float:
        """Cost model: forward-pass equivalents one training image costs per epoch.

        A training step costs about 3 forward passes through the layers that train (forward,
        backward for activations and for weights) and 1 through the frozen ones.
        """
        frozen = (freeze or 0) / max(1, n_blocks)
        return 1.0 + 2.0 * (1.0 - frozen)

    def fit(self, request: FitRequest) -> FitOutcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_after_search(self, request: FitRequest, searched: FitOutcome | None) -> FitOutcome:
        """The model when a search chose this strategy: ``searched``, what the search trained on its
        held-out fold's training part (a network: no second training), or ``fit(request)`` on every
        image when it kept nothing. An ensemble overrides it to fit its feature member beside the
        searched network."""
        return searched if searched is not None else self.fit(request)

    def score(self, request: FitRequest, train: np.ndarray, test: np.ndarray) -> FoldFit:
        """Fit on ``request.pixels[train]`` and return the accuracy on ``[test]``.

        The one evaluation every search schedule (``auto``, ``compare``, ``advise --measure``)
        runs. This default fits and predicts through the network; strategies override it where
        something is cheaper (cached features, a kernel machine on pixels).
        """
        from transferkit.training.inputs import predict_logits

        started = time.perf_counter()
        outcome = self.fit(request.subset(train))
        logits = predict_logits(outcome.model, request.pixels[np.sort(test)], outcome.preprocessing, request.runtime)
        probabilities = decision_probabilities(logits.numpy(), np.arange(len(request.classes)), len(request.classes))
        predictions = probabilities.argmax(1)
        accuracy = float((predictions == request.targets[np.sort(test)]).mean())
        return FoldFit(accuracy=accuracy, seconds=time.perf_counter() - started, predictions=predictions,
                       probabilities=probabilities)

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


def decision_probabilities(scores: np.ndarray, fitted: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities (n, ``n_classes``) from decision values: the softmax over the classes a
    fold's model knows (``fitted``, the class indices of its columns), 0 for a class its training
    part lacked. A binary decision function (one column, positive for ``fitted[1]``) counts as the
    logits ``(0, d)``, so its softmax is the logistic sigmoid, as for scikit-learn's own classifiers."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    scores = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(scores)
    probabilities = np.zeros((len(scores), n_classes))
    probabilities[:, np.asarray(fitted, dtype=int)] = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add one instance of ``cls`` to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"strategy {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; a :class:`ConfigError` naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown strategy; expected auto or one of {', '.join(_REGISTRY)}. Received: strategy={name!r}.{hint}"
        ) from None


def list_strategies() -> tuple[str, ...]:
    """Registered strategy names, in registration order."""
    return tuple(_REGISTRY)
