"""Cross-validation and `compare` through the selection engine: identical folds, no leakage, the
documented JSON, out-of-fold probabilities, learning curves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_BACKBONE, make_images
from transferkit import ConfigError, DataError
from transferkit.data import ImageSet
from transferkit.selection import candidate_from_params, learning_curve
from transferkit.selection.compare import compare_strategies, cross_validate, cv_result, parse_strategies
from transferkit.selection.folds import make_folds
from transferkit.selection.results import CVResult, FoldScore, wilson_interval


def svm_cv(tiny_params, images, labels, cv=3, **params):
    """``fit --cv``'s path: one candidate from estimator parameters, every fold, through the engine."""
    candidate = candidate_from_params(dict(tiny_params, strategy="svm", **params), "test")
    return cross_validate(ImageSet(sources=list(images), labels=labels), [candidate], cv=cv, base=dict(tiny_params, **params))


def test_folds_are_stratified_deterministic_and_cover_every_image_once():
    labels = np.array(["a"] * 10 + ["b"] * 5)
    folds = make_folds(labels, cv=5, seed=3)
    again = make_folds(labels, cv=5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests) == list(range(15))
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(labels[test]) == ["a", "a", "b"]
    assert len(make_folds(labels, cv=5, repeats=2)) == 10


def test_grouped_folds_keep_each_group_on_one_side():
    labels = np.array(["a", "a", "b", "b"] * 6)
    groups = np.repeat(np.arange(12), 2)
    for train, test in make_folds(labels, cv=3, groups=groups):
        assert not set(groups[train]) & set(groups[test])


def test_too_few_images_for_the_folds_is_a_clear_error():
    with pytest.raises(DataError, match="'b' \\(2\\)"):
        make_folds(np.array(["a"] * 5 + ["b"] * 2), cv=3)


def test_cross_validate_reports_per_fold_scores_and_an_interval(tiny_params):
    images, labels = make_images(6, 32)
    engine, trials, decision = svm_cv(tiny_params, images, labels, C=0.1)
    summary = cv_result(trials[0], engine).to_dict()
    assert len(summary["fold_scores"]) == 3 and summary["cv_mean"] == pytest.approx(np.mean(summary["fold_scores"]))
    low, high = summary["ci95"]
    assert low <= summary["cv_mean"] <= high
    assert all(f["n_train"] == 12 and f["n_test"] == 6 for f in summary["folds"])
    assert decision.chosen is trials[0]


def test_the_engine_gives_out_of_fold_probabilities_per_image_and_candidate(tiny_params):
    images, labels = make_images(6, 32)
    engine, trials, _ = svm_cv(tiny_params, images, labels, C=0.1)
    candidate = trials[0].candidate
    proba = engine.results.oof_proba(candidate)
    assert proba.shape == (18, 3) and np.allclose(proba.sum(axis=1), 1.0)  # every image held out once
    folds = engine.results.held_out_fold(candidate)
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    for number, (train, test) in enumerate(engine.folds):
        assert (folds[test] == number).all()
    # the probabilities' argmax is the fold's prediction, and the accuracy the fold's score
    targets = engine.arena.targets
    correct = engine.results.correct(candidate)[0]
    assert np.array_equal(correct, (proba.argmax(axis=1) == targets).astype(float))
    assert np.mean(correct) == pytest.approx(np.mean(trials[0].scores))
    # a candidate scored on one fold only: NaN rows for the images no fold of it held out
    engine.evaluate_candidates([candidate_from_params(dict(tiny_params, strategy="logistic", C=0.1), "test")], [1])
    logistic = list(engine.trials)[1]
    partial = engine.results.oof_proba(logistic)
    held = np.zeros(18, dtype=bool)
    held[engine.folds[1][1]] = True
    assert np.isnan(partial[~held]).all() and not np.isnan(partial[held]).any()
    assert (engine.results.held_out_fold(logistic)[~held] == -1).all()


def test_a_learning_curve_trains_on_growing_parts_and_scores_the_same_held_out_images(tiny_params):
    images, labels = make_images(8, 32)
    engine, trials, _ = svm_cv(tiny_params, images, labels, cv=2, C=0.1)
    seen = []
    real = engine.score
    engine.score = lambda candidate, fold: seen.append((len(fold[0]), tuple(fold[1]))) or real(candidate, fold)
    curve = learning_curve(engine, trials[0].candidate, fractions=(0.5, 1.0), folds=[0])
    assert [n for n, _ in seen] == [6, 12] and seen[0][1] == seen[1][1] == tuple(engine.folds[0][1])
    assert curve.scores.shape == (2, 1) and curve.sizes == [6.0, 12.0]
    assert curve.probabilities[0][0].shape == (12, 3)
    assert curve.to_dict()["mean"] == curve.scores.mean(axis=1).tolist()


def test_compare_gives_every_strategy_identical_folds_and_the_documented_json(tiny_params, monkeypatch):
    import transferkit.selection.engine as engine_module

    seen = {}
    real = engine_module.score_candidate

    def spy(arena, candidate, fold, callbacks=(), **options):
        seen.setdefault(candidate.strategy, []).append(sorted(fold[1].tolist()))
        return real(arena, candidate, fold, callbacks, **options)

    monkeypatch.setattr(engine_module, "score_candidate", spy)
    images, labels = make_images(6, 32)
    base = {k: v for k, v in tiny_params.items() if k not in ("image_size", "epochs", "strategy")}
    comparison = compare_strategies(
        ImageSet(sources=list(images), labels=labels), ["svm", "head", "scratch"], cv=3, base=base,
        overrides={"image_size": 32, "epochs": 1},
    )
    assert seen["svm"] == seen["head"] == seen["scratch"]
    report = comparison.to_dict()
    assert report["best"] in ("svm", "head", "scratch") and report["cv"] == 3 and report["n"] == 18
    assert report["classes"] == ["blue", "green", "red"]
    for entry in report["results"]:
        for key in ("strategy", "cv_mean", "cv_std", "fold_scores", "balanced_accuracy", "macro_f1", "fit_seconds", "params"):
            assert key in entry
    assert json.loads(json.dumps(report)) == report


def test_nested_choices_see_only_the_fold_training_part(tiny_params, monkeypatch):
    """The svm's C grid runs inside fit on the fold's training images, never on its test images."""
    from transferkit.strategies import linear

    sizes = []
    real = linear.fit_linear_classifier
    monkeypatch.setattr(
        "transferkit.strategies.linear.fit_linear_classifier",
        lambda features, *a, **k: sizes.append(len(features)) or real(features, *a, **k),
    )
    images, labels = make_images(6, 32)
    svm_cv(tiny_params, images, labels)
    assert sizes == [12, 12, 12]


def test_parse_strategies_rejects_unknown_names():
    assert parse_strategies("svm, head,svm") == ["svm", "head"]
    with pytest.raises(Exception, match="Received: 'svm,magic'"):
        parse_strategies("svm,magic")


def test_compare_command_writes_table_json_and_plot(image_folder, tiny_weights, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    result = CliRunner().invoke(
        app,
        ["compare", str(image_folder), "--strategies", "logistic,head", "--cv", "2", "--backbone", TINY_BACKBONE,
         "--weights", str(tiny_weights), "--image-size", "32", "--epochs", "1", "--device", "cpu",
         "--json", str(tmp_path / "c.json"), "--out", str(tmp_path / "best")],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert [r["strategy"] for r in report["results"]] == ["logistic", "head"]
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert (tmp_path / "best" / "model.safetensors").exists()
    assert "best:" in result.output


def test_fit_with_cv_reports_scores_then_refits(image_folder, tiny_weights, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    result = CliRunner().invoke(
        app,
        ["fit", str(image_folder), "--out", str(tmp_path / "m"), "--strategy", "logistic", "--cv", "2",
         "--backbone", TINY_BACKBONE, "--weights", str(tiny_weights), "--image-size", "32", "--device", "cpu",
         "--json", str(tmp_path / "fit.json"), "--quiet"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "fit.json").read_text())
    assert len(report["cv"]["fold_scores"]) == 2 and "2-fold CV accuracy" in result.output
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_jobs_2_gives_the_same_table_as_jobs_1(tiny_params, image_folder, tmp_path):
    # The (strategy, fold) jobs are independent: joblib's worker processes change only the speed.
    # Default precision: CV jobs run with fixed threads and fp32 for auto (tests/test_precision.py).
    from typer.testing import CliRunner

    from transferkit.cli import app

    args = ["compare", str(image_folder), "--strategies", "svm,logistic,head", "--cv", "2", "--backbone", tiny_params["backbone"],
            "--weights", tiny_params["weights"], "--image-size", "32", "--epochs", "2", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    tables = []
    for jobs in ("1", "2"):
        result = CliRunner().invoke(app, [*args, "--jobs", jobs, "--json", str(tmp_path / f"jobs{jobs}.json")])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / f"jobs{jobs}.json").read_text())
        tables.append([(r["strategy"], r["fold_scores"], r["balanced_accuracy"], r["macro_f1"]) for r in report["results"]])
    assert tables[0] == tables[1]
    assert [name for name, *_ in tables[0]] == ["svm", "logistic", "head"]


def test_the_engines_jobs_check_their_options():
    from transferkit.evaluation.jobs import run_parallel

    with pytest.raises(ConfigError, match="jobs expected a positive integer"):
        list(run_parallel(print, [], n_jobs=0, backend=None))
    with pytest.raises(ConfigError, match="unknown joblib backend"):
        list(run_parallel(print, [], n_jobs=2, backend="magic"))


def test_the_interval_stays_inside_0_and_1_and_says_how_it_was_made():
    # issue 21: five folds of 0.96-1.0 gave a Student-t interval of 0.9646-1.0220
    folds = [FoldScore(fold=i, accuracy=a, balanced_accuracy=a, macro_f1=a, fit_seconds=1.0, n_train=120, n_test=30)
             for i, a in enumerate([1.0, 1.0, 0.9667, 1.0, 0.9667], start=1)]
    result = CVResult("svm", {}, folds)
    low, high = result.ci95
    assert 0.0 <= low < result.mean < high <= 1.0
    assert result.n_tested == 150
    assert result.to_dict()["ci95_method"].startswith("Wilson")
    perfect = CVResult("svm", {}, [FoldScore(i, 1.0, 1.0, 1.0, 1.0, 120, 30) for i in range(1, 6)])
    assert perfect.ci95[1] == 1.0 and perfect.ci95[0] < 1.0  # all right is still a finite sample
    # repeats test every image again: the interval counts images, not predictions
    repeated = CVResult("svm", {}, [FoldScore(i, 0.9, 0.9, 0.9, 1.0, 120, 30) for i in range(1, 11)])
    assert repeated.n_tested == 150
    assert wilson_interval(0.0, 10)[0] == 0.0 and wilson_interval(0.5, 0) == (0.0, 1.0)
