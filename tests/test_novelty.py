"""Novelty: the score, its calibrated threshold, and a model that says "unknown" (issue 31)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_images
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit import load
from transferkit.evaluation.novelty import NoveltyScorer, fit_novelty
from transferkit.persistence import CONFIG_NAME, NOVELTY_NAME


def clusters(n: int, seed: int, centres: np.ndarray, spread: float = 0.3) -> np.ndarray:
    """n features around the given centres (Gaussian), float32."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(centres), n)
    return (centres[picks] + spread * rng.standard_normal((n, centres.shape[1]))).astype(np.float32)


CENTRES = np.random.default_rng(0).standard_normal((4, 32)) * 2


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_false_alarm_rate_on_new_images_of_the_training_distribution_is_near_the_stated_one(rate):
    scorer = fit_novelty(clusters(1500, 1, CENTRES), false_alarm_rate=rate)
    new = clusters(4000, 2, CENTRES)
    flagged = scorer.unknown(scorer.score(new)).mean()
    assert abs(flagged - rate) < 0.3 * rate + 0.01  # held-out calibration: near, not exact
    far = clusters(500, 3, np.random.default_rng(9).standard_normal((4, 32)) * 2)
    assert scorer.unknown(scorer.score(far)).mean() > 0.95
    assert scorer.score(new).min() >= 0.0 and scorer.score(far).max() <= 2.0


def test_identical_copies_do_not_lower_the_threshold():
    features = clusters(300, 1, CENTRES)
    doubled = np.concatenate([features, features])
    groups = np.concatenate([np.arange(300), np.arange(300)])
    with_groups = fit_novelty(doubled, groups)
    without = fit_novelty(doubled)
    assert without.threshold == pytest.approx(0.0, abs=1e-3)  # every copy's nearest neighbour is its twin
    assert with_groups.threshold == pytest.approx(fit_novelty(features).threshold, rel=1e-3)


def test_scorer_round_trips_through_config_and_metadata_and_checks_shapes():
    scorer = fit_novelty(clusters(200, 1, CENTRES), max_reference=100)
    assert scorer.reference.shape == (100, 32) and scorer.reference.dtype == np.float16
    query = clusters(20, 5, CENTRES)
    again = NoveltyScorer.from_config(json.loads(json.dumps(scorer.to_config())), scorer.reference)
    via_metadata = NoveltyScorer.from_metadata(json.loads(json.dumps(scorer.to_metadata())))
    np.testing.assert_array_equal(again.score(query), scorer.score(query))
    np.testing.assert_array_equal(via_metadata.score(query), scorer.score(query))
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        scorer.score(np.zeros((2, 31), np.float32))
    with pytest.raises(ValueError, match="false_alarm_rate"):
        fit_novelty(query, false_alarm_rate=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        fit_novelty(query[:1])


@pytest.fixture(scope="module")
def svm_dir(image_folder, tiny_weights, tmp_path_factory):
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("novelty") / "svm", strategy="svm")


@pytest.mark.parametrize("strategy", ["svm", "head"])
def test_a_fitted_model_scores_novelty_and_keeps_it_through_save_and_load(strategy, image_folder, tiny_weights, tmp_path):
    folder = fit_tiny_model(image_folder, tiny_weights, tmp_path / strategy, strategy=strategy)
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert (folder / NOVELTY_NAME).is_file() and config["novelty"]["false_alarm_rate"] == 0.05
    classifier = load(folder)
    images, _ = make_images(n_per_class=3, size=32, seed=7)
    probabilities, novelty = classifier.predict_proba(images, return_novelty=True)
    np.testing.assert_allclose(probabilities, classifier.predict_proba(images), atol=1e-6)
    assert novelty.shape == (len(images),) and np.all(novelty >= 0)
    assert classifier.novelty_.threshold == config["novelty"]["threshold"]


def test_an_old_model_without_a_score_loads_and_says_so(svm_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(svm_dir, old)
    config = json.loads((old / CONFIG_NAME).read_text())
    del config["novelty"]  # as written before novelty existed
    (old / CONFIG_NAME).write_text(json.dumps(config))
    (old / NOVELTY_NAME).unlink()
    classifier = load(old)
    assert classifier.novelty_ is None
    probabilities, novelty = classifier.predict_proba(make_images(1, 32)[0], return_novelty=True)
    assert novelty is None and probabilities.shape == (3, 3)


def test_a_damaged_or_missing_novelty_file_is_a_clear_error(svm_dir, tmp_path):
    import shutil

    from transferkit.errors import ModelFileError

    damaged = tmp_path / "damaged"
    shutil.copytree(svm_dir, damaged)
    data = bytearray((damaged / NOVELTY_NAME).read_bytes())
    data[-1] ^= 0xFF
    (damaged / NOVELTY_NAME).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256"):
        load(damaged)
    (damaged / NOVELTY_NAME).unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load(damaged)


def test_a_trained_network_calibrates_on_its_validation_images():
    rng = np.random.default_rng(4)
    tight = clusters(300, 1, CENTRES, spread=0.05)  # as a network pulls its own training images together
    loose = clusters(100, 2, CENTRES, spread=0.3)  # its validation images, as new images will be
    features = np.concatenate([tight, loose])
    held_out = np.arange(300, 400)
    leave_one_out = fit_novelty(features)
    calibrated = fit_novelty(features, held_out=held_out)
    assert "validation" in calibrated.calibration["held_out"] and calibrated.calibration["n_images"] == 100
    new = clusters(2000, int(rng.integers(100)), CENTRES, spread=0.3)
    assert calibrated.unknown(calibrated.score(new)).mean() < 0.12
    assert leave_one_out.unknown(leave_one_out.score(new)).mean() > 0.2  # what leave one out would have flagged
    assert len(calibrated.reference) == 400  # the validation images are kept as references too
