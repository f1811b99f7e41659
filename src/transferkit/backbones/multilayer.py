"""Multi-layer features: the bottleneck plus the pooled outputs of the network's stages.

The playbook's "why" says a pretrained network's early layers hold general features (edges,
curves) and its late layers ImageNet-specific ones; the further the data is from ImageNet, the
more of what it needs sits in the middle of the network (Azizpour et al. 2015, "Factors of
transferability"; hypercolumns, Hariharan et al. 2015). The bottleneck alone pools only the
last layer. :class:`StagePooledNetwork` concatenates, for each stage at stride 4 or deeper, the mean
and the max over positions of its output (the max keeps a thin, local defect that the mean
averages away), then the bottleneck. A linear classifier on those features is still one
forward pass per image, so the feature strategies' cache and folding into the head apply as
they are.

Measured on ELPV (Lite0, 224 px, linear SVM, flips averaged, ``benchmarks/RESULTS.md``): test
accuracy 0.768 on the bottleneck, 0.802 with blocks 1-6 (every stage at stride 4 or deeper).

The stage outputs come from timm's ``forward_intermediates`` (every block where the model
offers ``extra_blocks``, as EfficientNet does, else timm's feature stages), so any timm
backbone that implements it works; one that does not is refused with a clear message.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from transferkit.backbones.registry import feature_dim
from transferkit.errors import BackboneError

FEATURE_LAYERS = ("bottleneck", "stages")
"""What a feature strategy's features are: the pooled last layer, or that plus every stage at
stride 4 or deeper, mean- and max-pooled (:class:`StagePooledNetwork`)."""


MIN_STRIDE = 4
"""Stages whose output is at least this much smaller than the image are pooled (EfficientNet: blocks 1-6)."""


class StagePooledNetwork(nn.Module):
    """A timm network whose features are its stages' pooled outputs and its bottleneck.

    Parameters
    ----------
    network : torch.nn.Module
        A timm model with ``forward_intermediates``; its classifier is replaced by
        :attr:`classifier` (on the concatenated features).

    Attributes
    ----------
    num_features : int
        Width of the features: ``2 * sum(channels of each stage at stride >= 4)`` plus the
        bottleneck's width (2,816 for EfficientNet-Lite0: blocks 1-6, then 1,280).
    classifier : torch.nn.Linear
        The K-class head on those features.

    The model follows timm's contract where the feature strategies use it
    (``forward_features`` -> (N, num_features) pooled features, ``forward_head(x,
    pre_logits=True)``, ``get_classifier``, ``reset_classifier``), so it saves, loads,
    exports to ONNX and explains (Grad-CAM through ``network``'s stages) like a plain one.

    Raises
    ------
    BackboneError
        The network has no ``forward_intermediates`` (timm < 1.0, or a model without it).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        if not callable(getattr(network, "forward_intermediates", None)):
            raise BackboneError(f"feature_layers='stages' needs a timm model with forward_intermediates; "
                                f"{type(network).__name__} has none. Use feature_layers='bottleneck'.")
        n_classes = int(getattr(network, "num_classes", 0) or 1)
        self._every_block = "extra_blocks" in inspect.signature(network.forward_intermediates).parameters
        side = int((getattr(network, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1])
        with torch.no_grad():  # the stages' widths and strides, from one forward pass of one blank image
            was_training = network.training
            probe = network.eval().forward_intermediates(torch.zeros(1, 3, side, side), **self._options(None),
                                                         intermediates_only=True)
            network.train(was_training)
        # the stages at stride 4 and deeper: the stem and a first stride-2 stage hold little more than edges
        self.indices = [i for i, output in enumerate(probe) if output.shape[-1] <= side // MIN_STRIDE]
        network.reset_classifier(0)
        self.network = network
        self.bottleneck_width = feature_dim(network)  # what forward_head(pre_logits=True) gives
        self.num_features = 2 * sum(int(probe[i].shape[1]) for i in self.indices) + self.bottleneck_width
        self.classifier = nn.Linear(self.num_features, n_classes)

    def _options(self, indices: list[int] | None) -> dict:
        return {"indices": indices, **({"extra_blocks": True} if self._every_block else {})}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, num_features): mean and max of each stage at stride >= 4, then the bottleneck."""
        final, stages = self.network.forward_intermediates(x, **self._options(self.indices))
        pooled = [torch.cat([s.mean(dim=(2, 3)), s.amax(dim=(2, 3))], dim=1) for s in stages]
        return torch.cat([*pooled, self.network.forward_head(final, pre_logits=True)], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes)

    @property
    def bottleneck_columns(self) -> slice:
        """Where the plain bottleneck features sit in :meth:`forward_features`' output (the last columns)."""
        return slice(self.num_features - self.bottleneck_width, self.num_features)


def with_feature_layers(model: nn.Module, layers: str) -> nn.Module:
    """``model`` itself for ``"bottleneck"``, wrapped in :class:`StagePooledNetwork` for ``"stages"``."""
    if layers == "bottleneck":
        return model
    if layers == "stages":
        return StagePooledNetwork(model)
    raise BackboneError(f"feature_layers expected one of {', '.join(FEATURE_LAYERS)}. Received: {layers!r}")


def inner_network(model: nn.Module) -> nn.Module:
    """The timm network inside a :class:`StagePooledNetwork`, or inside a wrapper that names it with
    its own ``inner_network()`` method (an ensemble: its trained network); any other model: itself."""
    if isinstance(model, StagePooledNetwork):
        return model.network
    own = getattr(model, "inner_network", None)
    return inner_network(own()) if callable(own) else model


__all__ = ["FEATURE_LAYERS", "StagePooledNetwork", "inner_network", "with_feature_layers"]
