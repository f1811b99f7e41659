"""Training-time augmentation: presets and explicit compositions of torchvision transforms v2.

The playbook's augmentations are translation, rotation and flipping. An augmentation is named
by a preset (``none``, ``light``, ``standard``, ``strong``) or by an explicit composition, a
comma-separated list of operations (``"rotate,translate"``: no flips), each at the
``standard`` magnitude unless a preset says otherwise. From Python, any callable on a uint8
(C, H, W) tensor works too (e.g. a ``v2.Compose``).

Whether flips and turns by 90 degrees belong is measured, not assumed: a flip turns "left of"
into "right of", so on data whose class a flip changes, ``auto`` trains without it (its symmetry
test, :mod:`transferkit.selection.auto`), and adds ``rot90`` only where a quarter turn keeps the
class.

Transforms run one sample at a time (v2 transforms draw one set of random parameters per call,
so per-sample calls give per-sample randomness); the loop's batches are assembled from uint8
pixels, so this costs a small share of a training step (``benchmarks/loop_speed.py``).
Validation and test images are never augmented.
"""

from __future__ import annotations

from typing import Callable, Literal, get_args

import torch
from torchvision.transforms import v2

from transferkit.errors import ConfigError

AugmentPreset = Literal["none", "light", "standard", "strong"]
AUGMENT_PRESETS: tuple[str, ...] = get_args(AugmentPreset)

AUGMENT_OPERATIONS: tuple[str, ...] = ("hflip", "vflip", "rot90", "rotate", "translate", "scale", "color")
"""Operations an explicit composition may name (``--augment rotate,translate``). ``rot90`` turns
the image by a random multiple of 90 degrees (exact, no interpolation); ``rotate`` by a small
random angle."""

FLIPS = frozenset({"hflip", "vflip"})
DEFAULT_AUGMENT = "standard"
"""What ``"auto"`` means where nothing measured the data's symmetries (an explicit network strategy)."""

_PRESET_OPERATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "light": ("hflip", "rotate", "translate"),
    "standard": ("hflip", "rotate", "translate"),
    "strong": ("hflip", "vflip", "rotate", "translate", "scale", "color"),
}
_MAGNITUDES: dict[str, dict[str, float]] = {
    "light": {"rotate": 5, "translate": 0.05},
    "standard": {"rotate": 10, "translate": 0.1},
    "strong": {"rotate": 15, "translate": 0.1, "scale": 0.1, "color": 0.2},
}
_DEFAULT_MAGNITUDES = {"rotate": 10, "translate": 0.1, "scale": 0.1, "color": 0.2}


class RandomQuarterTurn:
    """Turn a square image (a ``(..., S, S)`` tensor) by 0, 90, 180 or 270 degrees, drawn with
    torch's generator (so a seeded run repeats). Written here because torchvision v2 has no
    exact 90-degree rotation: ``RandomRotation`` interpolates, and draws angles from a range."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        turns = int(torch.randint(4, ()).item())
        return torch.rot90(image, turns, dims=(-2, -1)) if turns else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def augmentation_operations(spec: str) -> tuple[tuple[str, ...], dict[str, float]]:
    """The operations of a preset or composition and their magnitudes.

    Raises
    ------
    ConfigError
        ``spec`` is neither a preset nor a comma-separated list of :data:`AUGMENT_OPERATIONS`.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"augment expected a preset name or a composition string. Received: augment={spec!r}")
    spec = DEFAULT_AUGMENT if spec == "auto" else spec
    if spec in _PRESET_OPERATIONS:
        return _PRESET_OPERATIONS[spec], {**_DEFAULT_MAGNITUDES, **_MAGNITUDES.get(spec, {})}
    operations = tuple(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    unknown = [op for op in operations if op not in AUGMENT_OPERATIONS]
    if unknown or not operations:
        raise ConfigError(
            f"augment expected a preset ({', '.join(AUGMENT_PRESETS)}) or a comma-separated composition of "
            f"{', '.join(AUGMENT_OPERATIONS)} (e.g. 'rotate,translate'). Received: augment={spec!r}"
        )
    return operations, dict(_DEFAULT_MAGNITUDES)


def is_augmentation(spec: object) -> bool:
    """Whether ``spec`` names a preset or a valid composition, or is a callable transform."""
    if callable(spec):
        return True
    try:
        augmentation_operations(spec)  # type: ignore[arg-type]
    except ConfigError:
        return False
    return True


def without_flips(spec: str) -> str:
    """The same augmentation without horizontal or vertical flips or turns by 90 degrees, as a
    composition string (``"standard"`` -> ``"rotate,translate"``; ``"none"`` stays ``"none"``)."""
    operations, _ = augmentation_operations(spec)
    kept = [op for op in operations if op not in FLIPS and op != "rot90"]
    if list(kept) == list(operations):
        return spec
    return ",".join(kept) if kept else "none"


def describe_augmentation(spec: str | Callable) -> str:
    """One line naming what ``spec`` does (for the README, ``fit`` and the model card)."""
    if callable(spec):
        return f"a custom transform ({type(spec).__name__})"
    operations, magnitude = augmentation_operations(spec)
    words = {
        "hflip": "horizontal flip", "vflip": "vertical flip", "rot90": "turn by a multiple of 90 degrees",
        "rotate": f"rotation up to {magnitude['rotate']:g} degrees",
        "translate": f"translation up to {magnitude['translate']:.0%}",
        "scale": f"scale {1 - magnitude['scale']:g}-{1 + magnitude['scale']:g}",
        "color": f"brightness and contrast jitter of {magnitude['color']:.0%}",
    }
    return "; ".join(words[op] for op in operations) or "nothing"


def build_augmentation(spec: str | Callable | None) -> Callable | None:
    """The training-time transform of a preset, a composition or a callable (returned as is);
    None for ``"none"``; ``"auto"`` is :data:`DEFAULT_AUGMENT`.

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
    if spec is None:
        return None
    if callable(spec):
        return spec
    operations, magnitude = augmentation_operations(spec)
    if not operations:
        return None
    transforms: list[v2.Transform] = []
    if "hflip" in operations:
        transforms.append(v2.RandomHorizontalFlip())
    if "vflip" in operations:
        transforms.append(v2.RandomVerticalFlip())
    if "rot90" in operations:
        transforms.append(RandomQuarterTurn())
    if {"rotate", "translate", "scale"} & set(operations):
        shift = magnitude["translate"] if "translate" in operations else 0.0
        scale = magnitude["scale"] if "scale" in operations else 0.0
        transforms.append(
            v2.RandomAffine(
                degrees=magnitude["rotate"] if "rotate" in operations else 0,
                translate=(shift, shift) if shift else None,
                scale=(1 - scale, 1 + scale) if scale else None,
            )
        )
    if "color" in operations:
        transforms.append(v2.ColorJitter(brightness=magnitude["color"], contrast=magnitude["color"]))
    return v2.Compose(transforms)
