"""The validation layer every input path goes through before a byte of it is read.

- :func:`file_problem`: ``None`` for a regular file (symbolic links resolved), else why not:
  missing, a broken or looping symbolic link, a FIFO, a device, a socket, a folder. Nothing is
  opened, so a FIFO or ``/dev/zero`` named ``x.png`` can never hang a run.
- :func:`sniff_image`: whether Pillow recognises a file by its content (``.jfif``, files
  without an extension), reading only the header.
- :func:`walk_images`: the image files under a folder, following symbolic links to folders
  with loops and repeats detected, listing every special or non-image file it leaves out.
- :func:`read_text`: a text file (CSV) decoded by its BOM (UTF-8, UTF-16, UTF-32) or as strict
  UTF-8; anything else is refused with the line and byte that do not decode.
- :func:`check_label`: one label, refused when missing (empty, ``NaN``, ``None``) or not a
  scalar (a list, an array row), with where it came from.
- :func:`unreadable_format`: names a format Pillow cannot read without a plugin (HEIC/HEIF
  phone photos) and how to read it; :func:`register_optional_openers` reads them when
  ``pillow-heif`` is installed.
- OS clutter (:func:`clutter_reason`): ``__MACOSX/`` folders and AppleDouble ``._*`` files of a
  Mac zip, ``Thumbs.db``, ``desktop.ini`` ... are left out of every folder and listed.
"""

from __future__ import annotations

import codecs
import math
import numbers
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from transferkit.errors import DataError

#: Label texts that mean "no label" in spreadsheets and pandas exports (compared lower-cased).
MISSING_LABELS: frozenset[str] = frozenset({"", "nan", "-nan", "none", "null", "<na>", "n/a", "#n/a"})

_SNIFF_MAX_BYTES = 1 << 30  # header sniffing of files bigger than this is not worth it
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
HEIF_HINT = "a HEIC/HEIF image (the phone photo format): Pillow reads it only with the pillow-heif plugin (pip install pillow-heif)"
_CLUTTER_FOLDERS = {
    "__MACOSX": "macOS zip metadata folder, not a class",
    "$RECYCLE.BIN": "Windows recycle bin",
    "System Volume Information": "Windows system folder",
    "@eaDir": "Synology thumbnail folder",
}
_CLUTTER_FILES = {"thumbs.db": "Windows thumbnail cache", "desktop.ini": "Windows folder settings"}


def clutter_reason(name: str, *, folder: bool) -> str | None:
    """Why an entry called ``name`` is operating-system clutter (left out and listed), or None.

    Other hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) are skipped without a word.
    """
    if folder:
        reason = _CLUTTER_FOLDERS.get(name)
    elif name.startswith("._"):
        reason = "AppleDouble file (macOS metadata of a zip), not an image"
    else:
        reason = _CLUTTER_FILES.get(name.lower())
    return None if reason is None else f"{reason}: left out"


def register_optional_openers() -> None:
    """Let Pillow open HEIC/HEIF files when the optional ``pillow-heif`` plugin is installed."""
    try:
        import pillow_heif
    except ImportError:
        return
    pillow_heif.register_heif_opener()


def unreadable_format(source: str | bytes) -> str | None:
    """A known format Pillow cannot read here, named with how to read it; None otherwise.

    ``source`` is a file path or the file's first bytes. Recognises HEIC/HEIF by its ISO-BMFF
    ``ftyp`` box (AVIF, the same container, is left to Pillow).
    """
    head = source[:64] if isinstance(source, bytes) else _head(source)
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    if b"avif" in brands or b"avis" in brands or not brands & _HEIF_BRANDS:
        return None
    return HEIF_HINT


def _head(path: str) -> bytes:
    if file_problem(path) is not None:
        return b""
    try:
        with open(path, "rb") as handle:
            return handle.read(64)
    except OSError:
        return b""


def file_problem(path: str) -> str | None:
    """Why ``path`` is not a readable regular file, or ``None`` if it is one.

    Symbolic links are followed (a link to a regular file is fine); ``os.stat`` reports link
    loops (``ELOOP``) and dangling links, which are named as such. Only metadata is read.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)})"
        return "file not found"
    except OSError as error:
        if error.errno == 40:  # ELOOP
            return "symbolic link loop"
        return f"cannot read ({error.strerror or error})"
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return None
    return f"not a regular file: {_kind(mode)}"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def image_extensions() -> frozenset[str]:
    """Every file extension Pillow can open (lower case, with the dot), e.g. ``.png``, ``.jfif``."""
    from PIL import Image

    register_optional_openers()
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def sniff_image(path: str) -> bool:
    """Whether Pillow recognises ``path`` as an image from its header (regular files only)."""
    from PIL import Image

    if file_problem(path) is not None:
        return False
    try:
        if os.path.getsize(path) == 0 or os.path.getsize(path) > _SNIFF_MAX_BYTES:
            return False
        with Image.open(path) as image:
            return bool(image.format)
    except Exception:  # noqa: BLE001 -- any failure to identify means "not an image"
        return False


@dataclass
class Walk:
    """What :func:`walk_images` found: image files, refused files, and files left out."""

    images: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): special files
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not images, links


def walk_images(folder: str, extensions: Iterable[str], *, visited: set[str] | None = None) -> Walk:
    """The image files under ``folder`` (recursive, hidden entries skipped), sorted, absolute.

    Symbolic links to folders are followed once: a folder whose real path was visited already
    (a loop back to an ancestor, or a second name of a folder already read) is left out and
    listed in ``ignored``. ``visited`` is shared between calls so that one class folder linking
    to another, or to the data root, is caught too. Files with an image extension are kept
    after :func:`file_problem` (special files go to ``problems``); other files are kept when
    :func:`sniff_image` recognises them, go to ``problems`` when they are images of a format
    Pillow needs a plugin for (HEIC), else are listed in ``ignored``. OS clutter
    (:func:`clutter_reason`) is listed in ``ignored``.
    """
    extensions = frozenset(extensions)
    visited = set() if visited is None else visited
    walk = Walk()
    stack = [os.path.abspath(folder)]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in visited:
            walk.ignored.append((current, f"symbolic link to a folder already read ({real}): left out"))
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as error:
            walk.problems.append((current, f"cannot list folder ({error.strerror or error})"))
            continue
        for entry in entries:
            path = os.path.join(current, entry.name)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            clutter = clutter_reason(entry.name, folder=is_dir)
            if clutter is not None:
                walk.ignored.append((path, clutter))
                continue
            if entry.name.startswith("."):
                continue
            if is_dir:
                stack.append(path)
                continue
            problem = file_problem(path)
            if problem is not None:
                walk.problems.append((path, problem))
            elif os.path.splitext(entry.name)[1].lower() in extensions or sniff_image(path):
                walk.images.append(path)
            elif (unknown := unreadable_format(path)) is not None:
                walk.problems.append((path, unknown))
            else:
                walk.ignored.append((path, "not an image file Pillow can read: left out"))
    walk.images.sort()
    return walk


def is_inside(path: str, folder: str) -> bool:
    """Whether the real path of ``path`` is ``folder``'s real path or below it."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(path: str, *, what: str = "text file") -> str:
    """The text of ``path``: decoded by its byte-order mark, else as strict UTF-8.

    Raises
    ------
    DataError
        The path is not a regular file, or its bytes do not decode; the message names the line
        and says how to fix it (save the file as UTF-8).
    """
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{what} {path}: {problem}.")
    with open(path, "rb") as handle:
        raw = handle.read()
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), None)
    if encoding is None and b"\x00" in raw[:4096]:
        raise DataError(
            f"{what} {path} contains NUL bytes: it looks like UTF-16 or UTF-32 without a byte-order "
            "mark, or a binary file. Save it as UTF-8."
        )
    try:
        return raw.decode(encoding or "utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{what} {path}: line {line} is not valid {encoding or 'UTF-8'} (byte 0x{raw[error.start]:02x} "
            f"at offset {error.start}). Save the file as UTF-8."
        ) from None


def check_label(value: Any, where: str) -> str:
    """``value`` as a class name, or :class:`DataError` naming ``where`` if it is missing or not a scalar.

    Anything else scalar becomes ``str(value)`` (``3`` -> ``"3"``, as before validation).
    """
    original = value
    if value is None:
        raise DataError(f"{where}: the label is missing (None). Give every image a label, or leave it out.")
    if hasattr(value, "shape") and getattr(value, "shape") == ():  # numpy scalar
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        if value.strip().lower() in MISSING_LABELS:
            raise DataError(
                f"{where}: the label is missing ({value!r}). Give every image a label, or leave it out."
            )
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        number = float(value)
        if math.isnan(number):
            raise DataError(f"{where}: the label is missing (NaN). Give every image a label, or leave it out.")
        if math.isinf(number):
            raise DataError(f"{where}: the label is infinite ({number}). Expected a class name or an integer.")
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        return str(original)
    raise DataError(
        f"{where}: expected a scalar label (a string or an integer). Received: {type(value).__name__} "
        f"{_short(value)}. For a label array of shape (N, 1), pass labels.ravel()."
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
