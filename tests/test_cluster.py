"""A cluster engine, tested: compare and the race on a Dask cluster give loky's table.

The fixture starts what the README's "Scale-out" section tells a user to start on real
machines -- a scheduler and worker processes with one thread each -- as a Dask
``LocalCluster`` (2 worker processes), and points transferkit at it exactly as the README
does: ``DASK_SCHEDULER_ADDRESS=tcp://... transferkit compare DATA --jobs 2 --backend dask``.
Ray is optional: the same check runs when it is installed.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from conftest import TINY_BACKBONE
from transferkit.cli import app


@pytest.fixture(scope="module")
def dask_scheduler():
    """``dask scheduler`` + ``dask worker ADDRESS --nworkers 2 --nthreads 1``, on this machine."""
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    environment = dict(os.environ)
    # distributed's nannies set OMP_NUM_THREADS=1, MKL_NUM_THREADS=1 ... in *this* process's environment for the
    # workers they spawn, and leave them: later tests (transferkit info's thread rule) would read them
    try:
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
            _restore(environment)
            yield cluster.scheduler_address
    finally:
        _restore(environment)


def _restore(environment: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environment)


def _run(args: list[str], json_path) -> dict:
    result = CliRunner().invoke(app, [*args, "--json", str(json_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(json_path.read_text())


def _compare_table(image_folder, tiny_weights, tmp_path, name, *backend) -> list:
    report = _run(["compare", str(image_folder), "--strategies", "svm,logistic,finetune", "--cv", "2", "--backbone", TINY_BACKBONE,
                   "--weights", str(tiny_weights), "--image-size", "32", "--epochs", "2", "--device", "cpu",
                   "--cache-dir", str(tmp_path / f"cache-{name}"), "--jobs", "2", *backend], tmp_path / f"{name}.json")
    return [(r["strategy"], r["fold_scores"], r["balanced_accuracy"], r["macro_f1"]) for r in report["results"]]


def _race_table(image_folder, tiny_weights, tmp_path, name, *backend) -> list:
    report = _run(["advise", str(image_folder), "--backbone", TINY_BACKBONE, "--weights", str(tiny_weights), "--measure",
                   "--image-size", "32", "--race-cv", "2", "--race-epochs", "1", "--device", "cpu",
                   "--cache-dir", str(tmp_path / f"cache-{name}"), "--jobs", "2", *backend], tmp_path / f"{name}.json")
    race = report["race"]
    return [race["rounds"], race["winner"], [(r["strategy"], r["fold_scores"]) for r in race["results"]]]


def test_compare_on_a_dask_cluster_gives_the_loky_table(dask_scheduler, image_folder, tiny_weights, tmp_path, monkeypatch):
    loky = _compare_table(image_folder, tiny_weights, tmp_path, "loky")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_scheduler)
    dask = _compare_table(image_folder, tiny_weights, tmp_path, "dask", "--backend", "dask")
    assert dask == loky
    assert [name for name, *_ in loky] == ["svm", "logistic", "finetune"]


def test_the_race_on_a_dask_cluster_gives_the_loky_table(dask_scheduler, image_folder, tiny_weights, tmp_path, monkeypatch):
    loky = _race_table(image_folder, tiny_weights, tmp_path, "loky")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_scheduler)
    dask = _race_table(image_folder, tiny_weights, tmp_path, "dask", "--backend", "dask")
    assert dask == loky
    assert len(loky[0]) == 2  # two rounds of successive halving ran


def test_dask_jobs_ran_on_the_cluster_workers(dask_scheduler):
    """The scheduler named in DASK_SCHEDULER_ADDRESS, not a cluster of its own, ran the jobs."""
    from distributed import Client
    from joblib import Parallel, delayed

    from transferkit.evaluation.jobs import parallel_backend

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DASK_SCHEDULER_ADDRESS", dask_scheduler)
        with parallel_backend("dask", 2):
            pids = set(Parallel()(delayed(_worker_pid)() for _ in range(8)))
    with Client(dask_scheduler) as client:
        worker_pids = set(client.run(_worker_pid).values())
    assert pids and pids <= worker_pids


def _worker_pid() -> int:
    import os

    return os.getpid()


def test_compare_on_ray_gives_the_loky_table(image_folder, tiny_weights, tmp_path):
    pytest.importorskip("ray")
    loky = _compare_table(image_folder, tiny_weights, tmp_path, "loky")
    ray = _compare_table(image_folder, tiny_weights, tmp_path, "ray", "--backend", "ray")
    assert ray == loky
