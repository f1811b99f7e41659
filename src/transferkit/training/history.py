"""What a training run records: one line per epoch, and the run's outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from transferkit.lines import Wrapped

BEST_EPOCH_NOTE = "* marks the best epoch so far (lowest validation loss): its weights are the ones kept."
"""Printed once before the epoch lines that carry the mark."""


@dataclass
class EpochRecord:
    """One epoch; train metrics are over every process's images (``images`` in all)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    images_per_second: float
    images: int = 0
    """Training images seen in the epoch, summed over processes (0 in older checkpoints)."""
    val_balanced_accuracy: float | None = None
    """Mean recall over the validation classes (None without validation, and in older checkpoints)."""

    def describe(self, best: bool) -> Wrapped:
        """The epoch's line; on a narrow terminal it wraps between its fields (each kept whole:
        "val loss 0.5123 acc 0.636 *", "18.3 img/s"), continuing under the first field's text."""
        units = [f"epoch {self.epoch:>3}", f"train loss {self.train_loss:.4f} acc {self.train_accuracy:.3f}"]
        if self.val_loss is not None:
            units.append(f"val loss {self.val_loss:.4f} acc {self.val_accuracy:.3f}{' *' if best else ''}")
        units += [f"{self.images_per_second:.1f} img/s", f"{self.seconds:.1f} s"]
        return Wrapped(units, separator="  ", indent=" " * 11)


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    prefix_seconds: float = 0.0
    """Time spent computing the frozen-prefix cache (0 without ``prefix_views``)."""
    ema: dict[str, Any] | None = None
    """With a weight average: both validations and which weights were kept (``"ema"`` or ``"raw"``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ema": self.ema,
            "history": [asdict(record) for record in self.history],
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "resumed_from_epoch": self.resumed_from_epoch,
            "prefix_seconds": self.prefix_seconds,
        }
