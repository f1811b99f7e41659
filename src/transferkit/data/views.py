"""Views of square images under the symmetries of a square: flips, and rotations by 90 degrees.

A view is a function of uint8 pixels ``(N, S, S, C)`` (rows, then columns) to the same shape;
every view here only reorders pixels, so it is exact and cheap (numpy strides, no copy until
the caller asks for a contiguous array). The views are numpy only, so that the ONNX predictor
(no torch) averages a model's outputs over exactly the views its features were averaged over.

:data:`SYMMETRIES` names the groups of views a feature strategy may average over: ``flips``
(horizontal, vertical and both: the 180-degree rotation) and ``dihedral`` (those and the four
views that turn the image by 90 degrees: the 8 symmetries of a square). Whether a data set
allows one is measured by ``auto``'s symmetry test, not assumed: a flipped "left of" is a
"right of", a turned 6 is no 6, and on ELPV a classifier fitted on upright solar cells drops from
0.77 to 0.31 on cells turned by 90 degrees (their busbars then run the other way).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

View = Callable[[np.ndarray], np.ndarray]

VIEWS: dict[str, View] = {
    "identity": lambda pixels: pixels,
    "horizontal": lambda pixels: pixels[:, :, ::-1],
    "vertical": lambda pixels: pixels[:, ::-1],
    "rotate180": lambda pixels: pixels[:, ::-1, ::-1],
    "rotate90": lambda pixels: np.rot90(pixels, 1, axes=(1, 2)),  # counter-clockwise
    "rotate270": lambda pixels: np.rot90(pixels, 3, axes=(1, 2)),
    "transpose": lambda pixels: pixels.swapaxes(1, 2),  # mirror about the main diagonal
    "antitranspose": lambda pixels: pixels[:, ::-1, ::-1].swapaxes(1, 2),  # mirror about the other diagonal
}
"""Each view of a batch of square images ``(N, S, S, C)``, by name."""

SYMMETRIES: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "horizontal", "vertical", "rotate180"),
    "dihedral": ("identity", "horizontal", "vertical", "rotate180", "rotate90", "rotate270", "transpose", "antitranspose"),
}
"""Image symmetries a feature strategy may average its features over (at fit and predict).

Averaging the features of flipped or turned copies is test-time augmentation for a linear head
(the head of the average equals the average of the heads). Measured on ELPV (Lite0 multi-layer
features at 224 px, ``benchmarks/RESULTS.md``): svm test accuracy 0.767 with ``none``, 0.802
with ``flips``, 0.796 with ``dihedral``; logistic 0.791 with ``flips``, 0.805 with ``dihedral``."""


def view(pixels: np.ndarray, name: str) -> np.ndarray:
    """``pixels`` (N, S, S, C) seen through the view ``name`` of :data:`VIEWS`, as a contiguous array."""
    return np.ascontiguousarray(VIEWS[name](pixels))


def mean_over_views(outputs: list[np.ndarray]) -> np.ndarray:
    """The float32 mean of one array per view (features or a linear head's logits, all (N, D)),
    summed in float64; a single view is returned as it is."""
    return np.mean(outputs, axis=0, dtype=np.float64).astype(np.float32) if len(outputs) > 1 else outputs[0]


__all__ = ["SYMMETRIES", "VIEWS", "mean_over_views", "view"]
