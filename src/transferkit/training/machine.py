"""What this machine offers PyTorch, read without importing torch.

``import torch`` alone takes 3-5 s on a small machine, and ``transferkit info`` must start in
well under 2 s; so the facts here come from Linux (``/proc/cpuinfo``, the affinity mask), the
environment, the NVIDIA driver and the files torch installed, never from torch itself. The
runtime (:mod:`transferkit.training.runtime`) uses the same functions, so that what ``info``
reports and what a fit does cannot disagree: one reader of the CPU flags, one rule for native
bf16, one rule for the threads, one key for the measured precision records.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from transferkit.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# The CPU, as /proc/cpuinfo describes it

CPU_FLAGS = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX-512 BF16": "avx512_bf16", "AMX": "amx_tile", "AMX BF16": "amx_bf16"}
"""The CPU features that decide PyTorch's speed on a CPU, by the flag Linux reports for each."""

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""Flags of a CPU that computes bfloat16 natively: AVX-512 BF16 or AMX (x86), BF16 (Arm ``Features``)."""


@dataclass(frozen=True)
class CpuFacts:
    """What ``/proc/cpuinfo`` says about the CPU; empty where that file does not exist (not Linux).

    ``physical_cores``: distinct (``physical id``, ``core id``) pairs of the machine (not only
    those of this process's affinity mask); None where the file does not list them.
    """

    model: str | None = None
    flags: frozenset[str] = frozenset()
    physical_cores: int | None = None


def parse_cpuinfo(text: str) -> CpuFacts:
    """Read the model, the flags (first processor) and the physical cores from ``/proc/cpuinfo``'s text."""
    model, flags, package, cores = None, frozenset(), None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:  # x86, Arm
            flags = frozenset(value.split())
        elif key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
    return CpuFacts(model=model, flags=flags, physical_cores=len(cores) or None)


@functools.cache
def cpu_facts(path: str = "/proc/cpuinfo") -> CpuFacts:
    """:func:`parse_cpuinfo` of this machine (read once per process); empty where there is no such file."""
    try:
        return parse_cpuinfo(Path(path).read_text())
    except OSError:
        return CpuFacts()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    return cpu_facts().model or platform.processor()


def native_bf16(facts: CpuFacts | None = None) -> bool | None:
    """Whether the CPU computes bfloat16 natively (:data:`BF16_FLAGS`); None where its flags are unknown.

    Without native support, bf16 on a CPU is emulated (oneDNN runs it on plain AVX-512 too) and
    slower than fp32, so ``precision="auto"`` only tries bf16 where this is True.
    """
    facts = cpu_facts() if facts is None else facts
    if not facts.flags:
        return None
    return bool(facts.flags & BF16_FLAGS)


# ---------------------------------------------------------------------------------------------
# Threads

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""The environment variables that set PyTorch's intra-op threads (MKL's wins over OpenMP's)."""

THREAD_RULE = ("MKL_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs this process may run on; "
               "at most the physical cores (MKL_DYNAMIC), as PyTorch's x86-64 builds with MKL do")
"""How :func:`predicted_torch_threads` counts, in words (``transferkit info`` shows it)."""


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity mask: ``taskset``, cgroup cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def predicted_torch_threads(environ: Mapping[str, str] | None = None, *, usable: int | None = None,
                            physical: int | None = None, machine: str | None = None) -> int | None:
    """The intra-op threads ``torch.get_num_threads()`` will give in this process, without importing torch.

    The rule (:data:`THREAD_RULE`) is that of PyTorch's x86-64 builds, whose OpenMP pool takes its
    size from MKL: ``MKL_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the CPUs of the affinity
    mask; MKL caps that at the machine's physical cores unless ``MKL_DYNAMIC=false``.
    ``tests/test_info.py`` checks it against torch under several settings. None where the rule
    is not known to hold: another architecture (Arm, Apple silicon), physical cores unknown,
    or a variable that is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    machine = platform.machine().lower() if machine is None else machine
    usable = usable_cpus() if usable is None else usable
    physical = cpu_facts().physical_cores if physical is None else physical
    if machine not in ("x86_64", "amd64"):
        return None
    requested = usable
    for name in THREAD_VARIABLES:  # the later one wins
        text = environ.get(name)
        if text is not None:
            if not text.strip().isdigit() or int(text) < 1:
                return None
            requested = int(text)
    if environ.get("MKL_DYNAMIC", "").strip().lower() == "false":
        return requested
    return min(requested, physical) if physical else None


JOB_THREADS_ENV = "TRANSFERKIT_JOB_THREADS"
DEFAULT_JOB_THREADS = 1


def job_threads() -> int:
    """Torch threads of every (strategy, fold) job: ``$TRANSFERKIT_JOB_THREADS``, default 1."""
    text = os.environ.get(JOB_THREADS_ENV, str(DEFAULT_JOB_THREADS))
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"{JOB_THREADS_ENV} expected a positive integer. Received: {JOB_THREADS_ENV}={text!r}")
    return threads


# ---------------------------------------------------------------------------------------------
# The installed torch, from its files

@functools.cache
def installed_torch() -> dict[str, str | None] | None:
    """``torch.__version__`` and ``torch.version.cuda`` read from torch's ``version.py``, not imported.

    The distribution's metadata version lacks the build tag (``2.14.1`` for ``2.14.1+cu130``);
    ``version.py`` holds exactly what torch reports. None when torch is not installed. Read once
    per process (``info`` asks for it in three places); do not modify the returned dict.
    """
    try:
        text = Path(metadata.distribution("torch").locate_file("torch/version.py")).read_text()
    except (metadata.PackageNotFoundError, OSError):
        return None
    found: dict[str, Any] = {}
    for node in ast.parse(text).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
            found[target.id] = node.value.value
    return {"version": found.get("__version__"), "cuda": found.get("cuda"), "hip": found.get("hip")}


# ---------------------------------------------------------------------------------------------
# GPUs, as the NVIDIA driver lists them

NVIDIA_PROC = "/proc/driver/nvidia/gpus"


def nvidia_gpus(proc: str = NVIDIA_PROC, timeout: float = 3.0) -> dict[str, Any]:
    """The NVIDIA GPUs the driver shows this process (``nvidia-smi -L``, else ``/proc``), without CUDA.

    This is the driver's view, not torch's: a GPU listed here is usable by torch only with a
    CUDA build of torch and a matching driver, and ``CUDA_VISIBLE_DEVICES`` (reported as is)
    can hide some. ``transferkit info --torch`` adds torch's own view.
    """
    found = {"source": None, "devices": [], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            result = None
        if result is not None and result.returncode == 0:
            return {**found, "source": "nvidia-smi -L", "devices": parse_nvidia_smi(result.stdout)}
    if Path(proc).is_dir():
        return {**found, "source": proc, "devices": read_proc_gpus(proc)}
    return found


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """``GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)`` lines -> index, name, uuid (MIG lines skipped)."""
    devices = []
    for match in re.finditer(r"^GPU (\d+): (.+?)(?: \(UUID: ([^)]*)\))?\s*$", text, flags=re.M):
        devices.append({"index": int(match[1]), "name": match[2], "uuid": match[3]})
    return devices


def read_proc_gpus(proc: str = NVIDIA_PROC) -> list[dict[str, Any]]:
    """The GPUs under ``/proc/driver/nvidia/gpus/<bus>/information``, in bus order (``nvidia-smi``'s)."""
    devices = []
    for index, folder in enumerate(sorted(Path(proc).iterdir())):
        fields = {}
        try:
            for line in (folder / "information").read_text().splitlines():
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        except OSError:
            continue
        devices.append({"index": index, "name": fields.get("Model"), "uuid": fields.get("GPU UUID")})
    return devices


# ---------------------------------------------------------------------------------------------
# Measured precision records: one JSON per (machine, network, image size) under the cache

MIN_AGREEMENT = 0.95
"""bf16 features are accepted when a classifier's held-out predictions from them agree with
those from fp32 features on at least this share of the sampled images (measured on ELPV at 128 px:
98.6 % on an AMX Xeon, 98.8 % on an AVX-512 BF16 EPYC, at the same test accuracy), ..."""
LOSS_STANDARD_ERRORS = 2.0
"""... and their accuracy is not lower than fp32's by more than this many standard errors of the
paired per-image difference (the images where the two predictions differ decide it)."""
MIN_SPEEDUP = 1.1
"""bf16 must run at least this much faster than fp32 (images/s) to be chosen."""
SPEED_FOLDER = "precision"
"""Under the cache root: one JSON per (machine, network, image size) with the timed images/s."""


def machine_key_of(capability: str, torch_version: str, threads: int) -> str:
    """What makes a speed measurement valid elsewhere: CPU model, torch's kernel level, torch, threads."""
    return f"{cpu_model()}|{capability}|torch {torch_version}|{threads} threads"


def matches_machine(key: str, *, capability: str | None, torch_version: str | None, threads: int | None) -> bool:
    """Whether a record's :func:`machine_key_of` is this machine's, comparing only the parts given (None: not known)."""
    parts = str(key).rsplit("|", 3)  # a model name may hold a "|"; the three parts after it do not
    if len(parts) != 4:
        return False
    model, recorded_capability, version, thread_text = parts
    return (model == cpu_model() and (capability is None or recorded_capability == capability)
            and (torch_version is None or version == f"torch {torch_version}")
            and (threads is None or thread_text == f"{threads} threads"))


def speed_records(cache_root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record under ``<cache_root>/precision/`` (any machine), in file-name order; unreadable ones skipped."""
    folder = Path(cache_root) / SPEED_FOLDER
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
