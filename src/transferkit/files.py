"""One atomic write: every file transferkit writes appears whole or not at all.

Caches (decoded images, features, measured speeds), checkpoints, model folders' files, JSON and
CSV results all go through :func:`atomic_write`: the content is written to a unique temporary
name beside the target and renamed over it (``os.replace``, atomic on POSIX), and the temporary
file is removed when the write fails or is interrupted, so no ``*.tmp`` is left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(temporary_path)`` beside ``path``, then rename it into place (all or nothing).

    The folder must exist. ``write`` receives a path (str), e.g. ``lambda tmp: Path(tmp).write_text(text)``
    or ``lambda tmp: torch.save(state, tmp)``.
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
