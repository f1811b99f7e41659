"""Pixels: :func:`read_image` (any PIL mode to RGB) and :func:`decode_images` (+ disk cache).

Every image is read once, converted to RGB and resized to ``size x size`` as a whole (no
crop: a defect at the border of a cell must not be cut away; the aspect ratio is not kept).
The resulting ``uint8`` array is cached on disk, keyed by the images' content, so the next
run with the same images, size and interpolation maps it back in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import PIL
from PIL import Image, ImageOps

from transferkit.data.cache_limit import enforce_cap, note_used
from transferkit.data.sources import ImageSet, SkippedFile, _list_bad
from transferkit.data.validate import file_problem, unreadable_format
from transferkit.errors import ConfigError, DataError
from transferkit.files import atomic_write

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
#: Bump when the decoded pixels would change for the same inputs (conversion, resize, layout).
CACHE_FORMAT_VERSION = 3  # 2: the entry's JSON holds the SHA-256 of the pixels; 3: bit-depth scale, white alpha background
ALPHA_BACKGROUND = 255
"""The background every transparent pixel is composited onto: white (255 in each channel),
as an image viewer or a web page shows a transparent icon."""
_PROGRESS_MIN_IMAGES = 200  # below this a progress bar is only flicker
_MAX_WORKERS = 8  # threads: PIL releases the GIL while decoding and resizing
DECODE_CHUNK = 256
"""Images decoded into the cache file per step; the step's pages are then released, so the
memory a decode holds does not grow with the number of images (see :func:`release_pages`)."""
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class DecodedImages:
    """The pixels of an :class:`ImageSet`, ready for a network.

    Attributes
    ----------
    pixels : numpy.ndarray
        ``uint8`` array of shape ``(N, size, size, 3)``, RGB. With the disk cache it is a
        read-only :class:`numpy.memmap`; copy it (``np.array(pixels)``) before writing.
    indices : numpy.ndarray
        ``int64`` positions in the input :class:`ImageSet` of the rows of ``pixels`` (all of
        them unless ``skip_bad=True`` left some out). Use ``imageset.subset(indices)`` to get
        the matching labels.
    skipped : list of SkippedFile
        Images that could not be read and were left out (``skip_bad=True`` only).
    """

    pixels: np.ndarray
    indices: np.ndarray
    skipped: list[SkippedFile]


class _UnreadableImage(Exception):
    """Internal: one image cannot be read; ``str(error)`` is the reason."""


def default_cache_dir() -> Path:
    """The disk cache folder: ``$TRANSFERKIT_CACHE`` if set, else ``~/.cache/transferkit``."""
    env = os.environ.get("TRANSFERKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferkit"


def read_image(source: str | os.PathLike | np.ndarray | Image.Image) -> Image.Image:
    """Read one image as an RGB :class:`PIL.Image.Image`, whatever its mode.

    The decoding rules (README, "Data"), the same at fit, predict, in the ONNX predictor and
    in the server, since all of them come through here:

    - grayscale ``L`` and ``1`` are replicated to the 3 channels;
    - high bit depths get **one scale from the bit depth**, never the image's own range, so
      a dark and a bright copy of a picture stay different: 16-bit (``I;16``, ``I;16B`` ...,
      16-bit PNG and TIFF) and 32-bit integer (``I``, read as 16-bit values) map 0-65535 to
      0-255 (``v / 257``, values outside clipped); float (``F``) maps 0.0-1.0 to 0-255
      (outside clipped, NaN 0); 48-bit RGB keeps Pillow's 8 high bits per channel;
    - every kind of transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, a palette with
      a transparent index, an ``L``/``RGB``/16-bit image with a tRNS colour key) is
      composited the same way onto one background, :data:`ALPHA_BACKGROUND` (white):
      ``colour * alpha + white * (1 - alpha)``;
    - ``CMYK``, ``YCbCr`` and other colour modes use PIL's conversion;
    - the EXIF orientation tag is applied (a phone photo comes out upright);
    - multi-frame files (GIF, TIFF, animated WebP) give their first frame.

    Parameters
    ----------
    source : str, os.PathLike, numpy.ndarray or PIL.Image.Image
        A file path, or a ``uint8`` array of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``
        (RGB) or ``(H, W, 4)`` (RGBA).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``.

    Raises
    ------
    DataError
        ``"cannot read image <path>: <reason>"`` for missing, empty, truncated, corrupt or
        non-image files and for arrays of the wrong dtype or shape.
    """
    try:
        image = _read_gray_or_rgb(source)
    except _UnreadableImage as error:
        raise DataError(f"cannot read image {_name_of(source)}: {error}") from error
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_images(
    imageset: ImageSet,
    size: int,
    *,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | bool | None = None,
    interpolation: Interpolation = "bicubic",
    progress: bool = True,
) -> DecodedImages:
    """Read every image of ``imageset`` once, as RGB, resized to ``size x size``.

    The whole image is resized (no centre crop, aspect ratio not kept) so that nothing at the
    border is lost. Results are in input order.

    Parameters
    ----------
    imageset : ImageSet
    size : int
        Output side in pixels, e.g. the backbone's input size.
    skip_bad : bool, default=False
        ``False``: an unreadable image raises :class:`DataError` naming every bad file.
        ``True``: bad files are left out and listed in ``DecodedImages.skipped``.
    cache_dir : path, bool or None, default=None
        Folder of the disk cache; ``None`` (or ``True``) uses :func:`default_cache_dir`,
        ``False`` disables the cache. Entries are keyed by the SHA-256 of every image's content
        (file bytes, or array bytes and shape), ``size``, ``interpolation`` and the format and
        Pillow versions, so a changed image is never served stale. The cache has a size cap;
        the least recently used entries go first (:mod:`transferkit.data.cache_limit`).
    interpolation : {"bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"}
    progress : bool, default=True
        Show a transient progress bar when there are more than 200 images to decode.

    Returns
    -------
    DecodedImages

    Examples
    --------
    >>> images = resolve_data("elpv:test")  # doctest: +SKIP
    >>> decoded = decode_images(images, 224)  # doctest: +SKIP
    >>> decoded.pixels.shape  # doctest: +SKIP
    (656, 224, 224, 3)
    """
    if not isinstance(imageset, ImageSet):
        raise DataError(
            f"decode_images() expected an ImageSet (see resolve_data). Received: {type(imageset).__name__}"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ConfigError(f"size expected a positive integer. Received: size={size!r}")
    size = int(size)
    if interpolation not in _RESAMPLE:
        raise ConfigError(
            f"interpolation expected one of {', '.join(get_args(Interpolation))}. "
            f"Received: interpolation={interpolation!r}"
        )
    n = len(imageset)
    if n == 0:
        empty = np.zeros((0, size, size, 3), np.uint8)
        return DecodedImages(empty, np.zeros(0, np.int64), [])

    cache_root = _cache_root(cache_dir)
    with ThreadPoolExecutor(max_workers=_worker_count()) as pool:
        if cache_root is None:
            return _decode_into(imageset, size, interpolation, None, pool, skip_bad, progress)
        key = _cache_key(imageset, size, interpolation, pool)
        cached = _load_cached(cache_root, key, imageset, size)
        if cached is not None:
            _raise_if_bad(cached.skipped, skip_bad, imageset)
            return cached
        return _decode_into(imageset, size, interpolation, (cache_root, key), pool, skip_bad, progress)


# ---------------------------------------------------------------------------------------------
# One image


def _read_gray_or_rgb(source: Any) -> Image.Image:
    """The image as mode ``L`` or ``RGB`` (cheaper to resize gray, then widen to 3 channels)."""
    image = _open(source)
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 -- a malformed EXIF block must not make the pixels unreadable
        pass
    try:
        return _to_gray_or_rgb(image)
    except (ValueError, OSError) as error:
        raise _UnreadableImage(f"cannot convert mode {image.mode} to RGB ({error})") from error


def _open(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source.copy()
    if isinstance(source, np.ndarray):
        return _image_from_array(source)
    if not isinstance(source, (str, os.PathLike)):
        raise _UnreadableImage(f"expected a file path or a uint8 array, got {type(source).__name__}")
    path = os.fspath(source)
    problem = file_problem(path)  # before opening: a FIFO or a device would block or never end
    if problem is not None:
        raise _UnreadableImage(problem)
    try:
        if os.path.getsize(path) == 0:
            raise _UnreadableImage("the file is empty (0 bytes)")
        with Image.open(path) as image:
            image.load()
            return image
    except _UnreadableImage:
        raise
    except FileNotFoundError as error:
        raise _UnreadableImage("file not found") from error
    except Image.UnidentifiedImageError as error:
        raise _UnreadableImage(unreadable_format(path) or "not an image file Pillow can read") from error
    except Exception as error:  # noqa: BLE001
        # Truncated files raise OSError ("image file is truncated"), but malformed headers can
        # make a Pillow plugin raise almost anything (SyntaxError, struct.error, IndexError...):
        # whatever it is, this file cannot be read, and the message says which one.
        raise _UnreadableImage(f"{type(error).__name__}: {error}") from error


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise _UnreadableImage(f"expected a uint8 array, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array))  # uint8 2-D: mode L
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array))  # uint8 (H, W, 3|4): RGB or RGBA
    raise _UnreadableImage(f"expected shape (H, W) or (H, W, C) with C in 1, 3, 4, got {array.shape}")


def _to_gray_or_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" not in image.info:
        return image  # the common case (ELPV, photos): nothing to do
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth(image)
    if image.has_transparency_data:
        gray = mode in ("1", "L", "LA", "La")
        return _composite(np.asarray(image.convert("LA" if gray else "RGBA")))
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def _composite(pixels: np.ndarray) -> Image.Image:
    """``LA``/``RGBA`` pixels over :data:`ALPHA_BACKGROUND`: ``(c * a + bg * (255 - a)) / 255``, rounded."""
    alpha = pixels[..., -1:].astype(np.uint16)
    colour = pixels[..., :-1].astype(np.uint16)
    out = ((colour * alpha + ALPHA_BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out)


def _high_bit_depth(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float gray to 8 bit by one scale fixed by the mode (never per image).

    Integer modes: 0-65535 -> 0-255 (``I`` is read as 16-bit values; outside clipped).
    ``F``: 0.0-1.0 -> 0-255 (outside clipped, NaN -> 0). A tRNS colour key is honoured.
    """
    values = np.asarray(image)
    if image.mode == "F":
        scaled = np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        wide = np.clip(values, 0, 65535).astype(np.uint32) if image.mode == "I" else values.astype(np.uint32)
        scaled = ((wide + 128) // 257).astype(np.uint8)
    key = image.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return _composite(np.stack([scaled, alpha], axis=-1))
    return Image.fromarray(scaled)


def _name_of(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape} dtype={source.dtype}>"
    return f"<{type(source).__name__}>"


# ---------------------------------------------------------------------------------------------
# Many images


def _decode_into(
    imageset: ImageSet,
    size: int,
    interpolation: str,
    cache: tuple[Path, str] | None,
    pool: ThreadPoolExecutor,
    skip_bad: bool,
    progress: bool,
) -> DecodedImages:
    n = len(imageset)
    shape = (n, size, size, 3)
    target = _open_cache_target(cache, shape) if cache is not None else None
    pixels = target[1] if target is not None else np.empty(shape, np.uint8)
    resample = _RESAMPLE[interpolation]

    def decode_one(i: int) -> str | None:
        try:
            image = _read_gray_or_rgb(imageset.sources[i])
        except _UnreadableImage as error:
            return str(error)
        if image.size != (size, size):
            image = image.resize((size, size), resample)
        array = np.asarray(image)
        if array.ndim == 2:
            for channel in range(3):  # 6x faster than assigning a broadcast array[..., None]
                pixels[i, :, :, channel] = array
        else:
            pixels[i] = array
        return None

    try:
        show = progress and n > _PROGRESS_MIN_IMAGES
        reasons = list(_with_progress(_in_chunks(pool, decode_one, n, pixels), n, show))
        skipped = [SkippedFile(imageset.source_name(i), r) for i, r in enumerate(reasons) if r is not None]
        _raise_if_bad(skipped, skip_bad, imageset)
        if len(skipped) == n:
            raise DataError(f"none of the {n} images could be read:\n{_list_bad(skipped)}")
        indices = np.array([i for i, r in enumerate(reasons) if r is None], np.int64)
        kept = np.asarray(pixels[indices]) if skipped else pixels  # an in-memory copy of kept rows
        if cache is None or target is None:
            return DecodedImages(kept, indices, skipped)
        meta = {
            "version": CACHE_FORMAT_VERSION,
            "n": n,
            "indices": indices.tolist(),
            "skipped": [{"index": i, "reason": r} for i, r in enumerate(reasons) if r is not None],
            "sha256": pixels_digest(kept),
        }
        return DecodedImages(_store(cache, target[0], kept, meta), indices, skipped)
    finally:
        if target is not None and os.path.exists(target[0]):
            os.remove(target[0])  # an open memmap keeps its pages; only the name goes


def _in_chunks(pool: ThreadPoolExecutor, decode_one, n: int, pixels: np.ndarray) -> Iterator:
    """``decode_one(i)`` for every image, :data:`DECODE_CHUNK` at a time; after each chunk the
    pages written to a memory-mapped ``pixels`` are released (they stay in the file)."""
    for start in range(0, n, DECODE_CHUNK):
        yield from pool.map(decode_one, range(start, min(n, start + DECODE_CHUNK)))
        release_pages(pixels)


def release_pages(pixels: np.ndarray) -> None:
    """Drop the pages of a memory-mapped ``pixels`` (the decode cache) from this process's memory.

    Pages of a mapped file that were read or written stay in the process's resident memory
    until the kernel wants them back, so touching a 50,000-image cache once would make the peak
    memory grow with the data. Streaming readers and writers (the decode above, the checksum,
    feature extraction) call this after each chunk: the data stays in the file (a shared
    mapping's writes are the file's pages), and a later access maps it in again. A no-op for
    in-memory arrays and where ``madvise`` is unavailable.
    """
    mapping = getattr(pixels, "_mmap", None)
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        pass  # a closed or foreign mapping: nothing to release


def _worker_count() -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(_MAX_WORKERS, usable or 1))


def _with_progress(results: Iterable, total: int, show: bool) -> Iterator:
    if not show:
        yield from results
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # On stderr (stdout carries results, e.g. `predict --json -`), and only on a terminal: piped,
    # a transient bar would leave a blank line behind.
    console = Console(stderr=True, emoji=False, markup=False, highlight=False)
    columns = (TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("decode", total=total)
        for result in results:
            bar.advance(task)
            yield result


def _raise_if_bad(skipped: list[SkippedFile], skip_bad: bool, imageset: ImageSet) -> None:
    if skipped and not skip_bad:
        where = f" in {imageset.name}" if imageset.name else ""
        raise DataError(
            f"cannot read {len(skipped)} image(s){where}:\n{_list_bad(skipped)}\n"
            "Fix or remove these files, or pass skip_bad=True (--skip-bad) to leave them out."
        )


# ---------------------------------------------------------------------------------------------
# Disk cache: <root>/images/<key>.npy (pixels) + <key>.json (kept indices, skipped reasons)


def _cache_root(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    if cache_dir is False:
        return None
    root = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir).expanduser()
    folder = root / "images"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"image cache disabled: cannot create {folder} ({error})", stacklevel=3)
        return None
    return folder


def _cache_key(imageset: ImageSet, size: int, interpolation: str, pool: ThreadPoolExecutor) -> str:
    key = hashlib.sha256(
        f"transferkit-decode|v{CACHE_FORMAT_VERSION}|pillow {PIL.__version__}|{size}|{interpolation}|"
        f"{len(imageset)}".encode()
    )
    for digest in pool.map(_content_digest, imageset.sources):
        key.update(digest)
    return key.hexdigest()


def _content_digest(source: Any) -> bytes:
    digest = hashlib.sha256()
    if isinstance(source, np.ndarray):
        digest.update(f"array|{source.dtype.str}|{source.shape}|".encode())
        digest.update(memoryview(np.ascontiguousarray(source)).cast("B"))
        return digest.digest()
    if isinstance(source, Image.Image):
        digest.update(f"pil|{source.mode}|{source.size}|".encode())
        digest.update(source.tobytes())
        return digest.digest()
    problem = file_problem(source) if isinstance(source, (str, os.PathLike)) else "not a path"
    if problem is not None:  # never open a FIFO or a device: the decode step will say why
        digest.update(f"unreadable|{_name_of(source)}|{problem}".encode())
        return digest.digest()
    try:
        with open(source, "rb") as handle:
            remaining = os.fstat(handle.fileno()).st_size  # a file that grows is not read forever
            while remaining > 0 and (chunk := handle.read(min(_HASH_CHUNK, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    except (OSError, TypeError) as error:  # unreadable now: the decode step will say why
        digest.update(f"unreadable|{_name_of(source)}|{type(error).__name__}".encode())
    return digest.digest()


def pixels_digest(pixels: np.ndarray) -> str:
    """SHA-256 of an array's bytes, read in chunks (a memory map is not loaded whole)."""
    digest = hashlib.sha256()
    flat = pixels.reshape(len(pixels), -1) if pixels.ndim > 1 else pixels.reshape(-1, 1)
    rows = max(1, _HASH_CHUNK * 16 // max(1, flat.shape[1] * flat.itemsize))
    for start in range(0, len(flat), rows):
        digest.update(np.ascontiguousarray(flat[start : start + rows]).data)
        release_pages(pixels)  # a memory map is read once: its pages need not stay
    return digest.hexdigest()


def _load_cached(folder: Path, key: str, imageset: ImageSet, size: int) -> DecodedImages | None:
    data_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_FORMAT_VERSION or meta.get("n") != len(imageset):
            return None
        pixels = np.load(data_path, mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return None  # absent, half-written or foreign: decode again and overwrite
    indices = np.asarray(meta["indices"], np.int64)
    if pixels.shape != (len(indices), size, size, 3) or pixels.dtype != np.uint8:
        return None
    if meta.get("sha256") != pixels_digest(pixels):
        warnings.warn(
            f"image cache entry {data_path} is damaged (its content does not match its checksum); "
            "decoding the images again.",
            stacklevel=3,
        )
        return None
    skipped = [SkippedFile(imageset.source_name(s["index"]), s["reason"]) for s in meta["skipped"]]
    note_used(meta_path)
    return DecodedImages(pixels, indices, skipped)


def _open_cache_target(cache: tuple[Path, str], shape: tuple[int, ...]) -> tuple[str, np.ndarray] | None:
    """A temporary .npy in the cache folder to decode straight into (no second copy in memory)."""
    folder, key = cache
    try:
        handle, temp_path = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".npy.tmp", dir=folder)
        os.close(handle)
        return temp_path, np.lib.format.open_memmap(temp_path, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as error:
        warnings.warn(f"image cache disabled: cannot write to {folder} ({error})", stacklevel=4)
        return None


def _store(cache: tuple[Path, str], temp_path: str, pixels: np.ndarray, meta: dict) -> np.ndarray:
    """Publish ``pixels`` under the cache key (atomically) and map the stored file back, read-only."""
    folder, key = cache
    data_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    try:
        if isinstance(pixels, np.memmap):  # decoded straight into temp_path
            pixels.flush()
            os.replace(temp_path, data_path)
        else:  # rows were dropped: write the kept rows to a fresh temporary file
            handle, kept_path = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".npy.tmp", dir=folder)
            try:
                with os.fdopen(handle, "wb") as out:
                    np.save(out, pixels)
                os.replace(kept_path, data_path)
            finally:
                if os.path.exists(kept_path):
                    os.remove(kept_path)
        _write_atomic(meta_path, json.dumps(meta))  # written last: its presence marks a complete entry
        stored = np.load(data_path, mmap_mode="r")  # mapped before any eviction: the pages stay readable
        note_used(meta_path)
        enforce_cap(folder.parent)
        return stored
    except OSError as error:
        warnings.warn(f"image cache not written to {folder} ({error})", stacklevel=4)
        return pixels


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))

