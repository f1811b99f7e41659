"""Write an :class:`ImageSet` out as ImageFolder-style folders: ``out_dir/<class>/<file>``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.sources import ImageSet
from transferkit.errors import DataError


def export_image_folders(imageset: ImageSet, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy labelled images into one sub-folder per class, readable by ``resolve_data(out_dir)``.

    Files are copied byte for byte (name kept; a clash inside a class gets a ``-<n>`` suffix);
    array images are written as ``<index>.png``.

    Parameters
    ----------
    imageset : ImageSet
        Must be labelled; labels must be usable as folder names.
    out_dir : str or os.PathLike
        Created if needed.
    overwrite : bool, default=False
        ``False``: refuse an ``out_dir`` that exists and is not empty. ``True``: write into it,
        replacing files of the same name; nothing else is deleted, so files left from an
        earlier export stay (export into a fresh folder for an exact copy).

    Returns
    -------
    pathlib.Path
        The absolute ``out_dir``.

    Raises
    ------
    DataError
        Unlabelled images, a label that is not a valid folder name, a non-empty ``out_dir``
        without ``overwrite``, or a file that cannot be copied.

    Examples
    --------
    >>> export_image_folders(resolve_data("elpv:test"), "elpv-test")  # doctest: +SKIP
    PosixPath('/home/me/elpv-test')
    """
    if imageset.labels is None:
        raise DataError("export_image_folders() expected labelled images. Received: labels=None")
    for label in imageset.classes:
        _check_folder_name(label)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DataError(f"out_dir expected a folder. Received: a file {out}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"out_dir is not empty: {out}. Choose an empty folder or pass overwrite=True "
            "(--overwrite) to write into it."
        )
    used: dict[str, set[str]] = {label: set() for label in imageset.classes}
    for index, (source, label) in enumerate(zip(imageset.sources, imageset.labels)):
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(source, np.ndarray):
            target = folder / _unique_name(f"{index:06d}.png", used[label])
            array = source[..., 0] if source.ndim == 3 and source.shape[-1] == 1 else source
            Image.fromarray(np.ascontiguousarray(array)).save(target)
            continue
        target = folder / _unique_name(os.path.basename(source), used[label])
        try:
            shutil.copy2(source, target)
        except shutil.SameFileError:
            pass  # exporting a folder onto itself: the file is already in place
        except OSError as error:
            raise DataError(f"cannot copy image {source} to {target}: {error}") from error
    return out


def _unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``stem-<n>.ext`` if this export already wrote that name (case-insensitively)."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate.lower() in used:
        candidate = f"{stem}-{n}{ext}"
        n += 1
    used.add(candidate.lower())
    return candidate


def _check_folder_name(label: str) -> None:
    bad_characters = set('/\\:*?"<>|\0')
    if not label.strip() or label in (".", "..") or label.startswith(".") or bad_characters & set(label):
        raise DataError(
            "export_image_folders() expected labels usable as folder names (no /, \\, :, *, ?, "
            f"quotes, <, >, |; not empty; not starting with '.'). Received: label={label!r}"
        )
