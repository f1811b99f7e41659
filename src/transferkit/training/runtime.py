"""The one place that knows about devices, precision, memory format and distributed training.

Every other module asks a :class:`Runtime` to move tensors, wrap models and open autocast
regions; none calls ``.cuda()`` or ``torch.autocast`` itself. That is what lets the same
training loop run on a laptop CPU, one GPU, or many machines under ``torchrun`` (DDP).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.files import atomic_write
from transferkit.training.allocator import (  # noqa: F401 - re-exported
    ALLOCATOR_ENV,
    freed_memory_kept,
    keep_freed_memory,
    release_freed_memory,
)
from transferkit.training.machine import (  # noqa: F401 - re-exported: the runtime's settings, defined without torch
    LOSS_STANDARD_ERRORS,
    MIN_AGREEMENT,
    MIN_SPEEDUP,
    SPEED_FOLDER,
    job_threads,
    machine_key_of,
    native_bf16,
)

Precision = Literal["auto", "fp32", "bf16", "fp16"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX-512 BF16 or AMX; BF16 on Arm).

    Without native support, bf16 autocast on a CPU is emulated and slower than fp32, so the
    ``auto`` precision only picks it where this returns True. The CPU's flags decide
    (:func:`~transferkit.training.machine.native_bf16`, what ``transferkit info`` reports);
    where they cannot be read (not Linux), oneDNN's own check, which also says yes where bf16
    is merely supported (emulated on plain AVX-512).
    """
    native = native_bf16()
    if native is not None:
        return native
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
    """What :func:`fastest_training_precision` or :func:`measured_inference_precision` timed, when it ran."""
    precision_reason: str = ""
    """Why ``precision`` is what it is, in words (``fit --json`` and the fitted history record it)."""
    feature_verdict: dict | None = None
    """The precision of frozen-feature passes, decided once per fit on its labelled images
    (``strategies.linear.settle_feature_precision``): ``{"precision", "why", "measured"}``.
    Extractors built on this runtime adopt it instead of measuring again; training ignores it."""

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

    def precision_record(self) -> dict:
        """The precision, why it was chosen and what was measured: what ``fit --json`` shows."""
        return {"precision": self.precision, "why": self.precision_reason, "measured": self.measured}

    def run_on_main(self, compute: Callable[[], object]) -> object:
        """``compute()`` on rank 0 only; every rank returns rank 0's result (the identity outside torchrun).

        For decisions that must be one decision under torchrun (``auto``'s measured search):
        timings differ between processes, and two ranks that chose different strategies would
        wait for each other's collectives for ever.
        """
        if not self.distributed:
            return compute()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("done", compute())
            except Exception as exc:  # noqa: BLE001 - the other ranks must not wait for ever
                box[0] = ("failed", exc)
                torch.distributed.broadcast_object_list(box, src=0)
                raise
        torch.distributed.broadcast_object_list(box, src=0)
        outcome, value = box[0]
        if outcome == "failed":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value


TRAINING_TIMING_ROUNDS = 3
"""Timed training steps per precision in :func:`fastest_training_precision`, alternating, the
fastest of each kept: noise only ever adds time. One step each chose bf16 for ELPV's 224 px
network on an AMX Xeon (fp32 0.571 s, slowed by noise, against bf16 0.450 s; 18.7 images/s
over its 22 epochs), while its twin (the same network, another seed) trained in fp32 in the same
fit at 24 images/s."""


def fastest_training_precision(runtime: Runtime, model: nn.Module, batch: torch.Tensor) -> Runtime:
    """The runtime with the precision that trains ``model`` faster here, by measurement.

    Native bf16 on a CPU speeds up convolutions in inference but, measured on an AMX Xeon
    (21-26 vs 37-41 images/s) and on a Zen 5 EPYC with AVX-512 BF16 (31 vs 43 at 128 px), it
    slows training down (depthwise backward). So where ``precision="auto"`` picked bf16 on a
    CPU, one warm-up and :data:`TRAINING_TIMING_ROUNDS` timed optimisation-free steps (forward +
    backward) run in each precision, the precisions alternating, and the one with the faster
    fastest step wins. GPUs and explicit choices are left alone. Parameters' gradients are
    cleared afterwards: the model is as it was.
    """
    if runtime.device.type != "cpu" or runtime.precision != "bf16" or not runtime.auto_precision:
        return runtime
    candidates = {precision: dataclasses.replace(runtime, precision=precision) for precision in ("fp32", "bf16")}
    timings: dict[str, list[float]] = {precision: [] for precision in candidates}
    model.train()
    for timed in (False, *[True] * TRAINING_TIMING_ROUNDS):
        for precision, candidate in candidates.items():
            started = time.perf_counter() if timed else 0.0
            with candidate.autocast():
                loss = model(batch).float().logsumexp(dim=1).mean()
            loss.backward()
            if timed:
                timings[precision].append(time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    fastest = {precision: min(seconds) for precision, seconds in timings.items()}
    chosen = min(fastest, key=fastest.get)
    reason = f"measured: a training step took {fastest['bf16']:.2f} s in bf16 and {fastest['fp32']:.2f} s in fp32 (fastest of {TRAINING_TIMING_ROUNDS})"
    return dataclasses.replace(runtime, precision=chosen, measured={"training_step_seconds": fastest, "images": len(batch)},
                               precision_reason=reason)


# ---------------------------------------------------------------------------------------------
# Reproducible jobs: the same table for any --jobs, backend and thread count

_IN_JOB: contextvars.ContextVar[bool] = contextvars.ContextVar("transferkit_reproducible_job", default=False)
_JOBS_LOCK = threading.Lock()
_JOBS: dict[str, int] = {"active": 0, "previous": 0}
"""Jobs of this process inside :func:`reproducible_job` now, and the thread count before the first."""


@contextlib.contextmanager
def reproducible_job() -> Iterator[int]:
    """Run one cross-validation job so that its result does not depend on how it was scheduled.

    Measured on CPUs: PyTorch's backward kernels (fp32 too) and oneDNN's native bf16 kernels
    give different bits with a different number of threads (a training step of
    EfficientNet-Lite0 at 1 vs 2 threads differs by 3 % of the largest gradient; ``head`` fold 2
    of a compare scored 0.250 with ``--jobs 2`` and 0.167 with ``--jobs 1`` on an AMX Xeon in
    bf16), while each is bit-exact at a fixed thread count. So inside this block:

    - torch uses a fixed number of threads, :func:`job_threads` (``$TRANSFERKIT_JOB_THREADS``,
      default 1), whatever ``--jobs`` or the backend (loky, threading, Dask, Ray) gave the
      worker -- also with ``--jobs 1``, which is why ``--jobs`` equal to the cores is the fast
      setting of ``compare`` and the race;
    - ``precision="auto"`` means fp32 on a CPU (no timing decides it: timings vary from run to
      run). An explicit ``bf16`` is kept, and is reproducible through the fixed threads.

    Jobs draw from torch's one random generator per process, so two jobs of one process must not
    run together: the ``threading`` backend runs one job at a time
    (:func:`transferkit.evaluation.jobs.parallel_backend`) and a Dask worker needs
    ``--nthreads 1`` (README, Scale-out).

    Jobs may still overlap in one process where a Dask worker secedes the thread of a job that
    waits on a nested task and starts the next job in another thread; torch's thread count is
    one setting for the whole process, so the first job to enter sets it and saves the old
    count, and the last to leave restores it (a job that restored it while another still ran
    made that one's result depend on timing). No lock is held for the whole job: there the
    waiting job would never get it.
    """
    threads = job_threads()
    with _JOBS_LOCK:
        if _JOBS["active"] == 0:
            _JOBS["previous"] = torch.get_num_threads()
        _JOBS["active"] += 1
        torch.set_num_threads(threads)
    token = _IN_JOB.set(True)
    try:
        yield threads
    finally:
        _IN_JOB.reset(token)
        with _JOBS_LOCK:
            _JOBS["active"] -= 1
            if _JOBS["active"] == 0:
                torch.set_num_threads(_JOBS["previous"])


def in_reproducible_job() -> bool:
    """Whether this code runs inside :func:`reproducible_job`."""
    return _IN_JOB.get()


# ---------------------------------------------------------------------------------------------
# Inference precision by measurement

INFERENCE_BATCH = 16
"""Images per forward pass when nothing is learned (features, predictions, the precision check).

A forward pass without gradients of EfficientNet-Lite0 at 224 px on the CPU peaks at about
20 MB per image of the batch (its activations, oneDNN's reordered copies, and with freed memory
kept the heap they leave), so the batch sets a pass's peak: measured +1.45 GB at 64 images,
+0.32 GB at 16 (issue 33, ``benchmarks/RESULTS.md``). With freed memory kept, batches of 8 to 64
ran at the same images/s (issue 5), and each image's features do not depend on the batch
(bit-identical at 16 and 64, fp32 and bf16)."""
# MIN_AGREEMENT, LOSS_STANDARD_ERRORS, MIN_SPEEDUP and SPEED_FOLDER live in training/machine.py, where
# `transferkit info` reads them without torch.


def machine_key() -> str:
    """What makes a speed measurement valid elsewhere: CPU model, kernels, torch, threads."""
    return machine_key_of(torch.backends.cpu.get_cpu_capability(), torch.__version__, torch.get_num_threads())


def speed_file(cache_root: Path, key: str) -> Path:
    name = hashlib.sha256(f"{machine_key()}|{key}".encode()).hexdigest()[:32]
    return Path(cache_root) / SPEED_FOLDER / f"{name}.json"


def _read_speed(path: Path | None) -> dict | None:
    try:
        record = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), (int, float)) for k in ("fp32", "bf16")):
        return None
    return record


def _write_speed(path: Path | None, record: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record)))
    except OSError:
        pass  # a read-only cache only means measuring again next time


Judge = Callable[[torch.Tensor, torch.Tensor], tuple[bool, dict]]
"""``judge(fp32_outputs, bf16_outputs) -> (acceptable, figures)``: whether bf16's outputs on the
sample may replace fp32's, and the figures that decided it (kept in ``measured``)."""


def judge_predictions(fp32: np.ndarray, bf16: np.ndarray, targets: np.ndarray) -> tuple[bool, dict]:
    """Whether a classifier's predictions from bf16 outputs may replace those from fp32 outputs.

    ``fp32``, ``bf16``: predicted class indices (N,) of the same held-out images; ``targets``
    their true classes (N,). bf16 passes when the predictions agree on at least
    :data:`MIN_AGREEMENT` of the images and its accuracy is not lower than fp32's by more than
    :data:`LOSS_STANDARD_ERRORS` standard errors of the paired per-image difference (with the
    same predictions everywhere but k images, all lost: at most 3 such images pass, whatever N).
    Returns the verdict and the figures (agreement, both accuracies, the loss and its standard error).
    """
    fp32, bf16, targets = (np.asarray(a).ravel() for a in (fp32, bf16, targets))
    n = len(targets)
    difference = (fp32 == targets).astype(np.float64) - (bf16 == targets)
    agreement = float(np.mean(fp32 == bf16)) if n else 1.0
    loss = float(difference.mean()) if n else 0.0
    error = float(difference.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    acceptable = agreement >= MIN_AGREEMENT and loss <= LOSS_STANDARD_ERRORS * error + 1e-12
    accuracy = {"fp32": float(np.mean(fp32 == targets)) if n else None, "bf16": float(np.mean(bf16 == targets)) if n else None}
    summary = (f"a classifier's held-out predictions agree on {agreement:.1%} of {n} labelled images (at least "
               f"{MIN_AGREEMENT:.0%} needed); accuracy {accuracy['bf16'] or 0:.3f} in bf16, {accuracy['fp32'] or 0:.3f} in fp32 "
               f"(a loss of at most {LOSS_STANDARD_ERRORS:g} standard errors, {LOSS_STANDARD_ERRORS * error:.3f}, allowed)")
    return acceptable, {
        "summary": summary, "prediction_agreement": agreement, "required_agreement": MIN_AGREEMENT, "images": n,
        "accuracy": accuracy, "accuracy_loss": loss, "standard_error": error, "allowed_standard_errors": LOSS_STANDARD_ERRORS,
    }


SPEED_BATCH = 32
"""Images per timed forward pass of the speed measurement (the sample, repeated)."""


def measured_inference_precision(
    runtime: Runtime,
    forward: Callable[[Runtime, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    *,
    key: str,
    judge: Judge,
    cache_root: Path | None,
) -> Runtime:
    """The runtime whose precision runs ``forward`` here: fp32, or bf16 where measured faster and as accurate.

    ``forward(runtime, batch)`` runs the network on a uint8 (N, C, H, W) batch in that
    runtime's precision; ``sample`` is images of the data at hand, all of which the judge
    reads. Only where ``precision="auto"`` tentatively picked native bf16 on a CPU; explicit
    choices, GPUs and fp32 are returned unchanged. Two measurements decide:

    - **speed**, once per machine and network (``key``: its weights' digest and image size):
      a batch of :data:`SPEED_BATCH` images is warmed and timed in fp32 and in bf16, and the
      images/s are kept under ``<cache>/precision/`` (:func:`speed_file`) for later runs; bf16
      must be :data:`MIN_SPEEDUP` times faster;
    - **what the outputs are for**, on the data at hand, every time: ``judge`` reads the
      sample's outputs in both precisions (the frozen features' judge,
      ``strategies.linear.judge_by_predictions``, fits a classifier on the labelled sample and
      compares its held-out predictions and accuracy: :func:`judge_predictions`).

    The returned runtime says which won and why (``precision_reason``, ``measured``).
    """
    if runtime.device.type != "cpu" or runtime.precision != "bf16" or not runtime.auto_precision:
        return runtime
    release_freed_memory()  # runs in the middle of other work: start from a released heap, as every pass does
    path = speed_file(cache_root, key) if cache_root is not None else None
    speed = _read_speed(path)
    candidates = {p: dataclasses.replace(runtime, precision=p) for p in ("fp32", "bf16")}
    with torch.no_grad():
        if speed is None:
            batch = sample.repeat((SPEED_BATCH + len(sample) - 1) // len(sample), 1, 1, 1)[:SPEED_BATCH]
            speed = {}
            for precision, candidate in candidates.items():
                forward(candidate, batch)  # warm: oneDNN picks and caches its kernels
                started = time.perf_counter()
                forward(candidate, batch)
                speed[precision] = SPEED_BATCH / max(time.perf_counter() - started, 1e-9)
            _write_speed(path, {**speed, "key": key, "machine": machine_key(), "batch": SPEED_BATCH})
        outputs = {p: torch.cat([forward(candidate, part).float().cpu() for part in sample.split(INFERENCE_BATCH)])
                   for p, candidate in candidates.items()}
    release_freed_memory()
    agrees, figures = judge(outputs["fp32"], outputs["bf16"])
    faster = speed["bf16"] >= MIN_SPEEDUP * speed["fp32"]
    chosen = "bf16" if faster and agrees else "fp32"
    rate = f"bf16 {speed['bf16']:.0f} vs fp32 {speed['fp32']:.0f} images/s"
    found = figures.get("summary") or figures.get("why") or figures
    if not faster:
        reason = f"measured: bf16 is not {MIN_SPEEDUP:g}x faster than fp32 here ({rate})"
    elif not agrees:
        reason = f"measured: bf16 is faster ({rate}) but does not agree with fp32 on this data: {found}"
    else:
        reason = f"measured: bf16 is faster ({rate}) and agrees with fp32 on {len(sample)} images of this data: {found}"
    measured = {"images_per_second": {"fp32": speed["fp32"], "bf16": speed["bf16"]},
                "sample": len(sample), **figures, "agrees": agrees, "faster": faster}
    return dataclasses.replace(runtime, precision=chosen, auto_precision=False, measured={"inference": measured},
                               precision_reason=reason)


def is_main_process() -> bool:
    """Whether this process may write files and print summaries: always outside torchrun, rank 0 under it.

    Before the process group exists (a command that has not built its runtime yet), the rank
    comes from torchrun's environment (``RANK`` with ``WORLD_SIZE`` > 1).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or int(os.environ.get("RANK", "0") or 0) == 0


def under_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


PREDICTION_PRECISION_REASON = (
    "auto: fp32 for predictions, so that predict, evaluate, serve, the Python API and the ONNX file give the same "
    "probabilities; ask for bf16 (--precision bf16) for speed"
)


def prediction_runtime(device: str = "auto", precision: Precision = "auto") -> Runtime:
    """The runtime of every prediction path: ``predict_proba`` (so ``predict``, ``evaluate``,
    ``report``) and ``serve``; the one place their precision is decided.

    ``precision="auto"`` is fp32 on a CPU: the ONNX file computes in fp32, and one model must
    give one answer (probabilities within 1e-4) whichever way it is asked. A native bf16 was
    measured 1.4-3x faster on AVX-512 BF16 and AMX CPUs, but it moves probabilities by up to
    0.2 (issue 33: 0.9998 by ``predict`` against 0.805 by ``serve``), so it is only used when
    asked for (``precision="bf16"``). On a GPU ``"auto"`` keeps the GPU's native reduced
    precision, as :func:`resolve_runtime` chooses it.
    """
    return for_predictions(resolve_runtime(device, precision))


def for_predictions(runtime: Runtime) -> Runtime:
    """``runtime`` as predictions use it (:func:`prediction_runtime`'s rule): a CPU's measured or
    tentative bf16 under ``"auto"`` becomes fp32. The training loop validates in it, so the
    epoch table's validation accuracy is the one the fitted model then gives."""
    if runtime.auto_precision and runtime.device.type == "cpu" and runtime.precision != "fp32":
        return dataclasses.replace(runtime, precision="fp32", auto_precision=False, precision_reason=PREDICTION_PRECISION_REASON)
    return runtime


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
        AVX-512 BF16/AMX) and fp32 elsewhere; on a CPU that bf16 is only a candidate, which
        :func:`fastest_training_precision` (training) and :func:`measured_inference_precision`
        (features, predictions) keep or replace by fp32 by measurement. Inside
        :func:`reproducible_job` ``"auto"`` is fp32 on a CPU. An explicit ``"bf16"`` on a CPU
        without native support still works, emulated and slower.
    channels_last : bool or None
        ``None`` uses NHWC, which was faster on every device we measured.

    Threads are PyTorch's default (one per physical core), except in cross-validation jobs
    (:func:`reproducible_job`: a fixed count). The allocator setting
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
    reason = f"asked for: precision={precision}"
    if precision == "auto":
        if torch_device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            reason = f"auto: {precision}, the GPU's native reduced precision"
        elif in_reproducible_job():
            precision, auto_precision = "fp32", False
            reason = "auto: fp32 in a cross-validation job, so the table does not depend on --jobs or threads"
        elif cpu_supports_bf16():
            precision = "bf16"
            reason = "auto: this CPU runs bf16 natively (training and inference each measure it against fp32)"
        else:
            precision = "fp32"
            reason = "auto: fp32, this CPU has no native bf16 (emulated bf16 is slower)"
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
        precision_reason=reason,
    )
