"""``predict --explain DIR``: one heatmap overlay PNG per image, for the predicted class."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from transferkit.report.cam import activation_maps, overlay


def write_explanations(classifier, paths: Sequence[str], out_dir: str | os.PathLike, *, probabilities: np.ndarray | None = None) -> list[Path]:
    """Write ``<name>.heatmap.png`` (the image at the model's size, Grad-CAM of its predicted class on top) per image.

    Two inputs with the same file name get the position in ``paths`` as a prefix, so none is
    overwritten. Returns the written files in the order of ``paths``.
    """
    from transferkit.estimator import load_pixels

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(load_pixels(list(paths), classifier.image_size_, cache_dir=classifier.cache_dir))
    targets = None if probabilities is None else probabilities.argmax(axis=1)
    heatmaps = activation_maps(classifier.model_, pixels, classifier.preprocessing_, targets)
    stems = [Path(p).stem for p in paths]
    written = []
    for index, (stem, image, heatmap) in enumerate(zip(stems, pixels, heatmaps)):
        name = f"{stem}.heatmap.png" if stems.count(stem) == 1 else f"{index:04d}_{stem}.heatmap.png"
        Image.fromarray(overlay(image, heatmap)).save(out / name)
        written.append(out / name)
    return written
