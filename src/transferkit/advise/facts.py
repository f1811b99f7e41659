"""Plain facts about a data set: sizes, classes, image shapes and modes, exact duplicates.

Cheap: image headers only (no pixel decoding) and one hash of every file's bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from transferkit.data import ImageSet
from transferkit.errors import DataError

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_MAX_EXAMPLES = 5
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFacts:
    """What a data set is made of; the input of the rules besides the measurements.

    Attributes
    ----------
    n_samples : int
        Number of labelled images.
    n_classes : int
    class_counts : dict of str to int
        Images per class, classes sorted.
    imbalance : float
        Images in the largest class / images in the smallest (1.0 is balanced).
    height, width : tuple of (int, float, int)
        Minimum, median and maximum image height and width in pixels, from the headers.
    modes : dict of str to int
        Images per PIL mode (``"RGB"``, ``"L"``, ``"I;16"`` ...); arrays count as ``"L"``,
        ``"RGB"`` or ``"RGBA"``; unreadable files as ``"unreadable"``.
    grayscale_fraction : float
        Fraction of grayscale images: by mode, or, when decoded pixels were given, images
        whose three channels are equal (which also catches gray images saved as RGB).
    duplicates : int
        Images whose bytes equal an earlier image's (copies beyond the first).
    conflicting_duplicates : int
        Groups of identical images that carry different labels.
    duplicate_examples : list of (str, str)
        Up to 5 pairs of identical images, by name.
    """

    n_samples: int
    n_classes: int
    class_counts: dict[str, int] = field(default_factory=dict)
    imbalance: float = 1.0
    height: tuple[int, float, int] = (0, 0.0, 0)
    width: tuple[int, float, int] = (0, 0.0, 0)
    modes: dict[str, int] = field(default_factory=dict)
    grayscale_fraction: float = 0.0
    duplicates: int = 0
    conflicting_duplicates: int = 0
    duplicate_examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def median_side(self) -> float:
        """The shorter of the median height and the median width."""
        return float(min(self.height[1], self.width[1]))

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["height"], d["width"] = list(self.height), list(self.width)
        d["duplicate_examples"] = [list(pair) for pair in self.duplicate_examples]
        return d


def data_facts(imageset: ImageSet, decoded_pixels: np.ndarray | None = None) -> DataFacts:
    """Count classes, measure image sizes from headers, find exact duplicates.

    Parameters
    ----------
    imageset : ImageSet
        Labelled images (see :func:`transferkit.data.resolve_data`).
    decoded_pixels : numpy.ndarray, optional
        ``uint8`` ``(M, S, S, 3)`` pixels of all or a sample of the images (from
        :func:`transferkit.data.decode_images`); when given, ``grayscale_fraction`` is the
        fraction of these rows whose three channels are equal.

    Returns
    -------
    DataFacts

    Raises
    ------
    DataError
        ``imageset`` is not a labelled :class:`ImageSet`, or ``decoded_pixels`` has another shape.

    Examples
    --------
    >>> images = ImageSet([np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)], ["a", "b"])
    >>> facts = data_facts(images)
    >>> facts.n_classes, facts.duplicates, facts.conflicting_duplicates, facts.modes
    (2, 1, 1, {'L': 2})
    """
    if not isinstance(imageset, ImageSet):
        raise DataError(f"data_facts expected an ImageSet (see resolve_data). Received: {type(imageset).__name__}")
    if imageset.labels is None:
        raise DataError("data_facts expected labelled images. Received: an ImageSet without labels")
    if len(imageset) == 0:
        raise DataError("data_facts expected at least 1 image. Received: 0 images")
    counts = Counter(imageset.labels)
    class_counts = {label: counts[label] for label in imageset.classes}

    heights, widths, modes = [], [], Counter()
    for source in imageset.sources:
        header = _header(source)
        if header is None:
            modes["unreadable"] += 1
            continue
        (height, width), mode = header
        heights.append(height)
        widths.append(width)
        modes[mode] += 1

    readable = sum(n for mode, n in modes.items() if mode != "unreadable")
    gray = sum(n for mode, n in modes.items() if mode in _GRAY_MODES) / readable if readable else 0.0
    if decoded_pixels is not None:
        gray = _gray_fraction(decoded_pixels)

    duplicates, conflicting, examples = _duplicates(imageset)
    return DataFacts(
        n_samples=len(imageset),
        n_classes=len(class_counts),
        class_counts=class_counts,
        imbalance=max(class_counts.values()) / min(class_counts.values()),
        height=_summary(heights),
        width=_summary(widths),
        modes=dict(modes.most_common()),
        grayscale_fraction=float(gray),
        duplicates=duplicates,
        conflicting_duplicates=conflicting,
        duplicate_examples=examples,
    )


def _header(source) -> tuple[tuple[int, int], str] | None:
    """((height, width), mode) without decoding pixels; None when the file cannot be opened."""
    if isinstance(source, np.ndarray):
        channels = 1 if source.ndim == 2 else source.shape[-1]
        return source.shape[:2], {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels} channels")
    try:
        with Image.open(source) as image:
            width, height = image.size
            return (height, width), image.mode
    except Exception:  # noqa: BLE001 -- any unreadable file: decoding will name it and why
        return None


def _summary(values: list[int]) -> tuple[int, float, int]:
    if not values:
        return (0, 0.0, 0)
    return (int(min(values)), float(np.median(values)), int(max(values)))


def _gray_fraction(pixels: np.ndarray) -> float:
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise DataError(
            "decoded_pixels expected an array of shape (M, S, S, 3). "
            f"Received: shape={getattr(pixels, 'shape', type(pixels).__name__)}"
        )
    if len(pixels) == 0:
        return 0.0
    gray = [(image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all() for image in pixels]
    return float(np.mean(gray))


def _duplicates(imageset: ImageSet) -> tuple[int, int, list[tuple[str, str]]]:
    groups: dict[bytes, list[int]] = defaultdict(list)
    for index, source in enumerate(imageset.sources):
        groups[_digest(source)].append(index)
    repeated = [members for members in groups.values() if len(members) > 1]
    duplicates = sum(len(members) - 1 for members in repeated)
    conflicting = sum(len({imageset.labels[i] for i in members}) > 1 for members in repeated)
    examples = [(imageset.source_name(m[0]), imageset.source_name(m[1])) for m in repeated[:_MAX_EXAMPLES]]
    return duplicates, conflicting, examples


def _digest(source) -> bytes:
    """A hash of the image's content: the file's bytes, or the array's shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(source, np.ndarray):
        digest.update(f"{source.dtype.str}{source.shape}".encode())
        digest.update(np.ascontiguousarray(source).tobytes())
        return digest.digest()
    try:
        with open(os.fspath(source), "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except (OSError, TypeError):
        # unreadable: unique, so that it is never counted as a duplicate
        digest.update(f"unreadable|{source!r}".encode())
    return digest.digest()
