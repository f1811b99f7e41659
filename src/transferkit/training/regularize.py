"""Regularisers of modern small-data recipes, all of them timm's: mixup and cutmix
(``timm.data.Mixup``), random erasing (``timm.data.random_erasing.RandomErasing``), stochastic depth
(``drop_path_rate``, set when the network is built), an exponential moving average of the
weights (``timm.utils.ModelEmaV3``); and class-balanced sampling of the batches.

Presets (:data:`REGULARIZATION`) bundle them, so that a choice between a light and a strong
setting is one parameter (``ImageClassifier(regularization=...)``). The loop reads a
:class:`Regularization` and calls the small helpers here: :class:`BatchMixer` (mixed inputs and
soft targets), :func:`soft_target_loss` (the loss of soft targets with label smoothing and class
weights), :func:`build_ema` and :func:`balanced_sampler`. timm's classes are used as they are;
only the loss is written here, because timm's ``SoftTargetCrossEntropy`` takes no class weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Regularization:
    """One setting of the regularisers; every field at its neutral value switches it off.

    Attributes
    ----------
    mixup_alpha, cutmix_alpha : float
        Beta(alpha, alpha) mixing of pairs of training images (mixup: a blend; cutmix: a
        pasted box), with the targets mixed in the same proportion; 0 switches each off.
    mix_prob : float
        Share of the batches that are mixed (when either alpha is above 0).
    random_erasing : float
        Probability that a training image gets a random box replaced by noise (after
        normalisation, as timm does).
    drop_path_rate : float
        Stochastic depth: the deepest residual block is skipped with this probability in
        training (linearly less for shallower ones). Set when the network is built.
    ema_decay : float or None
        Keep an exponential moving average of the weights (with timm's warm-up of the decay);
        after training, the average and the best raw weights are both validated and the better
        is kept. None: no average.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    random_erasing: float = 0.0
    drop_path_rate: float = 0.0
    ema_decay: float | None = None

    @property
    def mixes(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    def to_dict(self) -> dict:
        return asdict(self)


REGULARIZATION: dict[str, Regularization] = {
    "none": Regularization(),
    # Stochastic depth and a weight average: they cost nothing per step and do not change what a
    # training image looks like.
    "light": Regularization(drop_path_rate=0.05, ema_decay=0.998),
    # DeiT's and timm's small-data recipe, scaled down for a few epochs: mixup 0.2 / cutmix 1.0
    # on half the batches, random erasing 0.25, stochastic depth 0.1, a weight average.
    "strong": Regularization(mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.5, random_erasing=0.25, drop_path_rate=0.1,
                             ema_decay=0.998),
}
"""The presets ``ImageClassifier(regularization=...)`` names."""


def resolve_regularization(name: str) -> Regularization:
    """The preset ``name`` (``"auto"``: ``"none"``, today's recipe, until a measurement chooses)."""
    return REGULARIZATION["none" if name == "auto" else name]


class BatchMixer:
    """Mixup/cutmix and random erasing of one batch of normalised images (N, C, H, W).

    ``__call__(images, targets)`` returns the images to train on and the soft targets
    (N, n_classes) the loss reads; without mixing the targets are one-hot. Random draws come
    from torch's and numpy's generators, which the loop seeds per epoch.
    """

    def __init__(self, setting: Regularization, n_classes: int, *, images: bool = True):
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing

        self.n_classes = n_classes
        # cutmix pastes a box of pixels: meaningless on cached activations (``images=False``)
        cutmix = setting.cutmix_alpha if images else 0.0
        self.mixup = None
        if setting.mixup_alpha > 0 or cutmix > 0:
            self.mixup = Mixup(mixup_alpha=setting.mixup_alpha, cutmix_alpha=cutmix, prob=setting.mix_prob,
                               label_smoothing=0.0, num_classes=n_classes)
        self.erasing = None
        if images and setting.random_erasing > 0:
            self._erasing_probability = setting.random_erasing
            self.erasing = RandomErasing(probability=setting.random_erasing, mode="pixel", device="cpu")

    @property
    def active(self) -> bool:
        return self.mixup is not None or self.erasing is not None

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.erasing is not None:
            if str(self.erasing.device) != str(images.device):  # its noise is drawn on the batch's device
                from timm.data.random_erasing import RandomErasing

                self.erasing = RandomErasing(probability=self._erasing_probability, mode="pixel", device=str(images.device))
            images = torch.stack([self.erasing(image) for image in images.float()]).to(images.dtype)
        # timm's Mixup pairs image i with image N-1-i and needs an even batch
        if self.mixup is not None and len(images) % 2 == 0 and len(images) > 1:
            return self.mixup(images, targets)
        return images, nn.functional.one_hot(targets, self.n_classes).float()


def soft_target_loss(logits: torch.Tensor, soft: torch.Tensor, *, label_smoothing: float = 0.0,
                     class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of (N, K) logits against (N, K) soft targets, mean over the batch.

    Label smoothing mixes the targets with the uniform distribution, as ``nn.CrossEntropyLoss``
    does; ``class_weights`` (K,) weight each image by its targets' classes and normalise by the
    total weight, which for one-hot targets equals ``nn.CrossEntropyLoss(weight=...)``.
    """
    n_classes = logits.shape[1]
    # an image weighs what its (mixed) target classes weigh, before smoothing, as torch does
    weights = None if class_weights is None else (soft * class_weights.to(soft.dtype)).sum(dim=1)
    if label_smoothing > 0:
        soft = soft * (1.0 - label_smoothing) + label_smoothing / n_classes
    per_image = -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1)
    if weights is None:
        return per_image.mean()
    return (per_image * weights).sum() / weights.sum()


def build_ema(model: nn.Module, decay: float | None):
    """timm's ``ModelEmaV3`` of ``model`` (decay warmed up over the first steps), or None."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def balanced_sampler(targets: np.ndarray, n_samples: int, seed: int) -> torch.utils.data.WeightedRandomSampler:
    """Draws images with probability inversely proportional to their class's count, so every
    class fills about the same share of the batches (rare classes are seen more often)."""
    targets = np.asarray(targets)
    counts = np.bincount(targets)
    weights = 1.0 / counts[targets]
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=n_samples,
                                                  replacement=True, generator=torch.Generator().manual_seed(seed))
