"""Textbook PyTorch loop vs transferkit on the same images, split, epochs and strategy, in one run.

Both sides read the same PNG files (ELPV exported as image folders into a temporary folder),
each in a fresh process so that its peak memory is its own. Prints one table with the ratios
transferkit / textbook, plus the training GFLOP/s achieved against the machine's peak.

    python benchmarks/compare_textbook.py --data elpv --epochs 3 --image-size 224 --freeze 3
    python benchmarks/compare_textbook.py --freeze 5 --textbook-freeze 0 --prefix-views 3   # tutorial vs tk
    python benchmarks/compare_textbook.py --subset 64 --epochs 1 --image-size 64   # smoke test
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import elpv_split, fmt, peak_rss_mb, ratio, write_json
from textbook import run_textbook
from transferkit import ImageClassifier
from transferkit.backbones import create_backbone
from transferkit.data import export_image_folders, resolve_data
from transferkit.strategies.network import configure_network


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["elpv"], default="elpv", help="built-in data set (its paper train/test split)")
    parser.add_argument("--strategy", choices=["finetune", "head", "full"], default="finetune")
    parser.add_argument("--freeze", type=int, default=3, help="finetune: stem + first N stages frozen")
    parser.add_argument("--textbook-freeze", type=int, default=None,
                        help="finetune: the textbook's frozen stages when not --freeze (0: the tutorial's "
                             "'fine-tune the whole network'); the strategy and everything else stay the same")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="head lr; pretrained layers train at lr x 0.1")
    parser.add_argument("--num-workers", type=int, default=2, help="textbook DataLoader workers")
    parser.add_argument("--target", type=float, default=0.7, help="test accuracy for 'time to target'")
    parser.add_argument("--subset", type=int, default=None, help="at most N train and N test images, stratified (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix-views", type=int, default=0,
                        help="transferkit: frozen-prefix cache with this many augmented views (0: plain loop)")
    parser.add_argument("--flops-per-cycle", type=int, default=32, help="per core, fp32: 32 = AVX2, 2 FMA units x 8 lanes x 2")
    parser.add_argument("--json", default=None, help="also write the report here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-") as work:
        train, test = elpv_split(args.subset, args.seed)
        train_dir = str(export_image_folders(train, Path(work, "train")))
        test_dir = str(export_image_folders(test, Path(work, "test")))
        print(f"data: {train.describe()}\n      {test.describe()}\n      exported to {work}")
        flops = {
            side: training_flops(args.strategy, freeze, args.image_size, len(train.classes))
            for side, freeze in (("textbook", textbook_freeze(args)), ("transferkit", args.freeze))
        }
        textbook = run_isolated(textbook_side, train_dir, test_dir, args)
        # A fresh image cache: transferkit's decoding is timed cold, like the textbook's.
        ours = run_isolated(transferkit_side, train_dir, test_dir, args, str(Path(work, "cache")))
    peak = machine_peak_gflops(args.flops_per_cycle)
    for name, side in (("textbook", textbook), ("transferkit", ours)):
        side["time_to_target_seconds"] = time_to_target(side, args.target)
        side["train_gflops_per_second"] = flops[name]["train_flops_per_image"] * side["train_images_per_second"] / 1e9
    report = {"settings": vars(args), "flops": flops, "machine_peak": peak, "textbook": textbook, "transferkit": ours}
    print_table(report)
    write_json(args.json, report)


def run_isolated(function, *args):
    """Run ``function(*args)`` in a fresh process (spawned, not forked) and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_as_plain_process, function, *args).result()


def _as_plain_process(function, *args):
    # A spawned child inherits "spawn" as its start method, so its DataLoader workers would
    # re-import everything; a user's script starts them the platform's default way (fork on Linux).
    multiprocessing.set_start_method(None, force=True)
    return function(*args)


def textbook_freeze(args: argparse.Namespace) -> int:
    return args.freeze if args.textbook_freeze is None else args.textbook_freeze


def textbook_side(train_dir: str, test_dir: str, args: argparse.Namespace) -> dict:
    freeze = {"finetune": textbook_freeze(args), "head": None, "full": 0}[args.strategy]
    result = run_textbook(
        train_dir, test_dir, epochs=args.epochs, image_size=args.image_size, freeze_stages=freeze,
        batch_size=args.batch_size, lr=args.lr, num_workers=args.num_workers, seed=args.seed,
    )
    return result | peak_rss_mb()


def transferkit_side(train_dir: str, test_dir: str, args: argparse.Namespace, cache_dir: str) -> dict:
    clf = ImageClassifier(
        strategy=args.strategy, freeze=args.freeze if args.strategy == "finetune" else None, epochs=args.epochs,
        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, val_fraction=0, seed=args.seed,
        cache_dir=cache_dir, prefix_views=args.prefix_views, verbose=True,
    )
    started = time.perf_counter()
    clf.fit(train_dir)  # end to end: listing, decoding, model, training
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    predicted = clf.predict(test_dir)  # decoding included (cold cache)
    predict_seconds = time.perf_counter() - started
    epochs = clf.history_["history"]
    seconds = [record["seconds"] for record in epochs]
    seen = sum(record["images_per_second"] * record["seconds"] for record in epochs)
    accuracy = float(np.mean(predicted == np.asarray(resolve_data(test_dir).labels)))
    return {
        "train_images": clf.n_train_,
        "test_images": len(predicted),
        "epoch_seconds": seconds,
        # The frozen-prefix cache is training work: its time counts (it is 0 without prefix_views).
        "train_images_per_second": seen / (sum(seconds) + clf.history_.get("prefix_seconds", 0.0)),
        "suffix_images_per_second": seen / sum(seconds),
        "prefix_seconds": clf.history_.get("prefix_seconds", 0.0),
        "inference_images_per_second": len(predicted) / predict_seconds,
        "fit_seconds": fit_seconds,
        "total_seconds": fit_seconds + predict_seconds,
        "test_accuracy": accuracy,
        # ImageClassifier has no per-epoch hook, so only the final model is scored on the test set.
        "curve": [{"epoch": len(epochs), "seconds": fit_seconds, "test_accuracy": accuracy}],
    } | peak_rss_mb()


def time_to_target(side: dict, target: float) -> float | None:
    """Seconds (test evaluation excluded) at the end of the first scored epoch reaching ``target``."""
    return next((point["seconds"] for point in side["curve"] if point["test_accuracy"] >= target), None)


def training_flops(strategy: str, freeze: int, image_size: int, num_classes: int) -> dict:
    """FLOPs per image of one forward, and (approximately) of one training step.

    The forward is counted by FlopCounterMode (convolutions and matrix products only, not
    BatchNorm, activations or the optimiser, so it slightly undercounts). The training step
    is approximated as 1x the forward of frozen layers (they lead, so need no backward) plus
    3x the forward of trainable layers (forward, input gradient, weight gradient). Counting
    the backward directly is no option: torch's formula for convolution_backward ignores
    groups and overcounts depthwise convolutions ~30x. Each side is counted with its own freeze.
    """
    model, _ = create_backbone("efficientnet_lite0", num_classes=num_classes, pretrained=False)
    configure_network(model, strategy, freeze_stages=freeze if strategy == "finetune" else None, backbone_lr_factor=0.1)
    images = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(images)
    per_module = counter.get_flop_counts()
    forward = train = 0.0
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # leaves only, so that nothing is counted twice
        flops = sum(per_module.get(f"{type(model).__name__}.{name}", {}).values()) / len(images)
        forward += flops
        train += flops * (3 if any(p.requires_grad for p in module.parameters()) else 1)
    return {"forward_flops_per_image": forward, "train_flops_per_image": train}


def machine_peak_gflops(flops_per_cycle: int) -> dict:
    """cores x GHz x FLOPs per cycle; GHz from lscpu's max MHz, else /proc/cpuinfo's current MHz."""
    cores = os.cpu_count() or 1
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if _has("lscpu") else ""
    mhz = _field(lscpu, "CPU max MHz") or _field(Path("/proc/cpuinfo").read_text(), "cpu MHz")
    ghz = float(mhz) / 1000 if mhz else float("nan")
    peak = cores * ghz * flops_per_cycle
    assumption = f"{cores} cores x {ghz:.2f} GHz x {flops_per_cycle} FLOP/cycle (fp32 FMA) = {peak:.1f} GFLOP/s"
    return {"cores": cores, "ghz": ghz, "flops_per_cycle": flops_per_cycle, "gflops_per_second": peak, "assumption": assumption}


def _has(command: str) -> bool:
    return any(Path(folder, command).exists() for folder in os.environ.get("PATH", "").split(os.pathsep))


def _field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name and value.strip():
            return value.strip()
    return None


def print_table(report: dict) -> None:
    textbook, ours, peak = report["textbook"], report["transferkit"], report["machine_peak"]
    settings = report["settings"]
    rows = [
        ("train images/s", "train_images_per_second", 1),
        ("inference images/s", "inference_images_per_second", 1),
        ("total wall time s (fit + predict)", "total_seconds", 1),
        (f"time to test accuracy {settings['target']:.2f} s", "time_to_target_seconds", 1),
        ("peak memory MB (main process)", "peak_rss_mb", 0),
        ("final test accuracy", "test_accuracy", 3),
        ("train GFLOP/s achieved", "train_gflops_per_second", 1),
    ]
    freezes = f"freeze {settings['freeze']}"
    if settings["textbook_freeze"] not in (None, settings["freeze"]):
        freezes = f"textbook freeze {settings['textbook_freeze']}, transferkit freeze {settings['freeze']}"
    print(
        f"\n{settings['strategy']} ({freezes}), {settings['epochs']} epochs, "
        f"{settings['image_size']} px, batch {settings['batch_size']}, {textbook['train_images']} train / "
        f"{textbook['test_images']} test images, {torch.get_num_threads()} threads"
    )
    print(f"{'':38} {'textbook':>10} {'transferkit':>12} {'ratio tk/tb':>12}")
    for label, key, digits in rows:
        print(f"{label:38} {fmt(textbook[key], digits):>10} {fmt(ours[key], digits):>12} {fmt(ratio(ours[key], textbook[key]), 2):>12}")
    for name, flops in report["flops"].items():
        print(
            f"\n{name} FLOPs per image (conv + matmul): forward {flops['forward_flops_per_image'] / 1e9:.3f} G (counted), "
            f"training step ~{flops['train_flops_per_image'] / 1e9:.3f} G (frozen layers x1 + trainable x3)"
        )
    print(f"machine peak (assumed): {peak['assumption']}")
    for name, side in (("textbook", textbook), ("transferkit", ours)):
        share = ratio(side["train_gflops_per_second"], peak["gflops_per_second"])
        print(f"  {name}: {fmt(side['train_gflops_per_second'])} GFLOP/s in training = {fmt(100 * share if share else None)} % of peak")
    print(
        "time to target: wall time from the start (data, model, training) to the end of the first epoch\n"
        "  whose model reaches the target on the test set, test evaluation excluded. The textbook is scored\n"
        "  after every epoch; transferkit only after fit (no per-epoch hook), so its time is an upper bound.\n"
        "train images/s: textbook includes decoding in DataLoader workers (as the tutorial does each epoch);\n"
        "  transferkit decodes once before training (in its total wall time, not in its train images/s);\n"
        "  its train images/s includes the time to compute the frozen-prefix cache (prefix_views)."
    )


if __name__ == "__main__":
    main()
