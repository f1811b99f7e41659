"""How time and memory grow with the number of images: `transferkit fit` on N synthetic images.

For each N (default 1,000, 10,000 and 50,000) it writes a folder of N synthetic 64 px colour
PNGs in 10 classes (once; reused by later runs), then runs each strategy as a user would,
``transferkit fit FOLDER --strategy S --out ... --json ...`` in a fresh process with a fresh
(cold) cache, and prints per N:

- wall time, and time per image as a ratio to the smallest N (1.0 = linear growth);
- peak resident memory of the fit process (``ru_maxrss`` of that child, from ``os.wait4``);
- cache bytes per image (decoded pixels + features on disk after the fit).

``svm`` runs at the backbone's size (224 px for EfficientNet-Lite0: the 64 px sources are
upsampled, as ``fit`` does by default); the network strategy (``head`` by default) trains
one epoch at 64 px, the sources' own size.

    python benchmarks/scale.py                    # 1k, 10k, 50k: hours on 2 cores
    python benchmarks/scale.py --n 1000 3000 --json runs/bench/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import fmt, write_json

SIDE = 64
CLASSES = 10


def write_synthetic_folder(root: Path, n: int, seed: int = 0) -> Path:
    """N 64 px RGB PNGs in 10 class folders: a class colour and a class stripe direction, plus noise."""
    folder = root / f"synthetic-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(CLASSES, 3))
    grid = np.arange(SIDE)
    for index in range(n):
        label = index % CLASSES
        stripes = ((grid[:, None] * (label % 3) + grid[None, :] * (label // 3 % 3)) // 8) % 2
        image = colours[label] + 40 * stripes[..., None] + rng.integers(-30, 30, size=(SIDE, SIDE, 3))
        target = folder / f"class{label}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(target / f"{index:06d}.png")
    done.touch()
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def run_fit(folder: Path, strategy: str, n: int, work: Path, backbone: str, extra: list[str]) -> dict:
    """One cold `transferkit fit` in a child process: wall time, the child's peak RSS, cache size."""
    cache = work / f"cache-{strategy}-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    out, report = work / f"model-{strategy}-{n}", work / f"fit-{strategy}-{n}.json"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "transferkit.cli", "fit", str(folder), "--strategy", strategy, "--backbone", backbone,
               "--out", str(out), "--json", str(report), "--cache-dir", str(cache), "--quiet", *extra]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.stderr.read().decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{errors[-3000:]}")
    fitted = json.loads(report.read_text())
    caches = {part: folder_bytes(cache / part) if (cache / part).is_dir() else 0 for part in ("images", "features", "precision")}
    return {
        "n": n, "strategy": strategy, "wall_seconds": wall, "seconds_per_image": wall / n,
        "fit_seconds": fitted["fit_seconds"], "peak_rss_mb": usage.ru_maxrss / 1024,
        "cache_bytes_per_image": sum(caches.values()) / n, "cache_bytes": caches,
        "image_size": fitted["settings"]["image_size"], "validation_accuracy": fitted.get("validation_accuracy"),
        "precision": fitted.get("precision", {}).get("chosen"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 50000], help="Numbers of images.")
    parser.add_argument("--strategies", nargs="+", default=["svm", "head"], help="svm, and a network strategy (1 epoch).")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--network-size", type=int, default=SIDE, help="Image size of the network strategy.")
    parser.add_argument("--root", type=Path, default=Path("runs/scale"), help="Where the folders, caches and models go.")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sorted(args.n):
        folder = write_synthetic_folder(args.root / "data", n)
        for strategy in args.strategies:
            extra = [] if strategy in ("svm", "logistic") else ["--epochs", "1", "--image-size", str(args.network_size)]
            row = run_fit(folder, strategy, n, args.root, args.backbone, extra)
            rows.append(row)
            print(f"{strategy} N={n}: {row['wall_seconds']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    smallest = {}
    for row in rows:
        base = smallest.setdefault(row["strategy"], row)
        row["per_image_ratio"] = row["seconds_per_image"] / base["seconds_per_image"]
    print(f"\n{'strategy':<9}{'N':>8}{'size':>6}{'wall s':>9}{'ms/img':>8}{'ratio':>7}{'peak RSS MB':>13}{'cache B/img':>13}{'val acc':>9}")
    for row in rows:
        print(f"{row['strategy']:<9}{row['n']:>8}{row['image_size']:>6}{row['wall_seconds']:>9.1f}"
              f"{1000 * row['seconds_per_image']:>8.1f}{row['per_image_ratio']:>7.2f}{row['peak_rss_mb']:>13.0f}"
              f"{row['cache_bytes_per_image']:>13.0f}{fmt(row['validation_accuracy'], 3):>9}")
    write_json(args.json, {"rows": rows, "strategies": args.strategies, "backbone": args.backbone})


if __name__ == "__main__":
    main()
