"""fit --init (issue 30): start from a saved model with the same classes or one more."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY_BACKBONE, write_image_folder
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - one torch thread here
from transferkit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("init") / "data", n_per_class=6, size=16)


@pytest.fixture(scope="module")
def network_model(data, tiny_weights, tmp_path_factory) -> Path:
    return fit_tiny_model(data, tiny_weights, tmp_path_factory.mktemp("init-model") / "m", strategy="finetune", image_size=16)


def _backbone(path: Path) -> dict:
    return {k: v for k, v in load_file(str(path / "model.safetensors")).items() if not k.startswith("classifier")}


def _fit_init(data, model, out, *extra):
    return invoke("fit", data, "--init", model, "--out", out, "--epochs", 1, "--lr", 1e-12, "--batch-size", 4, "--device", "cpu",
                  "--precision", "fp32", "--quiet", "--json", out.parent / "fit.json", *extra)


def test_same_classes_warm_start_from_the_saved_network(data, network_model, tmp_path):
    result = _fit_init(data, network_model, tmp_path / "again")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["backbone"] == TINY_BACKBONE and config["strategy"] == "finetune" and config["image_size"] == 16
    before, after = _backbone(network_model), _backbone(tmp_path / "again")
    # lr 1e-12: the weights are the saved model's, not the pretrained file's (BatchNorm statistics still move)
    weights = [k for k in before if before[k].is_floating_point() and "running_" not in k]
    assert weights and all(np.allclose(before[k].numpy(), after[k].numpy(), atol=1e-6) for k in weights)


def test_one_new_class_gets_a_new_row_of_the_head(data, network_model, tmp_path):
    more = Path(shutil.copytree(data, tmp_path / "more"))
    (more / "purple").mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), (150, 40, 150), np.uint8)).save(more / "purple" / f"{i}.png")
    result = _fit_init(more, network_model, tmp_path / "bigger")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "bigger" / "config.json").read_text())
    assert config["classes"] == ["blue", "green", "purple", "red"]
    head = load_file(str(tmp_path / "bigger" / "model.safetensors"))["classifier.weight"]
    assert head.shape[0] == 4


def test_a_feature_model_refits_on_the_pretrained_weights(data, tiny_weights, tmp_path):
    model = fit_tiny_model(data, tiny_weights, tmp_path / "svm", strategy="svm", image_size=16)
    result = _fit_init(data, model, tmp_path / "svm2")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "svm2" / "config.json").read_text())
    assert config["strategy"] == "svm" and config["params"]["weights"] == str(tiny_weights)


def test_init_refuses_data_without_a_class_of_the_model(data, network_model, tmp_path):
    fewer = Path(shutil.copytree(data, tmp_path / "fewer"))
    shutil.rmtree(fewer / "blue")
    result = _fit_init(fewer, network_model, tmp_path / "out")
    assert result.exit_code == 1 and "'blue'" in result.output and "Traceback" not in result.output
    result = _fit_init(data, tmp_path / "no-model", tmp_path / "out")
    assert result.exit_code == 1 and "no model folder" in result.output
