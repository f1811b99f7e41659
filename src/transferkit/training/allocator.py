"""The process's memory allocator setting, without torch: the command line applies it at start-up.

Kept apart from :mod:`transferkit.training.runtime` (which imports torch) so that the
``transferkit`` entry point can apply it before deciding what else a command needs to import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

ALLOCATOR_ENV = "TRANSFERKIT_ALLOCATOR"


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves every allocation over its mmap threshold (128 KB, growing to at
    most 32 MB; a batch of 32 activations at 112 x 112 px is 154 MB) with a fresh ``mmap`` and
    unmaps it on free, so each layer of each batch page-faults its output in again: measured
    here, that was more than half the time of a CPU forward pass at 224 px. With mmap off and
    trimming off, freed chunks are reused, as a caching allocator does on GPUs. Measured on 2 cores (EfficientNet-Lite0, 224 px, batch 32): forward 20.7 ->
    54.7 images/s; training all layers 7.6 -> 13.3 images/s.

    PyTorch's CPU tuning guide gets the same effect by preloading jemalloc or tcmalloc
    (``LD_PRELOAD``); that needs a system package and a restart, whereas ``mallopt`` works from
    inside the running process. The cost: the process keeps its peak heap until it exits.

    It changes the allocator of the whole process for its lifetime, so the library never calls
    it on its own: the ``transferkit`` command does, at start-up (its entry point), and a
    script or notebook may call it once itself (``transferkit.keep_freed_memory()``); a web
    server embedding transferkit keeps its own allocator. :class:`Runtime` only reports it.

    Applied once per process, on Linux with glibc only; ``TRANSFERKIT_ALLOCATOR=system`` turns
    it off. Returns whether it is in effect.
    """
    global _FREED_MEMORY_KEPT
    if os.environ.get(ALLOCATOR_ENV, "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on musl and other libcs
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _FREED_MEMORY_KEPT = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _FREED_MEMORY_KEPT


_FREED_MEMORY_KEPT = False


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process (it changes nothing)."""
    return _FREED_MEMORY_KEPT


def release_freed_memory() -> None:
    """Give the memory that :func:`keep_freed_memory` keeps back to the kernel (glibc ``malloc_trim``).

    Kept freed memory makes the batches of one pass reuse their activations' pages; between
    passes of a different shape (the probe, a feature pass at batch 64, a network's training)
    the pages one pass freed are fragmented for the next, so without a release the process's
    resident memory grew by each pass's peak: a 300-image ``fit`` reached 4.5 GB. Each pass
    calls it when it ends (the probe, the timed forward and training steps, the precision
    measurement, a feature pass, each candidate of the search), which bounds the peak to the
    largest pass, at the cost of page-faulting that pass's memory in once (milliseconds against
    a pass's seconds). Measured: ``benchmarks/RESULTS.md`` (issue 33). A no-op unless freed
    memory is kept.
    """
    if not _FREED_MEMORY_KEPT:
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
