"""Grad-CAM heatmaps: shape, range, and that they point at a synthetic defect, not the background."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit.backbones import Preprocessing
from transferkit.report.cam import activation_maps, last_stage_layer, overlay

SIZE, PATCH = 96, 24  # 96 px: a 3 x 3 grid at the last stage (stride 32), so "where" means something


def patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Grey noise; every second image has a bright square (the "defect") at a random place."""
    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    for i in range(n):
        image = np.clip(120 + rng.integers(-25, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        box = None
        if i % 2:
            y, x = rng.integers(0, SIZE - PATCH, 2)
            image[y : y + PATCH, x : x + PATCH] = 250
            box = (y, x)
        images.append(image)
        labels.append(i % 2)
        boxes.append(box)
    return np.stack(images), np.array(labels), boxes


@pytest.fixture(scope="module")
def defect_model():
    """The tiny timm EfficientNet trained for a few steps to tell defect from clean."""
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=2)
    preprocessing = Preprocessing(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    images, labels, _ = patch_images(32, seed=0)
    inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(12):
        batch = torch.arange(16) + 16 * (step % 2)
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), torch.from_numpy(labels[batch]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), preprocessing


def test_heatmap_has_the_image_shape_and_unit_range(defect_model):
    model, preprocessing = defect_model
    images, _, _ = patch_images(4, seed=1)
    maps = activation_maps(model, images, preprocessing)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert last_stage_layer(model) is model.bn2  # EfficientNet's neck: conv_head + bn2
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_heatmap_highlights_the_defect_more_than_the_background(defect_model):
    model, preprocessing = defect_model
    images, labels, boxes = patch_images(16, seed=2)
    maps = activation_maps(model, images, preprocessing, targets=np.ones(len(images), int))
    inside, outside = [], []
    for heatmap, box in zip(maps, boxes):
        if box is None:
            continue
        mask = np.zeros(heatmap.shape, bool)
        mask[box[0] : box[0] + PATCH, box[1] : box[1] + PATCH] = True
        inside.append(heatmap[mask].mean())
        outside.append(heatmap[~mask].mean())
    inside, outside = np.array(inside), np.array(outside)
    assert inside.mean() > 2 * outside.mean(), (inside, outside)
    assert (inside > outside).mean() >= 0.75


def test_overlay_blends_and_checks_shapes():
    image = np.full((8, 8, 3), 100, np.uint8)
    blended = overlay(image, np.ones((8, 8), np.float32))
    assert blended.shape == image.shape and blended.dtype == np.uint8 and not np.array_equal(blended, image)
    with pytest.raises(Exception, match="heatmap shape"):
        overlay(image, np.ones((4, 4)))


def test_heatmaps_of_a_frozen_backbone_model(image_folder, tiny_weights, tmp_path):
    # svm/logistic models have every parameter frozen; Grad-CAM must still get its gradients.
    from transferkit import load

    classifier = load(fit_tiny_model(image_folder, tiny_weights, tmp_path / "model", strategy="logistic"))
    images = sorted(image_folder.rglob("*.png"))[:3]
    classifier.predict_proba(images)
    assert not any(p.requires_grad for p in classifier.model_.parameters())
    pixels = np.stack([np.asarray(Image.open(p)) for p in images])
    maps = activation_maps(classifier.model_, pixels, classifier.preprocessing_)
    assert maps.shape == (3, 24, 24)
