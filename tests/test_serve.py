"""The HTTP API (FastAPI's TestClient): status codes, bad uploads as 4xx JSON, concurrent requests."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import make_images
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit import load

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from transferkit.serve import UploadLimits, create_app  # noqa: E402


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(image_folder, tiny_weights, tmp_path_factory):
    # logistic: on these colour images it is right every time, so swapped answers would show
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("serve") / "model", strategy="logistic")


@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(model_dir, limits=UploadLimits(max_bytes=50_000, max_pixels=300 * 300, max_files=4))) as client:
        yield client


def test_health_model_and_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["classes"] == ["blue", "green", "red"] and info["image_size"] == 32
    assert info["backbone"] == "test_efficientnet" and "validation_accuracy" in info["metrics"]
    assert info["limits"] == {"max_bytes": 50_000, "max_pixels": 90_000, "max_files": 4}
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text


def test_predict_matches_the_library_for_several_images(client, model_dir, image_folder):
    paths = [image_folder / "red" / "000.png", image_folder / "green" / "008.png", image_folder / "blue" / "016.png"]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = client.post("/predict?top_k=2&explain=true", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = load(model_dir).predict_proba(paths)
    assert [p["filename"] for p in predictions] == [p.name for p in paths]
    for prediction, row in zip(predictions, expected):
        assert prediction["label"] == ["blue", "green", "red"][row.argmax()]
        assert prediction["probability"] == pytest.approx(row.max(), abs=1e-4)
        assert len(prediction["top_k"]) == 2 and prediction["heatmap_note"]
        assert prediction["heatmap"] is None or prediction["heatmap"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("name", "payload", "status", "message"),
    [
        ("empty.png", b"", 400, "empty"),
        ("notes.txt", b"this is not an image", 415, "not an image"),
        ("big.png", b"\x89PNG" + bytes(60_000), 413, "larger than the limit"),
        ("bomb.png", png_bytes(np.zeros((400, 400, 3), np.uint8)), 413, "pixels"),  # 160k px > 90k limit, 1 kB file
        ("cut.png", png_bytes(make_images(1, 64)[0][0])[:300], 400, "truncated or corrupt"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_the_server_carries_on(client, name, payload, status, message):
    response = client.post("/predict", files=[("files", (name, payload, "image/png"))])
    assert response.status_code == status, response.text
    assert message in response.json()["detail"] and name in response.json()["detail"]
    assert client.get("/health").status_code == 200


def test_malformed_requests_are_4xx(client):
    assert client.post("/predict").status_code == 422  # no files field
    good = ("files", ("a.png", png_bytes(make_images(1, 32)[0][0]), "image/png"))
    assert client.post("/predict?top_k=0", files=[good]).status_code == 422
    response = client.post("/predict", files=[good] * 5)
    assert response.status_code == 413 and "limit is 4" in response.json()["detail"]


def test_concurrent_requests_get_their_own_answers(client, model_dir):
    # Each request carries one image of a known colour; the answers must not be swapped.
    images, labels = make_images(n_per_class=4, size=32, seed=5)
    expected = load(model_dir).predict(images)

    def ask(index: int) -> str:
        response = client.post("/predict?explain=true", files=[("files", (f"{index}.png", png_bytes(images[index]), "image/png"))])
        assert response.status_code == 200, response.text
        prediction = response.json()["predictions"][0]
        assert prediction["filename"] == f"{index}.png"
        return prediction["label"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, range(len(images))))
    assert answers == list(expected)
    assert len(set(answers)) > 1  # distinct answers: a mix-up would show


def test_the_server_leaves_one_core_to_http_and_decoding(monkeypatch):
    from transferkit.serve import model as served_module
    from transferkit.training import machine

    for usable, expected in ((1, 1), (2, 1), (16, 15)):
        monkeypatch.setattr(machine, "usable_cpus", lambda usable=usable: usable)
        assert served_module.serving_threads() == expected


def test_threads_set_the_networks_cpu_threads_and_answers_stay_the_same(model_dir):
    import torch

    images, _ = make_images(n_per_class=2, size=32, seed=9)
    expected = load(model_dir).predict_proba(images)
    before = torch.get_num_threads()
    try:
        with TestClient(create_app(model_dir, threads=2)) as client:
            assert torch.get_num_threads() == 2
            response = client.post("/predict?top_k=3", files=[("files", (f"{i}.png", png_bytes(image), "image/png"))
                                                                for i, image in enumerate(images)])
    finally:
        torch.set_num_threads(before)
    assert response.status_code == 200, response.text
    served = [answer["probability"] for answer in response.json()["predictions"]]
    np.testing.assert_allclose(served, expected.max(axis=1), atol=1e-4)


def test_serve_rejects_fewer_than_one_thread(model_dir):
    from typer.testing import CliRunner

    from transferkit.cli import app

    result = CliRunner().invoke(app, ["serve", str(model_dir), "--threads", "0"])
    assert result.exit_code == 2
    assert "--threads >= 1" in result.output
