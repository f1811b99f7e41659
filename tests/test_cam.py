"""Grad-CAM heatmaps: shape, range, and that they point at a synthetic defect, not the background."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit.backbones import Preprocessing
from transferkit.report.cam import (
    FLAT,
    MIN_GRID,
    activation_maps,
    cam_stages,
    explanation_panel,
    heatmaps,
    last_stage_layer,
    overlay,
    stage_grids,
)

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


@pytest.mark.parametrize("size, layer", [(32, "stage2"), (64, "stage3"), (224, "neck")])
def test_small_inputs_take_the_map_from_a_stage_fine_enough_to_show_where(defect_model, size, layer):
    # issue 21: at 32 px the last stage is 1 x 1 and every map was one flat tint
    model, preprocessing = defect_model
    images, _, _ = patch_images(8, seed=3)
    images = np.stack([np.asarray(Image.fromarray(image).resize((size, size))) for image in images])
    grids = {name: side for name, _, side in stage_grids(model, size)}
    assert grids["neck"] == size // 32  # 1 x 1 at 32 px
    result = heatmaps(model, images, preprocessing, targets=np.ones(len(images), int))
    assert result.maps.shape == (8, size, size)
    for index, heatmap in enumerate(result.maps):
        if result.useful[index]:
            assert np.ptp(heatmap) >= FLAT and result.grids[index] >= MIN_GRID - 1
            assert "grid" in result.describe(index)
        else:  # never a tint passed off as a map
            assert not heatmap.any() and "no useful heatmap" in result.describe(index)
    assert result.useful.mean() >= 0.5, result.useful
    assert cam_stages(model, size)[0][0] == layer  # the deepest stage with a grid of MIN_GRID or more


def test_a_map_that_stays_flat_is_reported_as_none(defect_model, monkeypatch):
    from transferkit.report import cam

    model, preprocessing = defect_model
    images, _, _ = patch_images(2, seed=4)
    monkeypatch.setattr(cam, "_grad_cam", lambda *args: np.full((len(args[2]), SIZE, SIZE), 0.0, np.float32))
    result = heatmaps(model, images, preprocessing)
    assert not result.useful.any() and "no useful heatmap" in result.describe(0)


def test_the_explanation_shows_the_image_the_overlay_and_a_colour_scale():
    image = np.full((32, 32, 3), 90, np.uint8)
    heatmap = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    panel = explanation_panel(image, heatmap, size=160)
    assert panel.shape[0] >= 160 and panel.shape[1] > 2 * 160
    assert np.array_equal(panel[:160, :160], np.full((160, 160, 3), 90, np.uint8))  # the original, enlarged
    assert len(np.unique(panel[:160, 168:328].reshape(-1, 3), axis=0)) > 10  # the overlay varies
    scale = panel[20:140, 2 * 160 + 16 : 2 * 160 + 30]
    assert scale[0, 0, 0] > scale[0, 0, 2] and scale[-1, 0, 2] > scale[-1, 0, 0]  # red (high) on top, blue at the bottom
    flat = explanation_panel(image, None, size=160)
    assert flat.shape == panel.shape


def test_the_explanation_keeps_the_input_size_and_enlarges_small_images_smoothly():
    # issue 33 item 15: 224 px inputs were shrunk to 160 px, and every input resized by nearest neighbour
    large = np.random.default_rng(0).integers(0, 256, (224, 224, 3)).astype(np.uint8)
    panel = explanation_panel(large, np.zeros((224, 224), np.float32), size=160)
    assert np.array_equal(panel[:224, :224], large)  # the model's input size, pixel for pixel
    halves = np.zeros((32, 32, 3), np.uint8)
    halves[:, 16:] = 255
    enlarged = explanation_panel(halves, None, size=160)[:160, :160, 0]
    assert len(np.unique(enlarged)) > 4  # a smooth filter: greys between the black and the white half


def test_the_explanation_writes_the_prediction_and_wraps_its_caption_between_words():
    from PIL import Image, ImageDraw, ImageFont

    from transferkit.report.cam import caption_lines

    image = np.full((32, 32, 3), 90, np.uint8)
    plain = explanation_panel(image, None, size=160)
    red = explanation_panel(image, None, size=160, title="predicted red (0.931)")
    green = explanation_panel(image, None, size=160, title="predicted green (0.931)")
    assert red.shape[0] > plain.shape[0] and red.shape == green.shape
    assert (red[160:] < 128).any() and not np.array_equal(red, green)  # dark text below the images, the class in it
    note = "no useful heatmap: Grad-CAM's map was flat down to stage1, so it cannot show where the network looked " * 2
    width = plain.shape[1] - 4
    lines = caption_lines(note, width)
    assert len(lines) > 1 and " ".join(lines).split() == note.split()  # every word whole, in order
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    assert all(draw.textlength(line, font=font) <= width for line in lines)
    captioned = explanation_panel(image, None, size=160, title="predicted red (0.931)", note=note)
    assert captioned.shape[0] >= red.shape[0] + (len(lines) - 1) * 10 and captioned.shape[1] == red.shape[1]
    assert caption_lines("a" * 300, 50) == ["a" * 300]  # a word wider than the line stays whole


@pytest.fixture(scope="module")
def binary_folder(tmp_path_factory):
    """Two colour classes: a binary model, whose folded svm head had an all-zero row for class 0."""
    from conftest import write_image_folder

    root = write_image_folder(tmp_path_factory.mktemp("binary"), n_per_class=6, size=32)
    import shutil

    shutil.rmtree(root / "blue")
    return root


@pytest.mark.parametrize("strategy", ["svm", "logistic"])
def test_a_binary_model_explains_images_predicted_as_either_class(binary_folder, tiny_weights, tmp_path, strategy):
    # issue 33 item 4: the head folded from one decision value d is [0, d]; Grad-CAM of class 0's
    # logit had no gradient at all, so every image predicted as class 0 got "no useful heatmap".
    from transferkit import load

    classifier = load(fit_tiny_model(binary_folder, tiny_weights, tmp_path / "model", strategy=strategy))
    paths = sorted(binary_folder.rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths])
    predicted = classifier.predict_proba(paths).argmax(axis=1)
    assert set(predicted) == {0, 1}
    result = heatmaps(classifier.model_, pixels, classifier.preprocessing_, predicted)
    for label in (0, 1):
        chosen = predicted == label
        assert result.useful[chosen].all(), (label, [result.describe(i) for i in np.flatnonzero(chosen)])
        assert all(np.ptp(result.maps[i]) >= FLAT for i in np.flatnonzero(chosen))


def test_the_note_of_a_flat_map_does_not_blame_the_image(defect_model, monkeypatch):
    from transferkit.report import cam

    model, preprocessing = defect_model
    images, _, _ = patch_images(1, seed=4)
    monkeypatch.setattr(cam, "_grad_cam", lambda *args: np.zeros((len(args[2]), SIZE, SIZE), np.float32))
    note = heatmaps(model, images, preprocessing).describe(0)
    assert note.startswith("no useful heatmap") and "no evidence" not in note and "image" not in note
