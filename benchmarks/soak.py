"""Soak check (issue 14): concurrent ``fit``/``predict`` processes on one shared cache.

Four worker processes (two fitting, two predicting by default) loop for ``--seconds`` over
random subsets of a small synthetic data set at several image sizes, all through the command
line and all on one ``--cache-dir``, so that image and feature cache entries are written and
read concurrently. Afterwards every cache entry is verified (its checksum, and equal to a fresh
computation with the cache off), and every model folder written loads and predicts exactly as
a fresh, cache-free prediction does.

    python benchmarks/soak.py --seconds 180            # the issue's "few minutes"
    python benchmarks/soak.py --seconds 30 --workers 2  # a quick look

Exit status 0 when everything agrees; the report is printed (and written with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKBONE = "test_efficientnet"  # timm's 100k-parameter EfficientNet: the structure, not the cost
SIZES = (16, 24, 32)


def make_data(root: Path, n_per_class: int = 20) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            noise = rng.integers(-60, 60, size=(32, 32, 3))
            Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(root / label / f"{i:03d}.png")
    return root


def make_weights(path: Path) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(BACKBONE, num_classes=1000)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def worker(role: str, index: int, work: Path, until: float) -> None:
    """One process: fit (or predict) again and again until ``until``; log every run's exit code."""
    from transferkit.cli import app

    rng = np.random.default_rng(index)
    data, cache, weights = work / "data", work / "cache", work / "weights.safetensors"
    runs = []
    while time.time() < until:
        size = int(rng.choice(SIZES))
        model = work / "models" / f"m-{size}"  # shared: fits replace what predicts read
        if role == "fit":
            subset = work / f"subset-{index}.csv"
            files = sorted(data.rglob("*.png"))
            chosen = rng.choice(len(files), size=max(6, len(files) // 2), replace=False)
            subset.write_text("path,label\n" + "".join(f"{files[i]},{files[i].parent.name}\n" for i in sorted(chosen)))
            argv = ["fit", str(subset), "--out", str(model), "--strategy", str(rng.choice(["svm", "logistic"])), "--C", "1",
                    "--backbone", BACKBONE, "--weights", str(weights), "--image-size", str(size), "--device", "cpu",
                    "--precision", "fp32", "--cache-dir", str(cache), "--quiet"]
        else:
            if not (model / "config.json").exists():
                time.sleep(0.2)
                continue
            argv = ["predict", str(model), str(data), "--json", str(work / f"predict-{index}.json")]
        try:
            app(argv, standalone_mode=False)
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        except Exception as error:  # noqa: BLE001 - recorded: a soak failure, not a crash of the soak
            code = f"{type(error).__name__}: {error}"
        runs.append({"role": role, "argv": argv[:3], "size": size, "code": code})
    (work / f"runs-{index}.json").write_text(json.dumps(runs))


def verify(work: Path) -> dict:
    """Every cache entry and model folder against a fresh, cache-free computation."""
    from transferkit import load
    from transferkit.data import decode_images, resolve_data
    from transferkit.data.decode import pixels_digest
    from transferkit.strategies.features import FeatureExtractor, image_digests
    from transferkit.training.runtime import resolve_runtime

    cache = work / "cache"
    report = {"image_entries": 0, "feature_rows": 0, "models": 0, "problems": []}
    for meta_path in sorted((cache / "images").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        pixels = np.load(meta_path.with_suffix(".npy"), mmap_mode="r")
        if meta.get("sha256") != pixels_digest(pixels):
            report["problems"].append(f"image entry {meta_path.stem}: checksum differs")
        report["image_entries"] += 1
    runtime = resolve_runtime("cpu", "fp32")
    extractor = FeatureExtractor(BACKBONE, weights=str(work / "weights.safetensors"), runtime=runtime, cache_dir=False)
    images = resolve_data(str(work / "data"))
    for size in SIZES:
        pixels = decode_images(images, size, cache_dir=False).pixels
        cached = decode_images(images, size, cache_dir=cache).pixels  # hit or fresh: must be equal
        if not np.array_equal(np.asarray(cached), pixels):
            report["problems"].append(f"decoded pixels at {size} px differ from the cache")
        fresh = extractor.transform(pixels)
        shared = FeatureExtractor(BACKBONE, weights=str(work / "weights.safetensors"), runtime=runtime, cache_dir=str(cache))
        cache_rows = shared.cache_for(size)
        if cache_rows.missing(image_digests(pixels)):
            continue  # no worker reached this size for every image: nothing to compare
        if not np.allclose(shared.transform(pixels), fresh, rtol=1e-4, atol=1e-5):
            report["problems"].append(f"cached features at {size} px differ from a fresh computation")
        report["feature_rows"] += cache_rows.size
    for model_dir in sorted((work / "models").iterdir()):
        if model_dir.name.startswith("."):
            report["problems"].append(f"leftover {model_dir.name} beside the models")
            continue
        model = load(model_dir)
        with_cache = model.predict_proba(images)
        model.set_params(cache_dir=False)
        if not np.allclose(model.predict_proba(images), with_cache, rtol=1e-4, atol=1e-5):
            report["problems"].append(f"{model_dir.name}: predictions with the cache differ from fresh ones")
        report["models"] += 1
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--workers", type=int, default=4, help="half fit, half predict")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=4, metavar=("ROLE", "INDEX", "WORK", "UNTIL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        role, index, work, until = args.worker
        worker(role, int(index), Path(work), float(until))
        return 0

    with tempfile.TemporaryDirectory(prefix="transferkit-soak-") as folder:
        work = Path(folder)
        make_data(work / "data")
        make_weights(work / "weights.safetensors")
        (work / "models").mkdir()
        until = time.time() + args.seconds
        roles = ["fit" if i % 2 == 0 else "predict" for i in range(args.workers)]
        processes = [
            subprocess.Popen([sys.executable, __file__, "--worker", role, str(i), str(work), str(until)],
                             stdout=subprocess.DEVNULL)
            for i, role in enumerate(roles)
        ]
        for process in processes:
            process.wait()
        runs = [run for i in range(args.workers) for run in json.loads((work / f"runs-{i}.json").read_text())]
        report = verify(work)
        failed = [run for run in runs if run["code"] != 0]
        report.update(runs=len(runs), fits=sum(r["role"] == "fit" for r in runs), predicts=sum(r["role"] == "predict" for r in runs), failed_runs=failed[:10], seconds=args.seconds,
                      workers=args.workers, worker_exit_codes=[p.returncode for p in processes])
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        ok = not report["problems"] and not failed and not any(p.returncode for p in processes)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
