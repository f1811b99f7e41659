"""The worked examples of docs/ARCHITECTURE.md run: adding a strategy, adding a backbone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import make_images
from transferkit import ImageClassifier
from transferkit.backbones import backbone_stages, create_backbone, get_backbone_spec
from transferkit.backbones import registry as backbone_registry
from transferkit.strategies import list_strategies
from transferkit.strategies import registry as strategy_registry

DOC = (Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md").read_text()


def example(heading: str) -> str:
    section = DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


@pytest.fixture
def clean_registries():
    strategies, backbones = dict(strategy_registry._REGISTRY), dict(backbone_registry._REGISTRY)
    yield
    strategy_registry._REGISTRY.clear()
    strategy_registry._REGISTRY.update(strategies)
    backbone_registry._REGISTRY.clear()
    backbone_registry._REGISTRY.update(backbones)


def test_the_strategy_example_registers_a_strategy_the_estimator_fits(clean_registries, tiny_params):
    exec(example("Adding a strategy"), {})
    assert "last2" in list_strategies()
    images, labels = make_images(6, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="last2")).fit(images, labels)
    stages = [name for name, _ in backbone_stages(clf.model_)]
    blocks = [name for name in stages if name.startswith("stage")]
    assert clf.plan_.frozen_stages == ("stem", *blocks[:-2])
    assert clf.predict_proba(images).shape == (len(images), 3)


def test_the_backbone_example_registers_a_backbone(clean_registries):
    exec(example("Adding a backbone").split("# ImageClassifier")[0], {})
    spec = get_backbone_spec("resnet18_local")
    assert spec.timm_name == "resnet18" and spec.preprocessing.mean == (0.485, 0.456, 0.406)
    model, preprocessing = create_backbone("resnet18_local", num_classes=3, pretrained=False)
    assert [name for name, _ in backbone_stages(model)][:2] == ["stem", "stage1"]
    assert preprocessing.input_size == 224 and np.isfinite(sum(p.sum().item() for p in model.parameters()))
