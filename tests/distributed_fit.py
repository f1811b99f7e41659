"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: fit, predict, save.

Each process writes ``rank<R>.json`` (its history, predictions and the sample indices its
shard of the training loader yields) and calls ``transferkit.save`` on ``model-rank<R>``:
only rank 0's folder may appear.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_fit.py OUT WEIGHTS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

import transferkit
from conftest import TINY_BACKBONE, make_images
from transferkit.training.loop import TrainConfig, build_loader
from transferkit.training.runtime import resolve_runtime

STRATEGIES = ("finetune", "full")


def fit_params(weights: str, strategy: str, batch_size: int) -> dict:
    """Shared with the single-process reference fit of the test."""
    return dict(
        backbone=TINY_BACKBONE, strategy=strategy, freeze=1 if strategy == "finetune" else "auto", weights=weights,
        image_size=32, epochs=6, batch_size=batch_size, lr=1e-2, val_fraction=0.0, augment="none",
        cache_dir=False, device="cpu", precision="fp32", seed=0,
    )


class Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def main(out: Path, weights: str) -> None:
    images, labels = make_images(n_per_class=16, size=32)  # 48 images: 24 per process
    report = {}
    for strategy in STRATEGIES:
        classifier = transferkit.ImageClassifier(**fit_params(weights, strategy, batch_size=4)).fit(images, labels)
        report[strategy] = {"history": classifier.history_, "proba": classifier.predict_proba(images).tolist()}
        transferkit.save(classifier, out / f"{strategy}-rank{torch.distributed.get_rank()}")

    runtime = resolve_runtime("cpu", "fp32")
    # The loop's own loader over sample indices: the shard this process trains on, per epoch.
    loader = build_loader(Indices(len(images)), TrainConfig(batch_size=4, seed=0), runtime)
    report["shards"] = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        report["shards"].append([int(i) for batch in loader for i in batch])
    report.update(rank=runtime.rank, world_size=runtime.world_size, n_images=len(images))
    (out / f"rank{runtime.rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
