"""ONNX Runtime vs PyTorch inference on ELPV test images: images/s and accuracy, fp32 and int8.

The model is a fitted model folder (fit it once, cheaply):

    transferkit fit elpv:train --strategy svm --image-size 128 --out runs/onnx_model
    python benchmarks/onnx_speed.py --model runs/onnx_model --json runs/bench/onnx.json

It exports the model to ONNX (checked against PyTorch's logits), quantises it to int8
(dynamic, and static calibrated on training images), then times each on the same decoded
test pixels (decoding is excluded; one warm-up batch each) on this CPU, with PyTorch and
onnxruntime both at their default thread counts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import fmt, ratio, stratified_subset, write_json
from transferkit.data import decode_images, resolve_data
from transferkit.export.onnx import export_onnx, torch_logits
from transferkit.export.quantize import CALIBRATION_IMAGES, measure_onnx, quantize_onnx
from transferkit.persistence import load_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder written by `transferkit fit --out`")
    parser.add_argument("--data", default="elpv:test", help="labelled test images")
    parser.add_argument("--calibration", default="elpv:train", help="static int8: calibration images (a stratified sample)")
    parser.add_argument("--subset", type=int, default=None, help="at most N test images, stratified (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    classifier = load_model(args.model)
    size = classifier.image_size_
    test = stratified_subset(resolve_data(args.data), args.subset, 0)
    pixels = decode_images(test, size, progress=False).pixels
    labels = np.asarray(test.labels).astype(str)
    calibration = stratified_subset(resolve_data(args.calibration), CALIBRATION_IMAGES, 0)
    calibration_pixels = decode_images(calibration, size, progress=False).pixels
    print(f"model {args.model} ({classifier.settings_.get('strategy')}, {size} px); {len(pixels)} test images; "
          f"torch threads {torch.get_num_threads()}")

    results = {"pytorch fp32": measure_torch(classifier, pixels, labels, args.batch_size)}
    reference = classifier.classes_[torch_logits(classifier, pixels).argmax(axis=1)]
    with tempfile.TemporaryDirectory(prefix="transferkit-onnx-") as folder:
        fp32 = Path(folder) / "model.onnx"
        export = export_onnx(classifier, fp32, check_images=pixels)
        print(f"exported in {export.seconds:.1f} s; max |logit difference| vs PyTorch on {export.checked_images} images: {export.max_abs_diff:.2e}")
        files = {"onnxruntime fp32": fp32}
        for mode in ("dynamic", "static"):
            files[f"onnxruntime int8 {mode}"] = quantize_onnx(fp32, Path(folder) / f"model.int8.{mode}.onnx", mode,
                                                              calibration=calibration_pixels)
        for name, path in files.items():
            measurement, _ = measure_onnx(path, pixels, labels, name=name, reference=reference, batch_size=args.batch_size)
            results[name] = measurement.to_dict()

    base = results["pytorch fp32"]["images_per_second"]
    print(f"\n{'runtime':26} {'images/s':>9} {'vs torch':>9} {'accuracy':>9} {'agrees':>7} {'MB':>6}")
    for name, result in results.items():
        result["speedup_vs_pytorch"] = ratio(result["images_per_second"], base)
        agreement = result.get("agreement")
        print(f"{name:26} {fmt(result['images_per_second']):>9} {fmt(result['speedup_vs_pytorch'], 2):>8}x "
              f"{fmt(result['accuracy'], 4):>9} {fmt(agreement, 3):>7} {fmt(result.get('size_mb'), 1):>6}")
    write_json(args.json, {"model": args.model, "data": args.data, "image_size": size, "n": len(pixels),
                           "max_abs_diff": export.max_abs_diff, "results": results})


def measure_torch(classifier, pixels: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
    """PyTorch fp32 on the CPU through transferkit's own inference path (channels_last)."""
    from transferkit.training.inputs import predict_logits
    from transferkit.training.runtime import resolve_runtime

    runtime = resolve_runtime("cpu", "fp32")
    model = runtime.prepare_model(classifier.model_.float())
    predict_logits(model, pixels[:batch_size], classifier.preprocessing_, runtime, batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    logits = predict_logits(model, pixels, classifier.preprocessing_, runtime, batch_size=batch_size)
    seconds = time.perf_counter() - started
    predicted = classifier.classes_[logits.argmax(dim=1).numpy()]
    return {"name": "pytorch fp32", "accuracy": float(np.mean(predicted == labels)),
            "images_per_second": round(len(pixels) / seconds, 1), "size_mb": None, "agreement": 1.0}


if __name__ == "__main__":
    main()
