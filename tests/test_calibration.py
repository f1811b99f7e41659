"""svm/logistic probabilities are calibrated (temperature scaling folded into the head), and every
output says whether a model's probabilities are calibrated (issue 21: 1.000 on confident mistakes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit.card import probability_note
from transferkit.strategies.linear import fit_temperature, head_logits, log_loss_at, make_linear_pipeline


def overlapping(n: int = 240, dim: int = 200, seed: int = 0):
    """Two classes that overlap, in many dimensions: a weakly regularised linear model fits the
    training part perfectly and is far too sure on new points."""
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 2
    features = rng.normal(size=(n, dim)) + 0.35 * targets[:, None] * (np.arange(dim) < 5)
    return features.astype(np.float32), targets


@pytest.mark.parametrize("strategy", ["logistic", "svm"])
def test_temperature_makes_held_out_probabilities_less_overconfident(strategy):
    features, targets = overlapping()
    train, test = np.arange(0, 160), np.arange(160, 240)
    found = fit_temperature(features[train], targets[train], np.arange(160), strategy=strategy, C=1.0, seed=0)
    assert found["method"] == "temperature" and found["temperature"] > 1.0
    assert found["log_loss_after"] < found["log_loss_before"]
    pipeline = make_linear_pipeline(strategy, 1.0).fit(features[train], targets[train])
    logits = head_logits(pipeline.decision_function(features[test]))
    raw, calibrated = log_loss_at(logits, targets[test], 1.0), log_loss_at(logits, targets[test], found["temperature"])
    assert calibrated < raw  # on images it never saw, too


def test_too_few_images_per_class_is_said_not_hidden():
    features, targets = overlapping(n=6)
    targets = np.array([0, 0, 0, 0, 0, 1])
    found = fit_temperature(features, targets, np.arange(6), strategy="logistic", C=1.0, seed=0)
    assert found["method"] is None and "too few" in found["reason"]


def test_calibration_is_folded_into_the_head_and_survives_save_load_and_onnx(image_folder, tiny_weights, tmp_path):
    from transferkit import load
    from transferkit.export.onnx import export_onnx

    model_dir = fit_tiny_model(image_folder, tiny_weights, tmp_path / "model", strategy="logistic")
    config = json.loads((model_dir / "config.json").read_text())
    calibration = config["history"]["linear"]["calibration"]
    assert calibration["method"] == "temperature" and calibration["temperature"] > 0
    note = probability_note(config["history"])
    assert note["calibrated"] and "temperature scaling" in note["description"]

    classifier = load(model_dir)
    paths = sorted(image_folder.rglob("*.png"))
    probabilities = classifier.predict_proba(paths)
    np.testing.assert_allclose(load(model_dir).predict_proba(paths), probabilities, atol=1e-6)
    assert classifier.model_.get_classifier().out_features == 3  # still one linear K-class head
    export_onnx(model_dir, tmp_path / "m.onnx", check_images=[str(p) for p in paths])
    from transferkit import OnnxClassifier

    np.testing.assert_allclose(OnnxClassifier(tmp_path / "m.onnx").predict_proba(paths), probabilities, atol=1e-4)


def test_network_and_onnx_outputs_say_their_probabilities_are_scores(image_folder, tiny_weights, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    model_dir = fit_tiny_model(image_folder, tiny_weights, tmp_path / "net", strategy="head", epochs=1)
    note = probability_note(json.loads((model_dir / "config.json").read_text())["history"])
    assert not note["calibrated"] and "scores" in note["description"]
    image = sorted(image_folder.rglob("*.png"))[0]
    result = CliRunner().invoke(app, ["predict", str(model_dir), str(image), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())["probabilities"] == note
    assert "probabilities: not calibrated" in " ".join(result.output.split())
