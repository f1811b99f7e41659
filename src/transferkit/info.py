"""What transferkit found on this machine: the facts a bug report needs.

:func:`system_info` gathers versions, the CPU and its features, threads, precision, the
allocator setting, CUDA devices, the cache and the offline weights into one JSON-ready dict;
``transferkit info`` prints it (``--json`` for the dict). Like
``python -m torch.utils.collect_env``, it only looks: nothing is downloaded, no setting is
changed, no network is built.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from transferkit._version import __version__
from transferkit.backbones import backbone_stages, create_backbone, list_backbones, weights_available
from transferkit.data import default_cache_dir
from transferkit.data.cache_admin import cache_summary
from transferkit.errors import ConfigError
from transferkit.training.runtime import (
    ALLOCATOR_ENV,
    FEATURE_TOLERANCE,
    JOB_THREADS_ENV,
    MIN_SPEEDUP,
    SPEED_FOLDER,
    cpu_supports_bf16,
    job_threads,
    machine_key,
)

# Imports only what it reports on (torch, the backbone registry, the cache): no timm, no
# scikit-learn, so `transferkit info` takes about as long as `import torch`
# (benchmarks/info_speed.py).

PACKAGES = ("torch", "torchvision", "timm", "scikit-learn", "numpy", "pillow", "safetensors", "rich", "typer")
"""Distributions whose versions :func:`system_info` reports (besides transferkit itself)."""

CPU_FLAGS = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX-512 BF16": "avx512_bf16", "AMX": "amx_tile", "AMX BF16": "amx_bf16"}
"""The CPU features that decide PyTorch's speed on a CPU, by the flag Linux reports for each."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def system_info(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Versions, hardware and settings of this machine as transferkit sees them.

    Parameters
    ----------
    cache_dir : path, optional
        The cache root to measure (default: ``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``).

    Returns
    -------
    dict
        Keys ``transferkit``, ``location``, ``python``, ``platform``, ``packages``, ``cpu``,
        ``threads``, ``bf16_native``, ``precision``, ``allocator``, ``cuda``, ``cache``, ``weights``.
    """
    return {
        "transferkit": __version__,
        "location": str(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "cpu": cpu_info(),
        "threads": thread_info(),
        "bf16_native": cpu_supports_bf16(),
        "precision": precision_info(cache_dir),
        "allocator": allocator_setting(),
        "cuda": cuda_info(),
        "cache": cache_summary(cache_dir).to_dict(),
        "weights": installed_weights(),
    }


def package_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES`; None when one is missing."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_info() -> dict[str, Any]:
    """CPU model, the features of :data:`CPU_FLAGS`, PyTorch's kernel level and core counts.

    ``flags`` is empty where ``/proc/cpuinfo`` does not exist (not Linux).
    """
    model, flags = _read_cpuinfo()
    return {
        "model": model or platform.processor() or None,
        "flags": {name: flag in flags for name, flag in CPU_FLAGS.items()} if flags else {},
        "capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    model, flags = None, set()
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86, ARM
                    flags = set(value.split())
                if model is not None and flags:
                    break
    except OSError:
        pass
    return model, flags


def thread_info() -> dict[str, Any]:
    """PyTorch's intra-op and inter-op threads and the environment variables that set them."""
    return {
        "torch": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "environment": {name: os.environ.get(name, "unset") for name in THREAD_VARIABLES},
    }


def precision_info(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """How ``precision="auto"`` decides on this machine, and what it measured so far.

    ``inference_measurements``: the bf16-vs-fp32 speeds kept under ``<cache>/precision/`` by
    :func:`transferkit.training.runtime.measured_inference_precision`, for this machine only
    (one per network and image size; features and predictions).
    """
    native = cpu_supports_bf16()
    if native:
        rule = (f"bf16 where measured at least {MIN_SPEEDUP:g}x faster than fp32 (once per machine and network) and in "
                f"agreement with fp32 on the data (features within {FEATURE_TOLERANCE:g} relative, predictions identical); "
                "training: the faster of one timed step in each; cross-validation jobs: fp32")
    else:
        rule = "fp32 (no native bf16 on this CPU); cross-validation jobs: fp32"
    try:
        threads: int | str = job_threads()
    except ConfigError as exc:
        threads = str(exc)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    here = machine_key()
    measurements = []
    for path in sorted((root / SPEED_FOLDER).glob("*.json")) if (root / SPEED_FOLDER).is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("machine") == here:
            kind, _, rest = str(record.get("key", "")).partition("|")
            measurements.append({"what": kind, "network": rest.rpartition("|")[0][:12], "image_size": rest.rpartition("|")[2],
                                 "fp32_images_per_second": record.get("fp32"), "bf16_images_per_second": record.get("bf16")})
    return {"auto_cpu": rule, "job_threads": threads, "job_threads_variable": JOB_THREADS_ENV,
            "inference_measurements": measurements}


def allocator_setting() -> dict[str, Any]:
    """How CPU memory will be allocated (see :func:`transferkit.training.runtime.keep_freed_memory`).

    Reports the setting without applying it: ``keep_freed_memory`` changes the process's
    malloc, which a look must not do.
    """
    value = os.environ.get(ALLOCATOR_ENV)
    preload = os.environ.get("LD_PRELOAD") or None
    if (value or "").lower() == "system":
        description = f"system malloc ({ALLOCATOR_ENV}=system)"
    elif not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        description = "system malloc (keeping freed memory needs Linux with glibc)"
    else:
        description = f"glibc malloc keeps freed memory on CPU runs (mallopt; {ALLOCATOR_ENV}=system turns it off)"
    if preload:
        description += f"; LD_PRELOAD={preload}"
    return {"variable": ALLOCATOR_ENV, "value": value, "ld_preload": preload, "description": description}


def cuda_info() -> dict[str, Any]:
    """CUDA build and visible devices (name, memory, compute capability, bf16)."""
    available = torch.cuda.is_available()
    devices = []
    for index in range(torch.cuda.device_count() if available else 0):
        properties = torch.cuda.get_device_properties(index)
        devices.append({
            "index": index,
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "capability": f"{properties.major}.{properties.minor}",
            "bf16": properties.major >= 8,  # Ampere and newer run bf16 natively
        })
    cudnn = torch.backends.cudnn.version() if available and torch.backends.cudnn.is_available() else None
    return {"available": available, "version": torch.version.cuda, "cudnn": cudnn, "devices": devices}


def installed_weights() -> list[dict[str, Any]]:
    """For each registered backbone: its weights package and whether it is installed (no network)."""
    return [{"backbone": spec.name, "package": spec.package, "installed": weights_available(spec.name)}
            for spec in list_backbones()]


def backbone_details() -> list[dict[str, Any]]:
    """For each registered backbone: timm model, input size, stages and offline weights.

    The stages are those the spec declares (no timm needed); a backbone that declares none is
    built without weights to name them (timm's import and a second or two).
    """
    details = []
    for spec in list_backbones():
        details.append({
            "name": spec.name,
            "timm_model": spec.timm_name,
            "input_size": spec.preprocessing.input_size,
            "stages": list(spec.stages) if spec.stages is not None else built_stages(spec.name),
            "offline_weights": weights_available(spec.name),
            "package": spec.package,
            "description": spec.description,
        })
    return details


def built_stages(name: str) -> list[str]:
    """The stage names of backbone ``name``, from its network built without weights."""
    from transferkit.backbones import backbone_stages, create_backbone

    model, _ = create_backbone(name, num_classes=2, pretrained=False)
    return [stage for stage, _ in backbone_stages(model)]
