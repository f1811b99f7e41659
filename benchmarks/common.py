"""Helpers shared by the benchmark scripts: the ELPV split, stratified subsets, the JSON output."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from transferkit.data import ImageSet, resolve_data
from transferkit.training.runtime import keep_freed_memory

# Every benchmark script is an entry point like the `transferkit` command: same allocator setting.
keep_freed_memory()


def elpv_split(subset: int | None, seed: int) -> tuple[ImageSet, ImageSet]:
    """ELPV's paper split (train, test); ``subset`` keeps at most that many images of each, stratified."""
    return stratified_subset(resolve_data("elpv:train"), subset, seed), stratified_subset(resolve_data("elpv:test"), subset, seed)


def stratified_subset(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """``n`` images of ``images`` in the same class proportions (all of them when n is None or too big)."""
    if n is None or n >= len(images):
        return images
    keep, _ = train_test_split(np.arange(len(images)), train_size=n, stratify=images.labels, random_state=seed)
    part = images.subset(np.sort(keep))
    part.name = f"{images.name}[{n}]"
    return part


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process, and of its largest finished child (DataLoader workers)."""
    # ru_maxrss is in KiB on Linux.
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def write_json(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
