"""Feature strategies (svm, logistic), BottleneckFeatures and the per-image feature cache."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

import transferkit
from conftest import TINY_BACKBONE, make_images
from transferkit import ImageClassifier
from transferkit.strategies import features as features_module
from transferkit.strategies.features import BottleneckFeatures, FeatureCache, FeatureExtractor, model_digest
from transferkit.strategies.linear import C_GRID, fit_linear_classifier, fold_into_head
from transferkit.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


@pytest.fixture
def extractor(tiny_weights, tmp_path):
    return FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=tmp_path)


def test_bottleneck_features_is_a_sklearn_transformer_in_a_pipeline(tiny_weights, tmp_path):
    images, labels = make_images(6, 32)
    features = BottleneckFeatures(TINY_BACKBONE, image_size=32, weights=str(tiny_weights), cache_dir=tmp_path, device="cpu")
    out = features.fit_transform(images)
    assert out.shape == (18, features.n_features_out_) and out.dtype == np.float32
    pipeline = make_pipeline(
        BottleneckFeatures(TINY_BACKBONE, image_size=32, weights=str(tiny_weights), cache_dir=tmp_path, device="cpu"),
        LinearSVC(),
    ).fit(images, labels)
    assert set(pipeline.predict(images)) <= set(labels)


def test_cache_is_hit_on_the_second_run_and_missed_after_an_image_changes(extractor, tiny_weights, tmp_path, monkeypatch):
    images, _ = make_images(3, 32)
    first = extractor.transform(images)

    calls = []
    real = features_module.pooled_features
    monkeypatch.setattr(features_module, "pooled_features", lambda m, x: calls.append(len(x)) or real(m, x))
    # A new extractor (a new process, say) reads the disk cache: nothing is recomputed.
    again = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.transform(images), first)
    assert calls == []
    # A subset (a CV fold) hits too.
    again.transform(images[::2])
    assert calls == []
    # One changed image: exactly one image is recomputed, and its features change.
    changed = images.copy()
    changed[4] = 255 - changed[4]
    result = again.transform(changed)
    assert calls == [1]
    assert not np.allclose(result[4], first[4])
    np.testing.assert_array_equal(result[:4], first[:4])


def test_cache_is_missed_when_the_backbone_weights_change(tiny_weights, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_BACKBONE).state_dict().items()}, str(other))
    images, _ = make_images(2, 32)
    a = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=tmp_path)
    b = FeatureExtractor(TINY_BACKBONE, weights=str(other), runtime=CPU, cache_dir=tmp_path)
    assert model_digest(a.model) != model_digest(b.model)
    assert not np.allclose(a.transform(images), b.transform(images))


def test_feature_cache_ignores_damaged_shards(tmp_path):
    cache = FeatureCache(tmp_path, "key")
    cache.put(["a", "b"], np.ones((2, 3)))
    (cache.folder / "broken.json").write_text("{not json")
    reopened = FeatureCache(tmp_path, "key")
    assert reopened.size == 2 and reopened.missing(["a", "c"]) == [1]


@pytest.mark.parametrize("strategy", ["svm", "logistic"])
def test_folding_the_pipeline_into_the_head_reproduces_its_decisions(extractor, strategy):
    images, labels = make_images(6, 32)
    targets = np.searchsorted(sorted(set(labels)), labels)
    features = extractor.transform(images)
    pipeline, info = fit_linear_classifier(features, targets, np.arange(18), strategy=strategy, C=None, seed=0)
    assert info["C"] in C_GRID and len(info["inner_cv"]) == len(C_GRID)
    model = extractor.model
    fold_into_head(model, pipeline, 3)
    import torch

    with torch.no_grad():
        logits = model.get_classifier()(torch.as_tensor(features)).numpy()
    np.testing.assert_allclose(logits, pipeline.decision_function(features), rtol=1e-4, atol=1e-4)
    if strategy == "logistic":
        np.testing.assert_allclose(torch.softmax(torch.as_tensor(logits), 1).numpy(), pipeline.predict_proba(features), atol=1e-5)


def test_binary_logistic_head_gives_the_exact_probabilities(extractor):
    import torch

    images, labels = make_images(6, 32)
    keep = [i for i, label in enumerate(labels) if label != "blue"]
    targets = np.searchsorted(["green", "red"], [labels[i] for i in keep])
    features = extractor.transform(images[keep])
    pipeline, _ = fit_linear_classifier(features, targets, np.arange(len(keep)), strategy="logistic", C=1.0, seed=0)
    fold_into_head(extractor.model, pipeline, 2)
    with torch.no_grad():
        proba = torch.softmax(extractor.model.get_classifier()(torch.as_tensor(features)), 1).numpy()
    np.testing.assert_allclose(proba, pipeline.predict_proba(features), atol=1e-5)


@pytest.mark.parametrize("strategy", ["svm", "logistic"])
def test_feature_strategies_fit_save_and_load(tiny_params, strategy, tmp_path):
    images, labels = make_images(6, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy=strategy), feature_views=1, cache_dir=str(tmp_path)).fit(images, labels)
    assert clf.plan_.views == 1 and clf.validation_score_ is not None
    assert clf.score(images, labels) > 0.5
    transferkit.save(clf, tmp_path / "model")
    loaded = transferkit.load(tmp_path / "model", precision="fp32")
    np.testing.assert_allclose(loaded.predict_proba(images), clf.predict_proba(images), atol=1e-5)


def test_feature_strategies_leave_the_backbone_untouched(tiny_params, tiny_weights):
    from transferkit.backbones import create_backbone

    images, labels = make_images(4, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="svm"), C=0.1).fit(images, labels)
    pretrained, _ = create_backbone(TINY_BACKBONE, num_classes=3, weights_path=tiny_weights)
    expected = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier")}
    got = clf.model_.state_dict()
    assert all(np.array_equal(got[k].numpy(), v.numpy()) for k, v in expected.items())
    assert clf.plan_.C == 0.1 and clf.plan_.inner_cv is None


def test_head_on_cached_views_shares_the_svm_feature_cache(tiny_params, tmp_path, monkeypatch):
    images, labels = make_images(6, 32)
    params = dict(tiny_params, cache_dir=str(tmp_path))
    ImageClassifier(**dict(params, strategy="svm"), C=0.1).fit(images, labels)
    computed = []
    original = features_module.pooled_features
    monkeypatch.setattr(features_module, "pooled_features", lambda model, x: computed.append(len(x)) or original(model, x))

    head = ImageClassifier(**dict(params, strategy="head", augment="none", prefix_views=2)).fit(images, labels)
    assert computed == []  # training and validation features of the plain images: all from svm's cache
    assert len(head.history_["history"]) == params["epochs"]

    ImageClassifier(**dict(params, strategy="head", augment="light", prefix_views=2)).fit(images, labels)
    assert sum(computed) > 0  # augmented views are new pixels: computed once
    computed.clear()
    again = ImageClassifier(**dict(params, strategy="head", augment="light", prefix_views=2)).fit(images, labels)
    assert computed == []  # same seed, same augmented pixels: cache hits
    first = ImageClassifier(**dict(params, strategy="head", augment="light", prefix_views=2), verbose=False)
    np.testing.assert_allclose(first.fit(images, labels).predict_proba(images), again.predict_proba(images), atol=1e-6)


@pytest.mark.parametrize("strategy", ["svm", "head"])
def test_predict_of_a_frozen_backbone_reads_the_feature_cache_and_equals_the_network(tiny_params, strategy, tmp_path, monkeypatch):
    from transferkit.training.inputs import predict_logits

    images, labels = make_images(6, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy=strategy, cache_dir=str(tmp_path)), C=0.1).fit(images, labels)
    network = predict_logits(clf.model_, images, clf.preprocessing_, CPU).softmax(1).numpy()
    np.testing.assert_allclose(clf.predict_proba(images), network, atol=1e-5)
    computed = []
    original = features_module.pooled_features
    monkeypatch.setattr(features_module, "pooled_features", lambda model, x: computed.append(len(x)) or original(model, x))
    transferkit.save(clf, tmp_path / "model")
    loaded = transferkit.load(tmp_path / "model", precision="fp32")
    loaded.cache_dir = str(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(images), network, atol=1e-5)
    assert computed == []  # the loaded model's backbone digest finds the features of the first predict


def test_balanced_class_weights_reach_the_linear_classifier():
    rng = np.random.default_rng(0)
    # class 1 is rare and overlaps class 0: unweighted, the SVM mostly ignores it
    features = np.concatenate([rng.normal(0, 1, (90, 4)), rng.normal(0.8, 1, (10, 4))])
    targets = np.array([0] * 90 + [1] * 10)
    plain, _ = fit_linear_classifier(features, targets, np.arange(100), strategy="svm", C=0.01, seed=0)
    weighted, _ = fit_linear_classifier(features, targets, np.arange(100), strategy="svm", C=0.01, seed=0, class_weight="balanced")
    assert weighted[-1].class_weight == "balanced"
    assert (weighted.predict(features)[targets == 1] == 1).sum() > (plain.predict(features)[targets == 1] == 1).sum()
