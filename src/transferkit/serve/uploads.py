"""Checking uploaded images before any pixel is decoded: size, type, and decompression bombs.

A bad upload becomes an :class:`UploadError` with an HTTP status and a message saying what was
received and what is accepted; the server answers it as JSON and carries on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from transferkit.data.validate import unreadable_format


@dataclass(frozen=True)
class UploadLimits:
    """What one ``POST /predict`` may carry (documented in the README and on ``GET /model``).

    Parameters
    ----------
    max_bytes : int
        Largest accepted file (default 10 MiB).
    max_pixels : int
        Largest accepted width x height (default 40 megapixels): a small file that would
        decompress to more (a "decompression bomb") is refused before it is decoded.
    max_files : int
        Most images per request.
    """

    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_files: int = 16


class UploadError(Exception):
    """An upload the server refuses: ``status`` is the HTTP status, ``str(error)`` the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def open_upload(data: bytes, name: str, limits: UploadLimits) -> Image.Image:
    """The uploaded bytes as a fully loaded PIL image, or an :class:`UploadError`."""
    if not data:
        raise UploadError(400, f"{name}: the file is empty (0 bytes); expected an image file.")
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{name}: the file is larger than the limit of {limits.max_bytes:,} bytes.")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        known = unreadable_format(data)
        if known is not None:
            raise UploadError(415, f"{name}: {known}.") from None
        raise UploadError(415, f"{name}: not an image file that Pillow can read (PNG, JPEG, TIFF, BMP, WebP, ...).") from None
    except Exception as exc:  # noqa: BLE001 - a malformed header can make a Pillow plugin raise anything
        raise UploadError(400, f"{name}: cannot read the image header ({type(exc).__name__}: {exc}).") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise UploadError(413, f"{name}: {width} x {height} pixels is more than the limit of {limits.max_pixels:,} pixels.")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check (a warning over ~89 megapixels): an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, f"{name}: refused as a decompression bomb (too many pixels).") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: any Pillow error
        raise UploadError(400, f"{name}: the image data is truncated or corrupt ({type(exc).__name__}: {exc}).") from None
    return image
