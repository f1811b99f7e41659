"""The novelty flag in every output (predict, evaluate, ONNX, serve), batching = predict, and
the one-line message when an extra is missing (issue 31)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_images
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit import load
from transferkit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def svm_dir(image_folder, tiny_weights, tmp_path_factory):
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("flags") / "svm", strategy="svm")


@pytest.fixture(scope="module")
def strangers(tmp_path_factory) -> list:
    """Images unlike the colour squares: stripes and checkerboards."""
    folder = tmp_path_factory.mktemp("strangers")
    paths = []
    for i in range(6):
        image = np.zeros((32, 32, 3), np.uint8)
        image[:, i % 3 :: 3 + i % 2] = 255 if i % 2 else 128
        image[(np.indices((32, 32)).sum(axis=0) // (2 + i)) % 2 == 0] //= 3
        paths.append(folder / f"stranger{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_predict_json_and_csv_carry_novelty_and_unknown(svm_dir, image_folder, strangers, tmp_path):
    inputs = [image_folder / "red" / "000.png", *strangers]
    result = invoke("predict", svm_dir, *inputs, "--json", tmp_path / "p.json", "--csv", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "p.json").read_text())
    classifier = load(svm_dir)
    _, novelty = classifier.predict_proba([str(p) for p in inputs], return_novelty=True)
    rows = {row["path"]: row for row in report["predictions"]}
    for path, expected in zip(inputs, novelty):
        row = rows[str(path)]
        assert row["novelty"] == pytest.approx(expected, abs=1e-5)
        assert row["unknown"] is bool(expected > classifier.novelty_.threshold)
    assert report["novelty"]["threshold"] == classifier.novelty_.threshold
    with open(tmp_path / "p.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert {"novelty", "unknown"} <= set(csv_rows[0]) and len(csv_rows) == len(inputs)

    everything = invoke("predict", svm_dir, *inputs, "--json", tmp_path / "all.json", "--unknown-threshold", "-1")
    nothing = invoke("predict", svm_dir, *inputs, "--json", tmp_path / "none.json", "--unknown-threshold", "2")
    assert everything.exit_code == 0 and nothing.exit_code == 0
    assert all(row["unknown"] for row in json.loads((tmp_path / "all.json").read_text())["predictions"])
    assert not any(row["unknown"] for row in json.loads((tmp_path / "none.json").read_text())["predictions"])


def test_evaluate_reports_the_share_flagged(svm_dir, image_folder, tmp_path):
    result = invoke("evaluate", svm_dir, image_folder, "--json", tmp_path / "e.json", "--unknown-threshold", "-1")
    assert result.exit_code == 0, result.output
    novelty = json.loads((tmp_path / "e.json").read_text())["novelty"]
    assert novelty["flagged_share"] == 1.0 and novelty["threshold"] == -1.0  # below every score: all flagged
    assert "flagged unknown" in result.output


def test_an_old_model_says_it_has_no_score_in_predict(svm_dir, image_folder, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(svm_dir, old)
    config = json.loads((old / "config.json").read_text())
    del config["novelty"]
    (old / "config.json").write_text(json.dumps(config))
    result = invoke("predict", old, image_folder / "red" / "000.png", "--json", tmp_path / "old.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "old.json").read_text())
    assert report["predictions"][0]["novelty"] is None and report["predictions"][0]["unknown"] is None
    assert "no novelty score" in report["novelty"]["description"]


def test_the_onnx_predictor_flags_the_same_images_without_torch(svm_dir, image_folder, strangers, tmp_path):
    pytest.importorskip("onnxruntime")
    from transferkit.export import OnnxClassifier, export_onnx

    path = export_onnx(svm_dir, tmp_path / "model.onnx").path
    inputs = [str(image_folder / "red" / "000.png"), *map(str, strangers)]
    classifier, onnx_model = load(svm_dir, precision="fp32"), OnnxClassifier(path)
    expected, torch_novelty = classifier.predict_proba(inputs, return_novelty=True)
    probabilities, onnx_novelty = onnx_model.predict_proba(inputs, return_novelty=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(onnx_novelty, torch_novelty, atol=1e-4)
    assert onnx_model.novelty_.threshold == classifier.novelty_.threshold
    np.testing.assert_array_equal(onnx_model.novelty_.unknown(onnx_novelty), classifier.novelty_.unknown(torch_novelty))
    code = (f"import sys; from transferkit.export import OnnxClassifier; m = OnnxClassifier({path!r}); "
            f"print(m.predict_proba({inputs!r}, return_novelty=True)[1].round(4).tolist()); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[1] == "False"


@pytest.fixture(scope="module")
def client(svm_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.serve import create_app

    # A long delay: the concurrent requests below surely meet in batches.
    with TestClient(create_app(svm_dir, precision="fp32", max_delay_ms=200)) as client:
        yield client


def test_batched_answers_equal_predict_and_carry_the_flag(client, svm_dir, strangers):
    images, _ = make_images(n_per_class=3, size=32, seed=5)
    payloads = [png_bytes(image) for image in images] + [path.read_bytes() for path in strangers]
    classifier = load(svm_dir, precision="fp32")
    pixels = np.concatenate([images, classifier_pixels(classifier, strangers)])
    expected, novelty = classifier.predict_proba(pixels, return_novelty=True)

    def ask(index: int) -> dict:
        response = client.post("/predict?top_k=3", files=[("files", (f"{index}.png", payloads[index], "image/png"))])
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        answers = list(pool.map(ask, range(len(payloads))))
    for answer, row, score in zip(answers, expected, novelty):
        assert answer["label"] == classifier.classes_[row.argmax()]
        assert [entry["probability"] for entry in answer["top_k"]] == pytest.approx(sorted(row, reverse=True), abs=1e-5)
        assert answer["novelty"] == pytest.approx(score, abs=1e-5)
        assert answer["unknown"] is bool(score > classifier.novelty_.threshold)
    info = client.get("/model").json()
    assert info["novelty"]["threshold"] == classifier.novelty_.threshold and info["runtime"] == "pytorch"
    assert info["batching"]["images"] == len(payloads) and info["batching"]["batches"] < len(payloads)  # some were shared


def classifier_pixels(classifier, paths) -> np.ndarray:
    from transferkit.data import load_pixels

    return np.asarray(load_pixels([str(p) for p in paths], classifier.image_size_, cache_dir=False))


def test_requests_that_arrive_together_share_a_forward_pass():
    from transferkit.serve.batcher import Batcher

    calls = []

    def forward(pixels):
        calls.append(len(pixels))
        return [int(p.sum()) for p in pixels]

    batcher = Batcher(forward, max_batch_size=8, max_delay_ms=300)
    futures = [batcher.submit(np.full((n, 2, 2, 3), i, np.uint8)) for i, n in enumerate([1, 2, 3, 4, 1])]
    results = [future.result(timeout=10) for future in futures]
    batcher.close()
    assert results == [[12 * i] * n for i, n in enumerate([1, 2, 3, 4, 1])]  # each request its own rows
    assert calls == [6, 5]  # 1 + 2 + 3, then 4 + 1: a request is never split, a batch holds at most 8


def test_a_failing_batch_fails_its_requests_and_the_batcher_lives_on():
    from transferkit.serve.batcher import Batcher

    def forward(pixels):
        if pixels.max() == 9:
            raise RuntimeError("boom")
        return list(pixels)

    batcher = Batcher(forward, max_batch_size=4, max_delay_ms=0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(np.full((1, 1, 1, 3), 9, np.uint8)).result(timeout=10)
    assert len(batcher.submit(np.zeros((2, 1, 1, 3), np.uint8)).result(timeout=10)) == 2
    batcher.close()


@pytest.mark.parametrize(("command", "module", "extra"), [("serve", "fastapi", "serve"), ("serve", "uvicorn", "serve"),
                                                          ("export", "onnx", "export")])
def test_a_missing_extra_is_one_line_naming_it(command, module, extra, svm_dir, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".") or m.startswith("transferkit.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    args = [command, svm_dir] + (["--out", tmp_path / "m.onnx"] if command == "export" else [])
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"pip install 'transferkit[{extra}]'" in lines[0], result.output
    assert "Traceback" not in result.output


def test_the_report_shows_the_most_novel_images(svm_dir, image_folder, tmp_path):
    pytest.importorskip("jinja2")
    result = invoke("report", svm_dir, image_folder, "--out", tmp_path / "report", "--mistakes", 0)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    novel = summary["most_novel"]
    assert len(novel) == 8 and [n["novelty"] for n in novel] == sorted((n["novelty"] for n in novel), reverse=True)
    assert summary["metrics"]["novelty"]["threshold"] == load(svm_dir).novelty_.threshold
    page = (tmp_path / "report" / "report.html").read_text()
    assert "The most novel images" in page and 'alt="novel image 1"' in page


def test_serving_an_onnx_file_answers_like_predict_without_importing_torch(svm_dir, image_folder, strangers, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from transferkit.export import OnnxClassifier, export_onnx

    path = export_onnx(svm_dir, tmp_path / "model.onnx").path
    inputs = [str(image_folder / "red" / "000.png"), *map(str, strangers)]
    expected, novelty = OnnxClassifier(path).predict_proba(inputs, return_novelty=True)
    code = f"""
import json, sys
from fastapi.testclient import TestClient
from transferkit.serve import create_app
answers = []
with TestClient(create_app({path!r})) as client:
    for name in {inputs!r}:
        response = client.post("/predict", files=[("files", (name, open(name, "rb").read(), "image/png"))])
        answers.append(response.json()["predictions"][0])
    info = client.get("/model").json()
    explain = client.post("/predict?explain=true", files=[("files", ("a.png", open({inputs[0]!r}, "rb").read(), "image/png"))])
print(json.dumps({{"answers": answers, "runtime": info["runtime"], "explain": explain.status_code, "torch": "torch" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["runtime"] == "onnxruntime" and report["explain"] == 400
    for answer, row, score in zip(report["answers"], expected, novelty):
        assert answer["probability"] == pytest.approx(row.max(), abs=1e-5)
        assert answer["novelty"] == pytest.approx(score, abs=1e-5) and answer["unknown"] is not None
