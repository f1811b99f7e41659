"""From cached uint8 pixels to the float tensors a backbone expects: a training dataset, and batched inference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from transferkit.backbones import Preprocessing
from transferkit.training.runtime import INFERENCE_BATCH, Runtime, unwrap


def to_model_input(images: torch.Tensor, preprocessing: Preprocessing, runtime: Runtime) -> torch.Tensor:
    """Normalise a uint8 (N, C, H, W) batch with the backbone's own mean/std on the device.

    Done on the device, after the transfer, so that only uint8 crosses the bus (4x less).
    """
    images = runtime.images_to_device(images).float().div_(255.0)
    mean = torch.tensor(preprocessing.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, device=images.device).view(1, -1, 1, 1)
    return images.sub_(mean).div_(std)


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 array (a read-only memmap too) to a (N, C, H, W) uint8 tensor (a copy)."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class TrainData:
    """The images a run trains and validates on, and how to read them.

    ``train`` and ``val`` are uint8 (N, H, W, 3) pixels with integer targets; ``val=None``
    trains for every epoch and keeps the last weights. ``augment`` is applied to training
    images only. ``class_weights`` weight the loss per class. ``pooled_features`` (``head``
    with cached views) maps uint8 pixels to pooled features, e.g. a cached ``FeatureExtractor``.
    """

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    preprocessing: Preprocessing
    augment: Callable | None = None
    class_weights: torch.Tensor | None = None
    pooled_features: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass
class LoopInputs:
    """What the loop iterates over: a training set (with ``set_epoch``), the validation inputs,
    the module that trains, and the function that takes a batch to the device."""

    train_set: Dataset
    val_inputs: np.ndarray | torch.Tensor | None
    net: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    prefix_seconds: float = 0.0


def pixel_inputs(model: nn.Module, data: TrainData, runtime: Runtime) -> LoopInputs:
    """The plain loop's inputs: augmented pixels through the whole ``model``."""
    return LoopInputs(
        train_set=PixelDataset(data.train[0], data.train[1], data.augment),
        val_inputs=data.val[0] if data.val is not None else None,
        net=model,
        prepare=lambda batch: to_model_input(batch, data.preprocessing, runtime),
    )


class PixelDataset(Dataset):
    """uint8 (N, H, W, C) pixels + integer targets; augments each sample on its own."""

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, transform: Callable | None):
        self.pixels = pixels
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.array(self.pixels[index])).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: fresh augmentations come from the per-epoch seed."""


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    pixels: np.ndarray,
    preprocessing: Preprocessing,
    runtime: Runtime,
    batch_size: int = INFERENCE_BATCH,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every image of ``pixels``, as fp32 on the CPU.

    ``forward(model, inputs)`` replaces ``model(inputs)`` to take other outputs in the same
    batches (e.g. :func:`~transferkit.strategies.features.pooled_features`, the pre-logits).
    Each process computes all of them, even under torchrun: the model is never wrapped in DDP.
    """
    model = runtime.prepare_model(unwrap(model), train=False).eval()
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels_to_tensor(pixels[start : start + batch_size])
        with runtime.autocast():
            inputs = to_model_input(batch, preprocessing, runtime)
            logits = model(inputs) if forward is None else forward(model, inputs)
        outputs.append(logits.float().cpu())
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


def has_pooled_features(model: nn.Module) -> bool:
    """Whether ``model`` keeps timm's contract (``forward_features``, ``forward_head(pre_logits=True)``,
    ``get_classifier``), or returns both itself (``logits_and_features``, as an ensemble does): its
    pooled pre-logits features can be read beside its logits."""
    model = unwrap(model)
    return callable(getattr(model, "logits_and_features", None)) or all(
        hasattr(model, name) for name in ("forward_features", "forward_head", "get_classifier"))


def logits_and_pooled(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and pooled pre-logits features (N, D) of normalised ``inputs`` from one pass: the
    module's own ``logits_and_features`` where it has one (an ensemble), else timm's contract (the
    classifier applied to the pooled features, which in eval mode is exactly ``net(inputs)``)."""
    own = getattr(net, "logits_and_features", None)
    if callable(own):
        return own(inputs)
    pooled = net.forward_head(net.forward_features(inputs), pre_logits=True)
    return net.get_classifier()(pooled), pooled


def network_outputs(
    model: nn.Module, pixels: np.ndarray, preprocessing: Preprocessing, runtime: Runtime, batch_size: int = 64,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """Logits (N, K) and pooled pre-logits features (N, D) of ``model`` for uint8 (N, S, S, 3) pixels.

    One forward pass gives both: the logits are the classifier applied to the pooled features,
    which in eval mode is exactly ``model(inputs)``. Both fp32 on the CPU (logits a tensor,
    features an array); the features are None for a network without timm's contract
    (:func:`has_pooled_features`), whose logits come from ``model(inputs)``.
    """
    if not has_pooled_features(model):
        return predict_logits(model, pixels, preprocessing, runtime, batch_size=batch_size), None

    def pooled_then_logits(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        logits, pooled = logits_and_pooled(net, inputs)
        return torch.cat([pooled, logits], dim=1)

    both = predict_logits(model, pixels, preprocessing, runtime, batch_size=batch_size, forward=pooled_then_logits)
    net = unwrap(model)
    n_classes = int(net.num_classes) if callable(getattr(net, "logits_and_features", None)) else int(net.get_classifier().out_features)
    if both.numel() == 0:
        return both, None
    return both[:, -n_classes:].contiguous(), both[:, :-n_classes].numpy()
