"""Exceptions raised by transferkit.

Every error a user can cause derives from :class:`TransferkitError`; the CLI catches it once
at the edge and prints the message without a traceback (exit code 1).
"""

from __future__ import annotations

from typing import Any


class TransferkitError(Exception):
    """Base class of every error a user can cause (bad data, bad option, missing weights)."""


class DataError(TransferkitError, ValueError):
    """The input images or labels cannot be used; the message names the file or value."""


class BackboneError(TransferkitError, ValueError):
    """A backbone is unknown, or its weights cannot be found or do not match."""


class ConfigError(TransferkitError, ValueError):
    """An option has a value outside what it accepts."""


class ModelFileError(TransferkitError, OSError):
    """A saved model folder is missing, incomplete or was written by an incompatible version."""


class MissingExtraError(TransferkitError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it,
    e.g. ``pip install 'transferkit[serve]'`` (the CLI prints it in one line, exit code 1)."""


def __getattr__(name: str) -> Any:
    # NotFittedError also subclasses scikit-learn's, and importing scikit-learn costs more than
    # a second (scipy.stats): it is made on first use, so that `transferkit info` and an
    # exported model's predictor start without it (PEP 562).
    if name == "NotFittedError":
        from sklearn.exceptions import NotFittedError as SklearnNotFittedError

        class NotFittedError(TransferkitError, SklearnNotFittedError):
            """A method that needs a fitted model was called before ``fit``."""

        NotFittedError.__qualname__ = "NotFittedError"  # pickles as transferkit.errors.NotFittedError
        globals()["NotFittedError"] = NotFittedError
        return NotFittedError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
