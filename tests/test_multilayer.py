"""Multi-layer features (``feature_layers="stages"``): the wrapper's features, the shared cache,
fit/save/load/predict, ONNX, Grad-CAM, and the candidate ``auto`` races."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import transferkit
from conftest import TINY_BACKBONE, make_images
from transferkit import ImageClassifier
from transferkit.backbones import create_backbone
from transferkit.backbones.multilayer import StagePooledNetwork, with_feature_layers
from transferkit.errors import BackboneError, ConfigError
from transferkit.strategies import features as features_module
from transferkit.strategies.features import FeatureExtractor, pooled_features
from transferkit.training.inputs import predict_logits
from transferkit.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def test_stage_pooled_features_are_the_stages_mean_and_max_then_the_bottleneck(tiny_weights):
    network, _ = create_backbone(TINY_BACKBONE, num_classes=3, weights_path=tiny_weights)
    plain, _ = create_backbone(TINY_BACKBONE, num_classes=3, weights_path=tiny_weights)
    outputs = {}
    hooks = [block.register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out)) for k, block in enumerate(plain.blocks)]
    wrapped = StagePooledNetwork(network).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        got = wrapped.forward_features(images)
        bottleneck = pooled_features(plain.eval(), images)
    for hook in hooks:
        hook.remove()
    # stride >= 4: every block whose output is at most a quarter of the image's side
    deep = [k for k in sorted(outputs) if outputs[k].shape[-1] <= 32 // 4]
    assert deep and len(deep) < len(outputs)
    expected = torch.cat([*[torch.cat([outputs[k].mean((2, 3)), outputs[k].amax((2, 3))], 1) for k in deep], bottleneck], 1)
    assert got.shape == (4, wrapped.num_features)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[:, wrapped.bottleneck_columns], bottleneck)
    assert wrapped(images).shape == (4, 3)


def test_a_model_without_intermediate_outputs_is_refused_with_the_alternative():
    with pytest.raises(BackboneError, match="feature_layers='bottleneck'"):
        StagePooledNetwork(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    with pytest.raises(BackboneError, match="bottleneck, stages"):
        with_feature_layers(nn.Identity(), "everything")


def test_multi_layer_features_also_fill_the_bottleneck_cache(tiny_weights, tmp_path, monkeypatch):
    images, _ = make_images(4, 32)
    stages = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=tmp_path, layers="stages")
    multi = stages.transform(images)
    assert multi.shape == (12, stages.dim) and stages.dim > 2 * 100
    computed = []
    original = features_module.pooled_features
    monkeypatch.setattr(features_module, "pooled_features", lambda model, x: computed.append(len(x)) or original(model, x))
    bottleneck = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=tmp_path)
    shared = bottleneck.transform(images)
    assert computed == []  # every bottleneck feature came from the multi-layer pass
    fresh = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=False).transform(images)
    np.testing.assert_allclose(shared, fresh, atol=1e-5)
    np.testing.assert_array_equal(shared, multi[:, stages.model.bottleneck_columns])


@pytest.mark.parametrize("strategy", ["svm", "logistic"])
def test_a_multi_layer_model_fits_saves_loads_and_predicts_like_its_network(tiny_params, strategy, tmp_path):
    images, labels = make_images(6, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy=strategy, cache_dir=str(tmp_path)), feature_layers="stages").fit(images, labels)
    assert isinstance(clf.model_, StagePooledNetwork)
    assert clf.settings_["feature_layers"] == "stages" and "multi-layer" in clf.plan_.describe()
    network = predict_logits(clf.model_, images, clf.preprocessing_, CPU).softmax(1).numpy()
    np.testing.assert_allclose(clf.predict_proba(images), network, atol=1e-5)  # cached features -> head == whole network
    transferkit.save(clf, tmp_path / "model")
    loaded = transferkit.load(tmp_path / "model", precision="fp32")
    assert isinstance(loaded.model_, StagePooledNetwork)
    np.testing.assert_allclose(loaded.predict_proba(images), network, atol=1e-5)
    assert "multi-layer" in (tmp_path / "model" / "MODEL_CARD.md").read_text()


def test_bottleneck_stays_the_default_and_a_network_strategy_ignores_the_setting(tiny_params):
    images, labels = make_images(4, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="svm")).fit(images, labels)
    assert clf.settings_["feature_layers"] == "bottleneck" and not isinstance(clf.model_, StagePooledNetwork)
    with pytest.raises(ConfigError, match="feature_layers"):
        ImageClassifier(**dict(tiny_params, strategy="svm"), feature_layers="all").fit(images, labels)


def test_a_multi_layer_model_exports_to_onnx_with_the_same_logits(tiny_params, tmp_path):
    pytest.importorskip("onnxruntime")
    from transferkit.export import export_onnx

    images, labels = make_images(4, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="svm"), feature_layers="stages").fit(images, labels)
    transferkit.save(clf, tmp_path / "model")
    result = export_onnx(tmp_path / "model", tmp_path / "model.onnx", check_images=images)
    assert result.max_abs_diff < 1e-4


def test_grad_cam_explains_a_multi_layer_model_at_its_networks_deepest_stage(tiny_params):
    from transferkit.report.cam import heatmaps

    images, labels = make_images(3, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="svm"), feature_layers="stages").fit(images, labels)
    found = heatmaps(clf.model_, images[:2], clf.preprocessing_)
    assert len(found.maps) == 2 and all(m is None or (m.min() >= 0 and m.max() <= 1) for m in found.maps)


def test_cli_fit_takes_feature_layers(image_folder, tiny_weights, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    args = ["fit", str(image_folder), "--strategy", "svm", "--backbone", TINY_BACKBONE, "--weights", str(tiny_weights),
            "--image-size", "32", "--device", "cpu", "--precision", "fp32", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m"), "--feature-layers", "stages"])
    assert result.exit_code == 0, result.output
    assert '"feature_layers": "stages"' in (tmp_path / "m" / "config.json").read_text()
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "n"), "--feature-layers", "all"])
    assert bad.exit_code == 2 and "--feature-layers" in bad.output  # the flag, not the Python parameter (issue 33 item 12)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet18"])
def test_other_timm_families_pool_their_stages_and_keep_their_own_bottleneck(name):
    """MobileNetV3's bottleneck is its pre-logits layer (head_hidden_size), wider than its stages'
    num_features; ResNet has no per-block intermediates, so timm's feature stages are used."""
    import timm

    from transferkit.backbones import feature_dim

    network = timm.create_model(name, num_classes=2).eval()
    plain = timm.create_model(name, num_classes=2).eval()
    plain.load_state_dict(network.state_dict())
    wrapped = StagePooledNetwork(network).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = wrapped.forward_features(images)
        bottleneck = pooled_features(plain, images)
    assert features.shape == (2, wrapped.num_features) and wrapped.bottleneck_width == feature_dim(plain)
    torch.testing.assert_close(features[:, wrapped.bottleneck_columns], bottleneck)
