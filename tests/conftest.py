"""Shared fixtures: tiny synthetic images and a tiny timm backbone with local weights.

The tiny backbone (timm's ``test_efficientnet``, 100k parameters) has the same structure as
EfficientNet-Lite (stem, block stages, neck), so the mechanics tested on it are the ones the
real default uses; its "pretrained" weights are a random state dict saved to a local file,
which also exercises the local-weights path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

TINY_BACKBONE = "test_efficientnet"
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def make_images(n_per_class: int = 8, size: int = 24, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """uint8 (N, size, size, 3) images whose class is their dominant colour, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, colour in COLOURS.items():
        for _ in range(n_per_class):
            noise = rng.integers(-40, 40, size=(size, size, 3))
            images.append(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), labels


def write_image_folder(root: Path, n_per_class: int = 8, size: int = 24, seed: int = 0) -> Path:
    images, labels = make_images(n_per_class, size, seed)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / label / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """The test session gets its own decode cache; nothing leaks into ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A local 'pretrained' weights file for the tiny backbone (1000-class head, like ImageNet)."""
    torch.manual_seed(0)
    model = timm.create_model(TINY_BACKBONE, num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def tiny_params(tiny_weights) -> dict:
    """ImageClassifier settings that train in about a second."""
    return dict(
        backbone=TINY_BACKBONE,
        strategy="finetune",
        weights=str(tiny_weights),
        image_size=32,
        epochs=2,
        batch_size=8,
        lr=1e-2,
        device="cpu",
        precision="fp32",
    )
