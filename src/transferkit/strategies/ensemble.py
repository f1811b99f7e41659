"""The ``ensemble`` strategy: a trained network and a frozen-feature classifier, probabilities averaged.

A network trained on the images and a linear classifier on frozen pretrained features err on
different images; the mean of their class probabilities is often right where one of them is
wrong. The fitted model is one module, :class:`EnsembleNetwork`, holding both members at the same
input side and the same backbone preprocessing:

- ``network``: a timm model with its K-class head, as ``full`` or ``finetune`` train it (or, where
  ``auto`` trained a second one from another seed in time the first left, a
  :class:`NetworkAverage` of both: the mean of their probabilities is then the network member's);
- ``feature_model``: the frozen pretrained backbone (a timm model, or a
  :class:`~transferkit.backbones.multilayer.StagePooledNetwork` for multi-layer features) with the
  ``svm``/``logistic`` classifier folded into its head, as the feature strategies fit it.

Its ``forward(x)`` returns ``log(mean of the members' softmax probabilities)``, so everything that
softmaxes a model's logits (``predict_proba``, ``evaluate``, the ONNX graph, ``serve``) gets the
averaged probabilities with no special case. The feature member's image symmetries (flips, turns
by 90 degrees) are views taken *inside* the module (:data:`TENSOR_VIEWS`, ``torch.flip`` and
``transpose``, which export to ONNX), so the ensemble's own settings say ``symmetries="none"``:
nothing outside it averages views again. The network's probabilities may be averaged over views
too (``network_symmetries``: test-time augmentation with the flips and turns it trained with),
in the same module. Its members are described in its
:class:`EnsemblePlan` (``config.json["plan"]``), from which :meth:`Ensemble.empty_model` rebuilds
the empty module.

``fit --strategy ensemble`` trains the network (``full``; ``finetune`` with ``--freeze N``) and fits
the ``svm`` on the frozen features of the same images (``--symmetries``, ``--feature-layers`` and
``--C`` are the feature member's), through those strategies' own ``fit``. ``auto`` measures it
without any training (``selection/ensemble.py``): the held-out probabilities of the network and
of the best feature candidate, averaged; when it wins, the network the search trained is kept and
only the feature classifier is fitted on every image (:meth:`Ensemble.fit_after_search`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from transferkit.backbones import Preprocessing, create_backbone
from transferkit.backbones.multilayer import FEATURE_LAYERS, with_feature_layers
from transferkit.constraints import AUTO
from transferkit.data.views import SYMMETRIES
from transferkit.errors import ConfigError
from transferkit.strategies.features import pooled_features
from transferkit.strategies.registry import FitOutcome, FitRequest, Settings, Strategy, get_strategy, register_strategy

FEATURE_MEMBERS = ("svm", "logistic")
"""The strategies a feature member may come from (``feature_strategy``; default ``svm``)."""

TENSOR_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "horizontal": lambda x: torch.flip(x, (3,)),
    "vertical": lambda x: torch.flip(x, (2,)),
    "rotate180": lambda x: torch.flip(x, (2, 3)),
    "rotate90": lambda x: torch.flip(x, (3,)).transpose(2, 3),  # counter-clockwise, as np.rot90
    "rotate270": lambda x: torch.flip(x, (2,)).transpose(2, 3),
    "transpose": lambda x: x.transpose(2, 3),
    "antitranspose": lambda x: torch.flip(x, (2, 3)).transpose(2, 3),
}
""":data:`transferkit.data.views.VIEWS` on (N, C, S, S) tensors: the same pixels in the same
places (a view of the normalised image is the normalised view: normalisation is per channel)."""


class EnsembleNetwork(nn.Module):
    """A trained network and a frozen-feature classifier answering as one: the log of the mean of
    their class probabilities.

    Parameters
    ----------
    network : torch.nn.Module
        A timm model with a K-class head (``full``/``finetune``), or a :class:`NetworkAverage` of
        several trained alike.
    feature_model : torch.nn.Module
        A timm model or ``StagePooledNetwork`` with timm's contract (``forward_features``,
        ``forward_head(pre_logits=True)``, ``get_classifier``) and a K-class head.
    symmetries : {"none", "flips", "dihedral"}
        The feature member's features are averaged over these views of the input (1, 4 or 8
        forward passes of it), as :func:`~transferkit.strategies.features.symmetric_features` does.
    network_symmetries : {"none", "flips", "dihedral"}
        The network's class probabilities are averaged over these views of the input (test-time
        augmentation; 1, 4 or 8 forward passes of the network).

    Attributes
    ----------
    num_classes : int
        K.
    views : tuple of str
        The names of :data:`TENSOR_VIEWS` the feature member averages over.
    network_views : tuple of str
        Those the network's probabilities are averaged over.
    """

    def __init__(self, network: nn.Module, feature_model: nn.Module, symmetries: str = "none",
                 network_symmetries: str = "none") -> None:
        super().__init__()
        for name, value in (("symmetries", symmetries), ("network_symmetries", network_symmetries)):
            if value not in SYMMETRIES:
                raise ConfigError(f"{name} expected one of {', '.join(SYMMETRIES)}. Received: {name}={value!r}")
        self.network = network
        self.feature_model = feature_model
        self.symmetries, self.network_symmetries = symmetries, network_symmetries
        self.views, self.network_views = SYMMETRIES[symmetries], SYMMETRIES[network_symmetries]
        self.num_classes = int(network.get_classifier().out_features)
        if int(feature_model.get_classifier().out_features) != self.num_classes:
            raise ConfigError(f"the ensemble's members must know the same classes. Received: {self.num_classes} and "
                              f"{int(feature_model.get_classifier().out_features)} outputs")

    def inner_network(self) -> nn.Module:
        """The trained network: its stages are the ones Grad-CAM explains (``backbone_stages``)."""
        return self.network

    def member_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For normalised (N, 3, S, S) ``x``: the network's logits (N, K; over several
        :attr:`network_views`, the log of its mean probabilities), the feature member's logits
        (N, K) and its pooled features (N, D), both averaged over :attr:`views`.

        One view at a time, so memory does not grow with the number of views."""
        pooled = pooled_features(self.feature_model, x)
        for name in self.views[1:]:
            pooled = pooled + pooled_features(self.feature_model, TENSOR_VIEWS[name](x))
        pooled = pooled / len(self.views)
        network = self.network(x)
        if len(self.network_views) > 1:
            network = mean_probability_logits(network, *(self.network(TENSOR_VIEWS[name](x)) for name in self.network_views[1:]))
        return network, self.feature_model.get_classifier()(pooled), pooled

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ensemble's logits (N, K) and the feature member's view-averaged pooled features
        (N, D) from one pass: what novelty reads (:func:`~transferkit.training.inputs.network_outputs`)."""
        network_logits, feature_logits, pooled = self.member_logits(x)
        return mean_probability_logits(network_logits, feature_logits), pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) whose softmax is the mean of the members' probabilities."""
        return self.logits_and_features(x)[0]


class NetworkAverage(nn.Module):
    """Networks trained alike from different seeds answering as one: ``forward(x)`` is the log of
    the mean of their class probabilities (N, K), so that an :class:`EnsembleNetwork`'s network
    member may be several networks (``auto``'s second network, trained in the time the first left
    unused). Averaging networks that differ only in their seed (data order, augmentation, dropout)
    lowers the variance of what one training run learned (deep ensembles, Lakshminarayanan et al.
    2017). ``get_classifier`` and :meth:`inner_network` are the first network's: Grad-CAM
    explains that one."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        if len(networks) < 2:
            raise ConfigError(f"a network average needs at least two networks. Received: {len(networks)}")
        self.networks = nn.ModuleList(networks)

    def get_classifier(self) -> nn.Module:
        return self.networks[0].get_classifier()

    def inner_network(self) -> nn.Module:
        return self.networks[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_probability_logits(*(network(x) for network in self.networks))


def network_count(network: nn.Module) -> int:
    """How many trained networks ``network`` holds: those of a :class:`NetworkAverage`, else 1."""
    return len(network.networks) if isinstance(network, NetworkAverage) else 1


def mean_probability_logits(*logits: torch.Tensor) -> torch.Tensor:
    """``log(mean_i softmax(logits_i))`` (N, K), computed stably (log-sum-exp of log-softmaxes)."""
    stacked = torch.stack([torch.log_softmax(item.float(), dim=1) for item in logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(logits))


@dataclass(frozen=True)
class EnsemblePlan:
    """What the ensemble holds, for logs and config.json (from which its empty module is rebuilt)."""

    strategy: str
    network_strategy: str
    freeze: int | None
    feature_strategy: str
    feature_layers: str
    symmetries: str
    network: str
    """The network member's plan, in words."""
    features: str
    """The feature member's plan, in words."""
    network_symmetries: str = "none"
    """The views the network's probabilities are averaged over (``"none"`` in models saved before it)."""
    networks: int = 1
    """Trained networks in the network member (a :class:`NetworkAverage` where more than 1; 1 in
    models saved before it)."""

    def describe(self) -> str:
        views = "" if self.network_symmetries == "none" else f"; its probabilities averaged over {self.network_symmetries}"
        trained = "a trained network" if self.networks == 1 else f"{self.networks} trained networks, each"
        return (f"ensemble: the mean of the probabilities of {trained} ({self.network}{views}) and of a "
                f"frozen-feature classifier ({self.features}"
                f"{'' if self.symmetries == 'none' else f'; features averaged over {self.symmetries}'})")


def member_settings(params: Mapping[str, Any], settings: Settings) -> tuple[str, Settings, Settings]:
    """The feature member's strategy, and the network's and the feature member's settings, for an
    ensemble fitted with ``settings`` and estimator ``params``.

    The network is ``finetune`` at ``settings.freeze`` when it freezes stages, else ``full``. The
    feature member reads ``params["feature_strategy"]`` (default ``svm``), ``params["symmetries"]``
    and ``params["feature_layers"]`` (``"auto"``: none, bottleneck). Raises :class:`ConfigError`
    for a feature strategy outside :data:`FEATURE_MEMBERS`.
    """
    feature_strategy = params.get("feature_strategy", "svm")
    if feature_strategy not in FEATURE_MEMBERS:
        raise ConfigError(f"an ensemble's feature member expected one of {', '.join(FEATURE_MEMBERS)}. "
                          f"Received: feature_strategy={feature_strategy!r}")
    symmetries = params.get("symmetries", AUTO)
    layers = params.get("feature_layers", AUTO)
    network = dataclasses.replace(settings, strategy="finetune" if settings.freeze else "full",
                                  freeze=settings.freeze or None, symmetries="none", feature_layers="bottleneck")
    features = dataclasses.replace(settings, strategy=feature_strategy, freeze=None,
                                   symmetries="none" if symmetries == AUTO else symmetries,
                                   feature_layers="bottleneck" if layers == AUTO else layers)
    return feature_strategy, network, features


@register_strategy
class Ensemble(Strategy):
    """A trained network (``full``, or ``finetune`` with ``freeze``) and an ``svm`` on frozen
    features, fitted by those strategies and combined into one :class:`EnsembleNetwork`."""

    name = "ensemble"
    summary = "a trained network (full; finetune with --freeze N) and an svm on frozen features, probabilities averaged"
    accepts_freeze = True
    init_refusal = "an ensemble (a trained network beside a frozen-feature classifier)"
    compare_defaults = MappingProxyType({"image_size": 128, "epochs": 4})

    def passes_per_image(self, freeze: int | None, n_blocks: int) -> float:
        return super().passes_per_image(freeze, n_blocks) + 1.0  # the network's training, and one pass for the features

    def fit(self, request: FitRequest) -> FitOutcome:
        _, network_settings, _ = member_settings(request.params, request.settings)
        network = get_strategy(network_settings.strategy).fit(dataclasses.replace(request, settings=network_settings))
        return self.fit_after_search(request, network)

    def fit_after_search(self, request: FitRequest, searched: FitOutcome | None) -> FitOutcome:
        """The ensemble of ``searched`` (the network the search trained; None: train one here) and
        the feature classifier fitted on every image of ``request``."""
        if searched is None:
            return self.fit(request)
        feature_strategy, _, feature_settings = member_settings(request.params, request.settings)
        request.console.print(f"ensemble: the feature member, {feature_strategy} on every image")
        features = get_strategy(feature_strategy).fit(dataclasses.replace(
            request, settings=feature_settings, params={**request.params, "strategy": feature_strategy},
            validation=None, callbacks=()))
        return combine(searched, features, feature_settings, freeze=request.settings.freeze,
                       network_symmetries=request.params.get("network_symmetries", "none"))

    def empty_model(self, config: Mapping[str, Any]) -> tuple[nn.Module, Preprocessing]:
        """The untrained ensemble a saved one's weights load into, from ``config["plan"]``."""
        plan = config.get("plan") or {}
        layers, symmetries = plan.get("feature_layers", "bottleneck"), plan.get("symmetries", "none")
        network_symmetries = plan.get("network_symmetries", "none")  # none in models saved before it
        count = plan.get("networks", 1)
        if layers not in FEATURE_LAYERS or symmetries not in SYMMETRIES or network_symmetries not in SYMMETRIES:
            raise ConfigError(f"config.json's ensemble plan names unknown features. Received: feature_layers={layers!r}, "
                              f"symmetries={symmetries!r}, network_symmetries={network_symmetries!r}")
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"config.json's ensemble plan expected a positive number of networks. Received: networks={count!r}")
        n_classes = len(config["classes"])
        networks = [create_backbone(config["backbone"], num_classes=n_classes, pretrained=False) for _ in range(count)]
        network, preprocessing = networks[0] if count == 1 else (NetworkAverage([n for n, _ in networks]), networks[0][1])
        feature_model, _ = create_backbone(config["backbone"], num_classes=n_classes, pretrained=False)
        return EnsembleNetwork(network, with_feature_layers(feature_model, layers), symmetries, network_symmetries), preprocessing


def combine(network: FitOutcome, features: FitOutcome, feature_settings: Settings, *, freeze: int | None = None,
            network_symmetries: str = "none") -> FitOutcome:
    """One :class:`EnsembleNetwork` of a fitted network (or a :class:`NetworkAverage` of several)
    and a fitted feature model (their ``FitOutcome``), with the network's training history and
    both members' plans; ``network_symmetries``: the views the network's probabilities are
    averaged over.

    Raises :class:`ConfigError` when the members were fitted with different preprocessing."""
    if network.preprocessing != features.preprocessing:
        raise ConfigError("an ensemble's members must read the same pixels; their preprocessing differs. Received: "
                          f"{network.preprocessing} and {features.preprocessing}")
    # a copy: the feature strategies keep their extractor's network for the next fit in this process
    feature_model = copy.deepcopy(features.model).cpu().eval()
    model = EnsembleNetwork(network.model.cpu().eval(), feature_model, feature_settings.symmetries, network_symmetries)
    plan = EnsemblePlan(
        strategy="ensemble", network_strategy=network.plan.strategy,
        freeze=freeze or None,
        feature_strategy=feature_settings.strategy, feature_layers=feature_settings.feature_layers,
        symmetries=feature_settings.symmetries, network=network.plan.describe(), features=features.plan.describe(),
        network_symmetries=network_symmetries, networks=network_count(network.model),
    )
    history = {**network.history, "ensemble": {"features": features.history}}
    # novelty reads the frozen backbone's features, which trained on no image: no held-out part to keep
    return FitOutcome(model=model, preprocessing=network.preprocessing, history=history, plan=plan)


__all__ = ["Ensemble", "EnsembleNetwork", "EnsemblePlan", "NetworkAverage", "TENSOR_VIEWS", "combine", "mean_probability_logits",
           "member_settings", "network_count"]
