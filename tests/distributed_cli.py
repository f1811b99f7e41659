"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: the CLI, as a user runs it.

Every rank runs ``fit`` (finetune, then auto), ``predict`` and ``compare`` with output files;
each write of a file (files.atomic_write: JSON, CSV; the model's weights; the compare plot) is
recorded with the rank that made it in ``writes-rank<R>.jsonl``, so the test can check that each
file was written once, by rank 0.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_cli.py OUT DATA WEIGHTS
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import transferkit.files as files
import transferkit.persistence as persistence
import transferkit.report as report
from conftest import TINY_BACKBONE
from transferkit.cli import app


def record(out: Path, kind: str, path) -> None:
    with open(out / f"writes-rank{os.environ['RANK']}.jsonl", "a") as handle:
        handle.write(json.dumps({"kind": kind, "path": str(path), "rank": int(os.environ["RANK"])}) + "\n")


def spy(out: Path) -> None:
    real_atomic, real_weights, real_plot = files.atomic_write, persistence.save_file, report.plot_comparison
    files.atomic_write = lambda path, *a, **k: record(out, "file", path) or real_atomic(path, *a, **k)
    persistence.save_file = lambda state, path, *a, **k: record(out, "weights", path) or real_weights(state, path, *a, **k)
    report.plot_comparison = lambda comparison, path, *a, **k: record(out, "plot", path) or real_plot(comparison, path, *a, **k)


def run(*args: str) -> None:
    try:
        app(list(args), standalone_mode=False)
    except SystemExit as exit:  # typer.Exit from an error: fail the rank
        if exit.code:
            raise


def main(out: Path, data: str, weights: str) -> None:
    spy(out)
    common = ["--backbone", TINY_BACKBONE, "--weights", weights, "--image-size", "32", "--device", "cpu", "--cache-dir", str(out / "cache")]
    run("fit", data, "--out", str(out / "finetune"), "--strategy", "finetune", "--epochs", "2", "--batch-size", "4",
        "--json", str(out / "finetune.json"), "--quiet", *common)
    run("predict", str(out / "finetune"), data, "--csv", str(out / "predictions.csv"), "--json", str(out / "predictions.json"),
        "--device", "cpu")
    run("fit", data, "--out", str(out / "auto"), "--epochs", "1", "--batch-size", "4", "--json", str(out / "auto.json"), "--quiet", *common)
    run("compare", data, "--strategies", "logistic,head", "--cv", "2", "--epochs", "1", "--json", str(out / "compare.json"), *common)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
