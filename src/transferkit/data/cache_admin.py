"""Look into the disk cache and empty it: ``transferkit cache info`` and ``cache clear``.

The cache (:func:`~transferkit.data.decode.default_cache_dir`: ``$TRANSFERKIT_CACHE``, else
``~/.cache/transferkit``) holds two content-addressed, append-only parts:

- ``images/``: decoded uint8 pixels, one ``<key>.npy`` + ``<key>.json`` per (data set content,
  image size), written by :func:`~transferkit.data.decode.decode_images`;
- ``features/``: bottleneck features, one folder per (backbone weights, image size,
  precision) of shards written by :class:`~transferkit.strategies.features.FeatureCache`.

Entries are content-addressed (a changed image gets a new key, never a stale entry); the two
parts together are kept under a size cap by evicting the least recently used entries after
each write (:mod:`transferkit.data.cache_limit`; ``cache info`` shows the cap). Clearing
removes only these two parts, never other files that may share a folder named by
``$TRANSFERKIT_CACHE``; the next run recomputes what it needs and writes it again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.data.cache_limit import CacheCap, cache_cap
from transferkit.data.decode import default_cache_dir
from transferkit.errors import DataError

CACHE_PARTS: dict[str, str] = {
    "images": "decoded images (one entry per data set and image size)",
    "features": "bottleneck features (one entry per backbone, image size and precision)",
}
"""The sub-folders transferkit writes under the cache root, and what each holds."""


@dataclass(frozen=True)
class CachePart:
    """One part of the cache.

    Attributes
    ----------
    name : str
        ``"images"`` or ``"features"`` (the sub-folder).
    description : str
    path : Path
    entries : int
        Complete entries: decoded data sets in ``images``, feature stores in ``features``.
    files : int
    bytes : int
        Disk space of its files (apparent size).
    """

    name: str
    description: str
    path: Path
    entries: int
    files: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "path": str(self.path),
                "entries": self.entries, "files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class CacheSummary:
    """What the cache folder holds: :func:`cache_summary`."""

    root: Path
    exists: bool
    parts: list[CachePart]
    cap: CacheCap

    @property
    def files(self) -> int:
        return sum(part.files for part in self.parts)

    @property
    def bytes(self) -> int:
        return sum(part.bytes for part in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "exists": self.exists, "files": self.files, "bytes": self.bytes,
                "max_bytes": self.cap.max_bytes, "max_bytes_source": self.cap.source,
                "parts": [part.to_dict() for part in self.parts]}


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir`` if given, else :func:`default_cache_dir`."""
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def cache_summary(cache_dir: str | os.PathLike | None = None) -> CacheSummary:
    """Count the entries, files and bytes of each part of the cache (reads nothing but names).

    Parameters
    ----------
    cache_dir : path, optional
        The cache root; default :func:`~transferkit.data.decode.default_cache_dir`.
    """
    root = resolve_cache_dir(cache_dir)
    parts = []
    for name, description in CACHE_PARTS.items():
        folder = root / name
        files, size = _disk_usage(folder)
        parts.append(CachePart(name, description, folder, _count_entries(name, folder), files, size))
    return CacheSummary(root=root, exists=root.is_dir(), parts=parts, cap=cache_cap())


def clear_cache(cache_dir: str | os.PathLike | None = None) -> CacheSummary:
    """Delete the ``images`` and ``features`` parts of the cache; return what was there.

    Other files under the root are left alone. Safe to run while no transferkit process uses
    the cache; a process that is running keeps the files it has open (Linux) and the next run
    recomputes what it needs.
    """
    before = cache_summary(cache_dir)
    for part in before.parts:
        if part.path.is_symlink():
            part.path.unlink()
        elif part.path.is_dir():
            # errors ignored, then checked: a file another process removed meanwhile is fine
            shutil.rmtree(part.path, ignore_errors=True)
        if part.path.exists():
            raise DataError(f"cannot remove all of the cache part {part.path}; check its permissions, or delete it by hand.")
    return before


def _disk_usage(folder: Path) -> tuple[int, int]:
    files = size = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue  # removed meanwhile by another process
            files += 1
    return files, size


def _count_entries(name: str, folder: Path) -> int:
    if not folder.is_dir():
        return 0
    if name == "images":
        # the .json is written last: its presence marks a complete entry
        return sum(1 for path in folder.glob("*.json"))
    return sum(1 for path in folder.iterdir() if path.is_dir())
