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
- learning curve: the audit's curve (the candidate ``fit`` would choose among frozen features,
  on every fold) measured on N = half the training images predicts the accuracy at 2N = all of
  them; checked against the candidate itself fitted on 2N and, with ``--default-fits`` (the JSON
  of ``benchmarks/auto_vs_baselines.py`` on the same training and test parts), against the test
  accuracy of a default ``fit`` on those 2N images.
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
from transferkit.audit.oof import audit_arena, curve_candidate, learning_curve_points, out_of_fold_probabilities  # noqa: E402
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


def curve_check(train_pixels, train_targets, test_pixels, test_targets, seed, default_fit: float | None) -> dict:
    """The audit's curve on a stratified half of the training part against a fit on all of it."""
    from sklearn.model_selection import train_test_split

    half, _ = train_test_split(np.arange(len(train_targets)), train_size=0.5, stratify=train_targets, random_state=seed)
    half = np.sort(half)
    arena = arena_of(np.asarray(train_pixels[half]), train_targets[half], seed)
    choice = curve_candidate(arena, None, seed=seed)
    sizes, accuracies, n_eval = learning_curve_points(arena, None, choice.candidate, seed=seed)
    n2 = len(train_targets)
    _, (predicted,) = predict_accuracy(sizes, accuracies, [n2], n_eval=n_eval, seed=seed)
    # the same candidate fitted on all 2N training images, scored on the test part, through the engine
    whole = arena_of(np.concatenate([train_pixels, test_pixels]), np.concatenate([train_targets, test_targets]), seed)
    from transferkit.selection.engine import score_candidate

    fold = (np.arange(n2), np.arange(n2, n2 + len(test_targets)))
    measured = score_candidate(whole, choice.candidate, fold).accuracy
    entry = {"N": len(half), "2N": n2, "candidate": choice.describe(), "curve_points": len(sizes),
             "predicted_at_2N": predicted.to_dict(), "candidate_at_2N": round(measured, 4),
             "error_vs_candidate": round(predicted.accuracy - measured, 4)}
    if default_fit is not None:
        entry.update(default_fit_at_2N=round(default_fit, 4), error_vs_default_fit=round(predicted.accuracy - default_fit, 4),
                     within_0_03=abs(predicted.accuracy - default_fit) <= 0.03)
    return entry


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
    parser.add_argument("--default-fits", default=None, help="auto_vs_baselines.py's JSON: the default fit's test accuracy per set")
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
        p_test, x_test = features_of(test, args.image_size, extractor)
        y_test = np.array([classes.index(label) for label in test.labels])
        entry = {"train": len(train), "test": len(test), "classes": len(classes)}
        if "labels" in args.parts:
            entry["label_issues"] = label_issue_check(p_train, y_train, args.noise, args.seed, args.cleanlab_python)
        if "curve" in args.parts:
            fits = json.loads(Path(args.default_fits).read_text())["sets"] if args.default_fits else {}
            default_fit = fits.get(name, {}).get("results", {}).get("auto", {}).get("accuracy")
            entry["curve"] = curve_check(p_train, y_train, p_test, y_test, args.seed, default_fit)
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
