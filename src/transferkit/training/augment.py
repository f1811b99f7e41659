"""Augmentation presets built from torchvision transforms v2.

The playbook's augmentations are translation, rotation and flipping; ``strong`` adds vertical
flips, scaling and brightness/contrast jitter. Presets work on uint8 (C, H, W) tensors, one
sample at a time (v2 transforms draw one set of random parameters per call, so per-sample
calls give per-sample randomness). Validation and test images are never augmented: only the
training loop asks for these transforms.
"""

from __future__ import annotations

from typing import Literal, get_args

from torchvision.transforms import v2

from transferkit.errors import ConfigError

AugmentPreset = Literal["none", "light", "standard", "strong"]
AUGMENT_PRESETS: tuple[str, ...] = get_args(AugmentPreset)


def build_augmentation(preset: AugmentPreset) -> v2.Transform | None:
    """The training-time transform of ``preset``, or None for ``"none"``.

    ========  ===========================================================================
    preset    transforms
    ========  ===========================================================================
    none      nothing
    light     horizontal flip; rotation up to 5 degrees; translation up to 5%
    standard  horizontal flip; rotation up to 10 degrees; translation up to 10%
    strong    horizontal + vertical flip; rotation up to 15 degrees; translation up to
              10%; scale 0.9-1.1; brightness and contrast jitter of 20%
    ========  ===========================================================================
    """
    if preset == "none":
        return None
    if preset == "light":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=5, translate=(0.05, 0.05))])
    if preset == "standard":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, translate=(0.1, 0.1))])
    if preset == "strong":
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ]
        )
    raise ConfigError(f"unknown augmentation preset; expected one of {', '.join(AUGMENT_PRESETS)}. Received: augment={preset!r}")
