"""One declared table of parameter constraints, checked in one place.

Modelled on scikit-learn's ``_parameter_constraints`` (``sklearn/utils/_param_validation.py``):
each parameter lists the forms it may take, and :func:`validate_params` raises one
:class:`~transferkit.errors.ConfigError` that says what was received and what was expected.
scikit-learn's own validator lives in a private module and raises its own error type, so this
small copy is written here instead.

Examples
--------
>>> validate_params({"epochs": 0}, {"epochs": [Interval(int, 1, None)]}, owner="ImageClassifier")
Traceback (most recent call last):
...
transferkit.errors.ConfigError: ImageClassifier: epochs expected a positive integer. Received: epochs=0
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transferkit.errors import ConfigError

AUTO = "auto"
"""The one sentinel for "let transferkit decide" (the advisor, or a measured default)."""


class Constraint:
    def accepts(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A real (``float``) or integer (``int``) number between ``low`` and ``high`` (None: unbounded)."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right" or "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        if self.high is not None and (value > self.high or (value == self.high and self.closed in ("left", "neither"))):
            return False
        return True

    def describe(self) -> str:
        if self.high is None and self.low == 0 and self.closed in ("right", "neither"):
            return "a positive integer" if self.kind is int else "a positive number"
        if self.high is None and self.kind is int and self.low in (0, 1) and self.closed in ("both", "left"):
            return "a positive integer" if self.low == 1 else "a non-negative integer"
        noun = "an integer" if self.kind is int else "a finite number"
        low = None if self.low is None else (">=" if self.closed in ("both", "left") else ">") + f" {self.low:g}"
        high = None if self.high is None else ("<=" if self.closed in ("both", "right") else "<") + f" {self.high:g}"
        if low and high:
            return f"{noun} {low} and {high}"
        return f"{noun} {low or high}" if (low or high) else noun


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values (strings, or None)."""

    values: tuple

    def __init__(self, *values: Any):
        object.__setattr__(self, "values", values)

    def accepts(self, value: Any) -> bool:
        return any(value is option or (isinstance(value, str) and value == option) for option in self.values)

    def describe(self) -> str:
        return " or ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """Any value of these types."""

    types: tuple[type, ...]
    noun: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types)

    def describe(self) -> str:
        return self.noun


def validate_params(params: Mapping[str, Any], constraints: Mapping[str, Sequence[Constraint]], *, owner: str) -> None:
    """Raise a :class:`ConfigError` for the first parameter no constraint of its list accepts."""
    for name, allowed in constraints.items():
        if name not in params:
            continue
        value = params[name]
        if not any(constraint.accepts(value) for constraint in allowed):
            expected = ", or ".join(constraint.describe() for constraint in allowed)
            raise ConfigError(f"{owner}: {name} expected {expected}. Received: {name}={value!r}{_did_you_mean(value, allowed)}")


def _did_you_mean(value: Any, allowed: Sequence[Constraint]) -> str:
    """``". Did you mean 'balanced'?"`` for a string close to one of the named options, else ``""``."""
    if not isinstance(value, str):
        return ""
    names: list[str] = []
    for constraint in allowed:
        if isinstance(constraint, Options):
            names += [v for v in constraint.values if isinstance(v, str)]
        elif isinstance(constraint, Registered):
            names += list(constraint.names())
    close = difflib.get_close_matches(value.lower(), names, n=1, cutoff=0.6)
    return f". Did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Registered(Constraint):
    """A name that ``names()`` lists now (e.g. a registry that grows after import)."""

    names: Any
    noun: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.names()

    def describe(self) -> str:
        return f"{self.noun} ({', '.join(self.names())})"


@dataclass(frozen=True)
class Satisfies(Constraint):
    """A value ``predicate`` accepts (e.g. an augmentation preset, composition or callable)."""

    predicate: Any
    text: str

    def accepts(self, value: Any) -> bool:
        return bool(self.predicate(value))

    def describe(self) -> str:
        return self.text
