"""Does the advice match the measured winner? `advise` vs `compare` on data sets of different kinds.

For each data set: the advisor's recommendation (one forward pass) and then a `compare` of
the strategies under the same folds; prints both and whether they agree. The data sets:

- ``photos``: a few hundred crops of natural photos (scikit-image's chelsea, astronaut,
  coffee, rocket; the class is the photo), near ImageNet;
- ``digits``: scikit-learn's 1,797 8x8 grayscale handwritten digits, upsampled — small
  grayscale images far from ImageNet;
- ``elpv``: the shipped solar-cell data (training part of the paper split), only with
  ``--elpv`` (its compare takes most of an hour on 2 cores).

Usage::

    .venv/bin/python benchmarks/advise_check.py --json runs/bench/advise.json [--elpv]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from common import write_json
from transferkit.advise import advise
from transferkit.data import resolve_data
from transferkit.selection.compare import compare_strategies


def natural_photos(n: int, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` random square crops of four photos, labelled by the photo."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = {"cat": skimage.data.chelsea(), "astronaut": skimage.data.astronaut(),
              "coffee": skimage.data.coffee(), "rocket": skimage.data.rocket()}  # fmt: skip
    crops, labels = [], []
    for i in range(n):
        label = list(photos)[i % len(photos)]
        photo = photos[label]
        height, width = photo.shape[:2]
        side = int(rng.integers(min(height, width) // 4, min(height, width) // 2 + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crops.append(np.asarray(Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)))
        labels.append(label)
    return np.stack(crops), labels


def digits(size: int) -> tuple[np.ndarray, list[str]]:
    """scikit-learn's digits, 8x8 gray, upsampled to ``size`` (uint8, 3 equal channels)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16 * 255).astype(np.uint8)
    resized = np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)) for image in images])
    return resized, [str(t) for t in data.target]


def check(name: str, images, cv: int, overrides: dict, strategies: list[str]) -> dict:
    started = time.perf_counter()
    advice = advise(images, max_images=512)
    rec = advice.recommendation
    print(f"\n== {name}: {len(images)} images, {len(images.classes)} classes; advise took {advice.seconds:.0f} s")
    print(f"advice: {rec.strategy} (freeze {rec.freeze}, image size {rec.image_size}, lr {rec.lr})")
    for reason in rec.reasons:
        print(f"  - {reason}")
    comparison = compare_strategies(images, strategies, cv=cv, overrides=overrides,
                                    on_fold=lambda s, f: print(f"  {s} fold {f.fold}: {f.accuracy:.3f} ({f.fit_seconds:.0f} s)"))  # fmt: skip
    for result in comparison.results:
        print(f"  {result.strategy:9s} {result.mean:.4f} ± {result.std:.4f}  {result.to_dict()['fit_seconds']:.0f} s")
    best = comparison.best.strategy
    ranked = [r.strategy for r in sorted(comparison.results, key=lambda r: r.mean, reverse=True)]
    advised_rank = ranked.index(rec.strategy) + 1 if rec.strategy in ranked else None
    print(f"compare winner: {best}; advised {rec.strategy} ranks {advised_rank} of {len(ranked)}")
    return {
        "data": name, "n": len(images), "advice": advice.to_dict(), "compare": comparison.to_dict(),
        "winner": best, "advised": rec.strategy, "advised_rank": advised_rank, "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--elpv", action="store_true", help="also elpv:train (long)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    all_strategies = ["svm", "head", "finetune", "full", "scratch"]
    pixels, labels = natural_photos(300, 96, args.seed)
    report = [check("photos", resolve_data(pixels, labels), args.cv, {"image_size": 96, "epochs": 4}, all_strategies)]
    pixels, labels = digits(32)
    report.append(check("digits", resolve_data(pixels, labels), args.cv, {"image_size": 32, "epochs": 6}, all_strategies))
    if args.elpv:
        report.append(check("elpv:train", resolve_data("elpv:train"), args.cv, {}, all_strategies))
    print("\ndata       advised    compare winner  advised rank")
    for row in report:
        print(f"{row['data']:10s} {row['advised']:10s} {row['winner']:15s} {row['advised_rank']}")
    write_json(args.json, {"results": report})


if __name__ == "__main__":
    main()
