"""Which joblib backend runs independent (strategy, fold) jobs: this machine, or a cluster.

transferkit writes no scheduler of its own. ``compare``, ``fit --cv`` and the race hand their
jobs to joblib, and ``--backend`` picks any backend joblib knows by name:

- ``loky`` (default with ``--jobs N``): N worker processes on this machine;
- ``threading``: this process, one job at a time (torch's random generator and thread count
  are one per process: two jobs running together drew initial weights, shuffles and dropout
  from one generator in an order set by timing; kept for code that must stay in one process);
- ``dask``: the workers of a Dask cluster (``pip install distributed``; the scheduler's
  address comes from ``DASK_SCHEDULER_ADDRESS``, e.g. ``tcp://head:8786``);
- ``ray``: a Ray cluster (``pip install ray``; ``RAY_ADDRESS`` names it).

Whichever runs them, every job computes with the same fixed number of torch threads and, under
``precision="auto"`` on a CPU, in fp32 (:func:`transferkit.training.runtime.reproducible_job`),
so the table is the same for any ``--jobs`` and backend: ``tests/test_cluster.py`` checks loky,
a Dask ``LocalCluster`` of two worker processes, and Ray where it is installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

from joblib import parallel_config

from transferkit.errors import ConfigError


@contextlib.contextmanager
def parallel_backend(backend: str | None, n_jobs: int) -> Iterator[None]:
    """Run joblib calls inside with ``backend`` (registered on demand) and ``n_jobs`` workers."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise ConfigError(f"jobs expected a positive integer (or -1 for every core). Received: jobs={n_jobs!r}")
    name = backend or "loky"
    if name == "ray":
        try:
            from ray.util.joblib import register_ray
        except ImportError as exc:
            raise ConfigError("backend 'ray' needs Ray: pip install 'ray[default]'. Received: backend='ray'") from exc
        register_ray()
    elif name == "dask":
        try:
            from distributed import Client
        except ImportError as exc:
            raise ConfigError("backend 'dask' needs Dask's distributed scheduler: pip install distributed") from exc
        # Connects to DASK_SCHEDULER_ADDRESS when set; otherwise starts a local cluster.
        client = Client(os.environ["DASK_SCHEDULER_ADDRESS"]) if "DASK_SCHEDULER_ADDRESS" in os.environ else Client()
        with client, parallel_config(backend="dask", n_jobs=n_jobs):
            yield
        return
    elif name == "threading":
        # not a lock inside the job: a Dask worker thread that waits on a nested task secedes, and a
        # job holding a process-wide lock there deadlocked the worker (tests/test_cluster.py hung)
        n_jobs = 1
    elif name not in ("loky", "multiprocessing", "sequential"):
        raise ConfigError(f"unknown joblib backend; expected loky, threading, dask or ray. Received: backend={name!r}")
    # Each loky worker gets its share of the cores for OpenMP/BLAS code outside torch (joblib
    # sets OMP_NUM_THREADS); torch's own threads are fixed per job by reproducible_job().
    threads = {"inner_max_num_threads": max(1, (os.cpu_count() or 1) // max(1, n_jobs))} if name == "loky" else {}
    with parallel_config(backend=name, n_jobs=n_jobs, **threads):
        yield


def run_parallel(function, arguments: Iterable[tuple], *, backend: str | None, n_jobs: int) -> Iterator:
    """``function(*args)`` for each tuple of ``arguments`` through joblib, results in order.

    A generator where the backend can stream results (so progress shows as jobs finish); Ray's
    joblib backend returns lists only, so there the results come at the end.
    """
    from joblib import Parallel, delayed

    calls = [delayed(function)(*args) for args in arguments]
    with parallel_backend(backend, n_jobs):
        try:
            results = Parallel(return_as="generator")(calls)
        except ValueError as exc:  # Ray's joblib backend returns lists only
            if "return_as=generator" not in str(exc):
                raise
            results = Parallel()(calls)
        yield from results
