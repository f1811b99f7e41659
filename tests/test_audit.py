"""The small-data loop (issue 30): confident learning, the power law, outliers, the suggest ranking on
synthetic arrays; `audit` and `suggest` end to end on the tiny backbone, and their hostile input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_BACKBONE, write_image_folder
from fitted_models import fit_tiny_model
from transferkit.audit import (
    find_label_issues, find_outliers, fit_power_law, margin_uncertainty, power_law, predict_accuracy, rank_for_labelling,
)
from transferkit.audit.label_issues import class_thresholds, confident_classes
from transferkit.cli import app
from transferkit.errors import DataError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- confident learning
def noisy_problem(n=600, k=3, flip=0.1, seed=0):
    """Probabilities of a decent classifier of the *true* classes, and labels with ``flip`` of them moved."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), truth] += 3.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = truth.copy()
    moved = rng.choice(n, int(flip * n), replace=False)
    labels[moved] = (truth[moved] + rng.integers(1, k, len(moved))) % k
    return labels, proba, set(moved.tolist())


def test_confident_learning_finds_moved_labels():
    labels, proba, moved = noisy_problem()
    issues = find_label_issues(labels, proba)
    found = set(issues.indices.tolist())
    precision, recall = len(found & moved) / len(found), len(found & moved) / len(moved)
    assert precision > 0.7 and recall > 0.7, (precision, recall)
    self_confidence = proba[issues.indices, labels[issues.indices]]
    assert np.all(np.diff(self_confidence) >= 0)  # least confident first
    assert np.allclose(issues.scores, 1 - self_confidence)
    assert np.all(issues.suggested != labels[issues.indices])


def test_thresholds_are_each_classes_mean_self_confidence():
    labels = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    assert np.allclose(class_thresholds(labels, proba), [0.8, 0.7])
    # row 1 (0.7, 0.3) reaches no threshold of another class; row 2 (0.4, 0.6) passes none
    assert confident_classes(proba, np.array([0.8, 0.7])).tolist() == [0, -1, -1, 1]


def test_the_rule_matches_a_hand_worked_case():
    labels = np.array([0, 0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    # t_0 = 0.6, t_1 = 0.8: image 2 (labelled 0) is confidently 1; nothing else is off the diagonal
    issues = find_label_issues(labels, proba)
    assert issues.indices.tolist() == [2] and issues.suggested.tolist() == [1]


def test_clean_confident_labels_have_no_issues():
    labels = np.repeat([0, 1, 2], 5)
    assert len(find_label_issues(labels, np.eye(3)[labels] * 0.9 + 0.1 / 3).indices) == 0


@pytest.mark.parametrize("labels, proba", [
    (np.array([0, 1]), np.ones((3, 2)) / 2),
    (np.array([0, 5]), np.ones((2, 2)) / 2),
    (np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]])),
])
def test_bad_arrays_are_refused(labels, proba):
    with pytest.raises(DataError):
        find_label_issues(labels, proba)


# --------------------------------------------------------------------------- learning curve
def test_the_power_law_is_recovered_and_predicts_beyond_the_data():
    sizes = np.repeat([50, 100, 200, 400], 3)
    truth = power_law(sizes, 0.9, 2.0, 0.5)
    rng = np.random.default_rng(0)
    a, b, c = fit_power_law(sizes, truth + rng.normal(0, 0.003, len(sizes)))
    assert abs(power_law(1600, a, b, c) - power_law(1600, 0.9, 2.0, 0.5)) < 0.02
    _, (at_800, at_1600) = predict_accuracy(sizes, truth, [800, 1600], n_eval=100)
    assert at_800.low <= at_800.accuracy <= at_800.high and at_1600.accuracy >= at_800.accuracy
    assert abs(at_1600.accuracy - power_law(1600, 0.9, 2.0, 0.5)) < 0.01
    assert 0 <= at_1600.low and at_1600.high <= 1


def test_too_few_sizes_give_a_flat_curve():
    assert fit_power_law(np.array([10, 10, 20]), np.array([0.5, 0.6, 0.7])) == (0.7, 0.0, 1.0)


def test_the_interval_widens_with_fewer_held_out_images():
    sizes, accuracies = np.repeat([50, 100, 200, 400], 3), np.repeat([0.6, 0.7, 0.75, 0.78], 3)
    wide = predict_accuracy(sizes, accuracies, [800], n_eval=50)[1][0]
    narrow = predict_accuracy(sizes, accuracies, [800], n_eval=5000)[1][0]
    assert wide.high - wide.low > narrow.high - narrow.low


# --------------------------------------------------------------------------- outliers, suggest
def test_a_far_image_is_an_outlier_and_clusters_are_not():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16))
    features = np.concatenate([c + rng.normal(0, 0.05, (60, 16)) for c in centres] + [rng.normal(0, 1, (1, 16)) * 5])
    indices, scores = find_outliers(features)
    assert indices.tolist() == [180] and scores[0] > 0


def test_margin_uncertainty():
    assert np.allclose(margin_uncertainty(np.array([[1.0, 0.0], [0.5, 0.5], [0.6, 0.3]])), [0.0, 1.0, 0.7])


def test_suggest_covers_regions_without_labels_first():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    pool = np.concatenate([c + rng.normal(0, 0.3, (30, 4)) for c in centres])
    labelled = centres[:2] + rng.normal(0, 0.3, (2, 4))  # regions 0 and 1 have labels
    proba = np.full((len(pool), 2), 0.5)
    order, scores = rank_for_labelling(pool, proba, labelled, 2)
    assert sorted(order // 30) == [2, 3]  # one from each unlabelled region
    assert scores[0] == 1.0 and scores[1] < 1.0
    order, _ = rank_for_labelling(pool, proba, labelled, 500)
    assert sorted(order.tolist()) == list(range(len(pool)))  # at most every image, each once


# --------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit-cache")


@pytest.fixture(scope="module")
def net_args(tiny_weights, cache) -> list:
    return ["--backbone", TINY_BACKBONE, "--weights", tiny_weights, "--image-size", 16, "--device", "cpu", "--precision", "fp32",
            "--quiet", "--cache-dir", cache]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = write_image_folder(tmp_path_factory.mktemp("audit") / "data", n_per_class=12, size=16)
    # three pictures under a wrong label, and a near-copy (JPEG) of another
    for i in range(3):
        os.rename(root / "red" / f"{i:03d}.png", root / "blue" / f"moved{i}.png")
    from PIL import Image

    Image.open(root / "green" / "012.png").save(root / "green" / "copy.jpg", quality=95)  # 16 px of noise: 80 is no copy
    return root


def test_audit_writes_the_names_scripts_rely_on(data, net_args, tmp_path):
    result = invoke("audit", data, "--json", tmp_path / "a.json", "--report", tmp_path / "page", *net_args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a.json").read_text())
    for item in report["label_issues"]:
        assert set(item) == {"path", "label", "suggested", "score"}
    assert [i["score"] for i in report["label_issues"]] == sorted((i["score"] for i in report["label_issues"]), reverse=True)
    flagged = {Path(item["path"]).name for item in report["label_issues"] if item["suggested"] == "red"}
    assert len(flagged & {"moved0.png", "moved1.png", "moved2.png"}) >= 2, report["label_issues"]
    groups = [g for g in report["near_duplicates"] if any(p.endswith("copy.jpg") for p in g["paths"])]
    assert len(groups) == 1 and set(groups[0]) == {"paths", "labels", "similarity"} and any(p.endswith("012.png") for p in groups[0]["paths"])
    assert all(set(item) >= {"path", "score"} for item in report["outliers"])
    curve = report["learning_curve"]
    assert len(curve["n_images"]) == len(curve["accuracy"]) >= 4
    assert [p["n_images"] for p in curve["predicted"]] == [2 * report["n_images"], 4 * report["n_images"]]
    assert all(p["low"] <= p["accuracy"] <= p["high"] for p in curve["predicted"])
    assert any(curve["candidate"].startswith(name) for name in ("svm", "logistic")), curve["candidate"]
    page = (tmp_path / "page" / "audit.html").read_text()
    assert "moved" in page and "data:image/png;base64," in page
    assert "label issues" in flat(result.output)


def test_evaluate_names_near_copies_of_training_images(data, tiny_weights, tmp_path):
    model = fit_tiny_model(data, tiny_weights, tmp_path / "model", strategy="logistic", image_size=16)
    test = write_image_folder(tmp_path / "test", n_per_class=3, size=16, seed=5)
    from PIL import Image

    Image.open(data / "red" / "005.png").save(test / "red" / "again.jpg", quality=95)  # re-encoded: other bytes
    result = invoke("evaluate", model, test, "--json", tmp_path / "e.json", "--quiet", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    near = json.loads((tmp_path / "e.json").read_text())["train_test_near_duplicates"]
    assert [(Path(r["test"]).name, Path(r["train"]).name) for r in near] == [("again.jpg", "005.png")]
    assert "near-copies" in flat(result.output)


def test_suggest_writes_a_ranked_csv(data, tiny_weights, tmp_path):
    model = fit_tiny_model(data, tiny_weights, tmp_path / "model", strategy="logistic", image_size=16)
    pool = write_image_folder(tmp_path / "pool", n_per_class=6, size=16, seed=3)
    result = invoke("suggest", model, pool, "--n", 5, "--csv", tmp_path / "s.csv", "--quiet", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "s.csv", encoding="utf-8")))
    assert list(rows[0]) == ["path", "predicted", "score"] and len(rows) == 5
    assert len({r["path"] for r in rows}) == 5 and all(r["predicted"] in ("red", "green", "blue") for r in rows)
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)


# --------------------------------------------------------------------------- hostile input
def _one_class(tmp):
    root = write_image_folder(tmp / "d", n_per_class=6, size=16)
    for name in ("green", "blue"):
        for path in (root / name).iterdir():
            path.unlink()
        (root / name).rmdir()
    return root


def _unreadable(tmp):
    root = write_image_folder(tmp / "d", n_per_class=6, size=16)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def _empty(tmp):
    (tmp / "d").mkdir()
    return tmp / "d"


@pytest.mark.parametrize("make, code, says", [
    (_empty, 1, ("no sub-folders",)),
    (_one_class, 1, ("at least 2 classes",)),
    (_unreadable, 1, ("broken.png", "--skip-bad")),
])
def test_audit_hostile_input(make, code, says, net_args, tmp_path):
    result = invoke("audit", make(tmp_path), *net_args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in says:
        assert fragment in flat(result.output), (fragment, result.output)


def test_audit_skip_bad_lists_the_unreadable_file(net_args, tmp_path):
    result = invoke("audit", _unreadable(tmp_path), "--skip-bad", "--json", tmp_path / "a.json", *net_args)
    assert result.exit_code == 0, result.output
    assert any("broken.png" in item["path"] for item in json.loads((tmp_path / "a.json").read_text())["skipped"])


def test_audit_with_too_few_images_per_class_for_the_folds(net_args, tmp_path):
    result = invoke("audit", write_image_folder(tmp_path / "d", n_per_class=3, size=16), *net_args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "5" in result.output and "--cv" in flat(result.output) or "at least 5" in flat(result.output), result.output


def _text_as_png(tmp):
    (tmp / "d").mkdir()
    (tmp / "d" / "x.png").write_bytes(b"not a png")
    return tmp / "d"


@pytest.mark.parametrize("make, code, says", [
    (_empty, 1, ("no image files",)),
    (_text_as_png, 1, ("x.png",)),
])
def test_suggest_hostile_input(make, code, says, data, tiny_weights, tmp_path):
    model = fit_tiny_model(data, tiny_weights, tmp_path / "model", strategy="logistic", image_size=16)
    result = invoke("suggest", model, make(tmp_path), "--csv", tmp_path / "s.csv", "--quiet")
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in says:
        assert fragment in flat(result.output), (fragment, result.output)


def test_suggest_refuses_a_missing_model_and_n_zero(tmp_path):
    assert invoke("suggest", tmp_path / "none", tmp_path, "--csv", tmp_path / "s.csv").exit_code == 1
    result = invoke("suggest", tmp_path / "none", tmp_path, "--csv", tmp_path / "s.csv", "--n", 0)
    assert result.exit_code == 2 and "--n" in result.output


def test_both_confident_learning_methods_on_one_problem():
    """The default (prune by the noise rate) and the off-diagonal rule both find the moved
    labels; the default never calls an image an issue where the model predicts its label."""
    labels, proba, moved = noisy_problem()
    default = find_label_issues(labels, proba)
    off_diagonal = find_label_issues(labels, proba, method="confident_joint")
    assert not np.any(proba[default.indices].argmax(axis=1) == labels[default.indices])
    for issues in (default, off_diagonal):
        found = set(issues.indices.tolist())
        assert len(found & moved) / len(moved) > 0.6
    with pytest.raises(DataError, match="method"):
        find_label_issues(labels, proba, method="cleanlab")


def test_the_audits_out_of_fold_probabilities_come_from_the_selection_engine(tiny_weights, cache):
    """The seam: each image is scored by the probe of the one fold that held it out, through the
    engine, and a fold's rows equal a probe fitted on the other folds' cached features by hand."""
    from conftest import make_images
    from transferkit.audit.oof import audit_arena, curve_candidate, learning_curve_points, out_of_fold_probabilities, probe_candidate
    from transferkit.selection.auto import frozen_feature_candidates
    from transferkit.selection.candidates import with_params
    from transferkit.selection.folds import make_folds
    from transferkit.strategies.features import FeatureExtractor
    from transferkit.strategies.linear import make_linear_pipeline
    from transferkit.training.runtime import resolve_runtime

    pixels, labels = make_images(n_per_class=10, size=16)
    classes = sorted(set(labels))
    targets = np.array([classes.index(label) for label in labels])
    runtime = resolve_runtime("cpu", "fp32")
    params = {"backbone": TINY_BACKBONE, "weights": str(tiny_weights), "cache_dir": str(cache), "seed": 0}
    arena = audit_arena(pixels, targets, classes, params=params, runtime=runtime)
    seen = []
    oof = out_of_fold_probabilities(arena, None, cv=3, seed=0, C=0.5, on_fold=lambda i, k: seen.append((i, k)))
    assert oof.proba.shape == (len(targets), len(classes)) and not np.isnan(oof.proba).any()
    assert np.allclose(oof.proba.sum(axis=1), 1.0) and seen == [(1, 3), (2, 3), (3, 3)] and oof.C == 0.5
    assert probe_candidate(arena, 0.5).strategy == "logistic"

    train, test = make_folds(targets, cv=3, seed=0)[1]
    features = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=runtime, cache_dir=str(cache)).transform(pixels)
    by_hand = make_linear_pipeline("logistic", 0.5, 0).fit(features[train], targets[train]).predict_proba(features[np.sort(test)])
    assert np.allclose(oof.proba[np.sort(test)], by_hand, atol=1e-6)

    # The curve follows fit's choice among frozen features (auto's first round, the one winner rule).
    choice = curve_candidate(arena, None, seed=0)
    C = dict(choice.candidate.params)["C"]
    assert choice.candidate in [with_params(c, C=C) for c in frozen_feature_candidates(16)] and C > 0
    # every candidate of auto's first round raced, each with its C fixed by inner CV
    assert [with_params(t.candidate, C="auto") for t in choice.trials] == [with_params(c, C="auto") for c in frozen_feature_candidates(16)]
    assert choice.candidate in [t.candidate for t in choice.trials] and choice.seconds_per_fit > 0
    assert choice.candidate.label in choice.describe()
    sizes, accuracies, n_eval = learning_curve_points(arena, None, choice.candidate, seed=0, repeats=2, cv=3)
    # 3 folds x (4 fractions, then the 3 below 1 again): one point per fold, fraction and draw
    assert len(sizes) == len(accuracies) == 3 * (4 + 3) and n_eval == min(len(t) for _, t in make_folds(targets, cv=3, seed=0))
    assert sizes.max() == max(len(tr) for tr, _ in make_folds(targets, cv=3, seed=0)) and ((0 <= accuracies) & (accuracies <= 1)).all()
