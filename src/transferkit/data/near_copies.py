"""Near-copies: a picture resized, re-encoded as JPEG or shifted by a pixel is still the same picture.

Exact copies are found by content hash (:mod:`transferkit.data.duplicates`); a copy that was
resized or re-saved has other bytes. Each image is reduced to a *thumbnail*: the grey image
averaged down to :data:`THUMB_SIDE` x :data:`THUMB_SIDE` pixels (Pillow's box filter), stored
as uint8. Two thumbnails are compared by the correlation of their zero-mean centres, taking the
best of the 9 shifts by up to one thumbnail pixel (a shift of a few source pixels).

Similarity alone does not separate copies from look-alikes: on ELPV, plain solar cells correlate
above 0.995 with many others; on 8 px digits, two different "1"s do. So a pair is a near-copy
when, in distance ``d = 1 - similarity``:

- ``d1 <= MAX_DISTANCE``: very close in absolute terms, and
- ``d1 <= RATIO * d2``: much closer than the query's next-nearest *other* picture (Lowe's ratio
  test), where pictures that are as close to the best match as the query is (copies of the best
  match) do not count as "other", and
- the two thumbnails' mean grey levels differ by at most :data:`MAX_MEAN_SHIFT`: resizing,
  re-encoding and shifting keep a picture's brightness, while the correlation ignores it (lfw's
  flat 25 px "non-face" patches with one edge correlated above 0.98 at 35-144 grey levels apart).

Measured (``benchmarks/near_copies.py``, RESULTS.md): resized, JPEG-re-encoded and one-pixel
shifted copies of training images are named at 93-100 % on animals, spatial, lfw and ELPV, with
no clean test image of spatial, animals or lfw named falsely; 8x8 digits resized or shifted by a
whole source pixel (12 % of the image) are not named. ELPV holds genuine near-copies: the same
physical cell imaged twice (``cell1842.png`` / ``cell1843.png``: the same defects, a few grey
levels apart; ``cell0318`` / ``cell0319``: a crack in one image only, labelled 0 and 1): 6.6 %
of its paper test split is named (10.5 % before the brightness test, which leaves out re-images
taken at another exposure).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from PIL import Image

from transferkit.data.decode import release_pages

THUMB_SIDE = 24
"""Side of the grey thumbnail (pixels): 576 bytes per image."""
MAX_DISTANCE = 0.1
"""Largest ``1 - similarity`` of a near-copy."""
RATIO = 0.3
"""A near-copy is at most this fraction of the distance to the next-nearest other picture."""
MAX_MEAN_SHIFT = 8.0
"""Largest difference of the two thumbnails' mean grey levels (0-255) of a near-copy (measured:
copies made by resizing, JPEG and one-pixel shifts differ by at most 4.3)."""
_SHIFT = 1
_NEIGHBOURS = 8
_CHUNK = 512
_GREY = np.array([0.299, 0.587, 0.114], np.float32)


def thumbnails(pixels: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    """Grey :data:`THUMB_SIDE`-pixel thumbnails of decoded images, uint8 of shape (N, side, side).

    ``pixels`` is a uint8 array (N, S, S, 3) (a memory-mapped decode cache is read in chunks and
    its pages released); ``indices`` selects rows (default all).
    """
    rows = np.arange(len(pixels)) if indices is None else np.asarray(indices)
    out = np.zeros((len(rows), THUMB_SIDE, THUMB_SIDE), np.uint8)
    for start in range(0, len(rows), _CHUNK):
        block = np.asarray(pixels[rows[start : start + _CHUNK]], dtype=np.float32) @ _GREY
        for i, grey in enumerate(block):
            small = Image.fromarray(grey, "F").resize((THUMB_SIDE, THUMB_SIDE), Image.BOX)
            out[start + i] = np.clip(np.rint(np.asarray(small)), 0, 255).astype(np.uint8)
        release_pages(pixels)
    return out


def encode_thumbnails(thumbs: np.ndarray) -> str:
    """Thumbnails as base64 text (for a model's config.json): 768 characters per image."""
    return base64.b64encode(np.ascontiguousarray(thumbs, dtype=np.uint8).tobytes()).decode("ascii")


def decode_thumbnails(text: str) -> np.ndarray:
    """The inverse of :func:`encode_thumbnails`; raises ``ValueError`` on text of the wrong length."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), np.uint8)
    if raw.size % (THUMB_SIDE * THUMB_SIDE):
        raise ValueError(f"thumbnail data of {raw.size} bytes is no whole number of {THUMB_SIDE}x{THUMB_SIDE} thumbnails")
    return raw.reshape(-1, THUMB_SIDE, THUMB_SIDE).copy()


def _centred(thumbs: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Zero-mean, unit-norm rows of the (side - 2) crops shifted by (dy, dx)."""
    side = THUMB_SIDE - 2 * _SHIFT
    crop = thumbs[:, _SHIFT + dy : _SHIFT + dy + side, _SHIFT + dx : _SHIFT + dx + side].reshape(len(thumbs), -1).astype(np.float32)
    crop -= crop.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(crop, axis=1, keepdims=True)
    return crop / np.maximum(norm, 1e-3)


def similarity(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Similarity of each query thumbnail to each reference one, shape (n_query, n_reference), in [-1, 1].

    The largest correlation over shifts of the query by up to one thumbnail pixel. Flat
    thumbnails (one grey level) correlate 0 with everything, themselves included.
    """
    ref = _centred(reference, 0, 0)
    best = None
    for dy in range(-_SHIFT, _SHIFT + 1):
        for dx in range(-_SHIFT, _SHIFT + 1):
            value = _centred(query, dy, dx) @ ref.T
            best = value if best is None else np.maximum(best, value)
    return best


@dataclass(frozen=True)
class NearCopy:
    """Query image ``query`` is a near-copy of reference image ``reference`` (positions)."""

    query: int
    reference: int
    similarity: float


def near_copies(query: np.ndarray, reference: np.ndarray, *, same_set: bool = False) -> list[NearCopy]:
    """The query thumbnails that are near-copies of a reference thumbnail (see the module docstring).

    ``query`` (n, side, side) and ``reference`` (m, side, side) are uint8 thumbnails from
    :func:`thumbnails`. ``same_set=True`` when they are one set (audit, CV groups): an image is
    then not its own match, and each pair is reported once per direction that passes.
    Cost: n x m x 9 dot products of 484 numbers, in chunks of 512 queries.
    """
    if len(query) == 0 or len(reference) < (3 if same_set else 2):
        return []
    found: list[NearCopy] = []
    ref_centred = _centred(reference, 0, 0)
    query_mean, ref_mean = query.reshape(len(query), -1).mean(axis=1), reference.reshape(len(reference), -1).mean(axis=1)
    k = min(_NEIGHBOURS, len(reference) - (1 if same_set else 0))
    for start in range(0, len(query), _CHUNK):
        sims = similarity(query[start : start + _CHUNK], reference)
        if same_set:
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        nearest = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
        for row, order in enumerate(nearest):
            d = 1.0 - sims[row, order]
            if d[0] > MAX_DISTANCE:
                continue
            best = order[0]
            # Pictures as close to the best match as the query is are copies of it, not "others".
            to_best = 1.0 - ref_centred[order[1:]] @ ref_centred[best]
            others = d[1:][to_best > d[0] + 1e-6]
            if same_set:
                others = others[order[1:][to_best > d[0] + 1e-6] != start + row]
            d2 = others[0] if len(others) else np.inf
            if d[0] <= RATIO * d2 and abs(query_mean[start + row] - ref_mean[best]) <= MAX_MEAN_SHIFT:
                found.append(NearCopy(int(start + row), int(best), float(sims[row, best])))
    return found


def near_copy_pairs(thumbs: np.ndarray) -> list[NearCopy]:
    """Near-copies within one set, each unordered pair once (``query < reference``), most similar first."""
    pairs: dict[tuple[int, int], float] = {}
    for item in near_copies(thumbs, thumbs, same_set=True):
        key = (min(item.query, item.reference), max(item.query, item.reference))
        pairs[key] = max(pairs.get(key, -1.0), item.similarity)
    ordered = sorted(pairs.items(), key=lambda kv: -kv[1])
    return [NearCopy(a, b, s) for (a, b), s in ordered]


def near_copies_of_training(classifier, names: list[str], pixels: np.ndarray) -> list[dict] | None:
    """``evaluate``'s and the report's ``train_test_near_duplicates``: :func:`train_test_near_copies`
    of the test images (``names`` and decoded ``pixels``, row for row) against a fitted model's
    ``training_thumbnails_``; None for a model saved without them (before issue 30)."""
    thumbs = getattr(classifier, "training_thumbnails_", None)
    if thumbs is None:
        return None
    return train_test_near_copies(thumbs, classifier.training_names_, thumbnails(pixels), names)


def train_test_near_copies(
    train_thumbs: np.ndarray, train_names: list[str], test_thumbs: np.ndarray, test_names: list[str]
) -> list[dict]:
    """``{test, train, similarity}`` for each test image that is a near-copy of a training image.

    Thumbnails as from :func:`thumbnails`; names in the same order. Byte copies are near-copies
    too (similarity 1.0). Ordered by similarity, highest first.
    """
    found = near_copies(test_thumbs, train_thumbs)
    found.sort(key=lambda item: -item.similarity)
    return [{"test": test_names[item.query], "train": train_names[item.reference], "similarity": round(item.similarity, 4)}
            for item in found]
