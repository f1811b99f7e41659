"""auto decided by measurement: what the rules propose, the measured race, the budget, and pixels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

import transferkit
from conftest import TINY_BACKBONE, make_images
from transferkit.advise import DataFacts, advise
from transferkit.advise.rules import Recommendation
from transferkit.advise.select import Candidate, Trial, measure, propose, winner
from transferkit.backbones import get_backbone_spec
from transferkit.data import ImageSet
from transferkit.strategies.pixels import _inputs, fit_pixel_classifier, pixel_kernel_from
from transferkit.training.inputs import pixels_to_tensor
from transferkit.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def recommendation(class_weight=None) -> Recommendation:
    return Recommendation(strategy="finetune", backbone="b", freeze=3, lr=1e-3, backbone_lr_factor=0.1, augment="standard",
                          image_size=224, class_weight=class_weight)


def facts(n: int, side: int) -> DataFacts:
    return DataFacts(n_samples=n, n_classes=2, height=(side, float(side), side), width=(side, float(side), side))


def test_svm_at_the_backbones_size_is_always_proposed_first_and_small_data_gets_pixels():
    small = propose(facts(300, 25), recommendation(), 224)
    assert small[0] == Candidate("svm", 224, None, small[0].proposed_by)  # small images upsampled to 224
    assert [c.label for c in small] == ["svm 224 px", "logistic 224 px", "svm 224 px, flips", "logistic 224 px, flips", "pixels 25 px"]


def test_large_images_add_a_smaller_svm_imbalance_adds_weights_and_large_data_drops_pixels():
    large = propose(facts(20_000, 300), recommendation("balanced"), 224)
    assert [c.label for c in large] == ["svm 224 px", "svm 128 px", "logistic 224 px", "svm 224 px, flips", "logistic 224 px, flips",
                                        "svm 224 px, balanced"]


def test_the_best_accuracy_wins_and_a_tie_goes_to_the_cheaper_earlier_candidate():
    a, b, c = (Candidate(s, 224, None, "") for s in ("svm", "logistic", "pixels"))
    assert winner([Trial(a, 0.90, 1), Trial(b, 0.95, 1), Trial(c, 0.80, 1)]).candidate is b
    assert winner([Trial(a, 0.951, 1), Trial(b, 0.952, 1), Trial(c, None, 0, "skipped")]).candidate is a


def test_the_budget_skips_candidates_that_no_longer_fit_with_a_fake_clock(tiny_weights, tmp_path):
    images, labels = make_images(6, 32)
    data = ImageSet(sources=list(images), labels=labels)
    ticks = itertools.count(0.0, 1.0)  # every clock reading is one second later
    candidates = [Candidate("svm", 32, None, "always"), Candidate("logistic", 32, None, "x"), Candidate("pixels", 16, None, "y")]
    trials = measure(
        data, candidates, backbone=TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=str(tmp_path), seed=0,
        budget_seconds=10.0, seconds_per_image=lambda size: 1.0, clock=lambda: next(ticks),
    )
    # 18 images x 1 s > the 7 s (70 % of 10 s) left: both feature candidates skipped, saying why
    assert [t.skipped is not None for t in trials] == [True, True, False]
    assert "18 s to measure" in trials[0].skipped and trials[2].accuracy is not None
    assert winner(trials).candidate.strategy == "pixels"


def test_without_a_budget_every_candidate_is_measured(tiny_weights, tmp_path):
    images, labels = make_images(6, 32)
    trials = measure(ImageSet(sources=list(images), labels=labels), [Candidate("svm", 32, None, ""), Candidate("pixels", 16, None, "")],
                     backbone=TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=str(tmp_path), seed=0)
    assert all(0.0 <= t.accuracy <= 1.0 and t.skipped is None for t in trials)
    assert trials[1].accuracy == 1.0  # colours separate perfectly in pixel space


def test_advise_with_measure_says_which_rule_proposed_what_and_which_measurement_decided(tiny_weights, tmp_path):
    images, labels = make_images(6, 32)
    advice = advise(images, labels, backbones=[TINY_BACKBONE], weights_path=tiny_weights, device="cpu", measure=True,
                    cache_dir=str(tmp_path))
    reasons = advice.recommendation.reasons
    assert any(r.startswith("the rules proposed") for r in reasons)
    assert sum(r.startswith("candidate ") for r in reasons) == len(advice.trials) >= 3
    chosen = winner(advice.trials).candidate
    assert (advice.recommendation.strategy, advice.recommendation.image_size) == (chosen.strategy, chosen.image_size)
    assert reasons[-1].startswith(f"measured on 18 images: {chosen.label} scored best")
    assert advice.to_dict()["trials"][0]["strategy"] == "svm"


@pytest.mark.parametrize("n_classes", [2, 3])
def test_pixel_kernel_computes_the_svcs_own_decision_values(n_classes):
    images, labels = make_images(8, 12, seed=1)
    keep = np.isin(labels, ["red", "green", "blue"][:n_classes])
    images, targets = images[keep], np.unique(np.array(labels)[keep], return_inverse=True)[1]
    svc, grey, _ = fit_pixel_classifier(images, targets, seed=0, class_weight=None)
    preprocessing = get_backbone_spec("efficientnet_lite0").preprocessing
    model = pixel_kernel_from(svc, side=12, grey=grey, n_classes=n_classes, preprocessing=preprocessing)
    x = (pixels_to_tensor(images).float() / 255 - torch.tensor(preprocessing.mean).view(1, 3, 1, 1)) / torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    scores = model(x).detach().numpy()
    reference = svc.decision_function(_inputs(images, grey))
    if n_classes == 2:
        reference = np.stack([np.zeros_like(reference), reference], axis=1)
    np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert isinstance(svc, SVC) and (scores.argmax(1) == svc.predict(_inputs(images, grey))).all()


def test_pixels_fits_saves_loads_and_predicts_the_same(tmp_path):
    images, labels = make_images(6, 20)
    clf = transferkit.ImageClassifier(strategy="pixels", image_size=16, device="cpu", precision="fp32", cache_dir=False).fit(images, labels)
    assert clf.plan_.side == 16 and clf.score(images, labels) == 1.0
    transferkit.save(clf, tmp_path / "model")
    loaded = transferkit.load(tmp_path / "model", precision="fp32", cache_dir=False)
    np.testing.assert_allclose(loaded.predict_proba(images), clf.predict_proba(images), atol=1e-6)


def test_an_auto_fit_records_its_estimate_next_to_its_measured_time(tiny_params, tmp_path):
    images, labels = make_images(6, 32)
    clf = transferkit.ImageClassifier(**dict(tiny_params, strategy="auto", image_size="auto", cache_dir=str(tmp_path))).fit(images, labels)
    assert clf.advice_.seconds <= clf.estimated_fit_seconds_ and clf.fit_seconds_ > 0
    assert transferkit.ImageClassifier(**dict(tiny_params, strategy="svm")).fit(images, labels).estimated_fit_seconds_ is None


def test_flips_average_the_features_of_the_four_views_at_fit_and_predict(tiny_weights, tmp_path):
    from transferkit.strategies.features import FeatureExtractor, symmetric_features

    images, labels = make_images(6, 32)
    extractor = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=str(tmp_path))
    views = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    expected = np.mean([extractor.transform(np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(symmetric_features(extractor, images, "flips"), expected, rtol=1e-5)
    # a flipped image has the same averaged features: the model's answer is flip-invariant
    flipped = np.ascontiguousarray(images[:, :, ::-1])
    np.testing.assert_allclose(symmetric_features(extractor, flipped, "flips"), expected, rtol=1e-4, atol=1e-5)
    params = dict(backbone=TINY_BACKBONE, weights=str(tiny_weights), strategy="logistic", image_size=32, C=0.1,
                  device="cpu", precision="fp32", cache_dir=str(tmp_path))
    clf = transferkit.ImageClassifier(**params, symmetries="flips").fit(images, labels)
    assert clf.settings_["symmetries"] == "flips"
    np.testing.assert_allclose(clf.predict_proba(flipped), clf.predict_proba(images), atol=1e-5)
    plain = transferkit.ImageClassifier(**params).fit(images, labels)
    assert plain.settings_["symmetries"] == "none"
    transferkit.save(clf, tmp_path / "m")
    loaded = transferkit.load(tmp_path / "m", precision="fp32", cache_dir=str(tmp_path))
    np.testing.assert_allclose(loaded.predict_proba(flipped), clf.predict_proba(images), atol=1e-5)


def test_when_the_budget_measures_nothing_auto_falls_back_to_svm_and_says_so():
    from transferkit.advise.select import reasons

    trials = [Trial(Candidate("svm", 224, None, "always"), None, 0.0, "skipped: ~90 s to measure, 3 s of the budget left"),
              Trial(Candidate("logistic", 224, None, "x"), None, 0.0, "skipped: ~90 s to measure, 3 s of the budget left")]
    chosen = winner(trials)
    assert chosen.candidate.strategy == "svm"
    assert reasons(trials, chosen, 100)[-1] == "no candidate could be measured within the budget: auto fits svm 224 px unmeasured"


def test_the_budget_counts_cached_features_as_free(tiny_weights, tmp_path):
    # logistic reads the features svm extracted at the same size: no extraction to budget for
    images, labels = make_images(6, 32)
    ticks = itertools.count(0.0, 50.0)  # every clock reading is 50 s later
    candidates = [Candidate("svm", 32, None, "always"), Candidate("logistic", 32, None, "x"),
                  Candidate("logistic", 32, None, "y", "flips")]
    trials = measure(
        ImageSet(sources=list(images), labels=labels), candidates, backbone=TINY_BACKBONE, weights=str(tiny_weights),
        runtime=CPU, cache_dir=str(tmp_path), seed=0, budget_seconds=500.0 / 0.7, seconds_per_image=lambda size: 20.0,
        clock=lambda: next(ticks),
    )
    # svm: 18 images x 20 s = 360 s of 450 s left; logistic: 300 s left, but its features are cached;
    # flips: 3 views not extracted yet (1080 s) with 150 s left: skipped
    assert [t.skipped is None for t in trials] == [True, True, False]
    assert "1080 s to measure" in trials[2].skipped


def test_the_estimate_uses_the_winning_trial(tiny_params, tmp_path):
    from types import SimpleNamespace

    from transferkit.estimator import estimated_fit_seconds

    plain = Trial(Candidate("svm", 224, None, ""), 0.70, 10.0, extract_seconds=8.0)
    flips = Trial(Candidate("svm", 224, None, "", "flips"), 0.80, 40.0, extract_seconds=30.0)
    advice = SimpleNamespace(trials=[plain, flips], seconds=5.0)
    assert estimated_fit_seconds(advice) == 5.0 + 10.0  # the flips trial's classifier fit, not the plain svm's
