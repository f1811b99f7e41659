"""Model folders: safetensors + JSON, atomic, never unpickled, mismatches caught."""

from __future__ import annotations

import json

import numpy as np
import pytest

import transferkit
from conftest import make_images
from transferkit import ImageClassifier, ModelFileError
from transferkit.persistence import CONFIG_NAME, NOVELTY_NAME, WEIGHTS_NAME


@pytest.fixture(scope="module")
def fitted(tiny_weights):
    images, labels = make_images(4, 32)
    clf = ImageClassifier(
        backbone="test_efficientnet", strategy="finetune", weights=str(tiny_weights), image_size=32, epochs=1, batch_size=8, device="cpu", precision="fp32"
    ).fit(images, labels)
    return clf, images


def test_save_and_load_round_trip_gives_identical_predictions(fitted, tmp_path):
    clf, images = fitted
    transferkit.save(clf, tmp_path / "model", metrics={"val_accuracy": 0.5})
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, NOVELTY_NAME, "MODEL_CARD.md"])
    config = json.loads((tmp_path / "model" / CONFIG_NAME).read_text())
    assert config["classes"] == ["blue", "green", "red"]
    assert config["backbone"] == "test_efficientnet" and config["image_size"] == 32
    assert config["preprocessing"]["mean"] and config["transferkit_version"] == transferkit.__version__
    assert config["params"]["strategy"] == "finetune" and config["metrics"] == {"val_accuracy": 0.5}

    loaded = transferkit.load(tmp_path / "model", precision="fp32")
    np.testing.assert_allclose(loaded.predict_proba(images), clf.predict_proba(images), rtol=1e-5, atol=1e-6)
    assert list(loaded.classes_) == list(clf.classes_)


def test_loading_never_unpickles(fitted, tmp_path, monkeypatch):
    import pickle

    import torch

    clf, _ = fitted
    transferkit.save(clf, tmp_path / "model")

    def forbidden(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    transferkit.load(tmp_path / "model")


def test_a_crash_while_writing_leaves_the_previous_model_intact(fitted, tmp_path, monkeypatch):
    from transferkit import persistence

    clf, images = fitted
    transferkit.save(clf, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        transferkit.save(clf, tmp_path / "model")
    after = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    assert after == before  # no temp files left, nothing half-written
    transferkit.load(tmp_path / "model")


def test_weights_from_another_run_are_detected(fitted, tmp_path):
    clf, _ = fitted
    transferkit.save(clf, tmp_path / "a")
    transferkit.save(clf, tmp_path / "b", metrics={"x": 1})
    data = bytearray((tmp_path / "b" / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        transferkit.load(tmp_path / "a")


@pytest.mark.parametrize("damage", ["missing_dir", "missing_weights", "bad_json", "missing_keys"])
def test_broken_model_folders_give_clear_errors(fitted, tmp_path, damage):
    clf, _ = fitted
    folder = tmp_path / "model"
    transferkit.save(clf, folder)
    if damage == "missing_dir":
        folder = tmp_path / "nowhere"
    elif damage == "missing_weights":
        (folder / WEIGHTS_NAME).unlink()
    elif damage == "bad_json":
        (folder / CONFIG_NAME).write_text("{not json")
    else:
        (folder / CONFIG_NAME).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ModelFileError, match=str(folder.name)):
        transferkit.load(folder)


def test_a_model_fitted_for_a_gpu_loads_and_predicts_on_a_cpu(tiny_params, tmp_path):
    # Where a model ran is not part of it: device and precision are never saved.
    images, labels = make_images(4, 32)
    clf = ImageClassifier(**tiny_params).fit(images, labels)
    expected = clf.predict_proba(images)
    clf.set_params(device="cuda", precision="fp16")  # as if fitted on a GPU
    transferkit.save(clf, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "device" not in config["params"] and "precision" not in config["params"]
    loaded = transferkit.load(tmp_path / "model", device="cpu", precision="fp32")
    np.testing.assert_allclose(loaded.predict_proba(images), expected, atol=1e-6)
