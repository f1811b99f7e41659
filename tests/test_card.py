"""After fit, MODEL_CARD.md in the model folder, as Hugging Face model cards are; the report links it."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from conftest import TINY_BACKBONE
from fitted_models import single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit.cli import app

runner = CliRunner()


def test_fit_writes_a_model_card_and_the_report_links_it(image_folder, tiny_weights, tmp_path):
    model = tmp_path / "model"
    result = runner.invoke(app, [
        "fit", str(image_folder), "--out", str(model), "--backbone", TINY_BACKBONE, "--weights", str(tiny_weights),
        "--image-size", "32", "--device", "cpu", "--quiet", "--json", str(tmp_path / "fit.json"),
    ], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    card = (model / "MODEL_CARD.md").read_text()
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["model_card"] == str(model / "MODEL_CARD.md")

    assert card.startswith("---\nlibrary_name: transferkit\npipeline_tag: image-classification\n")  # Hugging Face metadata
    for heading in ("## Data", "## How it was trained", "## Measured scores", "## Probabilities", "## Intended use", "## Versions"):
        assert heading in card, heading
    assert str(image_folder) in card and "24 images" in card
    for name in ("blue", "green", "red"):
        assert f"| {name} | 8 |" in card
    assert f"strategy `{fit['strategy']}`" in card
    for reason in fit["advice"]["reasons"]:  # strategy auto: why, in the advisor's words
        assert f"- {reason}" in card
    scores = card.split("## Measured scores")[1].split("##")[0]
    assert "inner cross-validation accuracy" in scores or "held-out validation split" in scores
    assert re.search(r"Written by transferkit on \d{4}-\d\d-\d\d", card)
    assert "transferkit 0." in card and "torch " in card and "scikit-learn " in card
    assert fit["probabilities"]["description"] in card

    result = runner.invoke(app, ["report", str(model), str(image_folder), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    link = re.search(r'<a id="model-card" href="([^"]+)"', html).group(1)
    assert (tmp_path / "report" / link).resolve() == (model / "MODEL_CARD.md").resolve()
    assert "Probabilities: " in html


def test_a_saved_model_without_a_data_name_says_so(image_folder, tiny_weights, tmp_path):
    from fitted_models import fit_tiny_model

    card = (fit_tiny_model(image_folder, tiny_weights, tmp_path / "m", strategy="head", epochs=1) / "MODEL_CARD.md").read_text()
    assert "not recorded" in card and "held-out validation split" in card and "not calibrated" in card


def test_the_card_is_written_whatever_the_history_holds():
    from transferkit.card import model_card

    config = {"classes": ["a", "b"], "strategy": "finetune", "backbone": "x", "image_size": 32,
              "history": {"history": [{"val_accuracy": None}], "best_epoch": 1},
              "metrics": {"cv": {"cv_mean": 0.9, "cv_std": None, "ci95": [None, None]}}}
    card = model_card(config)  # e.g. a distributed run without a validation split: no crash, nothing invented
    assert "held-out validation split" not in card and "cross-validated accuracy: 0.9000" in card
    assert "no held-out score" in model_card({**config, "metrics": {}})
