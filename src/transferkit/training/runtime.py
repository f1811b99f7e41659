"""The one place that knows about devices, precision, memory format and distributed training.

Every other module asks a :class:`Runtime` to move tensors, wrap models and open autocast
regions; none calls ``.cuda()`` or ``torch.autocast`` itself. That is what lets the same
training loop run on a laptop CPU, one GPU, or many machines under ``torchrun`` (DDP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.training.allocator import ALLOCATOR_ENV, freed_memory_kept, keep_freed_memory  # noqa: F401 - re-exported

Precision = Literal["auto", "fp32", "bf16", "fp16"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX-512 BF16 or AMX).

    Without native support, bf16 autocast on a CPU is emulated and slower than fp32, so the
    ``auto`` precision only picks it where this returns True.
    """
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed.

    Parameters
    ----------
    device : torch.device
        The device of this process (``cuda:<local_rank>`` under torchrun on GPUs).
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of forward passes; weights and optimiser state stay fp32.
    channels_last : bool
        Whether images and models use the NHWC memory format (faster convolutions on CPU
        and on tensor cores).
    rank, world_size, local_rank : int
        Distributed coordinates; ``world_size == 1`` outside torchrun.
    kept_memory : bool
        Whether :func:`keep_freed_memory` is in effect in this process (reported, not set here).
    """

    device: torch.device
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = True
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    kept_memory: bool = False
    auto_precision: bool = False
    """Whether ``precision`` was chosen by ``"auto"`` (so a measurement may change it)."""
    measured: dict | None = None
    """What :func:`fastest_training_precision` timed, when it ran."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process prints, saves files and writes reports."""
        return self.rank == 0

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed-precision region for forward passes (a no-op in fp32)."""
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision]):
            yield

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def images_to_device(self, images: torch.Tensor) -> torch.Tensor:
        """Move a (N, C, H, W) batch to the device in the runtime's memory format."""
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=self.memory_format())

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    def prepare_model(self, model: nn.Module, *, train: bool = False) -> nn.Module:
        """Move ``model`` to the device and memory format; for training under torchrun, wrap it in DDP.

        Inference (``train=False``, the default) never wraps: DDP's constructor and forward
        are collectives that every process would have to join. The unwrapped module stays
        reachable as ``unwrap(result)``.
        """
        model = model.to(self.device, memory_format=self.memory_format())
        if train and self.distributed and any(p.requires_grad for p in model.parameters()):
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The loss scaler of a training step: enabled for fp16 only (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes (identity outside torchrun)."""
        if self.distributed:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm running statistics).

        DDP averages gradients, so the weights agree; but each process updates its running
        statistics on its own shard in the last forward pass of an epoch. Validating, keeping
        the best weights and stopping early must see one model on every process.
        """
        if self.distributed:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def describe(self) -> str:
        parts = [str(self.device), self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.kept_memory:
            parts.append("freed memory kept")
        if self.distributed:
            parts.append(f"rank {self.rank}/{self.world_size}")
        else:
            parts.append(f"{torch.get_num_threads()} threads")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "kept_memory": self.kept_memory,
            "world_size": self.world_size,
        }


def fastest_training_precision(runtime: Runtime, model: nn.Module, batch: torch.Tensor) -> Runtime:
    """The runtime with the precision that trains ``model`` faster here, by measurement.

    Native bf16 on a CPU speeds up convolutions in inference but, measured on an AMX Xeon
    (21-26 vs 37-41 images/s) and on a Zen 5 EPYC with AVX-512 BF16 (31 vs 43 at 128 px), it
    slows training down (depthwise backward). So where ``precision="auto"`` picked bf16 on a
    CPU, one warm and one timed optimisation-free step (forward + backward) run in each
    precision, and the faster wins. GPUs and explicit choices are left alone. Parameters'
    gradients are cleared afterwards: the model is as it was.
    """
    if runtime.device.type != "cpu" or runtime.precision != "bf16" or not runtime.auto_precision:
        return runtime
    timings = {}
    model.train()
    for precision in ("fp32", "bf16"):
        candidate = dataclasses.replace(runtime, precision=precision)
        for timed in (False, True):
            started = time.perf_counter()
            with candidate.autocast():
                loss = model(batch).float().logsumexp(dim=1).mean()
            loss.backward()
            if timed:
                timings[precision] = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    chosen = min(timings, key=timings.get)
    return dataclasses.replace(runtime, precision=chosen, measured={"training_step_seconds": timings, "images": len(batch)})


def is_main_process() -> bool:
    """Whether this process may write files: always outside torchrun, rank 0 under it."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def resolve_runtime(
    device: str = "auto",
    precision: Precision = "auto",
    channels_last: bool | None = None,
) -> Runtime:
    """Build the :class:`Runtime` for this process from user options and the environment.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"`` picks bf16 where the hardware runs it natively (recent GPUs, CPUs with
        AVX-512 BF16/AMX) and fp32 elsewhere. An explicit ``"bf16"`` on a CPU without
        native support still works, emulated and slower.
    channels_last : bool or None
        ``None`` uses NHWC, which was faster on every device we measured.

    Threads are PyTorch's default: one per physical core. The allocator setting
    (:func:`keep_freed_memory`) is the entry point's choice; the runtime only reports it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is
    initialised here (NCCL on GPUs, Gloo on CPUs) and each process takes its local GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'. Received: device={device!r}") from exc
    if torch_device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu' or 'auto'.")
        if torch_device.index is None:
            torch_device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(torch_device)

    auto_precision = precision == "auto"
    if precision == "auto":
        if torch_device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision; expected one of auto, fp32, bf16, fp16. Received: precision={precision!r}")
    if precision == "fp16" and torch_device.type == "cpu":
        raise ConfigError("precision='fp16' is for GPUs; on a CPU use 'bf16' or 'fp32'.")

    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)

    return Runtime(
        device=torch_device,
        precision=precision,
        channels_last=True if channels_last is None else channels_last,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        kept_memory=torch_device.type == "cpu" and freed_memory_kept(),
        auto_precision=auto_precision,
    )
