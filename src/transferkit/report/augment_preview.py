"""``transferkit augment-preview DATA --out DIR``: what each augmentation preset does to your images.

A flip turns "left" into "right" and a 180-degree rotation turns 6 into 9: whether a preset
keeps the class is a property of the data, best judged by looking. One PNG per preset: a row
per sample image (a few of each class), the image as training sees it (decoded at the training
size) and then several augmented views, drawn with the very transform training draws from
(:func:`transferkit.training.augment.build_augmentation`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from transferkit.data import ImageSet, load_pixels
from transferkit.errors import ConfigError
from transferkit.training.augment import AUGMENT_PRESETS, build_augmentation
from transferkit.training.inputs import pixels_to_tensor

GAP = 4
LABEL_WIDTH = 96


def write_augment_preview(
    images: ImageSet,
    out_dir: str | os.PathLike,
    *,
    presets: Sequence[str] = AUGMENT_PRESETS,
    per_class: int = 2,
    views: int = 5,
    image_size: int = 128,
    seed: int = 0,
    cache_dir: str | bool | None = None,
) -> list[Path]:
    """Write ``augment_<preset>.png`` per preset to ``out_dir``; returns the written files.

    Each has one row per sample image (``per_class`` of each class, drawn with ``seed``): its
    class, the image at ``image_size`` px, then ``views`` augmented views of it.
    """
    if images.labels is None:
        raise ConfigError("augment-preview needs labelled images (a class folder, a CSV with labels, or a built-in name).")
    for name, value in (("per_class", per_class), ("views", views), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} expected a positive integer. Received: {name}={value!r}")
    transforms = {preset: build_augmentation(preset) for preset in presets}  # unknown names fail here, before decoding
    chosen = _sample(images, per_class, seed)
    pixels = load_pixels(images.subset(chosen), image_size, cache_dir=cache_dir)
    labels = [str(images.labels[i]) for i in chosen]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for preset, transform in transforms.items():
        torch.manual_seed(seed)
        rows = [[image, *(_augmented(transform, image) for _ in range(views))] for image in pixels]
        path = out / f"augment_{preset}.png"
        _grid(rows, labels, f"--augment {preset}: the image as training sees it, then {views} augmented views").save(path)
        written.append(path)
    return written


def _sample(images: ImageSet, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.asarray(images.labels)
    chosen = [rng.choice(np.flatnonzero(labels == label), size=min(per_class, int((labels == label).sum())), replace=False)
              for label in images.classes]
    return np.sort(np.concatenate(chosen))


def _augmented(transform, image: np.ndarray) -> np.ndarray:
    if transform is None:
        return image
    # pixels_to_tensor copies: the decoded images may be a read-only memory map of the cache, and
    # torch.from_numpy on one warned that "the given NumPy array is not writable"
    return transform(pixels_to_tensor(image[None])[0]).permute(1, 2, 0).numpy()


def _grid(rows: list[list[np.ndarray]], labels: list[str], title: str) -> Image.Image:
    side = rows[0][0].shape[0]
    width = LABEL_WIDTH + len(rows[0]) * (side + GAP)
    sheet = Image.new("RGB", (width, 20 + len(rows) * (side + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill=(0, 0, 0))
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = 20 + r * (side + GAP)
        draw.text((4, y + side // 2 - 6), label[:14], fill=(0, 0, 0))
        for c, image in enumerate(row):
            sheet.paste(Image.fromarray(np.ascontiguousarray(image)), (LABEL_WIDTH + c * (side + GAP), y))
    return sheet
