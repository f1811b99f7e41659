"""Exact duplicates: content hashes, CV groups that keep copies together, conflicting labels.

A picture saved twice (``x.png`` and ``x (1).png``) must never sit on both sides of a split:
the copy in the test part is then an answer the model has already seen. Two kinds of identity:

- :func:`content_digests`: the SHA-256 of each file's bytes (or of an array's bytes and
  shape), the same hash the decode cache is keyed by; a saved model keeps those of its
  training images, so ``evaluate`` can say how many test images it has seen.
- :func:`pixel_groups`: identical decoded pixel rows, for code that only has pixels (the
  inner CV of the feature strategies).

Near-copies (resized, re-encoded, shifted by a pixel: :mod:`transferkit.data.near_copies`)
join the same groups when the caller passes the decoded pixels to :func:`duplicate_groups`,
so cross-validation keeps them in one fold exactly as it keeps byte copies.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from transferkit.data.decode import _content_digest, _worker_count, release_pages
from transferkit.data.near_copies import near_copy_pairs, thumbnails
from transferkit.data.sources import ImageSet

DIGEST_CHARS = 32
"""Hex characters kept of each SHA-256 (128 bits): a model folder stores one per training image."""
_MAX_LISTED = 5


def content_digests(imageset: ImageSet) -> list[str]:
    """One hex digest per image of ``imageset``, in order: identical bytes, identical digest."""
    with ThreadPoolExecutor(max_workers=_worker_count()) as pool:
        return [digest.hex()[:DIGEST_CHARS] for digest in pool.map(_content_digest, imageset.sources)]


def _union_groups(keys: Sequence, groups: Sequence[str] | None, pairs: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """Group ids (int) joining images that share a key or an existing group id, or form one of
    ``pairs`` (positions), by union-find."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for values in (keys, groups):
        if values is None:
            continue
        first: dict = {}
        for i, value in enumerate(values):
            j = first.setdefault(value, i)
            if j != i:
                parent[find(i)] = find(j)
    for i, j in pairs:
        parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(keys))]
    _, ids = np.unique(roots, return_inverse=True)
    return ids.astype(np.int64)


def duplicate_groups(
    imageset: ImageSet, digests: Sequence[str] | None = None, pixels: np.ndarray | None = None
) -> np.ndarray | None:
    """CV groups in which exact copies share a group (joined with ``imageset.groups``, if any).

    With ``pixels`` (the decoded images of ``imageset``, uint8 (N, S, S, 3), any size S),
    near-copies (:func:`transferkit.data.near_copies.near_copy_pairs`) share a group too.
    ``None`` when there is nothing to group (no copies, no groups given): plain stratified
    folds then stay exactly what they were.
    """
    digests = content_digests(imageset) if digests is None else digests
    pairs = [] if pixels is None else [(p.query, p.reference) for p in near_copy_pairs(thumbnails(pixels))]
    if imageset.groups is None and len(set(digests)) == len(digests) and not pairs:
        return None
    return _union_groups(digests, imageset.groups, pairs)


THUMBNAIL_DECODE_SIDE = 48
"""Side at which :func:`thumbnail_pixels` decodes (cached) when a caller has no pixels yet."""


def thumbnail_pixels(imageset: ImageSet, cache_dir=None) -> np.ndarray:
    """Pixels of ``imageset`` decoded at :data:`THUMBNAIL_DECODE_SIDE` (disk-cached), for
    :func:`duplicate_groups` in code that makes its folds before it decodes (compare, the race)."""
    from transferkit.data.decode import decode_images

    return decode_images(imageset, THUMBNAIL_DECODE_SIDE, cache_dir=cache_dir, progress=False).pixels


GROUP_CHUNK = 512
"""Images :func:`pixel_groups` reads at once: a memory-mapped decode cache is read chunk by chunk
and its pages released, so grouping 50,000 images does not make them all resident."""


def pixel_groups(pixels: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    """Group ids of decoded images: identical pixel rows share one (each other row its own).

    ``indices`` selects the rows (default all) without copying them all: ``pixel_groups(pixels,
    train)`` equals ``pixel_groups(pixels[train])``. A hash of every 61st byte sorts the rows
    first, :data:`GROUP_CHUNK` rows at a time; only rows that agree there are hashed whole.
    """
    rows = np.arange(len(pixels)) if indices is None else np.asarray(indices)
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    keys: list = []
    for start in range(0, len(rows), GROUP_CHUNK):
        block = np.asarray(pixels[rows[start : start + GROUP_CHUNK]])
        keys += [_row_hash(row[::61]) for row in block.reshape(len(block), -1)]
        release_pages(pixels)
    counts: dict = defaultdict(int)
    for key in keys:
        counts[key] += 1
    keys = [(key, _row_hash(np.asarray(pixels[rows[i]]).reshape(-1))) if counts[key] > 1 else (key, i)
            for i, key in enumerate(keys)]
    release_pages(pixels)
    return _union_groups(keys, None)


def _row_hash(values: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(values).data, digest_size=16).digest()


def label_conflicts(imageset: ImageSet, digests: Sequence[str] | None = None) -> list[list[int]]:
    """The groups of identical images that carry more than one label (positions in ``imageset``)."""
    if imageset.labels is None:
        return []
    digests = content_digests(imageset) if digests is None else digests
    members: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        members[digest].append(i)
    return [group for group in members.values() if len({imageset.labels[i] for i in group}) > 1]


def describe_conflicts(imageset: ImageSet, conflicts: list[list[int]]) -> str:
    """One message naming the pictures that are in two classes at once (first few shown)."""
    shown = "; ".join(
        " = ".join(f"{imageset.source_name(i)} ({imageset.labels[i]})" for i in group[:3]) for group in conflicts[:_MAX_LISTED]
    )
    more = f"; and {len(conflicts) - _MAX_LISTED} more" if len(conflicts) > _MAX_LISTED else ""
    return (
        f"{len(conflicts)} picture(s) appear with different labels (identical files in two classes): {shown}{more}. "
        "A model cannot get both right; check the labels and keep each picture in one class."
    )


def train_test_overlap(known: Sequence[str] | None, imageset: ImageSet) -> int | None:
    """How many images of ``imageset`` are byte copies of the images hashed in ``known``.

    ``known`` is a model's ``training_digests_``; None (a model saved before they were kept)
    gives None.
    """
    if known is None:
        return None
    seen = set(known)
    return sum(digest in seen for digest in content_digests(imageset))
