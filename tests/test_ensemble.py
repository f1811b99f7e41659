"""The ``ensemble`` strategy: one module averaging a trained network's and a feature classifier's
probabilities, its views inside the module, saved, loaded, exported, served and explained alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_BACKBONE, make_images
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit import load
from transferkit.backbones import create_backbone
from transferkit.backbones.multilayer import with_feature_layers
from transferkit.data import load_pixels
from transferkit.data.views import SYMMETRIES, VIEWS, view
from transferkit.persistence import read_config
from transferkit.strategies import get_strategy
from transferkit.strategies.ensemble import TENSOR_VIEWS, EnsembleNetwork, NetworkAverage
from transferkit.strategies.features import pooled_features
from transferkit.training.inputs import network_outputs, pixels_to_tensor
from transferkit.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def random_ensemble(symmetries: str = "none", layers: str = "bottleneck", n_classes: int = 3,
                    network_symmetries: str = "none") -> EnsembleNetwork:
    torch.manual_seed(0)
    network, _ = create_backbone(TINY_BACKBONE, num_classes=n_classes, pretrained=False)
    features, _ = create_backbone(TINY_BACKBONE, num_classes=n_classes, pretrained=False)
    return EnsembleNetwork(network, with_feature_layers(features, layers), symmetries, network_symmetries).eval()


@pytest.fixture(scope="module")
def ensemble_dir(image_folder, tiny_weights, tmp_path_factory):
    """A tiny ensemble fitted with ``fit --strategy ensemble`` semantics: finetune + svm, flips averaged."""
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("ensemble") / "model", strategy="ensemble",
                          freeze=1, symmetries="flips", C=1.0, epochs=1)


@pytest.fixture(scope="module")
def tta_ensemble_dir(image_folder, tiny_weights, tmp_path_factory):
    """The same ensemble with the network's probabilities averaged over the flips, as ``auto``
    fits it when its measurement chose that (the candidate's ``network_symmetries`` parameter)."""
    import dataclasses

    from transferkit.strategies.ensemble import Ensemble

    real = Ensemble.fit_after_search
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ensemble, "fit_after_search", lambda self, request, searched: real(
            self, dataclasses.replace(request, params={**request.params, "network_symmetries": "flips"}), searched))
        return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("tta") / "model", strategy="ensemble",
                              freeze=1, symmetries="flips", C=1.0, epochs=1)


@pytest.fixture(scope="module")
def twin_ensemble_dir(image_folder, tiny_weights, tmp_path_factory):
    """The ensemble whose network member averages two networks, as ``auto`` fits it after its
    second-network round: the searched outcome's model is a :class:`NetworkAverage` (here the
    trained network and a copy of it with another head, so that the two differ)."""
    import copy
    import dataclasses

    from transferkit.strategies.ensemble import Ensemble

    real = Ensemble.fit_after_search

    def twins(self, request, searched):
        if searched is None:  # fit: the strategy trains its network, then comes back here with it
            return real(self, request, None)
        other = copy.deepcopy(searched.model)
        torch.manual_seed(1)
        torch.nn.init.normal_(other.get_classifier().weight, std=0.5)
        return real(self, request, dataclasses.replace(searched, model=NetworkAverage([searched.model, other])))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ensemble, "fit_after_search", twins)
        return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("twins") / "model", strategy="ensemble",
                              freeze=1, symmetries="flips", C=1.0, epochs=1)


def test_the_tensor_views_are_the_numpy_views():
    pixels = make_images(1, 8)[0][:2]
    for name in VIEWS:
        expected = pixels_to_tensor(view(pixels, name))
        assert torch.equal(TENSOR_VIEWS[name](pixels_to_tensor(pixels)), expected), name


@pytest.mark.parametrize("symmetries, layers", [("none", "bottleneck"), ("flips", "bottleneck"), ("dihedral", "stages")])
def test_the_ensemble_gives_the_mean_of_its_members_probabilities(symmetries, layers):
    model = random_ensemble(symmetries, layers)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        network = torch.softmax(model.network(x), 1)
        # the feature member: its head on the features averaged over the views, as symmetric_features does
        pooled = torch.stack([pooled_features(model.feature_model, TENSOR_VIEWS[name](x)) for name in SYMMETRIES[symmetries]]).mean(0)
        features = torch.softmax(model.feature_model.get_classifier()(pooled), 1)
        ensemble = torch.softmax(model(x), 1)
        logits, novelty_features = model.logits_and_features(x)
    torch.testing.assert_close(ensemble, (network + features) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(novelty_features, pooled, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, model(x))
    assert not torch.allclose(ensemble, network, atol=1e-3) and not torch.allclose(ensemble, features, atol=1e-3)


def test_the_ensembles_network_may_average_its_probabilities_over_views():
    model = random_ensemble("none", network_symmetries="flips")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        # test-time augmentation: the network's probabilities, each of the four flips, averaged
        network = torch.stack([torch.softmax(model.network(TENSOR_VIEWS[name](x)), 1) for name in SYMMETRIES["flips"]]).mean(0)
        features = torch.softmax(model.feature_model(x), 1)
        member, _, _ = model.member_logits(x)
        ensemble = torch.softmax(model(x), 1)
    torch.testing.assert_close(torch.softmax(member, 1), network, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ensemble, (network + features) / 2, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(network, torch.softmax(model.network(x), 1).detach(), atol=1e-4)  # the views change it
    with pytest.raises(Exception, match="network_symmetries expected one of"):
        random_ensemble(network_symmetries="twirl")


def test_the_ensembles_network_member_may_average_several_networks():
    torch.manual_seed(0)
    networks = [create_backbone(TINY_BACKBONE, num_classes=3, pretrained=False)[0].eval() for _ in range(2)]
    features, _ = create_backbone(TINY_BACKBONE, num_classes=3, pretrained=False)
    model = EnsembleNetwork(NetworkAverage(networks), features, "none", "flips").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        # each network's probabilities over each flip, averaged; then averaged with the feature member's
        network = torch.stack([torch.softmax(net(TENSOR_VIEWS[name](x)), 1) for net in networks
                               for name in SYMMETRIES["flips"]]).mean(0)
        ensemble = torch.softmax(model(x), 1)
        member = torch.softmax(model.member_logits(x)[0], 1)
    torch.testing.assert_close(member, network, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ensemble, (network + torch.softmax(features(x), 1)) / 2, atol=1e-6, rtol=1e-5)
    assert model.num_classes == 3 and model.inner_network() is model.network
    from transferkit.backbones.multilayer import inner_network

    assert inner_network(model) is networks[0]  # Grad-CAM explains the first network
    with pytest.raises(Exception, match="at least two networks"):
        NetworkAverage(networks[:1])


def test_network_outputs_give_the_ensembles_logits_and_its_feature_members_features():
    model = random_ensemble("flips")
    pixels = make_images(2, 32)[0]
    preprocessing = create_backbone(TINY_BACKBONE, num_classes=3, pretrained=False)[1]
    logits, features = network_outputs(model, pixels, preprocessing, CPU)
    assert logits.shape == (6, 3) and features.shape == (6, model.feature_model.num_features)
    with torch.no_grad():
        from transferkit.training.inputs import to_model_input

        inputs = to_model_input(pixels_to_tensor(pixels), preprocessing, CPU)
        torch.testing.assert_close(logits, model(inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", ["bottleneck", "stages"])
def test_empty_model_loads_the_saved_weights_strictly(layers):
    model = random_ensemble("dihedral", layers)
    config = {"backbone": TINY_BACKBONE, "classes": ["a", "b", "c"], "strategy": "ensemble",
              "plan": {"feature_layers": layers, "symmetries": "dihedral"}}
    empty, _ = get_strategy("ensemble").empty_model(config)
    empty.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(empty.eval()(x), model(x))
    assert empty.views == SYMMETRIES["dihedral"]


def test_a_fitted_ensemble_saves_loads_and_predicts_the_same(ensemble_dir, image_folder, tiny_weights):
    config = read_config(ensemble_dir)
    assert config["strategy"] == "ensemble" and config["settings"]["symmetries"] == "none"  # the views are inside the module
    plan = config["plan"]
    assert (plan["network_strategy"], plan["freeze"], plan["feature_strategy"], plan["symmetries"]) == ("finetune", 1, "svm", "flips")
    assert "calibration" in config["history"]["ensemble"]["features"]["linear"] and config["history"]["history"]
    loaded = load(ensemble_dir, precision="fp32")
    assert isinstance(loaded.model_, EnsembleNetwork) and loaded.model_.views == SYMMETRIES["flips"]
    probabilities, novelty = loaded.predict_proba(image_folder, return_novelty=True)
    assert probabilities.shape == (24, 3) and novelty is not None and novelty.shape == (24,)
    # the members, each as its own strategy would predict: the ensemble is their mean
    pixels = load_pixels(image_folder, 32, cache_dir=False)
    inputs = (pixels_to_tensor(pixels).float() / 255 - torch.tensor(loaded.preprocessing_.mean).view(1, 3, 1, 1)) \
        / torch.tensor(loaded.preprocessing_.std).view(1, 3, 1, 1)
    with torch.no_grad():
        network, features, _ = loaded.model_.member_logits(inputs)
    mean = (torch.softmax(network, 1) + torch.softmax(features, 1)).numpy() / 2
    np.testing.assert_allclose(probabilities, mean, atol=1e-5)


def test_an_ensemble_whose_network_averages_views_saves_loads_and_exports_the_same(tta_ensemble_dir, ensemble_dir, image_folder):
    plan = read_config(tta_ensemble_dir)["plan"]
    assert (plan["network_symmetries"], plan["symmetries"]) == ("flips", "flips")
    assert read_config(ensemble_dir)["plan"]["network_symmetries"] == "none"
    loaded = load(tta_ensemble_dir, precision="fp32")
    assert loaded.model_.network_views == SYMMETRIES["flips"] and loaded.model_.views == SYMMETRIES["flips"]
    pixels = load_pixels(image_folder, 32, cache_dir=False)
    probabilities = loaded.predict_proba(image_folder)
    inputs = (pixels_to_tensor(pixels).float() / 255 - torch.tensor(loaded.preprocessing_.mean).view(1, 3, 1, 1)) \
        / torch.tensor(loaded.preprocessing_.std).view(1, 3, 1, 1)
    with torch.no_grad():
        network = torch.stack([torch.softmax(loaded.model_.network(TENSOR_VIEWS[name](inputs)), 1)
                               for name in SYMMETRIES["flips"]]).mean(0)
        _, features, _ = loaded.model_.member_logits(inputs)
    np.testing.assert_allclose(probabilities, ((network + torch.softmax(features, 1)) / 2).numpy(), atol=1e-5)
    pytest.importorskip("onnxruntime")
    from transferkit.export import OnnxClassifier, export_onnx
    from transferkit.export.onnx import PARITY_TOLERANCE

    result = export_onnx(tta_ensemble_dir, tta_ensemble_dir.parent / "model.onnx", check_images=image_folder)
    assert result.max_abs_diff < PARITY_TOLERANCE, result
    np.testing.assert_allclose(OnnxClassifier(result.path).predict_proba(image_folder), probabilities, atol=1e-5)


def test_an_ensemble_of_two_networks_saves_loads_exports_and_serves_the_same(twin_ensemble_dir, image_folder):
    plan = read_config(twin_ensemble_dir)["plan"]
    from transferkit.strategies.ensemble import EnsemblePlan

    assert plan["networks"] == 2 and "of 2 trained networks, each (" in EnsemblePlan(**plan).describe()
    loaded = load(twin_ensemble_dir, precision="fp32")
    assert isinstance(loaded.model_.network, NetworkAverage) and len(loaded.model_.network.networks) == 2
    first, second = loaded.model_.network.networks
    assert not torch.equal(first.get_classifier().weight, second.get_classifier().weight)  # both saved, both loaded
    pixels = load_pixels(image_folder, 32, cache_dir=False)
    probabilities = loaded.predict_proba(image_folder)
    inputs = to_input(pixels, loaded.preprocessing_)
    with torch.no_grad():
        network = (torch.softmax(first(inputs), 1) + torch.softmax(second(inputs), 1)) / 2
        _, features, _ = loaded.model_.member_logits(inputs)
    np.testing.assert_allclose(probabilities, ((network + torch.softmax(features, 1)) / 2).numpy(), atol=1e-5)
    config = read_config(twin_ensemble_dir)
    config["plan"]["networks"] = 0
    with pytest.raises(Exception, match="positive number of networks"):
        get_strategy("ensemble").empty_model(config)
    pytest.importorskip("onnxruntime")
    from transferkit.export import OnnxClassifier, export_onnx
    from transferkit.export.onnx import PARITY_TOLERANCE

    result = export_onnx(twin_ensemble_dir, twin_ensemble_dir.parent / "model.onnx", check_images=image_folder)
    assert result.max_abs_diff < PARITY_TOLERANCE, result
    np.testing.assert_allclose(OnnxClassifier(result.path).predict_proba(image_folder), probabilities, atol=1e-5)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.serve import create_app

    path = image_folder / "red" / "000.png"
    with TestClient(create_app(twin_ensemble_dir)) as client:
        response = client.post("/predict?top_k=3", files=[("files", (path.name, path.read_bytes(), "image/png"))])
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["probability"] == pytest.approx(loaded.predict_proba([path]).max(), abs=1e-4)


def test_fit_init_from_an_ensemble_is_refused_with_a_way_out(ensemble_dir):
    from transferkit.errors import ModelFileError
    from transferkit.persistence import init_params

    with pytest.raises(ModelFileError, match="an ensemble .* Fit without --init"):
        init_params(ensemble_dir, read_config(ensemble_dir)["classes"])


def test_an_ensemble_exports_to_onnx_and_serves_the_same_probabilities(ensemble_dir, image_folder):
    pytest.importorskip("onnxruntime")
    from transferkit.export import OnnxClassifier, export_onnx
    from transferkit.export.onnx import PARITY_TOLERANCE

    result = export_onnx(ensemble_dir, ensemble_dir.parent / "model.onnx", check_images=image_folder)
    assert result.max_abs_diff < PARITY_TOLERANCE, result
    onnx_model, classifier = OnnxClassifier(result.path), load(ensemble_dir, precision="fp32")
    assert onnx_model.metadata_["strategy"] == "ensemble" and onnx_model.metadata_["symmetries"] == "none"
    expected, novelty = classifier.predict_proba(image_folder, return_novelty=True)
    onnx_probabilities, onnx_novelty = onnx_model.predict_proba(image_folder, return_novelty=True)
    np.testing.assert_allclose(onnx_probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(onnx_novelty, novelty, atol=1e-4)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.serve import create_app

    paths = [image_folder / "red" / "000.png", image_folder / "blue" / "016.png"]
    rows = classifier.predict_proba(paths)
    for served in (ensemble_dir, result.path):
        with TestClient(create_app(served)) as client:
            response = client.post("/predict?top_k=3", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in paths])
        assert response.status_code == 200, response.text
        for prediction, row in zip(response.json()["predictions"], rows):
            assert prediction["probability"] == pytest.approx(row.max(), abs=1e-4)


def test_grad_cam_explains_the_ensembles_trained_network(ensemble_dir, image_folder):
    pytest.importorskip("pytorch_grad_cam")
    from transferkit.backbones import backbone_stages
    from transferkit.report.cam import heatmaps

    classifier = load(ensemble_dir, precision="fp32")
    pixels = make_images(1, 32)[0]
    found = heatmaps(classifier.model_, pixels, classifier.preprocessing_)
    assert found.maps.shape == (3, 32, 32) and all(found.layers)
    network_stages = [m for _, modules in backbone_stages(classifier.model_.network) for m in modules]
    assert [m for _, modules in backbone_stages(classifier.model_) for m in modules] == network_stages
    assert all(p.grad is None for p in classifier.model_.parameters())


def test_the_ensembles_settings_are_refused_clearly():
    from transferkit.errors import ConfigError
    from transferkit.strategies import Settings
    from transferkit.strategies.ensemble import member_settings

    settings = Settings("ensemble", None, 32, None)
    with pytest.raises(ConfigError, match="feature member expected one of svm, logistic"):
        member_settings({"feature_strategy": "pixels"}, settings)
    name, network, features = member_settings({"symmetries": "auto", "feature_layers": "stages"}, settings)
    assert (name, network.strategy, features.strategy, features.symmetries, features.feature_layers) == ("svm", "full", "svm", "none", "stages")
    assert member_settings({}, Settings("ensemble", 2, 32, None))[1].strategy == "finetune"
    with pytest.raises(ConfigError, match="unknown features"):
        get_strategy("ensemble").empty_model({"backbone": TINY_BACKBONE, "classes": ["a"], "plan": {"symmetries": "twirl"}})
    assert json.dumps(network.to_dict())


# ---------------------------------------------------------------- auto's ensemble round


def tiny_engine(tiny_params, tmp_path, n_per_class: int = 6, **budget):
    from transferkit import ImageClassifier
    from transferkit.selection import Arena, Engine

    images, labels = make_images(n_per_class, 32)
    classes = np.array(sorted(set(labels)))
    params = ImageClassifier(**dict(tiny_params, cache_dir=str(tmp_path), C=1.0)).get_params()
    arena = Arena(pixels_at=lambda size: images, targets=np.searchsorted(classes, labels), classes=classes, params=params,
                  runtime=CPU)
    n = len(labels)
    return Engine(arena, [(np.arange(0, n, 2), np.arange(1, n, 2))], **budget)


def measured(engine, candidate, probabilities, outcome=None):
    """Record ``candidate`` on the held-out fold with these held-out ``probabilities`` (rows: the test part)."""
    from transferkit.strategies import FoldFit

    test = engine.folds[0][1]
    predictions = probabilities.argmax(1)
    accuracy = float((predictions == engine.arena.targets[test]).mean())
    return engine.record(candidate, 0, FoldFit(accuracy, 1.0, predictions, probabilities, outcome=outcome))


def member_probabilities(targets, right: int, seed: int) -> np.ndarray:
    """Probabilities that put the most on the true class for the first ``right`` images."""
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.ones(3), size=len(targets)) * 0.4
    wrong = (targets + 1) % 3
    rows[np.arange(len(targets)), np.where(np.arange(len(targets)) < right, targets, wrong)] += 0.6
    return rows


def test_the_ensemble_round_averages_the_members_held_out_probabilities(tiny_params, tmp_path):
    from transferkit.selection import Candidate
    from transferkit.selection.auto import _ensemble_round
    from transferkit.strategies import FitOutcome

    engine = tiny_engine(tiny_params, tmp_path)
    targets = engine.arena.targets[engine.folds[0][1]]
    outcome = FitOutcome(model=torch.nn.Identity(), preprocessing=None, history={}, plan=None)
    svm = Candidate("svm", 32, "baseline", feature_layers="stages", symmetries="flips")
    network = Candidate("finetune", 32, "network", freeze=2, params=(("epochs", 6),))
    features = measured(engine, svm, member_probabilities(targets, 9, 0))
    trained = measured(engine, network, member_probabilities(targets, 9, 1), outcome)
    reasons = []
    _ensemble_round(engine, reasons)
    ensemble = next(t for t in engine.trials.values() if t.candidate.strategy == "ensemble")
    # the feature member is scored again (really, on cached features) with its fitted head's temperature
    member = next(t for t in engine.trials.values() if dict(t.candidate.params).get("calibrated"))
    assert member.candidate.label == f"{features.candidate.label}, calibrated" and member.accuracy is not None
    np.testing.assert_allclose(ensemble.probabilities[0], (member.probabilities[0] + trained.probabilities[0]) / 2)
    assert ensemble.folds == [0] and ensemble.outcome is outcome
    expected = (ensemble.probabilities[0].argmax(1) == targets).mean()
    assert ensemble.accuracy == pytest.approx(expected)
    # the network's settings; the feature member's as parameters the ensemble strategy reads; no views outside the module
    candidate = ensemble.candidate
    assert (candidate.image_size, candidate.freeze, candidate.symmetries, candidate.feature_layers) == (32, 2, "none", "bottleneck")
    extra = dict(candidate.params)
    assert (extra["feature_strategy"], extra["feature_layers"], extra["symmetries"], extra["epochs"]) == ("svm", "stages", "flips", 6)
    assert candidate.label.endswith("with svm on stages features averaged over flips") and candidate.settings().strategy == "ensemble"
    assert reasons and reasons[-1].startswith("ensemble: ") and f"{ensemble.accuracy:.3f}" in reasons[-1]


def test_the_ensemble_is_measured_again_with_the_networks_probabilities_averaged_over_its_trained_views(tiny_params, tmp_path):
    from transferkit.selection import Candidate
    from transferkit.selection.auto import _ensemble_round
    from transferkit.selection.ensemble import trained_views
    from transferkit.strategies import FitOutcome

    assert [trained_views(Candidate("full", 32, "n", params=(("augment", augment),))) for augment in
            ("hflip,vflip,rot90,rotate", "vflip,hflip,translate", "hflip,rot90,rotate", "standard", "strong")] == \
        ["dihedral", "flips", "none", "none", "flips"]  # the presets read as the augmentation builds them
    engine = tiny_engine(tiny_params, tmp_path)
    test = engine.folds[0][1]
    targets = engine.arena.targets[test]
    torch.manual_seed(0)
    model, preprocessing = create_backbone(TINY_BACKBONE, num_classes=3, pretrained=False)
    outcome = FitOutcome(model=model.eval(), preprocessing=preprocessing, history={}, plan=None)
    measured(engine, Candidate("svm", 32, "baseline"), member_probabilities(targets, 9, 0))
    network = Candidate("full", 32, "network", params=(("augment", "hflip,vflip,rotate,translate"),))
    trained = measured(engine, network, member_probabilities(targets, 9, 1), outcome)
    reasons = []
    _ensemble_round(engine, reasons)
    ensembles = [t for t in engine.trials.values() if t.candidate.strategy == "ensemble"]
    assert [dict(t.candidate.params).get("network_symmetries") for t in ensembles] == [None, "flips"]
    plain, tta = ensembles
    member = next(t for t in engine.trials.values() if dict(t.candidate.params).get("calibrated"))
    # the identity view's probabilities are the search's; the three flips are forward passes of the trained model
    pixels = engine.arena.pixels_at(32)[np.sort(test)]
    flipped = [torch.softmax(model(to_input(view(pixels, name), preprocessing)), 1).detach().numpy()
               for name in SYMMETRIES["flips"][1:]]
    network_mean = (trained.probabilities[0] + sum(flipped)) / 4
    np.testing.assert_allclose(tta.probabilities[0], (network_mean + member.probabilities[0]) / 2, atol=1e-5)
    np.testing.assert_allclose(plain.probabilities[0], (trained.probabilities[0] + member.probabilities[0]) / 2)
    assert tta.outcome is outcome and tta.candidate.label.endswith("network averaged over flips, with svm")
    assert f"averaged over the flips it trained with (test-time augmentation), {tta.accuracy:.3f}" in reasons[-1]


def test_a_network_in_two_ensembles_runs_its_test_time_views_once(tiny_params, tmp_path, monkeypatch):
    from transferkit.selection import Candidate
    from transferkit.selection import ensemble as ensemble_module
    from transferkit.selection.auto import _ensemble_round
    from transferkit.strategies import FitOutcome

    engine = tiny_engine(tiny_params, tmp_path)
    targets = engine.arena.targets[engine.folds[0][1]]
    measured(engine, Candidate("svm", 32, "baseline"), member_probabilities(targets, 9, 0))
    networks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, preprocessing = create_backbone(TINY_BACKBONE, num_classes=3, pretrained=False)
        outcome = FitOutcome(model=model.eval(), preprocessing=preprocessing, history={}, plan=None)
        network = Candidate("full", 32, f"network {seed}", params=(("augment", "hflip,vflip,rotate"), ("seed", seed)))
        networks.append(measured(engine, network, member_probabilities(targets, 9, 1 + seed), outcome))
    computed = []
    real = ensemble_module.network_view_probabilities

    def counted(search, trial, symmetries):
        computed.append(dict(trial.candidate.params)["seed"])
        return real(search, trial, symmetries)

    monkeypatch.setattr(ensemble_module, "network_view_probabilities", counted)
    _ensemble_round(engine, [], tuple(networks))
    ensembles = {(dict(t.candidate.params).get("networks"), dict(t.candidate.params).get("network_symmetries")): t
                 for t in engine.trials.values() if t.candidate.strategy == "ensemble"}
    assert set(ensembles) == {(None, None), (None, "flips"), (2, None), (2, "flips")}
    assert sorted(computed) == [0, 1]  # each network's flips once, for both ensembles
    member = next(t for t in engine.trials.values() if dict(t.candidate.params).get("calibrated"))
    network_mean = np.mean([real(engine, trial, "flips") for trial in networks], axis=0)
    np.testing.assert_allclose(ensembles[(2, "flips")].probabilities[0], (network_mean + member.probabilities[0]) / 2, atol=1e-5)


def ten_seconds_an_epoch(candidate, n_train, n_test, trials):
    """A cost model: a network costs 10 s per epoch, anything else 1 s."""
    return 10.0 * dict(candidate.params).get("epochs", 0) if get_strategy(candidate.strategy).trains_network else 1.0


def test_a_second_network_from_another_seed_trains_in_the_time_left_and_the_ensemble_averages_both(tiny_params, tmp_path):
    from transferkit.selection import Candidate
    from transferkit.selection.auto import _ensemble_round, _second_network_round
    from transferkit.strategies import FitOutcome

    engine = tiny_engine(tiny_params, tmp_path, budget_seconds=96.0, cost=ten_seconds_an_epoch)
    targets = engine.arena.targets[engine.folds[0][1]]
    torch.manual_seed(0)
    model, preprocessing = create_backbone(TINY_BACKBONE, num_classes=3, pretrained=False)
    outcome = FitOutcome(model=model.eval(), preprocessing=preprocessing, history={}, plan=None)
    measured(engine, Candidate("svm", 32, "baseline"), member_probabilities(targets, 9, 0))
    first = measured(engine, Candidate("full", 32, "network", params=(("epochs", 12), ("patience", 4))),
                     member_probabilities(targets, 9, 1), outcome)
    reasons = []
    twins = _second_network_round(engine, reasons)
    assert twins is not None and twins[0] is first
    twin = twins[1]
    # ~94 s left after the ensemble round's 2 s (the features rescored, their fit): 9 of the first's 12 epochs fit
    assert dict(twin.candidate.params) == {"epochs": 9, "patience": 3, "seed": 1}
    assert twin.accuracy is not None and twin.outcome.model is not model  # trained, for real, on the training part
    assert "seed 1" in twin.candidate.label and reasons[-1].startswith("second network") and "full 32 px, 12 epochs" in reasons[-1]
    _ensemble_round(engine, reasons, twins)
    ensembles = [t for t in engine.trials.values() if t.candidate.strategy == "ensemble"]
    assert [dict(t.candidate.params).get("networks") for t in ensembles] == [None, 2]
    pair = ensembles[1]
    member = next(t for t in engine.trials.values() if dict(t.candidate.params).get("calibrated"))
    network_mean = (first.probabilities[0] + twin.probabilities[0]) / 2
    np.testing.assert_allclose(pair.probabilities[0], (network_mean + member.probabilities[0]) / 2)
    assert isinstance(pair.outcome.model, NetworkAverage) and list(pair.outcome.model.networks) == [model, twin.outcome.model]
    assert pair.candidate.label.endswith("2 networks, with svm") and f"as its network member, {pair.accuracy:.3f}" in reasons[-1]


def test_no_second_network_where_the_epochs_the_first_needed_do_not_fit_or_without_a_budget(tiny_params, tmp_path):
    from transferkit.selection import Candidate
    from transferkit.selection.auto import _second_network_round
    from transferkit.strategies import FitOutcome

    outcome = FitOutcome(model=torch.nn.Identity(), preprocessing=None, history={}, plan=None)
    for budget, said in ((60.0, True), (None, False)):
        engine = tiny_engine(tiny_params, tmp_path, budget_seconds=budget, cost=ten_seconds_an_epoch)
        targets = engine.arena.targets[engine.folds[0][1]]
        measured(engine, Candidate("svm", 32, "baseline"), member_probabilities(targets, 9, 0))
        measured(engine, Candidate("full", 32, "network", params=(("epochs", 12),)), member_probabilities(targets, 9, 1), outcome)
        reasons = []
        assert _second_network_round(engine, reasons) is None
        assert not any(dict(t.candidate.params).get("seed") for t in engine.trials.values())  # nothing trained
        assert bool(reasons) == said and (not said or reasons[-1].startswith("no second network: the 6 epochs the first "
                                                                             "needed to reach its best (~60 s)"))
    # a first network that reached its best at epoch 10: a twin of 9 epochs (all that fits) would be the weaker member
    engine = tiny_engine(tiny_params, tmp_path, budget_seconds=96.0, cost=ten_seconds_an_epoch)
    targets = engine.arena.targets[engine.folds[0][1]]
    measured(engine, Candidate("svm", 32, "baseline"), member_probabilities(targets, 9, 0))
    peaked = FitOutcome(model=torch.nn.Identity(), preprocessing=None, history={"best_epoch": 10}, plan=None)
    measured(engine, Candidate("full", 32, "network", params=(("epochs", 12),)), member_probabilities(targets, 9, 1), peaked)
    reasons = []
    assert _second_network_round(engine, reasons) is None and "the 10 epochs the first needed" in reasons[-1]


def to_input(pixels, preprocessing):
    from transferkit.training.inputs import to_model_input

    return to_model_input(pixels_to_tensor(pixels), preprocessing, CPU)


def test_the_ensembles_feature_member_is_scored_again_at_the_networks_side(tiny_params, tmp_path):
    from transferkit.selection import Candidate
    from transferkit.selection.auto import _ensemble_round
    from transferkit.strategies import FitOutcome

    engine = tiny_engine(tiny_params, tmp_path)
    targets = engine.arena.targets[engine.folds[0][1]]
    outcome = FitOutcome(model=torch.nn.Identity(), preprocessing=None, history={}, plan=None)
    measured(engine, Candidate("logistic", 48, "baseline"), member_probabilities(targets, 9, 0))
    trained = measured(engine, Candidate("full", 32, "network"), member_probabilities(targets, 9, 1), outcome)
    reasons = []
    _ensemble_round(engine, reasons)
    rescored = next(t for t in engine.trials.values() if t.candidate.strategy == "logistic" and t.candidate.image_size == 32)
    assert dict(rescored.candidate.params)["calibrated"] is True
    assert rescored.accuracy is not None  # the svm's real score at 32 px, on the same held-out images
    ensemble = next(t for t in engine.trials.values() if t.candidate.strategy == "ensemble")
    np.testing.assert_allclose(ensemble.probabilities[0], (rescored.probabilities[0] + trained.probabilities[0]) / 2)
    assert dict(ensemble.candidate.params)["feature_strategy"] == "logistic"
    assert "at the network's side" in reasons[-1]


def test_no_ensemble_when_a_member_is_beyond_the_noise_of_the_best(tiny_params, tmp_path):
    from transferkit.selection import Candidate
    from transferkit.selection.auto import _ensemble_round
    from transferkit.strategies import FitOutcome

    engine = tiny_engine(tiny_params, tmp_path, n_per_class=20)  # 30 held-out images: noise 2 SE, ~0.11 here
    targets = engine.arena.targets[engine.folds[0][1]]
    outcome = FitOutcome(model=torch.nn.Identity(), preprocessing=None, history={}, plan=None)
    measured(engine, Candidate("svm", 32, "baseline"), member_probabilities(targets, 30, 0))
    measured(engine, Candidate("full", 32, "network"), member_probabilities(targets, 15, 1), outcome)
    reasons = []
    _ensemble_round(engine, reasons)
    assert not any(t.candidate.strategy == "ensemble" for t in engine.trials.values())
    assert reasons[-1].startswith("no ensemble") and "full 32 px scored 0.500" in reasons[-1]


def test_an_auto_fit_whose_ensemble_wins_keeps_the_searched_network_and_fits_the_features_once(tiny_params, tmp_path, monkeypatch):
    import transferkit
    import transferkit.selection.auto as select
    import transferkit.strategies.linear as linear
    import transferkit.strategies.network as network

    monkeypatch.setattr(select, "PERFECT", 1.01)  # race a network even though the colours separate perfectly
    network_fits, feature_fits = [], []
    real_network, real_features = network.NetworkStrategy.fit, linear.FeatureStrategy.fit
    monkeypatch.setattr(network.NetworkStrategy, "fit", lambda self, request: network_fits.append(1) or real_network(self, request))
    monkeypatch.setattr(linear.FeatureStrategy, "fit", lambda self, request: feature_fits.append(request) or real_features(self, request))
    real_choose = select.choose

    def ensemble_wins(results, trials=None):
        ensembles = [t for t in results.trials.values() if t.candidate.strategy == "ensemble"]
        if not ensembles:
            return real_choose(results, trials)
        return select.Decision(chosen=ensembles[0], best=ensembles[0], reason="the test's choice")

    monkeypatch.setattr(select, "choose", ensemble_wins)
    images, labels = make_images(8, 32)
    clf = transferkit.ImageClassifier(**dict(tiny_params, strategy="auto", image_size=32, cache_dir=str(tmp_path), C=1.0,
                                              budget_minutes=None)).fit(images, labels)
    search = clf.advice_.search
    assert clf.settings_["strategy"] == "ensemble" and isinstance(clf.model_, EnsembleNetwork)
    assert clf.model_.network is search.chosen.outcome.model  # the network trained in the search: no second training
    assert len(network_fits) == len(select.PILOT_FACTORS) + 2 + 1  # the pilots (learning rate; light, strong) and the network
    assert len(feature_fits) == 1 and len(feature_fits[0].targets) == 24  # the feature member, on every image
    assert any(r.startswith("ensemble: ") for r in search.reasons)
    from transferkit.selection.ensemble import trained_views

    # the colours keep their class under every flip and turn: the network trained with them, and the
    # ensemble was measured once more with its probabilities averaged over them
    trained = next(t for t in search.trials if t.candidate.strategy == "full")
    assert trained_views(trained.candidate) == "dihedral"
    assert [dict(t.candidate.params).get("network_symmetries") for t in search.trials
            if t.candidate.strategy == "ensemble"] == [None, "dihedral"]
    assert search.reasons[-1].endswith("beside its feature classifier fitted on all the images, is the model")
    assert clf.predict(images).shape == (24,) and clf.novelty_ is not None
    # what fit reports as held-out accuracy is the ensemble's, as the search measured it, not its network member's
    assert clf.validation_["accuracy"] == pytest.approx(search.chosen.accuracy) and clf.validation_["kind"] == "held-out split"


def test_an_auto_fit_whose_two_network_ensemble_wins_keeps_both_searched_networks(tiny_params, tmp_path, monkeypatch):
    import dataclasses

    import transferkit
    import transferkit.selection.auto as select
    from transferkit.selection.candidates import with_params
    from transferkit.selection.ensemble import ensemble_members

    monkeypatch.setattr(select, "PERFECT", 1.01)  # race a network even though the colours separate perfectly

    def twin_without_a_budget(search, reasons):  # the round needs a budget; here the twin is trained regardless
        first, _ = ensemble_members(search)
        (twin,) = search.evaluate_candidates([with_params(first.candidate, seed=1)], [0])
        return first, twin

    monkeypatch.setattr(select, "_second_network_round", twin_without_a_budget)
    real_choose = select.choose

    def two_networks_win(results, trials=None):
        pairs = [t for t in results.trials.values() if dict(t.candidate.params).get("networks") == 2]
        return select.Decision(chosen=pairs[0], best=pairs[0], reason="the test's choice") if pairs else real_choose(results, trials)

    monkeypatch.setattr(select, "choose", two_networks_win)
    images, labels = make_images(8, 32)
    clf = transferkit.ImageClassifier(**dict(tiny_params, strategy="auto", image_size=32, cache_dir=str(tmp_path), C=1.0,
                                              budget_minutes=None)).fit(images, labels)
    search = clf.advice_.search
    assert clf.settings_["strategy"] == "ensemble" and isinstance(clf.model_.network, NetworkAverage)
    first, second = clf.model_.network.networks
    twin = next(t for t in search.trials if dict(t.candidate.params).get("seed") == 1)
    # both trained in the search (the network and its twin), no training after it
    unseeded = dataclasses.replace(twin.candidate, params=tuple(p for p in twin.candidate.params if p[0] != "seed"))
    assert second is twin.outcome.model and first is next(t for t in search.trials if t.candidate == unseeded).outcome.model
    assert clf.plan_.networks == 2 and "the networks trained in the search" in search.reasons[-1]
    assert clf.predict(images).shape == (24,)


def test_a_calibrated_fold_score_divides_the_decision_values_by_the_fitted_temperature(tiny_params, tmp_path, monkeypatch):
    """The ensemble's feature member is scored with the probabilities its fitted head will give."""
    import transferkit.strategies.linear as linear
    from transferkit.selection import Candidate

    monkeypatch.setattr(linear, "fit_temperature", lambda *args, **kwargs: {"method": "temperature", "temperature": 4.0})
    engine = tiny_engine(tiny_params, tmp_path)
    raw, calibrated = engine.evaluate_candidates([Candidate("svm", 32, "raw"), Candidate("svm", 32, "calibrated",
                                                                                       params=(("calibrated", True),))], [0])
    np.testing.assert_array_equal(raw.predictions[0], calibrated.predictions[0])  # the same classifier, the same argmax
    log_raw, log_calibrated = np.log(raw.probabilities[0]), np.log(calibrated.probabilities[0])
    centred = lambda logits: logits - logits.mean(axis=1, keepdims=True)  # noqa: E731 - softmax is shift-invariant
    np.testing.assert_allclose(centred(log_calibrated), centred(log_raw) / 4.0, atol=1e-9)
