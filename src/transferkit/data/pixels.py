"""Any input a user may pass to ``predict`` or ``transform``, as decoded uint8 pixels."""

from __future__ import annotations

from typing import Any

import numpy as np

from transferkit.data.decode import decode_images
from transferkit.data.sources import ImageSet, resolve_data


def as_unlabelled(X: Any) -> ImageSet:
    """Images to predict: an ImageSet, a labelled source (labels ignored), paths or an array."""
    if isinstance(X, ImageSet):
        return X
    if isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim in (3, 4):
        return ImageSet(sources=list(X), labels=None)
    if isinstance(X, (list, tuple)):
        return ImageSet(sources=[str(x) if not isinstance(x, np.ndarray) else x for x in X], labels=None)
    return resolve_data(X)


def is_decoded(X: Any, size: int) -> bool:
    """Whether X is already what decode_images would make: uint8 (N, size, size, 3)."""
    return isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim == 4 and X.shape[1:] == (size, size, 3)


def load_pixels(X: Any, size: int, *, cache_dir: str | bool | None = None, progress: bool = False) -> np.ndarray:
    """Decoded uint8 (N, size, size, 3) pixels of X (any input :func:`as_unlabelled` takes)."""
    if is_decoded(X, size):
        return X
    return decode_images(as_unlabelled(X), size, skip_bad=False, cache_dir=cache_dir, progress=progress).pixels
