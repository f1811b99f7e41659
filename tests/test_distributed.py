"""Scale-out: the public API under ``torchrun --nproc_per_node 2`` (gloo, CPU) fits one model.

The script (tests/distributed_fit.py) fits ``finetune`` and ``full`` on 48 tiny images with 4
images per process per step, then each rank reports what it saw; here the two reports are
compared with each other and with a single-process fit that uses 8 images per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import transferkit
from conftest import make_images
from distributed_fit import STRATEGIES, fit_params

HERE = Path(__file__).parent
SRC = HERE.parent / "src"


@pytest.fixture(scope="module")
def ranks(tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "distributed_fit.py"), str(out), str(tiny_weights)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_only_rank_0_writes_the_model_folder(ranks):
    out, _ = ranks
    for strategy in STRATEGIES:
        assert (out / f"{strategy}-rank0" / "model.safetensors").is_file()
        assert not (out / f"{strategy}-rank1").exists()
    transferkit.load(out / "full-rank0")


def test_the_two_ranks_train_on_disjoint_shards_that_cover_the_data(ranks):
    _, reports = ranks
    assert [r["world_size"] for r in reports] == [2, 2]
    n = reports[0]["n_images"]
    for epoch in range(2):
        first, second = (set(r["shards"][epoch]) for r in reports)
        assert len(first) == len(second) == n // 2
        assert not first & second and first | second == set(range(n))
    assert reports[0]["shards"][0] != reports[0]["shards"][1]  # reshuffled every epoch


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_metrics_are_reduced_over_both_ranks(ranks, strategy):
    _, (first, second) = ranks
    metrics = ("epoch", "train_loss", "train_accuracy", "lr", "images")
    history, other = ([{k: e[k] for k in metrics} for e in r[strategy]["history"]["history"]] for r in (first, second))
    assert history == other  # timings aside, both ranks record the same numbers
    assert len(history) == 6 and all(epoch["images"] == first["n_images"] for epoch in history)
    np.testing.assert_array_equal(first[strategy]["proba"], second[strategy]["proba"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_predict_like_one(ranks, strategy, tiny_weights):
    """Same data and global batch (2 x 4 vs 8): only the shuffling and per-process BatchNorm differ."""
    _, (first, _) = ranks
    images, labels = make_images(n_per_class=16, size=32)
    single = transferkit.ImageClassifier(**fit_params(str(tiny_weights), strategy, batch_size=8)).fit(images, labels)
    expected = single.predict_proba(images)
    distributed = np.array(first[strategy]["proba"])
    # Per-process BatchNorm statistics (4 images, not 8) and another shuffle: the same classes
    # on all but a borderline image or two, and close probabilities.
    assert (single.classes_[expected.argmax(1)] == np.array(labels)).mean() == 1.0
    assert (distributed.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert np.abs(distributed - expected).mean() < 0.15


@pytest.fixture(scope="module")
def cli_ranks(tiny_weights, image_folder, tmp_path_factory):
    """The CLI under torchrun (tests/distributed_cli.py): fit, predict, fit auto, compare."""
    out = tmp_path_factory.mktemp("ddp-cli")
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200",
               PYTHONPATH=os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "distributed_cli.py"), str(out), str(image_folder), str(tiny_weights)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    writes = [json.loads(line) for rank in (0, 1) if (out / f"writes-rank{rank}.jsonl").exists()
              for line in (out / f"writes-rank{rank}.jsonl").read_text().splitlines()]
    return out, writes, done.stdout


def test_under_torchrun_the_cli_writes_each_file_once_from_rank_0(cli_ranks):
    out, writes, _ = cli_ranks
    paths = [Path(w["path"]).name for w in writes if w["kind"] != "weights"]
    for name in ("finetune.json", "predictions.csv", "predictions.json", "auto.json", "compare.json"):
        assert paths.count(name) == 1, (name, writes)
    assert [w for w in writes if w["kind"] == "plot"] and all(w["rank"] == 0 for w in writes)
    weights = [w for w in writes if w["kind"] == "weights"]
    assert len(weights) == 2  # the finetune and the auto model, each once
    assert (out / "finetune" / "model.safetensors").is_file() and (out / "auto" / "model.safetensors").is_file()
    fit = json.loads((out / "finetune.json").read_text())
    assert fit["strategy"] == "finetune" and fit["epochs_run"] == 2


def test_under_torchrun_the_summaries_are_printed_once(cli_ranks):
    _, _, stdout = cli_ranks
    assert stdout.count("model written to") == 2  # the two fits
    assert stdout.count("best:") == 1  # compare's table and verdict


def test_auto_under_torchrun_is_one_decision(cli_ranks):
    out, _, _ = cli_ranks
    report = json.loads((out / "auto.json").read_text())
    assert report["advice"] is not None and report["strategy"] in ("svm", "logistic", "pixels", "head", "finetune", "full")
    transferkit.load(out / "auto")
