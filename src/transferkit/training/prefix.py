"""Frozen-prefix caching: compute the frozen stages once, train only the rest.

With the stem and the first N stages frozen (and their BatchNorm in eval mode), their output
is a fixed function of the input image. So the training loop can run them once per image and
*view* — an augmented copy drawn with a fixed seed — store the activations (fp16, on the CPU),
and then train only the unfrozen suffix on them for every epoch. Epoch ``e`` uses view
``e % views``: with ``views >= epochs`` every epoch sees fresh augmentation, exactly like the
plain loop; fewer views reuse augmentations and save the prefix's forward pass each epoch.
For ``head`` the prefix is the whole backbone and its activations are the pooled bottleneck
features, so head training costs almost nothing after the first pass.

Splitting a network at a stage is the backbone's business (:func:`transferkit.backbones.prefix_forward`,
:class:`transferkit.backbones.Suffix`); a model that cannot be split trains with the plain
loop, with a note.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from transferkit.backbones import Preprocessing, Suffix, frozen_prefix_depth, prefix_forward
from transferkit.training.inputs import LoopInputs, TrainData, pixels_to_tensor, to_model_input
from transferkit.training.progress import progress_bar
from transferkit.training.runtime import Runtime

MAX_CACHE_BYTES = 4 << 30
"""Activation memory the cache may take (all views); fewer views are cached beyond it."""


class ActivationViews(Dataset):
    """Cached prefix activations: one tensor per view; epoch ``e`` reads view ``e % views``."""

    def __init__(self, views: list[torch.Tensor], targets: np.ndarray):
        self.views = views
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.view = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.views[self.view][index], self.targets[index]

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % len(self.views)


def prefix_inputs(
    model: nn.Module, data: TrainData, runtime: Runtime, *, views: int, seed: int, batch_size: int, console: Console
) -> LoopInputs | None:
    """Inputs that train only the suffix, on ``views`` cached views of the frozen prefix.

    None when the plain loop must run instead: the model cannot be split, or not even one
    view's activations fit in :data:`MAX_CACHE_BYTES` (a note is printed).
    """
    depth = frozen_prefix_depth(model)
    if depth is None:
        console.print("frozen-prefix cache skipped: this backbone cannot be split there (or its stem trains)")
        return None
    pixels, targets = data.train
    views = affordable_views(model, depth, pixels.shape[1], len(pixels), views)
    if views == 0:
        console.print("frozen-prefix cache skipped: its activations would not fit in memory")
        return None
    started = time.perf_counter()
    n_views = views if data.augment is not None else 1
    total = len(pixels) * n_views + (len(data.val[0]) if data.val is not None else 0)
    with progress_bar(console, f"frozen prefix, {n_views} view(s)", total) as (progress, task):
        cache = partial(
            cache_activations, model.to(runtime.device, memory_format=runtime.memory_format()), depth,
            preprocessing=data.preprocessing, runtime=runtime, seed=seed, batch_size=batch_size,
            on_batch=lambda n: progress.update(task, advance=n), pooled=data.pooled_features,
        )
        train_set = ActivationViews(cache(pixels, augment=data.augment, views=views), targets)
        val_inputs = cache(data.val[0], augment=None, views=1)[0] if data.val is not None else None
    seconds = time.perf_counter() - started
    console.print(
        f"frozen prefix computed once for {len(train_set.views)} view(s) of {len(pixels)} images in {seconds:.1f} s; "
        "training the rest on it"
    )

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.float()
        return runtime.images_to_device(batch) if batch.ndim == 4 else runtime.to_device(batch)

    return LoopInputs(train_set, val_inputs, Suffix(model, depth), prepare, prefix_seconds=seconds)


@torch.no_grad()
def cache_activations(
    model: nn.Module,
    depth: int,
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

    For the head-only prefix (``depth < 0``) ``pooled`` may compute the pooled features of
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
            if depth < 0 and pooled is not None:
                out = torch.from_numpy(pooled(batch.permute(0, 2, 3, 1).contiguous().numpy()))
            else:
                with runtime.autocast():
                    out = prefix_forward(model, to_model_input(batch, preprocessing, runtime), depth)
            chunks.append(out.to("cpu", torch.float16))
            if on_batch is not None:
                on_batch(len(batch))
        outputs.append(torch.cat(chunks))
    return outputs


def affordable_views(model: nn.Module, depth: int, image_size: int, n_images: int, wanted: int) -> int:
    """The number of views (<= ``wanted``) whose activations fit in :data:`MAX_CACHE_BYTES`."""
    probe = torch.zeros(1, 3, image_size, image_size)
    was_training = model.training
    shape = prefix_forward(model.eval(), probe, depth).shape
    model.train(was_training)
    per_view = int(np.prod(shape[1:])) * 2 * n_images
    return max(0, min(wanted, MAX_CACHE_BYTES // max(1, per_view)))
