"""Inference precision on ELPV: fp32 against bf16, and what transferkit's measurement chooses.

For each precision, the frozen backbone's bottleneck features of ``elpv:train`` and
``elpv:test`` are computed without a cache (images/s timed after one warm batch, both
precisions in this run, on this machine), a linear SVM (C by inner CV, as ``fit --strategy
svm``) is fitted on the train features and scored on the test features: accuracy, balanced
accuracy, binary (p > 0.5) accuracy, and how many test predictions and how far the features
agree with fp32's.

Then the choice: what ``precision="auto"`` resolves to on this CPU (bf16 only where the CPU
runs it natively), and what a fit's judgement (:func:`settle_feature_precision`: a classifier's
predictions from bf16 and fp32 features of a labelled sample of the training images, agreement
and accuracy within the noise) chooses when bf16 is on offer (the path a bf16-native CPU takes;
here it is offered whatever the CPU, to show the verdict on this machine).

    python benchmarks/precision_check.py                          # ELPV at 128 px (the issue's size)
    python benchmarks/precision_check.py --subset 64 --image-size 64  # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from common import elpv_split, fmt, ratio, write_json
from transferkit.data import load_pixels, pixel_groups
from transferkit.data.builtin import binary_metrics_if_builtin
from transferkit.strategies.features import FeatureExtractor
from transferkit.strategies.linear import fit_linear_classifier, settle_feature_precision
from transferkit.training.runtime import resolve_runtime

PRECISIONS = ("fp32", "bf16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--subset", type=int, default=None, help="at most N train and N test images, stratified (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def features_and_speed(extractor: FeatureExtractor, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Features of ``pixels`` (no cache) and the images/s after one warm batch."""
    extractor.transform(pixels[: extractor.batch_size])  # warm: oneDNN picks and caches its kernels
    started = time.perf_counter()
    features = extractor.transform(pixels)
    return features, len(pixels) / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    train, test = elpv_split(args.subset, args.seed)
    print(f"data: {train.describe()}\n      {test.describe()}")
    train_pixels, test_pixels = (load_pixels(part, args.image_size) for part in (train, test))
    train_targets = np.searchsorted(train.classes, train.labels)
    groups = pixel_groups(train_pixels)
    rows, outputs = {}, {}
    for precision in PRECISIONS:
        extractor = FeatureExtractor(args.backbone, runtime=resolve_runtime("cpu", precision), cache_dir=False)
        features, speed = features_and_speed(extractor, np.concatenate([train_pixels, test_pixels]))
        train_features, test_features = features[: len(train_pixels)], features[len(train_pixels):]
        pipeline, info = fit_linear_classifier(train_features, train_targets, groups, strategy="svm", C=None, seed=args.seed)
        predictions = [train.classes[i] for i in pipeline.predict(test_features)]
        correct = np.array(predictions) == np.array(test.labels)
        balanced = np.mean([correct[np.array(test.labels) == c].mean() for c in sorted(set(test.labels))])
        binary = binary_metrics_if_builtin("elpv:test", test.labels, predictions)
        outputs[precision] = (features, predictions)
        rows[precision] = {"images_per_second": speed, "accuracy": float(correct.mean()), "balanced_accuracy": float(balanced),
                           "binary_accuracy": binary.get("binary_accuracy"), "C": info["C"]}
        print(f"{precision}: {speed:.1f} images/s, test accuracy {correct.mean():.4f}, balanced {balanced:.4f}, "
              f"binary {fmt(binary.get('binary_accuracy'), 4)} (C={info['C']:g})", flush=True)
    fp32_features, fp32_predictions = outputs["fp32"]
    for precision in PRECISIONS[1:]:
        features, predictions = outputs[precision]
        error = np.linalg.norm(features - fp32_features, axis=1) / np.maximum(np.linalg.norm(fp32_features, axis=1), 1e-12)
        rows[precision]["prediction_agreement_with_fp32"] = float(np.mean(np.array(predictions) == np.array(fp32_predictions)))
        rows[precision]["feature_relative_error"] = {"median": float(np.median(error)), "max": float(error.max())}
        rows[precision]["speed_ratio_to_fp32"] = ratio(rows[precision]["images_per_second"], rows["fp32"]["images_per_second"])

    auto = resolve_runtime("cpu", "auto")
    offered = dataclasses.replace(resolve_runtime("cpu", "fp32"), precision="bf16", auto_precision=True)
    # the fit's judgement: a stratified sample of the training images, a classifier's predictions from both precisions
    verdict = settle_feature_precision(offered, {"backbone": args.backbone, "weights": None, "cache_dir": False}, train_pixels,
                                       train_targets, seed=args.seed).feature_verdict
    choice = {"auto_on_this_cpu": auto.precision, "auto_reason": auto.precision_reason,
              "measured_choice": verdict["precision"], "measured_reason": verdict["why"], "measured": verdict["measured"]}
    print(f"\n{'precision':<10}{'img/s':>8}{'ratio':>7}{'accuracy':>10}{'balanced':>10}{'binary':>8}{'agree':>7}{'feat err max':>14}")
    for precision, row in rows.items():
        print(f"{precision:<10}{row['images_per_second']:>8.1f}{fmt(row.get('speed_ratio_to_fp32'), 2):>7}{row['accuracy']:>10.4f}"
              f"{row['balanced_accuracy']:>10.4f}{fmt(row['binary_accuracy'], 4):>8}"
              f"{fmt(row.get('prediction_agreement_with_fp32'), 3):>7}"
              f"{fmt((row.get('feature_relative_error') or {}).get('max'), 4):>14}")
    print(f"\nprecision=auto on this CPU: {auto.precision} ({auto.precision_reason})")
    print(f"measured choice when bf16 is offered: {verdict['precision']} ({verdict['why']})")
    write_json(args.json, {"image_size": args.image_size, "backbone": args.backbone, "rows": rows, "choice": choice,
                           "n_train": len(train_pixels), "n_test": len(test_pixels)})


if __name__ == "__main__":
    main()
