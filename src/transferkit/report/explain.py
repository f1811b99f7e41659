"""``predict --explain DIR``: one PNG per image: the image, its heatmap overlay and the colour scale."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from transferkit.report.cam import explanation_panel, heatmaps


def write_explanations(classifier, paths: Sequence[str], out_dir: str | os.PathLike, *, probabilities: np.ndarray | None = None) -> list[Path]:
    """Write ``<name>.heatmap.png`` per image: the image at the model's input size (enlarged to 160 px
    when smaller, with a smooth filter), the Grad-CAM map of its predicted class on top of it, and the
    colour scale, side by side; below them the predicted class with its probability and where the
    map comes from, wrapped between words.

    Where the map stays flat the middle panel says "no useful map" instead of showing a flat tint.
    Two inputs with the same file name get their position in ``paths`` as a prefix
    (``0003_<name>.heatmap.png``), so none is overwritten. ``probabilities``: the model's, if the
    caller has them (else computed here). Returns the written files in the order of ``paths``.
    """
    from transferkit.data import load_pixels

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(load_pixels(list(paths), classifier.image_size_, cache_dir=classifier.cache_dir))
    if probabilities is None:
        probabilities = classifier.predict_proba(pixels)
    targets = probabilities.argmax(axis=1)
    found = heatmaps(classifier.model_, pixels, classifier.preprocessing_, targets)
    classes = [str(c) for c in classifier.classes_]
    stems = [Path(p).stem for p in paths]
    written = []
    for index, (stem, image, heatmap) in enumerate(zip(stems, pixels, found.maps)):
        name = f"{stem}.heatmap.png" if stems.count(stem) == 1 else f"{index:04d}_{stem}.heatmap.png"
        title = f"predicted {classes[targets[index]]} ({probabilities[index, targets[index]]:.3f})"
        panel = explanation_panel(image, heatmap if found.useful[index] else None, title=title, note=found.describe(index))
        Image.fromarray(panel).save(out / name)
        written.append(out / name)
    return written
