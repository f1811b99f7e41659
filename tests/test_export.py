"""ONNX export: checker, metadata, parity with PyTorch per strategy, int8, a torch-free predictor, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_images
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit import load
from transferkit.cli import app
from transferkit.export import OnnxClassifier, export_onnx
from transferkit.export.onnx import PARITY_TOLERANCE, torch_logits
from transferkit.export.quantize import measure_onnx, quantize_onnx

pytest.importorskip("onnxruntime")
runner = CliRunner()


@pytest.mark.parametrize("strategy", ["svm", "logistic", "head", "finetune", "full", "scratch", "pixels"])
def test_onnx_matches_pytorch_for_every_strategy(strategy, image_folder, tiny_weights, tmp_path):
    model_dir = fit_tiny_model(image_folder, tiny_weights, tmp_path / "model", strategy=strategy, epochs=1)
    result = export_onnx(model_dir, tmp_path / "model.onnx", check_images=image_folder)
    assert result.checked_images == 24
    assert result.max_abs_diff < PARITY_TOLERANCE, result
    onnx_model = OnnxClassifier(result.path)
    classifier = load(model_dir, precision="fp32")
    assert list(onnx_model.classes_) == ["blue", "green", "red"]
    assert onnx_model.metadata_["strategy"] == strategy
    assert onnx_model.metadata_["preprocessing"] == classifier.preprocessing_.to_dict()
    assert onnx_model.image_size_ == 32
    assert list(onnx_model.predict(image_folder)) == list(classifier.predict(image_folder))
    np.testing.assert_allclose(onnx_model.predict_proba(image_folder), classifier.predict_proba(image_folder), atol=1e-5)


@pytest.mark.parametrize("symmetries", ["flips", "dihedral"])
def test_onnx_averages_the_views_a_model_averaged_its_features_over(symmetries, image_folder, tiny_weights, tmp_path):
    model_dir = fit_tiny_model(image_folder, tiny_weights, tmp_path / "model", strategy="logistic", symmetries=symmetries)
    result = export_onnx(model_dir, tmp_path / "model.onnx", check_images=image_folder)
    assert result.max_abs_diff < PARITY_TOLERANCE, result
    onnx_model, classifier = OnnxClassifier(result.path), load(model_dir, precision="fp32")
    assert onnx_model.metadata_["symmetries"] == symmetries
    np.testing.assert_allclose(onnx_model.predict_proba(image_folder), classifier.predict_proba(image_folder), atol=1e-5)
    pixels = onnx_model.decode(image_folder)  # an image turned by a quarter: the same answer only with the 8 views
    turned = np.ascontiguousarray(np.rot90(pixels, 1, axes=(1, 2)))
    if symmetries == "dihedral":
        np.testing.assert_allclose(onnx_model.logits(turned), onnx_model.logits(pixels), atol=1e-4)
    else:
        np.testing.assert_allclose(onnx_model.logits(pixels[:, ::-1].copy()), onnx_model.logits(pixels), atol=1e-4)


@pytest.fixture(scope="module")
def tiny_onnx(image_folder, tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model_dir = fit_tiny_model(image_folder, tiny_weights, folder / "model")
    export_onnx(model_dir, folder / "model.onnx")
    return model_dir, folder / "model.onnx"


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_quantisation_keeps_metadata_and_is_measured(mode, tiny_onnx, tmp_path):
    model_dir, fp32 = tiny_onnx
    pixels, labels = make_images(n_per_class=4, size=32, seed=1)
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", mode, calibration=pixels)
    assert OnnxClassifier(int8).metadata_["quantization"] == mode
    reference = load(model_dir, precision="fp32").classes_[torch_logits(load(model_dir, precision="fp32"), pixels).argmax(axis=1)]
    measurement, predicted = measure_onnx(int8, pixels, np.array(labels), reference=reference)
    assert measurement.images_per_second > 0 and 0 <= measurement.accuracy <= 1
    assert len(predicted) == len(pixels) and 0 <= measurement.agreement <= 1


def test_onnx_predictor_does_not_import_torch(tiny_onnx, image_folder):
    code = (
        "import sys; from transferkit.export import OnnxClassifier; "
        f"print(OnnxClassifier({str(tiny_onnx[1])!r}).predict([{str(image_folder / 'red' / '000.png')!r}])[0]); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(load(tiny_onnx[0], precision="fp32").predict([image_folder / "red" / "000.png"])[0]), "False"]


def test_cli_export_then_predict_with_the_onnx_file(tiny_onnx, image_folder, tmp_path):
    model_dir, _ = tiny_onnx
    out = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", str(model_dir), "--format", "onnx", "--out", str(out), "--check", str(image_folder),
                                 "--quantize", "dynamic", "--json", str(tmp_path / "export.json")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["max_abs_diff"] < PARITY_TOLERANCE and "max |logit difference|" in result.output
    assert {m["name"] for m in report["measurements"]} == {"onnxruntime fp32", "onnxruntime int8 dynamic"}
    assert (tmp_path / "cli.int8.dynamic.onnx").is_file()
    assert f"24 of the 24 images of {image_folder}" in " ".join(result.output.split())

    for model in (model_dir, out):
        result = runner.invoke(app, ["predict", str(model), str(image_folder), "--json", str(tmp_path / f"{model.name}.json")])
        assert result.exit_code == 0, result.output
    torch_rows = json.loads((tmp_path / "model.json").read_text())["predictions"]
    onnx_rows = json.loads((tmp_path / "cli.onnx.json").read_text())["predictions"]
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]


def test_cli_export_says_how_many_of_the_check_images_it_used(tiny_onnx, image_folder, tmp_path):
    model_dir, _ = tiny_onnx
    result = runner.invoke(app, ["export", str(model_dir), "--out", str(tmp_path / "m.onnx"), "--check", str(image_folder),
                                 "--check-images", "5"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "on 5 of the 24 images" in " ".join(result.output.split()) and "--check-images" in result.output

def test_export_data_keeps_the_old_export(tmp_path, image_folder):
    result = runner.invoke(app, ["export-data", str(image_folder), str(tmp_path / "copy")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["blue", "green", "red"]


def test_export_rejects_an_unknown_format(tiny_onnx, tmp_path):
    result = runner.invoke(app, ["export", str(tiny_onnx[0]), "--format", "tflite", "--out", str(tmp_path / "m.tflite")])
    assert result.exit_code == 2 and "onnx" in result.output
