"""Callbacks: the pieces of a run that are not the epoch itself (after Lightning and skorch).

The loop calls three hooks on each callback, in list order, passing the shared
:class:`TrainState` explicitly: ``on_train_start`` (reset, or restore a checkpoint),
``on_epoch_end`` (``state.result.history[-1]`` is the epoch just finished; set ``state.stop``
to end the run) and ``on_train_end``. A callback's ``state_dict`` is saved in checkpoints, so a
resumed run continues where it stopped.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from transferkit.errors import ConfigError
from transferkit.files import atomic_write
from transferkit.training.history import EpochRecord, TrainResult
from transferkit.training.runtime import Runtime

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainState:
    """What the loop and its callbacks share."""

    model: nn.Module
    """The module being trained, never a DDP wrapper."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    runtime: Runtime
    console: Console
    callbacks: list[Callback]
    result: TrainResult = field(default_factory=TrainResult)
    epoch: int = 0
    """Epochs completed."""
    stop: bool = False
    """Set by a callback to end the run after this epoch."""


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        pass


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a lower validation loss; restore the best weights.

    Without a validation loss (nothing held out) every epoch counts as the best, and the run
    keeps its last weights.
    """

    def __init__(self, patience: int, min_delta: float = 1e-4):
        self.patience = patience
        self.min_delta = min_delta

    def on_train_start(self, state: TrainState) -> None:
        self.best_loss, self.bad_epochs, self.best_weights = math.inf, 0, None

    def on_epoch_end(self, state: TrainState) -> None:
        record = state.result.history[-1]
        if record.val_loss is None:
            state.result.best_epoch = record.epoch
            return
        if record.val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.bad_epochs = record.val_loss, 0
            state.result.best_epoch = record.epoch
            self.best_weights = copy.deepcopy(state.model.state_dict())
        else:
            self.bad_epochs += 1
        state.stop = self.bad_epochs >= self.patience
        if state.stop and state.console is not None:
            best = state.result.history[state.result.best_epoch - 1] if state.result.best_epoch else None
            kept = "" if best is None else (f"; keeping epoch {best.epoch}'s weights (validation loss {best.val_loss:.4f}, "
                                            f"accuracy {best.val_accuracy:.4f})")
            state.console.print(f"stopped early after epoch {record.epoch}: no lower validation loss for {self.patience} "
                                f"epochs (patience){kept}")

    def on_train_end(self, state: TrainState) -> None:
        if self.best_weights is not None:
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "bad_epochs": self.bad_epochs, "best_weights": self.best_weights or {}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.best_loss = saved.get("best_loss", math.inf)
        self.bad_epochs = saved.get("bad_epochs", 0)
        self.best_weights = saved.get("best_weights") or None


class Deadline(Callback):
    """End the run before ``deadline`` (seconds on ``clock``): stop after an epoch when another
    epoch as long as the slowest so far would pass it. The best weights are still restored.

    This is what keeps a budgeted fit within its budget whatever the machine; the planner sizes
    the run to end in time, this catches the estimate being wrong. ``clock`` is injectable so
    that the mechanism is testable without waiting.
    """

    def __init__(self, deadline: float, clock=None):
        import time

        self.deadline = deadline
        self.clock = clock or time.perf_counter
        self.stopped, self.reason = False, None

    def on_train_start(self, state: TrainState) -> None:
        self.started, self.slowest, self.stopped = self.clock(), 0.0, False
        self.last = self.started

    def on_epoch_end(self, state: TrainState) -> None:
        now = self.clock()
        self.slowest, self.last = max(self.slowest, now - self.last), now
        if now + self.slowest > self.deadline:
            state.stop = self.stopped = True
            self.reason = f"stopped after epoch {state.epoch}: another epoch would pass the time budget"
            state.console.print(self.reason)


class FallingBehind(Callback):
    """Stop a candidate that cannot catch the leader: after ``after`` of its epochs, its best
    validation accuracy trails ``leader`` by more than ``margin`` (a learning curve check)."""

    def __init__(self, leader: float, *, after: int, margin: float = 0.1):
        self.leader, self.after, self.margin = leader, after, margin
        self.stopped, self.reason = False, None

    def on_train_start(self, state: TrainState) -> None:
        self.stopped = False

    def on_epoch_end(self, state: TrainState) -> None:
        scores = [r.val_accuracy for r in state.result.history if r.val_accuracy is not None]
        if len(scores) >= self.after and max(scores) < self.leader - self.margin:
            state.stop = self.stopped = True
            self.reason = (
                f"stopped after epoch {state.epoch}: best validation accuracy {max(scores):.3f} trails the "
                f"leading candidate's {self.leader:.3f} by more than {self.margin:.2f}"
            )
            state.console.print(self.reason)


class Checkpoint(Callback):
    """Write the run's state to ``directory`` after every epoch; ``resume=True`` continues from it.

    At most one epoch is lost to a crash or Ctrl-C. Only the main process writes, atomically
    (a temporary file renamed over the old one). ``fingerprint`` (the run's settings) must
    match the saved one for a resume to be accepted. Put it last in the callback list, so
    that it saves what the others decided at the end of the epoch.
    """

    def __init__(self, directory: str | os.PathLike, *, resume: bool = False, fingerprint: dict[str, Any] | None = None):
        self.directory = directory
        self.resume = resume
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path:
        return Path(self.directory) / CHECKPOINT_NAME

    def on_train_start(self, state: TrainState) -> None:
        if not (self.resume and self.path.exists()):
            return
        saved = _load_checkpoint(self.path, self.fingerprint)
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        state.epoch, state.stop = saved["epoch"], saved["stop"]
        state.result.history = [EpochRecord(**record) for record in saved["history"]]
        state.result.best_epoch = saved["best_epoch"]
        state.result.resumed_from_epoch = state.epoch
        for callback in state.callbacks:
            callback.load_state_dict(saved["callbacks"].get(type(callback).__name__, {}))
        state.console.print(f"resuming after epoch {state.epoch} from {self.path}")

    def on_epoch_end(self, state: TrainState) -> None:
        if not state.runtime.is_main:
            return
        _save_checkpoint(
            self.path,
            {
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "epoch": state.epoch,
                "stop": state.stop,
                "best_epoch": state.result.best_epoch,
                "history": [asdict(record) for record in state.result.history],
                "callbacks": {type(callback).__name__: callback.state_dict() for callback in state.callbacks},
                "fingerprint": self.fingerprint or {},
            },
        )


def _save_checkpoint(path: Path, state: dict) -> None:
    """Atomic (:func:`transferkit.files.atomic_write`): a unique temporary file renamed over the old
    checkpoint, removed if the save fails or is interrupted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path, fingerprint: dict | None) -> dict:
    # weights_only=True: tensors and plain containers only, never arbitrary pickled objects.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
        raise ConfigError(f"cannot resume from {path}: the checkpoint is unreadable ({exc}). Delete it to start over.") from exc
    saved = state.get("fingerprint") or {}
    if fingerprint is not None and saved != fingerprint:
        changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise ConfigError(
            f"cannot resume from {path}: it was written with different settings ({', '.join(changed)}). "
            "Resume with the same settings, or delete the checkpoint to start over."
        )
    if "callbacks" not in state:
        raise ConfigError(f"cannot resume from {path}: it was written by an older transferkit. Delete it to start over.")
    return state
