"""Frozen-prefix caching: compute the frozen stages once, train only the rest.

With the stem and the first N stages frozen (and their BatchNorm in eval mode), their output
is a fixed function of the input image. So the training loop can run them once per image and
*view* — an augmented copy drawn with a fixed seed — store the activations (fp16, on the CPU),
and then train only the unfrozen suffix on them for every epoch. Epoch ``e`` uses view
``e % views``: with ``views >= epochs`` every epoch sees fresh augmentation, exactly like the
plain loop; fewer views reuse augmentations and save the prefix's forward pass each epoch.
For ``head`` the prefix is the whole backbone and its activations are the pooled bottleneck
features, so head training costs almost nothing after the first pass.

Splitting a network needs to know its forward pass. timm's EfficientNet family (which
includes EfficientNet-Lite, our default) is supported; any other model falls back to the
plain loop, with a note.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn

from transferkit.backbones import Preprocessing
from transferkit.training.inputs import pixels_to_tensor, to_model_input
from transferkit.training.runtime import Runtime

MAX_CACHE_BYTES = 4 << 30
"""Activation memory the cache may take (all views); fewer views are cached beyond it."""


def frozen_block_count(model: nn.Module, frozen_stages: tuple[str, ...]) -> int | None:
    """How many of ``model.blocks`` the frozen prefix covers; ``-1`` when everything but the
    head is frozen; None when the model cannot be split (not EfficientNet, nothing frozen)."""
    if not isinstance(model, EfficientNet) or "stem" not in frozen_stages:
        return None
    if "neck" in frozen_stages:
        return -1
    return sum(1 for name in frozen_stages if name.startswith("stage"))


class Suffix(nn.Module):
    """The trainable rest of an EfficientNet after its first ``start`` blocks (-1: head only)."""

    def __init__(self, model: EfficientNet, start: int):
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.start >= 0:
            for block in model.blocks[self.start :]:
                x = block(x)
            x = model.bn2(model.conv_head(x))
            return model.forward_head(x)
        # Head only: x are pooled features; forward_head's pooling is the identity on them.
        if model.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=model.drop_rate, training=self.training)
        return model.classifier(x)


@torch.no_grad()
def prefix_forward(model: EfficientNet, x: torch.Tensor, start: int) -> torch.Tensor:
    x = model.bn1(model.conv_stem(x))
    if start < 0:
        return _pooled_rest(model, x)
    for block in model.blocks[:start]:
        x = block(x)
    return x


def _pooled_rest(model: EfficientNet, x: torch.Tensor) -> torch.Tensor:
    x = model.bn2(model.conv_head(model.blocks(x)))
    return model.global_pool(x)


@torch.no_grad()
def cache_activations(
    model: EfficientNet,
    start: int,
    pixels: np.ndarray,
    *,
    preprocessing: Preprocessing,
    runtime: Runtime,
    augment: Callable | None,
    views: int,
    seed: int,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
    pooled: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[torch.Tensor]:
    """Prefix activations of ``views`` views of every image, as fp16 CPU tensors.

    View ``v`` draws its augmentation with seed ``seed * 1000 + v``; without augmentation
    there is one view, the images themselves. ``on_batch(n_images)`` is called after each
    batch (progress).

    For the head-only prefix (``start < 0``) ``pooled`` may compute the pooled features of
    uint8 pixels instead of ``model``: :meth:`transferkit.strategies.features.FeatureExtractor.transform`
    does, with its on-disk cache keyed on the pixels' content. An augmented view is the same
    pixels on every run with the same seed, so ``head`` then shares the bottleneck-feature
    cache with ``svm`` and costs almost nothing after the first run.
    """
    model.eval()
    views = views if augment is not None else 1
    outputs = []
    for view in range(views):
        torch.manual_seed(seed * 1000 + view)
        chunks = []
        for start_index in range(0, len(pixels), batch_size):
            batch = pixels_to_tensor(pixels[start_index : start_index + batch_size])
            if augment is not None:
                batch = torch.stack([augment(image) for image in batch])
            if start < 0 and pooled is not None:
                out = torch.from_numpy(pooled(batch.permute(0, 2, 3, 1).contiguous().numpy()))
            else:
                with runtime.autocast():
                    out = prefix_forward(model, to_model_input(batch, preprocessing, runtime), start)
            chunks.append(out.to("cpu", torch.float16))
            if on_batch is not None:
                on_batch(len(batch))
        outputs.append(torch.cat(chunks))
    return outputs


def affordable_views(model: EfficientNet, start: int, image_size: int, n_images: int, wanted: int) -> int:
    """The number of views (<= ``wanted``) whose activations fit in :data:`MAX_CACHE_BYTES`."""
    probe = torch.zeros(1, 3, image_size, image_size)
    was_training = model.training
    shape = prefix_forward(model.eval(), probe, start).shape
    model.train(was_training)
    per_view = int(np.prod(shape[1:])) * 2 * n_images
    return max(0, min(wanted, MAX_CACHE_BYTES // max(1, per_view)))
