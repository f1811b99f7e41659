"""What transferkit found on this machine: the facts a bug report needs.

:func:`system_info` gathers versions, the CPU and its features, threads, precision, the
allocator setting, GPUs, the cache and the offline weights into one JSON-ready dict;
``transferkit info`` prints it (``--json`` for the dict). Like
``python -m torch.utils.collect_env``, it only looks: nothing is downloaded, no setting is
changed, no network is built.

By default it does not import torch (3-5 s on a small machine; ``info`` takes about 1 s
without it, benchmarks/info_speed.py): versions come from the installed distributions, the CPU
from ``/proc/cpuinfo``, the threads from the rule torch follows, the GPUs from the NVIDIA
driver (:mod:`transferkit.training.machine`). ``torch_view=True`` (``info --torch``) imports
torch and adds what only torch can say: its CPU kernel level, its own thread counts and
CUDA as torch sees it.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from transferkit._version import __version__
from transferkit.backbones import list_backbones, weights_available
from transferkit.data import default_cache_dir
from transferkit.data.cache_admin import cache_summary
from transferkit.errors import ConfigError
from transferkit.training.allocator import ALLOCATOR_ENV
from transferkit.training.machine import (
    CPU_FLAGS,
    JOB_THREADS_ENV,
    LOSS_STANDARD_ERRORS,
    MIN_AGREEMENT,
    MIN_SPEEDUP,
    THREAD_RULE,
    THREAD_VARIABLES,
    cpu_facts,
    cpu_model,
    installed_torch,
    job_threads,
    matches_machine,
    native_bf16,
    nvidia_gpus,
    predicted_torch_threads,
    speed_records,
    usable_cpus,
)

PACKAGES = ("torch", "torchvision", "timm", "scikit-learn", "numpy", "pillow", "safetensors", "rich", "typer")
"""Distributions whose versions :func:`system_info` reports (besides transferkit itself)."""

NOT_CHECKED = "transferkit info --torch"
"""What to run for a fact only torch can give (shown where such a fact is None)."""


def system_info(cache_dir: str | os.PathLike | None = None, *, torch_view: bool = False) -> dict[str, Any]:
    """Versions, hardware and settings of this machine as transferkit sees them.

    Parameters
    ----------
    cache_dir : path, optional
        The cache root to measure (default: ``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``).
    torch_view : bool, default False
        Import torch (seconds) and add its view: ``cpu.capability``, ``threads`` as torch
        counts them, ``cuda``'s availability, devices and cuDNN. Without it those are None
        (not checked) and the threads are predicted by torch's rule.

    Returns
    -------
    dict
        Keys ``transferkit``, ``location``, ``python``, ``platform``, ``packages``, ``cpu``,
        ``threads``, ``bf16_native``, ``precision``, ``allocator``, ``gpus`` (the NVIDIA
        driver's view), ``cuda`` (torch's view), ``torch_view``, ``cache``, ``weights``.
    """
    torch_facts = torch_runtime_facts() if torch_view else None
    return {
        "transferkit": __version__,
        "location": str(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "cpu": cpu_info(torch_facts),
        "threads": thread_info(torch_facts),
        "bf16_native": bf16_native(torch_facts),
        "precision": precision_info(cache_dir, torch_facts),
        "allocator": allocator_setting(),
        "gpus": nvidia_gpus(),
        "cuda": torch_facts["cuda"] if torch_facts else cuda_info_unchecked(),
        "torch_view": torch_view,
        "cache": cache_summary(cache_dir).to_dict(),
        "weights": installed_weights(),
    }


def torch_runtime_facts() -> dict[str, Any]:
    """What only an imported torch can say: its CPU kernel level, threads, bf16 check and CUDA view."""
    import torch

    from transferkit.training.runtime import cpu_supports_bf16

    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "version": torch.__version__,
        "bf16_native": cpu_supports_bf16(),
        "cuda": cuda_info(),
    }


def package_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES`; None when one is missing.

    torch's is ``torch.__version__`` (read from its files, with the build tag such as
    ``+cu130``), which its distribution's metadata leaves out.
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    torch = installed_torch()
    if torch is not None and torch["version"]:
        versions["torch"] = torch["version"]
    return versions


def cpu_info(torch_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """CPU model, the features of :data:`CPU_FLAGS`, core counts, and PyTorch's kernel level.

    ``flags`` is empty where ``/proc/cpuinfo`` does not exist (not Linux); ``capability``
    (PyTorch's CPU kernel level, e.g. ``AVX2``) is None unless torch's view was asked for.
    """
    facts = cpu_facts()
    return {
        "model": cpu_model() or None,
        "flags": {name: flag in facts.flags for name, flag in CPU_FLAGS.items()} if facts.flags else {},
        "capability": torch_facts["capability"] if torch_facts else None,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cpus(),
        "physical_cores": facts.physical_cores,
    }


def thread_info(torch_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """PyTorch's intra-op threads in a transferkit command, how they were found, and the variables that set them.

    ``torch``: torch's own count with its view, else :func:`predicted_torch_threads` (None
    where its rule is not known to hold); ``interop``: torch's inter-op threads, with its view
    only; ``source``: ``"torch"`` or the rule in words.
    """
    environment = {name: os.environ.get(name, "unset") for name in THREAD_VARIABLES}
    if torch_facts:
        return {"torch": torch_facts["threads"], "interop": torch_facts["interop"], "source": "torch",
                "environment": environment}
    return {"torch": predicted_torch_threads(), "interop": None, "source": f"predicted: {THREAD_RULE}",
            "environment": environment}


def bf16_native(torch_facts: dict[str, Any] | None = None) -> bool | None:
    """Whether ``precision="auto"`` may try bf16 on this CPU: its flags; None where they are unknown
    (not Linux) and torch's view was not asked for (then torch's oneDNN check decides, as in a fit)."""
    return torch_facts["bf16_native"] if torch_facts else native_bf16()


def precision_info(cache_dir: str | os.PathLike | None = None, torch_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """How ``precision="auto"`` decides on this machine, and what it measured so far.

    ``inference_measurements``: the bf16-vs-fp32 speeds kept under ``<cache>/precision/`` by
    :func:`transferkit.training.runtime.measured_inference_precision`, for this machine only
    (one per network and image size; features and predictions). Without torch's view the
    machine is matched on the CPU model, torch's version and the predicted threads (torch's
    kernel level, which follows from the first two, is not compared).
    """
    native = bf16_native(torch_facts)
    if native:
        rule = (f"bf16 where measured at least {MIN_SPEEDUP:g}x faster than fp32 (once per machine and network) and in "
                f"agreement with fp32 on the fit's labelled images (a classifier's held-out predictions agree on {MIN_AGREEMENT:.0%} "
                f"of them, accuracy within {LOSS_STANDARD_ERRORS:g} standard errors); "
                "training: the faster of one timed step in each; cross-validation jobs: fp32")
    elif native is None:
        rule = f"unknown: this CPU's flags cannot be read here ({NOT_CHECKED} asks torch); cross-validation jobs: fp32"
    else:
        rule = "fp32 (no native bf16 on this CPU); cross-validation jobs: fp32"
    try:
        threads: int | str = job_threads()
    except ConfigError as exc:
        threads = str(exc)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if torch_facts:
        here = {"capability": torch_facts["capability"], "torch_version": torch_facts["version"], "threads": torch_facts["threads"]}
    else:
        torch = installed_torch() or {}
        here = {"capability": None, "torch_version": torch.get("version"), "threads": predicted_torch_threads()}
    measurements = []
    for record in speed_records(root):
        if matches_machine(record.get("machine", ""), **here):
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
    """torch's view of CUDA: its build, whether a GPU is usable, the devices (name, memory, capability, bf16).

    Imports torch (seconds): :func:`system_info` calls it with ``torch_view=True`` only.
    """
    import torch

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


def cuda_info_unchecked() -> dict[str, Any]:
    """:func:`cuda_info`'s keys without importing torch: the CUDA build torch was made for (from its
    files); availability, cuDNN and devices None (not checked: see ``gpus`` for the driver's view)."""
    torch = installed_torch() or {}
    return {"available": None, "version": torch.get("cuda"), "cudnn": None, "devices": None}


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
