"""The benchmark scripts still run end to end (smoke size) and report every ratio they promise.

Slow (real ELPV images, real weights, a minute or two): run by ``make slow``. Nothing here
asserts a timing; the numbers themselves belong in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def run_script(name: str, *args, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    command = [sys.executable, str(BENCHMARKS / name), *map(str, args), "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=BENCHMARKS, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_compare_textbook_smoke(tmp_path):
    report = run_script(
        "compare_textbook.py", "--subset", 24, "--epochs", 1, "--image-size", 64, "--freeze", 5,
        "--textbook-freeze", 0, "--prefix-views", 1, tmp_path=tmp_path,
    )
    for side in ("textbook", "transferkit"):
        result = report[side]
        assert result["train_images"] > 0 and 0.0 <= result["test_accuracy"] <= 1.0
        for key in ("train_images_per_second", "inference_images_per_second", "total_seconds", "peak_rss_mb",
                    "train_gflops_per_second"):
            assert result[key] > 0, (side, key)
    # Each side's FLOPs are counted with its own freeze: the whole network trains more per image.
    assert report["flops"]["textbook"]["train_flops_per_image"] > report["flops"]["transferkit"]["train_flops_per_image"]
    assert report["transferkit"]["prefix_seconds"] > 0
    assert report["machine_peak"]["gflops_per_second"] > 0


def test_features_speed_smoke(tmp_path):
    report = run_script("features_speed.py", "--subset", 64, "--image-size", 64, "--epochs", 1, tmp_path=tmp_path)
    assert set(report["results"]) == {"svm", "head"}
    for strategy, result in report["results"].items():
        assert result["cold"]["seconds"] > 0 and result["warm"]["seconds"] > 0, strategy
        assert 0.0 <= result["warm"]["test_accuracy"] <= 1.0


def test_soak_smoke(tmp_path):
    """Concurrent fit/predict processes on one cache (issue 14); `make soak` runs it for minutes."""
    report = run_script("soak.py", "--seconds", 20, "--workers", 4, tmp_path=tmp_path)
    assert report["problems"] == [] and report["failed_runs"] == []
    assert report["fits"] > 0 and report["image_entries"] > 0


def test_auto_vs_baselines_smoke(tmp_path):
    """Issue 13: auto and the three baselines run end to end on the smallest set (lfw, 40 train images)."""
    report = run_script(
        "auto_vs_baselines.py", "--sets", "lfw", "--max-train", 40, "--data-root", tmp_path / "data",
        tmp_path=tmp_path,
    )
    entry = report["sets"]["lfw"]
    assert set(entry["results"]) == {"auto", "svm", "logistic", "pixels"}
    for column, result in entry["results"].items():
        assert "error" not in result, (column, result)
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["balanced_accuracy"] <= 1.0, column
        assert result["seconds"] >= 0, column
    assert entry["results"]["auto"]["strategy"]
    assert entry["results"]["svm"]["strategy"] == "svm" and entry["results"]["logistic"]["strategy"] == "logistic"
    assert entry["verdict"]["pass"] in (True, False) and entry["verdict"]["best_baseline"] in ("svm", "logistic", "pixels")


def test_decode_speed_smoke(tmp_path):
    report = run_script("decode_speed.py", "--subset", 40, "--rounds", 1, "--image-size", 32, tmp_path=tmp_path)
    assert report["images"] == 40 and report["same_pixels"] is True
    assert report["after_over_before"] > 0 and report["conversion_after_ns"] > 0

def test_scale_smoke(tmp_path):
    report = run_script("scale.py", "--n", 20, 40, "--strategies", "logistic", "--root", tmp_path / "scale", tmp_path=tmp_path)
    rows = report["rows"]
    assert [(r["strategy"], r["n"]) for r in rows] == [("logistic", 20), ("logistic", 40)]
    assert rows[0]["per_image_ratio"] == 1.0 and rows[1]["per_image_ratio"] > 0
    for row in rows:
        assert row["peak_rss_mb"] > 100 and row["wall_seconds"] > 0
        assert row["cache_bytes_per_image"] > 224 * 224 * 3  # the decode cache at 224 px, plus features


def test_gpu_check_runs_and_says_what_it_found(tmp_path):
    """benchmarks/gpu_check.sh must run anywhere: on a CPU it says it found no GPU (issue 32)."""
    import os
    import shutil

    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "gpu_check"))
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found_gpu = shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    expected = "gpu_check: device:" if found_gpu else "gpu_check: no GPU found"
    assert expected in result.stdout and "gpu_check: done" in result.stdout
