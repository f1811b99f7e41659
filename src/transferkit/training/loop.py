"""The training loop: read it top to bottom.

One epoch = shuffle, augment, forward, backward, clip, step, schedule; then validate and let
the callbacks act: :class:`~transferkit.training.callbacks.EarlyStopping` (always on, from
``patience``) keeps the best weights and ends the run, a
:class:`~transferkit.training.callbacks.Checkpoint` saves and resumes it. With ``prefix_views``
only the unfrozen suffix trains, on cached activations (:mod:`transferkit.training.prefix`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from transferkit.defaults import DEFAULTS
from transferkit.evaluation.metrics import balanced_accuracy
from transferkit.training.freezing import train_mode
from transferkit.training.callbacks import Callback, EarlyStopping, TrainState
from transferkit.training.history import BEST_EPOCH_NOTE, EpochRecord, TrainResult
from transferkit.training.inputs import LoopInputs, TrainData, pixel_inputs, pixels_to_tensor
from transferkit.training.optim import build_optimizer, build_scheduler
from transferkit.training.prefix import prefix_inputs
from transferkit.training.progress import progress_bar
from transferkit.training.regularize import BatchMixer, Regularization, balanced_sampler, build_ema, soft_target_loss
from transferkit.training.runtime import Runtime, for_predictions, unwrap


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the estimator fills it from its parameters; the defaults are
    :data:`transferkit.defaults.DEFAULTS`, the one table).

    ``batch_size`` is per process: under torchrun with N processes a step sees N batches.
    """

    epochs: int = DEFAULTS["epochs"]
    lr: float = DEFAULTS["lr"]
    backbone_lr_factor: float = 0.1
    weight_decay: float = DEFAULTS["weight_decay"]
    batch_size: int = DEFAULTS["batch_size"]
    warmup_epochs: float = 1.0
    patience: int = DEFAULTS["patience"]
    label_smoothing: float = DEFAULTS["label_smoothing"]
    grad_clip: float = 1.0
    seed: int = DEFAULTS["seed"]
    num_workers: int = 0
    prefix_views: int = 0
    """Cached views of the frozen prefix (0: plain loop); see :mod:`transferkit.training.prefix`."""
    regularization: Regularization = Regularization()
    """Mixup/cutmix, random erasing, the weight average (:mod:`transferkit.training.regularize`);
    stochastic depth is set when the network is built."""
    balanced_sampling: bool = False
    """Draw batches class-balanced (rare classes more often) instead of shuffling each image once per epoch."""


def train_model(
    model: nn.Module,
    lr_groups: tuple[list[nn.Parameter], list[nn.Parameter]],
    data: TrainData,
    *,
    config: TrainConfig,
    runtime: Runtime,
    callbacks: Sequence[Callback] = (),
    verbose: bool = True,
) -> TrainResult:
    """Train ``model`` in place and leave the best weights (lowest validation loss) in it.

    Parameters
    ----------
    model : nn.Module
        Backbone + new head, frozen parameters already marked ``requires_grad=False``.
    lr_groups : (head_parameters, backbone_parameters)
        The two learning-rate groups (see :func:`transferkit.training.optim.build_optimizer`).
    data : TrainData
        Training and validation pixels, preprocessing, augmentation, class weights.
    callbacks : sequence of Callback
        Run after :class:`EarlyStopping`, in order; e.g. ``[Checkpoint(dir, resume=True)]``.
    """
    console = Console(stderr=True, emoji=False, markup=False, highlight=False, quiet=not (verbose and runtime.is_main))
    torch.manual_seed(config.seed)
    inputs = None
    if config.prefix_views > 0:
        inputs = prefix_inputs(model, data, runtime, views=config.prefix_views, seed=config.seed,
                               batch_size=config.batch_size * 2, console=console)
    inputs = inputs or pixel_inputs(model, data, runtime)
    net = runtime.prepare_model(inputs.net, train=True)
    loader = build_loader(inputs.train_set, config, runtime, targets=data.train[1])
    optimizer = build_optimizer(*lr_groups, config)
    scheduler = build_scheduler(optimizer, config.warmup_epochs, config.epochs, len(loader))
    criterion = nn.CrossEntropyLoss(
        weight=None if data.class_weights is None else runtime.to_device(data.class_weights.float()),
        label_smoothing=config.label_smoothing,
    )
    state = TrainState(
        model=unwrap(net), optimizer=optimizer, scheduler=scheduler, scaler=runtime.grad_scaler(), runtime=runtime, console=console,
        callbacks=[EarlyStopping(config.patience), *callbacks], result=TrainResult(prefix_seconds=inputs.prefix_seconds),
    )
    n_classes = _n_classes(model, data)
    # cutmix pastes a box of pixels: only where the loop trains on images, not on cached activations
    mixer = BatchMixer(config.regularization, n_classes, images=config.prefix_views == 0)
    mixing = _Mixing(mixer if mixer.active else None, build_ema(state.model, config.regularization.ema_decay),
                     config.label_smoothing, None if data.class_weights is None else runtime.to_device(data.class_weights.float()))
    for callback in state.callbacks:
        callback.on_train_start(state)
    if data.val is not None and len(data.val[0]):
        console.print(BEST_EPOCH_NOTE)

    for epoch in range(state.epoch, config.epochs):
        if state.stop:
            break
        # Reseed per epoch so a resumed run draws the same shuffles and augmentations.
        torch.manual_seed(config.seed * 1000 + epoch)
        loader.generator.manual_seed(config.seed * 1000 + epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        inputs.train_set.set_epoch(epoch)

        with progress_bar(console, f"epoch {epoch + 1}/{config.epochs}", len(loader)) as bar:
            record = _train_epoch(net, loader, inputs, criterion, state, config.grad_clip, bar, mixing)
        # DDP keeps the weights in step, not the BatchNorm statistics: take rank 0's everywhere.
        runtime.broadcast_buffers(state.model)
        if data.val is not None and len(data.val[0]):
            record.val_loss, record.val_accuracy, record.val_balanced_accuracy = _validate(
                state.model, inputs.val_inputs, data.val[1], inputs.prepare, runtime, criterion, config.batch_size * 2
            )
        record.epoch = state.epoch = epoch + 1
        state.result.history.append(record)
        for callback in state.callbacks:
            callback.on_epoch_end(state)
        console.print(record.describe(best=state.result.best_epoch == record.epoch))

    state.result.stopped_early = len(state.result.history) < config.epochs
    for callback in state.callbacks:
        callback.on_train_end(state)
    if mixing.ema is not None:
        state.result.ema = _keep_better_of_ema(state, mixing.ema, inputs, data, runtime, criterion, config.batch_size * 2)
    state.model.eval()
    return state.result


def _n_classes(model: nn.Module, data: TrainData) -> int:
    """The head's outputs (a class may have no image in the training part)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return int(head.out_features)
    seen = [int(np.max(data.train[1]))] + ([int(np.max(data.val[1]))] if data.val is not None and len(data.val[1]) else [])
    return max(seen) + 1


@dataclass
class _Mixing:
    """What the regularisers add to a step: the batch mixer, the weight average, and the loss of soft targets."""

    mixer: BatchMixer | None
    ema: object | None
    label_smoothing: float
    class_weights: torch.Tensor | None
    steps: int = 0


def _keep_better_of_ema(state: TrainState, ema, inputs: LoopInputs, data: TrainData, runtime: Runtime, criterion,
                        batch_size: int) -> dict:
    """Validate the weight average beside the kept raw weights and keep the better (lower
    validation loss); without a validation split the average is kept (the recipes' default)."""
    if data.val is None or not len(data.val[0]):
        state.model.load_state_dict(ema.module.state_dict())
        return {"kept": "ema", "why": "no validation split: the average is the recipes' default"}
    raw = _validate(state.model, inputs.val_inputs, data.val[1], inputs.prepare, runtime, criterion, batch_size)
    averaged = _validate(ema.module, inputs.val_inputs, data.val[1], inputs.prepare, runtime, criterion, batch_size)
    kept = "ema" if averaged[0] < raw[0] else "raw"
    if kept == "ema":
        state.model.load_state_dict(ema.module.state_dict())
    state.console.print(f"weight average: validation loss {averaged[0]:.4f} (accuracy {averaged[1]:.4f}) against the kept epoch's "
                        f"{raw[0]:.4f} ({raw[1]:.4f}): keeping the {'average' if kept == 'ema' else 'raw weights'}")
    return {"kept": kept, "raw": {"val_loss": raw[0], "val_accuracy": raw[1], "val_balanced_accuracy": raw[2]},
            "ema": {"val_loss": averaged[0], "val_accuracy": averaged[1], "val_balanced_accuracy": averaged[2]}}


def build_loader(dataset: Dataset, config: TrainConfig, runtime: Runtime, targets: np.ndarray | None = None) -> DataLoader:
    """Shuffled batches; under torchrun each process draws a disjoint shard (``DistributedSampler``);
    with ``config.balanced_sampling`` (one process) class-balanced draws of ``targets``."""
    sampler = DistributedSampler(dataset, seed=config.seed) if runtime.distributed else None
    if config.balanced_sampling and sampler is None and targets is not None:
        sampler = balanced_sampler(targets, len(dataset), config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(config.seed),
        num_workers=config.num_workers,
        # A last batch of one sample breaks BatchNorm in train mode; drop the remainder.
        drop_last=len(dataset) > config.batch_size,
    )


def _train_epoch(net, loader, inputs: LoopInputs, criterion, state: TrainState, grad_clip: float, bar,
                 mixing: _Mixing | None = None) -> EpochRecord:
    """One pass over this process's shard; loss and accuracy are summed over all processes."""
    runtime, optimizer, scaler = state.runtime, state.optimizer, state.scaler
    progress, task = bar
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    train_mode(net)
    started = time.perf_counter()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device)
    seen = 0
    for images, targets in loader:
        inputs_on_device = inputs.prepare(images)
        targets = runtime.to_device(targets)
        soft = None
        if mixing is not None and mixing.mixer is not None:  # mixed images, soft targets (timm's Mixup, RandomErasing)
            inputs_on_device, soft = mixing.mixer(inputs_on_device, targets)
        with runtime.autocast():
            logits = net(inputs_on_device)
            if soft is None:
                loss = criterion(logits.float(), targets)
            else:
                loss = soft_target_loss(logits.float(), soft, label_smoothing=mixing.label_smoothing,
                                        class_weights=mixing.class_weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        # Clip after unscaling so the threshold means the same in every precision.
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parameters, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        state.scheduler.step()
        if mixing is not None and mixing.ema is not None:
            mixing.steps += 1  # timm's warm-up of the decay reads the step: a short run averages a short past
            mixing.ema.update(state.model, step=mixing.steps)

        # Accumulate on the device; .item() here would force a sync every step.
        loss_sum += loss.detach() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        progress.update(task, advance=1, status=f"{seen / (time.perf_counter() - started):5.1f} img/s")

    totals = runtime.all_reduce_sum(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=runtime.device)]))
    loss_total, correct_total, images = totals.tolist()
    seconds = time.perf_counter() - started
    return EpochRecord(
        epoch=0,
        train_loss=loss_total / max(1.0, images),
        train_accuracy=correct_total / max(1.0, images),
        val_loss=None,
        val_accuracy=None,
        lr=optimizer.param_groups[0]["lr"],
        seconds=seconds,
        images_per_second=images / seconds if seconds > 0 else 0.0,
        images=int(images),
    )


@torch.no_grad()
def _validate(model, inputs, targets, prepare, runtime, criterion, batch_size) -> tuple[float, float, float]:
    """Validation loss, accuracy and balanced accuracy (the mean recall over the classes present);
    ``inputs`` are uint8 pixels or cached prefix activations."""
    model.eval()
    logits = []
    predicting = for_predictions(runtime)  # validate as the fitted model will predict (fp32 on a CPU under auto)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        batch = pixels_to_tensor(chunk) if isinstance(chunk, np.ndarray) else chunk
        with predicting.autocast():
            logits.append(model(prepare(batch)).float())
    logits = torch.cat(logits)
    targets = runtime.to_device(torch.as_tensor(targets, dtype=torch.long))
    loss = criterion(logits, targets).item()
    predicted = logits.argmax(1)
    accuracy = (predicted == targets).float().mean().item()
    return loss, accuracy, balanced_accuracy(targets.cpu().numpy(), predicted.cpu().numpy())
