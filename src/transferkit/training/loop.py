"""The training loop: read it top to bottom.

One epoch = shuffle, augment, forward, backward, clip, step, schedule; then validate, keep
the best weights, checkpoint, and stop early when validation loss stops improving.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from transferkit.backbones import Preprocessing
from transferkit.errors import ConfigError
from transferkit.strategies.freezing import train_mode
from transferkit.training.inputs import pixels_to_tensor, to_model_input
from transferkit.training.prefix import Suffix, affordable_views, cache_activations
from transferkit.training.runtime import Runtime, unwrap

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the estimator fills it from its parameters)."""

    epochs: int = 10
    lr: float = 1e-3
    backbone_lr_factor: float = 0.1
    weight_decay: float = 1e-4
    batch_size: int = 32
    warmup_epochs: float = 1.0
    patience: int = 3
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 0
    prefix_views: int = 0
    """Cached views of the frozen prefix (0: plain loop); see :mod:`transferkit.training.prefix`."""


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    images_per_second: float


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    prefix_seconds: float = 0.0
    """Time spent computing the frozen-prefix cache (0 without ``prefix_views``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": [asdict(record) for record in self.history],
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "resumed_from_epoch": self.resumed_from_epoch,
            "prefix_seconds": self.prefix_seconds,
        }


class _ActivationViews(Dataset):
    """Cached prefix activations: one tensor per view; ``view`` is set at each epoch."""

    def __init__(self, views: list[torch.Tensor], targets: np.ndarray):
        self.views = views
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.view = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.views[self.view][index], self.targets[index]


class _PixelDataset(Dataset):
    """uint8 (N, H, W, C) pixels + integer targets; augments each sample on its own."""

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, transform: Callable | None):
        self.pixels = pixels
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.array(self.pixels[index])).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def build_optimizer(head: list[nn.Parameter], backbone: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups: the new head at ``lr``, pretrained layers at ``lr * backbone_lr_factor``."""
    groups = [{"params": [p for p in head if p.requires_grad], "lr": config.lr, "name": "head"}]
    backbone_trainable = [p for p in backbone if p.requires_grad]
    if backbone_trainable:
        groups.append({"params": backbone_trainable, "lr": config.lr * config.backbone_lr_factor, "name": "backbone"})
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_model(
    model: nn.Module,
    head_parameters: list[nn.Parameter],
    backbone_parameters: list[nn.Parameter],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    *,
    preprocessing: Preprocessing,
    config: TrainConfig,
    runtime: Runtime,
    augment: Callable | None = None,
    class_weights: torch.Tensor | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    prefix_start: int | None = None,
    pooled_features: Callable[[np.ndarray], np.ndarray] | None = None,
    verbose: bool = True,
) -> TrainResult:
    """Train ``model`` in place and leave the best weights (lowest validation loss) in it.

    Parameters
    ----------
    model : nn.Module
        Backbone + new head, frozen parameters already marked ``requires_grad=False``.
    head_parameters, backbone_parameters : list of Parameter
        The two learning-rate groups (see :func:`build_optimizer`).
    train, val : (pixels, targets)
        uint8 (N, H, W, 3) pixels and int targets. ``val=None`` trains for all epochs and
        keeps the last weights.
    checkpoint_dir, resume, fingerprint :
        A checkpoint is written after every epoch; with ``resume=True`` training continues
        after the last completed epoch (at most one epoch is lost to a crash or Ctrl-C).
        ``fingerprint`` (the run's settings) must match for a resume to be accepted.
    prefix_start : int or None
        Where the frozen prefix ends (see :func:`transferkit.training.prefix.frozen_block_count`);
        with ``config.prefix_views > 0`` only the suffix trains, on cached activations.
    pooled_features : callable, optional
        For ``head``: uint8 pixels -> pooled features, e.g. a cached ``FeatureExtractor``
        (see :func:`transferkit.training.prefix.cache_activations`).
    """
    console = Console(stderr=True, emoji=False, markup=False, highlight=False, quiet=not (verbose and runtime.is_main))
    torch.manual_seed(config.seed)
    views, prefix_seconds = 0, 0.0
    if prefix_start is not None and config.prefix_views > 0:
        views = affordable_views(model, prefix_start, train[0].shape[1], len(train[0]), config.prefix_views)
        if views == 0:
            console.print("frozen-prefix cache skipped: its activations would not fit in memory")
    if views:
        started = time.perf_counter()
        n_views = views if augment is not None else 1
        total = len(train[0]) * n_views + (len(val[0]) if val is not None else 0)
        with _progress(console, f"frozen prefix, {n_views} view(s)", total) as (progress, task):
            cache = dict(model=model.to(runtime.device, memory_format=runtime.memory_format()), start=prefix_start,
                         preprocessing=preprocessing, runtime=runtime, seed=config.seed, batch_size=config.batch_size * 2,
                         on_batch=lambda n: progress.update(task, advance=n), pooled=pooled_features)
            train_set: Dataset = _ActivationViews(cache_activations(pixels=train[0], augment=augment, views=views, **cache), train[1])
            views = len(train_set.views)
            val_inputs = cache_activations(pixels=val[0], augment=None, views=1, **cache)[0] if val is not None else None
        prefix_seconds = time.perf_counter() - started
        console.print(f"frozen prefix computed once for {views} view(s) of {len(train[0])} images in {prefix_seconds:.1f} s; training the rest on it")
        net: nn.Module = Suffix(model, prefix_start)

        def prepare(batch: torch.Tensor) -> torch.Tensor:
            batch = batch.float()
            return runtime.images_to_device(batch) if batch.ndim == 4 else runtime.to_device(batch)
    else:
        train_set = _PixelDataset(train[0], train[1], augment)
        val_inputs = val[0] if val is not None else None
        net = model

        def prepare(batch: torch.Tensor) -> torch.Tensor:
            return to_model_input(batch, preprocessing, runtime)

    net = runtime.prepare_model(net)
    plain_model = unwrap(net)
    optimizer = build_optimizer(head_parameters, backbone_parameters, config)

    sampler = DistributedSampler(train_set, seed=config.seed) if runtime.distributed else None
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=config.num_workers,
        # A last batch of one sample breaks BatchNorm in train mode; drop the remainder.
        drop_last=len(train_set) > config.batch_size,
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = max(1, int(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    criterion = nn.CrossEntropyLoss(
        weight=None if class_weights is None else runtime.to_device(class_weights.float()),
        label_smoothing=config.label_smoothing,
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")

    result = TrainResult(prefix_seconds=prefix_seconds)
    best_loss, best_state, bad_epochs, start_epoch = math.inf, None, 0, 0
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = _load_checkpoint(checkpoint_path, fingerprint)
        plain_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_loss, bad_epochs = state["epoch"], state["best_loss"], state["bad_epochs"]
        best_state = state["best_state"] or None
        result.history = [EpochRecord(**record) for record in state["history"]]
        result.best_epoch = state["best_epoch"]
        result.resumed_from_epoch = start_epoch
        console.print(f"resuming after epoch {start_epoch} from {checkpoint_path}")

    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            break
        # Reseed per epoch so a resumed run draws the same shuffles and augmentations.
        torch.manual_seed(config.seed * 1000 + epoch)
        generator.manual_seed(config.seed * 1000 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        if views:
            train_set.view = epoch % views
        train_mode(net)
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=runtime.device)
        correct = torch.zeros((), device=runtime.device)
        seen = 0
        with _progress(console, f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch) as (progress, task):
            for images, targets in loader:
                inputs = prepare(images)
                targets = runtime.to_device(targets)
                with runtime.autocast():
                    logits = net(inputs)
                    loss = criterion(logits.float(), targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                # Clip after unscaling so the threshold means the same in every precision.
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()

                # Accumulate on the device; .item() here would force a sync every step.
                loss_sum += loss.detach() * len(targets)
                correct += (logits.argmax(1) == targets).sum()
                seen += len(targets)
                elapsed = time.perf_counter() - started
                progress.update(task, advance=1, status=f"{seen / elapsed:5.1f} img/s")

        seen_total = runtime.all_reduce_sum(torch.tensor(float(seen), device=runtime.device)).item()
        train_loss = runtime.all_reduce_sum(loss_sum).item() / max(1.0, seen_total)
        train_accuracy = runtime.all_reduce_sum(correct.float()).item() / max(1.0, seen_total)
        seconds = time.perf_counter() - started

        val_loss = val_accuracy = None
        if val is not None and len(val[0]):
            val_loss, val_accuracy = _validate(plain_model, val_inputs, val[1], prepare, runtime, criterion, config.batch_size * 2)
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=optimizer.param_groups[0]["lr"],
            seconds=seconds,
            images_per_second=seen_total / seconds if seconds > 0 else 0.0,
        )
        result.history.append(record)

        monitored = val_loss if val_loss is not None else train_loss
        improved = monitored < best_loss - 1e-4
        if improved or val is None:
            best_loss, bad_epochs, result.best_epoch = monitored, 0, epoch + 1
            best_state = copy.deepcopy(plain_model.state_dict())
        else:
            bad_epochs += 1
        console.print(_format_record(record, improved))

        if checkpoint_path is not None and runtime.is_main:
            _save_checkpoint(
                checkpoint_path,
                {
                    "model": plain_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "best_loss": best_loss,
                    "best_state": best_state or {},
                    "best_epoch": result.best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": [asdict(r) for r in result.history],
                    "fingerprint": fingerprint or {},
                },
            )
    result.stopped_early = len(result.history) < config.epochs

    if best_state is not None:
        plain_model.load_state_dict(best_state)
    plain_model.eval()
    return result


@torch.no_grad()
def _validate(model, inputs, targets, prepare, runtime, criterion, batch_size) -> tuple[float, float]:
    """Validation loss and accuracy; ``inputs`` are uint8 pixels or cached prefix activations."""
    model.eval()
    logits = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        batch = pixels_to_tensor(chunk) if isinstance(chunk, np.ndarray) else chunk
        with runtime.autocast():
            logits.append(model(prepare(batch)).float())
    logits = torch.cat(logits)
    targets = runtime.to_device(torch.as_tensor(targets, dtype=torch.long))
    loss = criterion(logits, targets).item()
    accuracy = (logits.argmax(1) == targets).float().mean().item()
    return loss, accuracy


def _format_record(record: EpochRecord, improved: bool) -> str:
    text = (
        f"epoch {record.epoch:>3}  train loss {record.train_loss:.4f} acc {record.train_accuracy:.3f}"
    )
    if record.val_loss is not None:
        text += f"  val loss {record.val_loss:.4f} acc {record.val_accuracy:.3f}{' *' if improved else '  '}"
    return text + f"  {record.images_per_second:6.1f} img/s  {record.seconds:5.1f}s"


class _progress:
    """A transient rich progress bar for one epoch (silent when the console is quiet)."""

    def __init__(self, console: Console, description: str, total: int):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=console.quiet,
        )
        self.description, self.total = description, total

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total, status="")
        return self.progress, task

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temporary file, then rename over the old checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    return state
