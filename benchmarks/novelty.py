"""Does ``unknown`` flag images from other domains, and only those? (issue 31)

For each set: fit ``svm`` on its training images (``--image-size`` px), then score novelty on
its own test images and on test images of every other set (``--per-other`` of each), and print

- AUROC of novelty, own test (negative) vs other domains (positive): the bar is >= 0.95;
- with the calibrated threshold: the share of other-domain images flagged (bar >= 80 %) and of
  the set's own test images (bar <= 10 %; calibrated to 5 % of held-out training images);
- near novelty (reported, not barred): fit on the first half of the classes, then the AUROC and
  shares flagged between the test images of kept and of held-out classes;
- ``--onnx``: the exported model's flags on the same images, and how many differ;
- ``--network SETS``: the same for a ``finetune`` network (``--epochs``), whose threshold is
  calibrated on its validation split, next to what leave-one-out calibration on its training
  features would have flagged (the trained features pull training images together).

``--methods`` first compares candidate scores on the backbone's features of the same images
(fp32): cosine k-NN distance for k = 1, 5, 10, 50 and a per-class Mahalanobis distance
(Ledoit-Wolf shared covariance, on raw and on unit-length features), far and near; the score
transferkit uses (k = 1) was chosen from this table.

    python benchmarks/datasets.py --root runs/bench/data
    python benchmarks/novelty.py --root runs/bench/data --sets lfw digits animals spatial elpv --methods --onnx \\
        --json runs/bench/novelty.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from transferkit import ImageClassifier, load, save
from transferkit.data import ImageSet, resolve_data


def data_names(root: Path, name: str) -> tuple[str, str]:
    if name == "elpv":
        return "elpv:train", "elpv:test"
    return str(root / name / "train"), str(root / name / "test")


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def sample(images: ImageSet, n: int, seed: int = 0) -> ImageSet:
    if len(images) <= n:
        return images
    return images.subset(np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False)))


def fit_svm(train: ImageSet, size: int, out: Path) -> tuple[ImageClassifier, float]:
    if (out / "config.json").is_file():
        return load(out), 0.0
    started = time.perf_counter()
    classifier = ImageClassifier(strategy="svm", image_size=size).fit(train)
    seconds = time.perf_counter() - started
    save(classifier, out)
    return classifier, seconds


def far(name: str, sets: dict, args, out_root: Path) -> dict:
    train, test = sets[name]
    classifier, seconds = fit_svm(train, args.image_size, out_root / f"{name}-svm")
    _, own = classifier.predict_proba(test, return_novelty=True)
    others, flagged_by = [], {}
    scorer = classifier.novelty_
    for other in sets:
        if other == name:
            continue
        _, scores = classifier.predict_proba(sample(sets[other][1], args.per_other), return_novelty=True)
        others.append(scores)
        flagged_by[other] = round(float(scorer.unknown(scores).mean()), 3)
    outside = np.concatenate(others)
    row = {"set": name, "n_train": len(train), "n_test": len(test), "n_other": len(outside), "fit_seconds": round(seconds, 1),
           "threshold": scorer.threshold, "auroc": auroc(own, outside), "flagged_own": float(scorer.unknown(own).mean()),
           "flagged_other": float(scorer.unknown(outside).mean()), "flagged_by_set": flagged_by}
    if args.onnx:
        row["onnx"] = onnx_agreement(classifier, out_root / f"{name}-svm", [test, *[sample(sets[o][1], args.per_other) for o in sets if o != name]])
    return row


def onnx_agreement(classifier, model_dir: Path, parts: list) -> dict:
    from transferkit.export import OnnxClassifier, export_onnx

    path = export_onnx(model_dir, model_dir.with_suffix(".onnx")).path
    onnx_model = OnnxClassifier(path)
    differ, total, largest = 0, 0, 0.0
    for images in parts:
        _, torch_scores = classifier.predict_proba(images, return_novelty=True)
        _, onnx_scores = onnx_model.predict_proba(images, return_novelty=True)
        differ += int((classifier.novelty_.unknown(torch_scores) != onnx_model.novelty_.unknown(onnx_scores)).sum())
        total += len(images)
        largest = max(largest, float(np.abs(torch_scores - onnx_scores).max()))
    return {"images": total, "flags_differ": differ, "max_abs_novelty_difference": largest}


def near(name: str, sets: dict, args, out_root: Path) -> dict:
    train, test = sets[name]
    classes = sorted(set(train.labels))
    kept = classes[: max(1, len(classes) // 2)]
    keep_train = np.flatnonzero(np.isin(np.asarray(train.labels), kept))
    is_kept = np.isin(np.asarray(test.labels), kept)
    classifier, _ = fit_svm(train.subset(keep_train), args.image_size, out_root / f"{name}-half-svm")
    _, inside = classifier.predict_proba(test.subset(np.flatnonzero(is_kept)), return_novelty=True)
    _, outside = classifier.predict_proba(test.subset(np.flatnonzero(~is_kept)), return_novelty=True)
    scorer = classifier.novelty_
    return {"set": name, "kept_classes": kept, "auroc": auroc(inside, outside) if len(set(kept)) < len(classes) else None,
            "flagged_kept": float(scorer.unknown(inside).mean()), "flagged_held_out": float(scorer.unknown(outside).mean())}


def network(name: str, sets: dict, args, out_root: Path) -> dict:
    """finetune on the set: flagged shares with the validation-split threshold and with leave one out."""
    from transferkit.data import load_pixels, pixel_groups
    from transferkit.evaluation.novelty import fit_novelty
    from transferkit.training.runtime import resolve_runtime

    train, test = sets[name]
    folder = out_root / f"{name}-finetune"
    started = time.perf_counter()
    if (folder / "config.json").is_file():
        classifier = load(folder)
    else:
        classifier = ImageClassifier(strategy="finetune", image_size=args.image_size, epochs=args.epochs).fit(train)
        save(classifier, folder)
    seconds = time.perf_counter() - started
    pixels = load_pixels(train, args.image_size)
    features = classifier._outputs(pixels, resolve_runtime("cpu", "auto"))[1]
    leave_one_out = fit_novelty(features, pixel_groups(pixels))
    _, own = classifier.predict_proba(test, return_novelty=True)
    outside = np.concatenate([classifier.predict_proba(sample(sets[o][1], args.per_other), return_novelty=True)[1] for o in sets if o != name])
    scorer = classifier.novelty_
    return {"set": name, "fit_seconds": round(seconds, 1), "calibration": scorer.calibration["held_out"], "auroc": auroc(own, outside),
            "threshold": scorer.threshold, "flagged_own": float(scorer.unknown(own).mean()),
            "flagged_other": float(scorer.unknown(outside).mean()), "leave_one_out_threshold": leave_one_out.threshold,
            "leave_one_out_flagged_own": float(leave_one_out.unknown(own).mean()),
            "leave_one_out_flagged_other": float(leave_one_out.unknown(outside).mean())}


def methods(sets: dict, size: int, per_other: int) -> list[dict]:
    """Candidate scores on the backbone's fp32 features: AUROC far (other sets) and near (half the classes)."""
    from sklearn.covariance import LedoitWolf

    from transferkit import BottleneckFeatures

    extractor = BottleneckFeatures(image_size=size, precision="fp32").fit()
    features = {name: tuple((extractor.transform(part), np.asarray(part.labels)) for part in parts) for name, parts in sets.items()}

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def knn(reference, query, k):
        return 1 - -np.sort(-(unit(query) @ unit(reference).T), axis=1)[:, k - 1]

    def mahalanobis(reference, labels, query, on_unit):
        reference, query = (unit(reference), unit(query)) if on_unit else (reference, query)
        centres = np.stack([reference[labels == c].mean(0) for c in np.unique(labels)])
        precision = LedoitWolf().fit(reference - centres[np.searchsorted(np.unique(labels), labels)]).precision_
        return np.min(np.stack([np.einsum("nd,de,ne->n", query - m, precision, query - m) for m in centres], 1), 1)

    scores = {f"knn k={k}": (lambda r, y, q, k=k: knn(r, q, k)) for k in (1, 5, 10, 50)}
    scores["mahalanobis"] = lambda r, y, q: mahalanobis(r, y, q, False)
    scores["mahalanobis (unit)"] = lambda r, y, q: mahalanobis(r, y, q, True)
    rng = np.random.default_rng(0)
    rows = []
    for name, ((train, y_train), (test, y_test)) in features.items():
        other = np.concatenate([features[o][1][0][rng.permutation(len(features[o][1][0]))[:per_other]] for o in features if o != name])
        kept = np.unique(y_train)[: max(1, len(np.unique(y_train)) // 2)]
        in_train = np.isin(y_train, kept)
        in_test = np.isin(y_test, kept)
        row = {"set": name}
        for label, score in scores.items():
            row[f"{label} far"] = auroc(score(train, y_train, test), score(train, y_train, other))
            row[f"{label} near"] = auroc(score(train[in_train], y_train[in_train], test[in_test]),
                                         score(train[in_train], y_train[in_train], test[~in_test]))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/bench/data")
    parser.add_argument("--sets", nargs="+", default=["lfw", "digits", "animals", "spatial", "elpv"])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--per-other", type=int, default=100, help="test images taken from each other set")
    parser.add_argument("--models", default="runs/bench/novelty", help="where the fitted models go (reused when present)")
    parser.add_argument("--near", nargs="*", default=None, help="sets for the near-novelty fit (default: all of --sets)")
    parser.add_argument("--methods", action="store_true")
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--network", nargs="*", default=[], help="sets to fit a finetune network on as well")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-far", action="store_true", help="only --methods / --near / --network")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    root, out_root = Path(args.root), Path(args.models)
    sets = {name: tuple(resolve_data(part) for part in data_names(root, name)) for name in args.sets}
    report: dict = {"image_size": args.image_size, "per_other": args.per_other}
    if args.methods:
        report["methods"] = methods(sets, args.image_size, args.per_other)
        print("AUROC of candidate scores (far: other sets; near: held-out classes):")
        for row in report["methods"]:
            print(f"  {row['set']:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "set"), flush=True)
    report["far"] = []
    for name in [] if args.skip_far else args.sets:
        row = far(name, sets, args, out_root)
        report["far"].append(row)
        line = (f"{name:8s} AUROC {row['auroc']:.3f}; flagged: other domains {row['flagged_other']:.1%} (n={row['n_other']}), "
                f"own test {row['flagged_own']:.1%} (n={row['n_test']}); threshold {row['threshold']:.4f}; by set {row['flagged_by_set']}")
        if "onnx" in row:
            line += f"; ONNX flags differ on {row['onnx']['flags_differ']} of {row['onnx']['images']}"
        print(line, flush=True)
    report["near"] = []
    for name in args.sets if args.near is None else args.near:
        if len(set(sets[name][0].labels)) < 4:
            print(f"{name:8s} near: skipped (fewer than 4 classes: half of them would leave one)", flush=True)
            continue
        row = near(name, sets, args, out_root)
        report["near"].append(row)
        auc = "-" if row["auroc"] is None else f"{row['auroc']:.3f}"
        print(f"{name:8s} near (classes {', '.join(row['kept_classes'])} kept): AUROC {auc}; flagged held-out classes "
              f"{row['flagged_held_out']:.1%}, kept classes {row['flagged_kept']:.1%}", flush=True)
    report["network"] = []
    for name in args.network:
        row = network(name, sets, args, out_root)
        report["network"].append(row)
        print(f"{name:8s} finetune ({args.epochs} epochs): AUROC {row['auroc']:.3f}; validation-split threshold "
              f"{row['threshold']:.4f}: other domains {row['flagged_other']:.1%}, own test {row['flagged_own']:.1%}; "
              f"leave one out would be {row['leave_one_out_threshold']:.4f}: other {row['leave_one_out_flagged_other']:.1%}, "
              f"own {row['leave_one_out_flagged_own']:.1%}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
