"""The disk cache's size cap and its least-recently-used eviction: the one home of both.

The cache root (``$TRANSFERKIT_CACHE``, else ``~/.cache/transferkit``) holds two parts, and
each is made of *entries*, the unit that is used, kept or evicted whole:

- ``images/<key>.npy`` + ``<key>.json``: one decoded data set at one size
  (:func:`~transferkit.data.decode.decode_images`);
- ``features/<model>/<shard>.npy`` + ``<shard>.json``: one shard of feature vectors
  (:class:`~transferkit.strategies.features.FeatureCache`), up to 512 images' worth.

An entry's ``.json`` is written last (its presence marks a complete entry) and its
modification time is the entry's **last use**: set when it is written, and set again
(:func:`note_used`) each time a process reads it. The file system's access time is not used:
``noatime`` and ``relatime`` mounts do not keep it.

After every write, :func:`enforce_cap` removes the least recently used entries until the two
parts fit under the cap (:func:`cache_cap`: :data:`DEFAULT_CACHE_MAX_MB`, or
``$TRANSFERKIT_CACHE_MAX_MB``). It never removes an entry that this process has read or
written (its next step may read it again: the auto search decodes a size once and comes back
to it), so one run's own entries may exceed a small cap until a later run evicts them.

Safe against concurrent processes: an entry is removed ``.json`` first, so a reader either
finds no entry or finds the ``.npy`` gone and, as with a damaged entry, computes it again;
a file that a reader has already mapped stays readable after it is unlinked (Linux keeps its
pages until the mapping closes). Two evicting processes may race to remove one file: the one
that loses finds it gone, which is fine.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from transferkit.errors import ConfigError

DEFAULT_CACHE_MAX_MB = 2048
"""The cap when ``$TRANSFERKIT_CACHE_MAX_MB`` is not set: 2 GiB. A default ``fit`` of 300 ELPV
images left 64-79 MB (measured, benchmarks/RESULTS.md, issue 33); ``make run`` (1,968 images)
leaves about 0.5 GB by count (296 MB of pixels at 224 px, 97 MB at 128 px, ~30 MB of features
per view), so 2 GiB keeps the entries of about four data sets of that size, or one of about
13,000 images at 224 px (150,528 bytes each), while staying small next to a laptop's disk. A
larger data set needs a larger cap to be served from the cache on the next run; the run
itself never evicts its own entries."""

CACHE_MAX_ENV = "TRANSFERKIT_CACHE_MAX_MB"
"""Environment variable: the cap in MiB (a positive number), or ``none`` for no cap."""

STALE_SECONDS = 24 * 3600
"""A writer's temporary file (``.*.tmp``), or an ``.npy`` without its ``.json``, older than this is
a killed writer's (or a killed eviction's) leftover: eviction removes it."""

_PARTS = ("images", "features")
_used: set[str] = set()  # the .json of every entry this process has read or written
_lock = threading.Lock()


@dataclass(frozen=True)
class CacheCap:
    """The cache's size cap: ``max_bytes`` (None: no cap) and where it was set."""

    max_bytes: int | None
    source: str  # "default" or the environment variable's name

    def describe(self) -> str:
        if self.max_bytes is None:
            return f"no cap ({self.source}=none)"
        return f"{self.max_bytes / 2**20:,.0f} MB ({'default' if self.source == 'default' else self.source})"


@dataclass(frozen=True)
class _Entry:
    meta: Path  # the .json: removed first, its mtime is the last use
    data: Path
    bytes: int
    last_used: float


def cache_cap() -> CacheCap:
    """The cap in effect: ``$TRANSFERKIT_CACHE_MAX_MB`` MiB if set (``none``: no cap), else
    :data:`DEFAULT_CACHE_MAX_MB`.

    Raises
    ------
    ConfigError
        The variable is set to something other than a positive number or ``none``.
    """
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    if not text:
        return CacheCap(DEFAULT_CACHE_MAX_MB * 2**20, "default")
    if text.lower() == "none":
        return CacheCap(None, CACHE_MAX_ENV)
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not megabytes > 0 or megabytes == float("inf"):
        raise ConfigError(
            f"{CACHE_MAX_ENV} expected a positive number of MiB (e.g. 4096) or 'none' for no cap. "
            f"Received: {CACHE_MAX_ENV}={text!r}"
        )
    return CacheCap(int(megabytes * 2**20), CACHE_MAX_ENV)


def note_used(meta: Path) -> None:
    """Record that this process read or wrote the entry whose ``.json`` is ``meta``: its
    modification time becomes now (its last use), and :func:`enforce_cap` keeps it."""
    with _lock:
        _used.add(os.fspath(meta))
    try:
        os.utime(meta)
    except OSError:
        pass  # evicted meanwhile, or a read-only cache: the entry is simply older


def enforce_cap(root: Path) -> int:
    """Remove the least recently used entries under ``root`` until the cache fits its cap;
    entries this process used are kept. Returns the bytes removed."""
    cap = cache_cap().max_bytes
    if cap is None:
        return 0
    entries, total = _entries(root)
    if total <= cap:
        return 0
    with _lock:
        used = set(_used)
    removed = 0
    for entry in sorted(entries, key=lambda e: e.last_used):
        if total - removed <= cap:
            break
        if os.fspath(entry.meta) in used:
            continue
        for path in (entry.meta, entry.data):  # .json first: a reader then sees no entry
            try:
                path.unlink()
            except OSError:
                pass  # another process evicted it first
        removed += entry.bytes
    return removed


def _entries(root: Path) -> tuple[list[_Entry], int]:
    """Every complete entry of the two parts, and the bytes of every file in them (entries,
    entries being written, leftovers); killed writers' temporary files are removed on the way."""
    entries, total = [], 0
    now = time.time()
    for part in _PARTS:
        for directory, _, names in os.walk(Path(root) / part):
            sizes = {}
            for name in names:
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue  # removed meanwhile
                sizes[name] = (stat.st_size, stat.st_mtime)
            for name, (size, mtime) in sizes.items():
                stem, _, suffix = name.rpartition(".")
                if suffix == "json" and f"{stem}.npy" in sizes:
                    data_size = sizes[f"{stem}.npy"][0]
                    entries.append(_Entry(Path(directory, name), Path(directory, f"{stem}.npy"), size + data_size, mtime))
                elif (suffix == "tmp" or (suffix == "npy" and f"{stem}.json" not in sizes)) and now - mtime > STALE_SECONDS:
                    _remove(os.path.join(directory, name))
                    continue
                total += size
    return entries, total


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
