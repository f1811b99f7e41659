"""Issue 30's checks on cached features: label issues (ours vs cleanlab), the learning curve's
prediction at 2N, and suggest vs random picks.

Every part scores images with the audit's own model (``transferkit.audit.oof``: logistic
regression on frozen efficientnet_lite0 bottleneck features, C by inner CV, through the selection
engine), at ``--image-size``.

- label issues: ``--noise`` of the training labels moved to another class at random (seeded);
  out-of-fold probabilities -> :func:`transferkit.audit.find_label_issues`; the same labels and
  probabilities saved as .npy and given to ``cleanlab.filter.find_label_issues`` (default
  arguments, and ``filter_by="confident_learning"``) by ``--cleanlab-python`` (a separate venv:
  cleanlab is AGPL-3.0 and never imported here). Precision and recall against the moved labels.
- learning curve: the audit's curve measured on N training images predicts the accuracy at 2N;
  checked by fitting the same candidate on 2N images and scoring it on the set's test split.
- suggest: 100 random labelled images; add 100 chosen by :func:`rank_for_labelling` against
  100 random ones (3 draws); test accuracy of the refitted candidate.

    python benchmarks/small_data_loop.py --root /work/bench30/data --sets digits animals lfw \
        --cleanlab-python /work/venv-cl/bin/python --json runs/bench/small_data_loop.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import stratified_subset  # noqa: E402

from transferkit.audit import find_label_issues, predict_accuracy, rank_for_labelling  # noqa: E402
from transferkit.audit.oof import audit_arena, choose_C, learning_curve_points, out_of_fold_probabilities  # noqa: E402
from transferkit.data import ImageSet, decode_images, resolve_data  # noqa: E402
from transferkit.strategies.features import FeatureExtractor  # noqa: E402
from transferkit.strategies.linear import make_linear_pipeline  # noqa: E402
from transferkit.training.runtime import resolve_runtime  # noqa: E402

CLEANLAB = """
import json, sys, numpy as np
from cleanlab.filter import find_label_issues
labels, proba = np.load(sys.argv[1]), np.load(sys.argv[2])
out = {}
for name, kwargs in (("default", {}), ("confident_learning", {"filter_by": "confident_learning"})):
    out[name] = find_label_issues(labels, proba, return_indices_ranked_by="self_confidence", **kwargs).tolist()
print(json.dumps(out))
"""


def features_of(images: ImageSet, size: int, extractor: FeatureExtractor) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, bottleneck features) of ``images`` at ``size``."""
    pixels = decode_images(images, size, progress=False).pixels
    return pixels, extractor.transform(pixels)


def arena_of(pixels: np.ndarray, targets: np.ndarray, seed: int):
    """The audit's engine arena over ``pixels`` with ``targets`` (features cached by features_of)."""
    return audit_arena(pixels, targets, np.arange(int(targets.max()) + 1), params={"seed": seed, "device": "cpu", "precision": "fp32"},
                       runtime=resolve_runtime("cpu", "fp32"))


def precision_recall(found, truth: set) -> dict:
    found = set(int(i) for i in found)
    hits = len(found & truth)
    return {"found": len(found), "precision": round(hits / len(found), 3) if found else None, "recall": round(hits / len(truth), 3)}


def label_issue_check(pixels, targets, noise, seed, cleanlab_python) -> dict:
    rng = np.random.default_rng(seed)
    k = int(targets.max()) + 1
    moved = rng.choice(len(targets), int(round(noise * len(targets))), replace=False)
    noisy = targets.copy()
    noisy[moved] = (targets[moved] + rng.integers(1, k, len(moved))) % k
    oof = out_of_fold_probabilities(arena_of(pixels, noisy, seed), None, seed=seed)
    ours = find_label_issues(noisy, oof.proba)  # the default: prune by the noise rate
    off_diagonal = find_label_issues(noisy, oof.proba, method="confident_joint")
    result = {"n": len(targets), "moved": len(moved), "oof_accuracy_vs_true_labels": round(float((oof.proba.argmax(1) == targets).mean()), 3),
              "transferkit": precision_recall(ours.indices, set(moved.tolist())),
              "transferkit_confident_joint": precision_recall(off_diagonal.indices, set(moved.tolist()))}
    if cleanlab_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/labels.npy", noisy)
            np.save(f"{tmp}/proba.npy", oof.proba)
            output = subprocess.run([cleanlab_python, "-c", CLEANLAB, f"{tmp}/labels.npy", f"{tmp}/proba.npy"], check=True,
                                    capture_output=True, text=True).stdout
        for name, indices in json.loads(output).items():
            result[f"cleanlab_{name}"] = precision_recall(indices, set(moved.tolist()))
            if name == "confident_learning":  # the same rule on both sides: the same images?
                result["confident_joint_same_set_as_cleanlab"] = sorted(indices) == sorted(off_diagonal.indices.tolist())
            else:
                result["default_overlap_with_cleanlab_default"] = round(
                    len(set(indices) & set(ours.indices.tolist())) / max(1, len(set(indices) | set(ours.indices.tolist()))), 3)
    return result


def fit_score(features, targets, train, test, C, seed) -> float:
    pipeline = make_linear_pipeline("logistic", C, seed).fit(features[train], targets[train])
    return float((pipeline.predict(features[test]) == targets[test]).mean())


def curve_check(train_pixels, train_features, train_targets, test_features, test_targets, n, seed) -> dict:
    rng = np.random.default_rng(seed)
    first = rng.choice(len(train_targets), n, replace=False)
    both = np.concatenate([first, rng.choice(np.setdiff1d(np.arange(len(train_targets)), first), n, replace=False)])
    arena = arena_of(np.asarray(train_pixels[np.sort(first)]), train_targets[np.sort(first)], seed)
    C = choose_C(arena, np.arange(n), None)
    sizes, accuracies, n_eval = learning_curve_points(arena, None, C=C, seed=seed)
    _, (predicted,) = predict_accuracy(sizes, accuracies, [2 * n], n_eval=n_eval, seed=seed)
    features = np.concatenate([train_features, test_features])
    targets = np.concatenate([train_targets, test_targets])
    test = np.arange(len(train_targets), len(targets))
    C2 = choose_C(arena_of(np.asarray(train_pixels[np.sort(both)]), train_targets[np.sort(both)], seed), np.arange(2 * n), None)
    measured = fit_score(features, targets, both, test, C2, seed)
    return {"N": n, "curve_points": len(sizes), "predicted_at_2N": predicted.to_dict(), "measured_at_2N": round(measured, 4),
            "error": round(predicted.accuracy - measured, 4), "within_0.03": abs(predicted.accuracy - measured) <= 0.03}


def suggest_check(train_features, train_targets, test_features, test_targets, seed, start=100, add=100) -> dict:
    rng = np.random.default_rng(seed)
    features = np.concatenate([train_features, test_features])
    targets = np.concatenate([train_targets, test_targets])
    test = np.arange(len(train_targets), len(targets))
    labelled = rng.choice(len(train_targets), start, replace=False)
    pool = np.setdiff1d(np.arange(len(train_targets)), labelled)
    C = 0.01  # fixed: 100 images give no stable inner CV, and both arms must differ only in their picks
    pipeline = make_linear_pipeline("logistic", C, seed).fit(features[labelled], targets[labelled])
    proba = np.zeros((len(pool), int(targets.max()) + 1))
    proba[:, pipeline.classes_] = pipeline.predict_proba(features[pool])
    order, _ = rank_for_labelling(features[pool], proba, features[labelled], add, seed=seed)
    chosen = fit_score(features, targets, np.concatenate([labelled, pool[order]]), test, C, seed)
    uncertain = pool[np.argsort(-(1 - np.sort(proba, 1)[:, -1] + np.sort(proba, 1)[:, -2]))[:add]]
    margin = fit_score(features, targets, np.concatenate([labelled, uncertain]), test, C, seed)
    randoms = [fit_score(features, targets, np.concatenate([labelled, np.random.default_rng(seed + 1 + r).choice(pool, add, replace=False)]),
                         test, C, seed) for r in range(3)]
    return {"start": fit_score(features, targets, labelled, test, C, seed), "suggest": round(chosen, 4),
            "margin_only": round(margin, 4), "random_mean_of_3": round(float(np.mean(randoms)), 4),
            "gain_over_random": round(chosen - float(np.mean(randoms)), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="datasets.py's folder (elpv is read from the elpv-dataset package)")
    parser.add_argument("--sets", nargs="+", default=["digits", "animals", "lfw"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cleanlab-python", default=None)
    parser.add_argument("--parts", nargs="+", default=["labels", "curve", "suggest"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    extractor = FeatureExtractor("efficientnet_lite0", runtime=resolve_runtime("cpu", "fp32"))
    report = {"image_size": args.image_size, "noise": args.noise, "sets": {}}
    for name in args.sets:
        started = time.perf_counter()
        train_data, test_data = ("elpv:train", "elpv:test") if name == "elpv" else (f"{args.root}/{name}/train", f"{args.root}/{name}/test")
        train = stratified_subset(resolve_data(train_data), args.max_train, args.seed)
        test = resolve_data(test_data)
        classes = list(train.classes)
        (p_train, x_train), y_train = features_of(train, args.image_size, extractor), train.targets()
        _, x_test = features_of(test, args.image_size, extractor)
        y_test = np.array([classes.index(label) for label in test.labels])
        entry = {"train": len(train), "test": len(test), "classes": len(classes)}
        if "labels" in args.parts:
            entry["label_issues"] = label_issue_check(p_train, y_train, args.noise, args.seed, args.cleanlab_python)
        if "curve" in args.parts:
            entry["curve"] = curve_check(p_train, x_train, y_train, x_test, y_test, len(train) // 2, args.seed)
        if "suggest" in args.parts and len(train) >= 300:
            entry["suggest"] = suggest_check(x_train, y_train, x_test, y_test, args.seed)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["sets"][name] = entry
        print(name, json.dumps(entry), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
