"""svm and head end to end on ELPV (fit on elpv:train, predict elpv:test), cold vs warm cache.

The cold run starts from an empty temporary cache folder (images decoded, features computed);
the warm run repeats the same fit and predict with the same folder. Both run in this process,
one after the other, so the cold run also pays the one-off start-up costs.

    python benchmarks/features_speed.py                                   # svm and head, 224 px
    python benchmarks/features_speed.py --subset 64 --image-size 64 --epochs 1   # smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from common import elpv_split, fmt, ratio, write_json
from transferkit import ImageClassifier


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", choices=["svm", "logistic", "head"], default=["svm", "head"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=None, help="head: epochs (default: ImageClassifier's)")
    parser.add_argument("--prefix-views", type=int, default=2,
                        help="head: augmented views computed once (through the shared feature cache); 0: plain loop")
    parser.add_argument("--subset", type=int, default=None, help="at most N train and N test images, stratified (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    train, test = elpv_split(args.subset, args.seed)
    print(f"data: {train.describe()}\n      {test.describe()}")
    results = {}
    for strategy in args.strategies:
        with tempfile.TemporaryDirectory(prefix="transferkit-cache-") as cache_dir:
            results[strategy] = {
                "cold": fit_and_predict(strategy, train, test, cache_dir, args),
                "warm": fit_and_predict(strategy, train, test, cache_dir, args),
            }
    print(f"\n{args.image_size} px, {len(train)} train / {len(test)} test images (seconds, fit + predict)")
    print(f"{'strategy':10} {'cold s':>8} {'warm s':>8} {'cold/warm':>10} {'warm fit s':>11} {'accuracy':>9}")
    for strategy, runs in results.items():
        cold, warm = runs["cold"], runs["warm"]
        print(
            f"{strategy:10} {fmt(cold['seconds']):>8} {fmt(warm['seconds']):>8} "
            f"{fmt(ratio(cold['seconds'], warm['seconds']), 2):>10} {fmt(warm['fit_seconds']):>11} {fmt(warm['test_accuracy'], 3):>9}"
        )
    write_json(args.json, {"settings": vars(args), "results": results})


def fit_and_predict(strategy: str, train, test, cache_dir: str, args: argparse.Namespace) -> dict:
    options = {}
    if strategy == "head":
        options = {"prefix_views": args.prefix_views, **({"epochs": args.epochs} if args.epochs else {})}
    clf = ImageClassifier(strategy=strategy, image_size=args.image_size, seed=args.seed, cache_dir=cache_dir, **options)
    started = time.perf_counter()
    clf.fit(train)
    fit_seconds = time.perf_counter() - started
    predicted = clf.predict(test)
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(predicted == np.asarray(test.labels)))
    return {"seconds": seconds, "fit_seconds": fit_seconds, "test_accuracy": accuracy}


if __name__ == "__main__":
    main()
