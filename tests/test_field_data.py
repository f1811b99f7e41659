"""The images people really have (issue 20): each kind built here, in several encodings or layouts.

1. high bit depth: one scale from the bit depth, never the image's own range;
2. transparency: every alpha encoding composited onto the same white background;
3. classes absent from the test data: out of the averages, and named;
5. duplicates: in one CV fold, counted by ``evaluate``, conflicting labels reported by every fit;
6. folder layouts: ``DATA/{train,test}/{a,b}`` stopped with a hint; ``__MACOSX``/``._*`` listed;
7. CSV paths written on Windows; 8. HEIC photos named; 9. the majority-class rate beside accuracies.

The same pixels must reach the network at fit, predict, in the ONNX predictor and the server.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_BACKBONE, write_image_folder
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread
from transferkit import ImageClassifier, load
from transferkit.cli import app
from transferkit.data import (
    ImageSet,
    content_digests,
    decode_images,
    duplicate_groups,
    find_images,
    label_conflicts,
    pixel_groups,
    read_image,
    resolve_data,
)
from transferkit.data import validate
from transferkit.errors import DataError
from transferkit.evaluation import classification_metrics
from transferkit.selection.folds import make_folds

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def cli_fit(tiny_weights, tmp_path_factory) -> list:
    cache = tmp_path_factory.mktemp("field-cache")
    return ["--backbone", TINY_BACKBONE, "--weights", tiny_weights, "--image-size", 16, "--device", "cpu",
            "--precision", "fp32", "--cache-dir", cache]


# ---------------------------------------------------------------------------------------------
# 1. High bit depth: the same 8-bit picture, stored in every deep encoding, decodes to itself


def picture(seed: int = 0, size: int = 16) -> np.ndarray:
    """An 8-bit gray picture with every brightness from dark to bright."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def png_48bit(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def save_deep(u8: np.ndarray, path: Path, encoding: str) -> Path:
    """``u8`` (0-255) stored in a high-bit-depth ``encoding`` at the full range of that depth."""
    wide = u8.astype(np.uint16) * 257  # 255 -> 65535
    if encoding == "png I;16":
        Image.fromarray(wide).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if encoding == "tiff I;16":
        Image.fromarray(wide).save(path.with_suffix(".tif"))
    elif encoding == "tiff I;16B":
        Image.fromarray(wide.astype(">u2")).save(path.with_suffix(".tif"))
    elif encoding == "tiff I (32-bit)":
        Image.fromarray(wide.astype(np.int32)).save(path.with_suffix(".tif"))
    elif encoding == "tiff F (float 0-1)":
        Image.fromarray((u8 / 255.0).astype(np.float32)).save(path.with_suffix(".tif"))
    elif encoding == "png 48-bit RGB":
        path.with_suffix(".png").write_bytes(png_48bit(np.stack([wide] * 3, axis=-1)))
        return path.with_suffix(".png")
    return path.with_suffix(".tif")


DEEP = ["png I;16", "tiff I;16", "tiff I;16B", "tiff I (32-bit)", "tiff F (float 0-1)", "png 48-bit RGB"]


@pytest.mark.parametrize("encoding", DEEP)
def test_a_dark_and_a_bright_copy_stay_different_in_every_deep_encoding(encoding, tmp_path):
    bright = picture()
    dark = bright // 4
    out_bright = np.asarray(read_image(save_deep(bright, tmp_path / "bright", encoding)))
    out_dark = np.asarray(read_image(save_deep(dark, tmp_path / "dark", encoding)))
    np.testing.assert_array_equal(out_bright[..., 0], bright)  # exactly the 8-bit picture: v / 257
    np.testing.assert_array_equal(out_dark[..., 0], dark)  # never stretched to its own min-max
    assert out_dark.mean() < out_bright.mean() / 3


def test_two_classes_that_differ_only_in_brightness_are_told_apart_at_fit_and_predict(tiny_weights, tmp_path):
    """The issue's microscopy case: 16-bit copies decode, fit and predict like the 8-bit ones."""
    deep, shallow = tmp_path / "deep", tmp_path / "shallow"
    for i in range(6):
        bright = picture(seed=i)
        dark = bright // 4
        for label, u8 in (("bright", bright), ("dark", dark)):
            for root in (deep, shallow):
                (root / label).mkdir(parents=True, exist_ok=True)
            save_deep(u8, deep / label / f"{i}", "png I;16")
            Image.fromarray(u8).save(shallow / label / f"{i}.png")
    decoded_deep = decode_images(resolve_data(deep), 32, cache_dir=False).pixels
    decoded_shallow = decode_images(resolve_data(shallow), 32, cache_dir=False).pixels
    np.testing.assert_array_equal(decoded_deep, decoded_shallow)
    models = [fit_tiny_model(root, tiny_weights, tmp_path / f"model-{root.name}", strategy="svm") for root in (deep, shallow)]
    probabilities = [load(model, precision="fp32").predict_proba(deep) for model in models]
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)  # same pixels in, same model out
    np.testing.assert_allclose(load(models[0], precision="fp32").predict_proba(shallow), probabilities[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 2. Transparency: a black shape on a transparent background, in every alpha encoding


def drawing(size: int = 16) -> np.ndarray:
    """0 transparent background, 1 a black shape, 2 a gray stripe across it."""
    levels = np.zeros((size, size), np.uint8)
    levels[4:12, 3:10] = 1
    levels[7:9, 3:10] = 2
    return levels


def transparent_icon(encoding: str, folder: Path) -> Path | Image.Image | np.ndarray:
    """The same drawing (a black shape with a gray stripe, transparent elsewhere) in ``encoding``."""
    levels = drawing()
    alpha = np.where(levels > 0, 255, 0).astype(np.uint8)
    gray = np.where(levels == 2, 128, 0).astype(np.uint8)
    key = np.where(levels == 0, 9, gray).astype(np.uint8)  # colour-key encodings: background 9 is transparent
    rgba = Image.fromarray(np.stack([gray, gray, gray, alpha], axis=-1))
    palette = Image.fromarray(np.array([1, 0, 2], np.uint8)[levels], mode="P")  # index 1 (9, 9, 9) is transparent
    palette.putpalette([0, 0, 0, 9, 9, 9, 128, 128, 128] + [0] * 759)
    path = folder / encoding.replace(" ", "_").replace("/", "_").replace("+", "")
    if encoding == "RGBA png":
        rgba.save(path.with_suffix(".png"))
    elif encoding == "LA png":
        rgba.convert("LA").save(path.with_suffix(".png"))
    elif encoding == "P + transparent index png":
        palette.save(path.with_suffix(".png"), transparency=1)
    elif encoding == "P + transparent index gif":
        palette.save(path.with_suffix(".gif"), transparency=1)
        return path.with_suffix(".gif")
    elif encoding == "RGB + tRNS png":
        Image.fromarray(np.stack([key] * 3, axis=-1)).save(path.with_suffix(".png"), transparency=(9, 9, 9))
    elif encoding == "L + tRNS png":
        Image.fromarray(key).save(path.with_suffix(".png"), transparency=9)
    elif encoding == "16-bit + tRNS png":
        Image.fromarray(key.astype(np.uint16) * 257).save(path.with_suffix(".png"), transparency=9 * 257)
    elif encoding == "RGBA webp lossless":
        rgba.save(path.with_suffix(".webp"), lossless=True)
        return path.with_suffix(".webp")
    elif encoding == "RGBA tiff":
        rgba.save(path.with_suffix(".tif"))
        return path.with_suffix(".tif")
    elif encoding == "PA (in memory)":
        return _pa(palette, alpha)
    elif encoding == "RGBa premultiplied (in memory)":
        return rgba.convert("RGBa")
    elif encoding == "uint8 (H, W, 4) array":
        return np.asarray(rgba)
    return path.with_suffix(".png")


def _pa(palette: Image.Image, alpha: np.ndarray) -> Image.Image:
    image = palette.convert("PA")
    image.putalpha(Image.fromarray(alpha))
    return image


ALPHA = ["RGBA png", "LA png", "P + transparent index png", "P + transparent index gif", "RGB + tRNS png", "L + tRNS png",
         "16-bit + tRNS png", "RGBA webp lossless", "RGBA tiff", "PA (in memory)", "RGBa premultiplied (in memory)",
         "uint8 (H, W, 4) array"]


def on_white() -> np.ndarray:
    return np.array([255, 0, 128], np.uint8)[drawing()][..., None].repeat(3, axis=-1)


@pytest.mark.parametrize("encoding", ALPHA)
def test_every_alpha_encoding_is_composited_onto_the_same_white_background(encoding, tmp_path):
    out = np.asarray(read_image(transparent_icon(encoding, tmp_path)))
    np.testing.assert_array_equal(out, on_white())  # the shape stays visible, the same everywhere


def test_half_transparent_pixels_blend_with_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    out = np.asarray(read_image(rgba))
    assert tuple(out[0, 0]) == (227, 127, 127)  # (c * 128 + 255 * 127) / 255


# ---------------------------------------------------------------------------------------------
# 1 + 2 everywhere: fit, predict, the ONNX predictor and the server see the same pixels


def deep_and_transparent_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Files in deep and alpha encodings, and 8-bit RGB files of what they should decode to."""
    folder.mkdir(parents=True, exist_ok=True)
    files, references = [], []
    for encoding in ("png I;16", "tiff I;16B", "tiff F (float 0-1)"):
        for level, u8 in (("bright", picture(3)), ("dark", picture(3) // 4)):
            files.append(save_deep(u8, folder / f"{encoding[:8].replace(' ', '_')}_{level}", encoding))
            references.append(folder / f"ref_{len(references)}.png")
            Image.fromarray(u8).convert("RGB").save(references[-1])
    for encoding in ("RGBA png", "P + transparent index png", "RGB + tRNS png", "LA png"):
        files.append(transparent_icon(encoding, folder))
        references.append(folder / f"ref_{len(references)}.png")
        Image.fromarray(on_white()).save(references[-1])
    return files, references


@pytest.fixture(scope="module")
def field_model(image_folder, tiny_weights, tmp_path_factory):
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("field") / "model", strategy="logistic")


@pytest.fixture(scope="module")
def field_network_model(image_folder, tiny_weights, tmp_path_factory):
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("field-net") / "model", strategy="head")


@pytest.mark.parametrize("which", ["field_model", "field_network_model"])
def test_fit_predict_onnx_and_server_see_the_same_pixels(which, request, tmp_path, monkeypatch):
    """Default settings everywhere, on a CPU that runs bf16 natively (forced here): the Python API,
    the ONNX file and the server give the same probabilities (issue 33: serve gave 0.805 where
    predict gave 0.9998, serving bf16 chosen by the CPU's flags)."""
    pytest.importorskip("onnxruntime")
    import transferkit.training.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    field_model = request.getfixturevalue(which)
    from fastapi.testclient import TestClient

    from transferkit.export import OnnxClassifier, export_onnx
    from transferkit.serve import create_app

    files, references = deep_and_transparent_files(tmp_path / "files")
    fit_pixels = decode_images(ImageSet([str(f) for f in files], None), 32, cache_dir=False).pixels  # what fit decodes
    reference_pixels = decode_images(ImageSet([str(f) for f in references], None), 32, cache_dir=False).pixels
    np.testing.assert_array_equal(fit_pixels, reference_pixels)

    classifier = load(field_model)
    expected = classifier.predict_proba([str(f) for f in references])
    np.testing.assert_allclose(classifier.predict_proba([str(f) for f in files]), expected, atol=1e-6)

    onnx_model = OnnxClassifier(export_onnx(field_model, tmp_path / "model.onnx").path)
    np.testing.assert_array_equal(onnx_model.decode([str(f) for f in files]), fit_pixels)
    np.testing.assert_allclose(onnx_model.predict_proba([str(f) for f in files]), expected, atol=1e-4)

    with TestClient(create_app(field_model)) as client:
        uploads = [("files", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
        response = client.post(f"/predict?top_k={len(classifier.classes_)}", files=uploads)
    assert response.status_code == 200, response.text
    for answer, row in zip(response.json()["predictions"], expected):
        served = {item["label"]: item["probability"] for item in answer["top_k"]}
        assert served == pytest.approx(dict(zip(classifier.classes_, row)), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# 3. A class absent from the test data


@pytest.mark.parametrize(
    ("truth", "predicted", "absent", "macro_f1", "balanced"),
    [
        (list("aabbcc"), list("aabbcc"), ["d"], 1.0, 1.0),  # perfect on 3 of 4: not 0.75
        (list("aabb"), list("aabb"), ["c", "d"], 1.0, 1.0),  # two absent
        (list("aabbcc"), list("aabbcd"), ["d"], (1 + 1 + 2 / 3) / 3, (1 + 1 + 0.5) / 3),  # a wrong answer naming the absent class
        (list("aabbccdd"), list("aabbccdd"), [], 1.0, 1.0),  # nothing absent: unchanged
    ],
)
def test_metrics_average_over_the_classes_present_and_name_the_absent(truth, predicted, absent, macro_f1, balanced):
    metrics = classification_metrics(truth, predicted, ["a", "b", "c", "d"])
    assert metrics["absent_classes"] == absent
    assert metrics["macro_f1"] == pytest.approx(macro_f1)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced)
    assert metrics["per_class"]["d"]["support"] == truth.count("d")


def test_evaluate_json_names_the_absent_classes_and_the_overlap(cli_fit, tmp_path):
    data = write_image_folder(tmp_path / "train", n_per_class=4, size=16)
    result = invoke("fit", data, "--out", tmp_path / "model", "--strategy", "svm", "--C", 1, "--quiet", *cli_fit)
    assert result.exit_code == 0, result.output
    test = write_image_folder(tmp_path / "test", n_per_class=2, size=16, seed=7)
    for path in (test / "blue").iterdir():
        path.unlink()
    (test / "blue").rmdir()
    result = invoke("evaluate", tmp_path / "model", test, "--json", tmp_path / "test.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "test.json").read_text())
    assert report["absent_classes"] == ["blue"] and report["train_test_overlap"] == 0
    assert "no test images of 'blue'" in flat(result.output)
    assert "majority-class rate 0.5000" in flat(result.output)


# ---------------------------------------------------------------------------------------------
# 5. Duplicates and leakage


def noise_folder(root: Path, n: int = 16, copies: str = "same class", seed: int = 0) -> Path:
    """Noise images with arbitrary labels, each saved twice (``x.png`` and ``x (1).png``)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = "ab"[i % 2]
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / label / f"x{i}.png")
        if copies == "same class":
            (root / label / f"x{i} (1).png").write_bytes((root / label / f"x{i}.png").read_bytes())
        elif copies == "sub-folder":
            (root / label / "copies").mkdir(exist_ok=True)
            (root / label / "copies" / f"x{i}.png").write_bytes((root / label / f"x{i}.png").read_bytes())
    return root


def csv_with_copies(root: Path) -> Path:
    noise_folder(root / "img", copies="none")
    rows = ["path,label"]
    for path in sorted((root / "img").rglob("*.png")):
        copy = path.with_name(f"{path.stem}-copy.png")
        copy.write_bytes(path.read_bytes())
        rows += [f"{path.relative_to(root)},{path.parent.name}", f"{copy.relative_to(root)},{path.parent.name}"]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def array_copies(root: Path) -> ImageSet:
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(12)]
    return resolve_data(arrays + [a.copy() for a in arrays], labels=[f"{'ab'[i % 2]}" for i in range(12)] * 2)


LAYOUTS = {
    "x.png and x (1).png": lambda root: resolve_data(noise_folder(root)),
    "copies in a sub-folder": lambda root: resolve_data(noise_folder(root, copies="sub-folder")),
    "CSV rows of copied files": lambda root: resolve_data(csv_with_copies(root)),
    "arrays": array_copies,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_exact_copies_land_in_the_same_fold(layout, tmp_path):
    images = LAYOUTS[layout](tmp_path)
    digests = np.array(content_digests(images))
    assert len(set(digests)) == len(digests) // 2
    groups = duplicate_groups(images)
    for train, test in make_folds(np.asarray(images.labels), cv=4, groups=groups, seed=0):
        assert not set(digests[train]) & set(digests[test])
    decoded = decode_images(images, 8, cache_dir=False).pixels
    assert len(np.unique(pixel_groups(decoded))) == len(digests) // 2  # the feature strategies' inner CV groups


def test_no_copies_no_groups_so_the_folds_stay_what_they_were(image_folder):
    assert duplicate_groups(resolve_data(image_folder)) is None


def test_copies_no_longer_lift_cv_on_noise(cli_fit, tmp_path):
    """The issue's case: noise with arbitrary labels, each image twice; CV and inner CV stay near chance."""
    data = noise_folder(tmp_path / "data", n=24)
    result = invoke("fit", data, "--out", tmp_path / "model", "--strategy", "svm", "--cv", 4, "--quiet",
                    "--json", tmp_path / "fit.json", *cli_fit)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "fit.json").read_text())
    assert report["cv"]["grouped_copies"] == 24
    assert report["cv"]["cv_mean"] <= 0.6, report["cv"]["fold_scores"]
    # the best of 5 C on 24 noisy pictures: 0.71 with the copies grouped, 0.92 without
    assert report["validation"]["kind"] == "inner CV" and report["validation"]["accuracy"] <= 0.8


@pytest.mark.parametrize("how", ["renamed copies", "copies filed under the other class", "CSV of copies"])
def test_evaluate_counts_the_test_images_the_model_was_trained_on(how, cli_fit, tmp_path):
    train = write_image_folder(tmp_path / "train", n_per_class=4, size=16)
    result = invoke("fit", train, "--out", tmp_path / "model", "--strategy", "svm", "--C", 1, "--quiet", *cli_fit)
    assert result.exit_code == 0, result.output
    test = tmp_path / "test"
    sources = sorted(train.rglob("*.png"))[:6]
    fresh = write_image_folder(tmp_path / "fresh", n_per_class=1, size=16, seed=9)
    rows = ["path,label"]
    for i, path in enumerate(sources):
        label = path.parent.name if how != "copies filed under the other class" else {"red": "green"}.get(path.parent.name, "red")
        (test / label).mkdir(parents=True, exist_ok=True)
        (test / label / f"test-{i}.png").write_bytes(path.read_bytes())
        rows.append(f"{label}/test-{i}.png,{label}")
    for path in sorted(fresh.rglob("*.png"))[:2]:
        (test / path.parent.name).mkdir(parents=True, exist_ok=True)
        (test / path.parent.name / f"new-{path.name}").write_bytes(path.read_bytes())
        rows.append(f"{path.parent.name}/new-{path.name},{path.parent.name}")
    data = test
    if how == "CSV of copies":
        data = test / "test.csv"
        data.write_text("\n".join(rows) + "\n")
    result = invoke("evaluate", tmp_path / "model", data, "--json", tmp_path / "test.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "test.json").read_text())["train_test_overlap"] == 6
    assert "6 of the 8 test images are byte copies of training images" in flat(result.output)


def test_the_training_hashes_survive_save_and_load(field_model, image_folder):
    assert sorted(load(field_model).training_digests_) == sorted(content_digests(resolve_data(image_folder)))


@pytest.mark.parametrize("strategy", ["svm", "logistic", "head", "finetune", "pixels"])
def test_every_strategy_reports_a_picture_filed_under_two_classes(strategy, tiny_weights, tmp_path):
    data = write_image_folder(tmp_path / "data", n_per_class=4, size=16)
    (data / "green" / "also-red.png").write_bytes((data / "red" / "000.png").read_bytes())
    images = resolve_data(data)
    assert len(label_conflicts(images)) == 1
    params = dict(backbone=TINY_BACKBONE, weights=str(tiny_weights), strategy=strategy, image_size=16, epochs=1, batch_size=8,
                  device="cpu", precision="fp32", cache_dir=False)
    with pytest.warns(UserWarning, match="different labels") as warned:
        ImageClassifier(**params).fit(data)
    message = " ".join(str(w.message) for w in warned)
    assert "000.png (red)" in message and "also-red.png (green)" in message


def test_fit_on_the_command_line_prints_the_conflict(cli_fit, tmp_path):
    data = write_image_folder(tmp_path / "data", n_per_class=4, size=16)
    (data / "blue" / "copy.png").write_bytes((data / "red" / "001.png").read_bytes())
    result = invoke("fit", data, "--out", tmp_path / "model", "--strategy", "svm", "--C", 1, "--quiet", *cli_fit)
    assert result.exit_code == 0, result.output
    assert "warning: 1 picture(s) appear with different labels" in flat(result.output)


# ---------------------------------------------------------------------------------------------
# 6. Folder layouts


@pytest.mark.parametrize(
    ("splits", "classes"),
    [
        (["train", "test"], ["a", "b"]),
        (["train", "val", "test"], ["cat", "dog"]),
        (["Training", "Testing"], ["a", "b", "c"]),
        (["train_set", "test_set"], ["a", "b"]),
    ],
)
def test_a_folder_of_splits_stops_with_a_hint(splits, classes, tmp_path):
    for split in splits:
        # with 3 classes, the test split lacks one: the layout is still recognised
        for label in classes[: len(classes) - (split.lower().startswith("test") and len(classes) > 2)]:
            (tmp_path / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / label / "x.png")
    with pytest.raises(DataError, match=r"look like splits of one data set.*Pass one split, e.g. `transferkit fit "):
        resolve_data(tmp_path)


def test_class_folders_with_the_same_sub_folders_get_a_warning(tmp_path):
    for top in ("site1", "site2"):
        for label in ("ok", "defect"):
            (tmp_path / top / label).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / top / label / "x.png")
    with pytest.warns(UserWarning, match="same sub-folders"):
        images = resolve_data(tmp_path)
    assert images.classes == ["site1", "site2"]  # allowed: nested folders are a valid layout


def mac_zip(root: Path, where: str) -> Path:
    data = write_image_folder(root, n_per_class=3, size=8)
    if where == "__MACOSX at the top":
        for label in ("red", "green"):
            (data / "__MACOSX" / label).mkdir(parents=True)
            (data / "__MACOSX" / label / "._000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    elif where == "__MACOSX inside a class":
        (data / "red" / "__MACOSX").mkdir()
        (data / "red" / "__MACOSX" / "._000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
        (data / "red" / "__MACOSX" / "notes.txt").write_text("x")
    elif where == "._ files beside the images":
        (data / "red" / "._000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
        (data / "blue" / "._016.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    elif where == "Thumbs.db and desktop.ini":
        (data / "red" / "Thumbs.db").write_bytes(bytes(100))
        (data / "desktop.ini").write_text("[.ShellClassInfo]")
    return data


@pytest.mark.parametrize("where", ["__MACOSX at the top", "__MACOSX inside a class", "._ files beside the images", "Thumbs.db and desktop.ini"])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_mac_zip_and_windows_clutter_is_left_out_and_listed(where, skip_bad, tmp_path):
    images = resolve_data(mac_zip(tmp_path / "data", where), skip_bad=skip_bad)
    assert images.classes == ["blue", "green", "red"] and len(images) == 9
    listed = " ".join(f"{s.path} {s.reason}" for s in images.skipped)
    assert ("__MACOSX" in listed) if "MACOSX" in where else True
    assert ("._0" in listed and "AppleDouble" in listed) if "._" in where else True
    assert ("Thumbs.db" in listed and "desktop.ini" in listed) if "Thumbs" in where else True


def test_predict_folder_leaves_mac_clutter_out(tmp_path):
    data = mac_zip(tmp_path / "data", "__MACOSX inside a class")
    assert not [p for p in find_images([data]) if "__MACOSX" in p]


# ---------------------------------------------------------------------------------------------
# 7. CSV paths written on Windows


@pytest.mark.parametrize("style", ["images\\{label}\\{name}", ".\\images\\{label}\\{name}", "images\\{label}/{name}"])
def test_csv_paths_with_backslashes_are_resolved(style, tmp_path):
    rows = ["path,label"]
    for label in ("h", "k"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(2):
            name = f"{label}_{i:02d}.png"
            Image.new("RGB", (8, 8), (i * 50, 10, 10)).save(tmp_path / "images" / label / name)
            rows.append(f"{style.format(label=label, name=name)},{label}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    images = resolve_data(tmp_path / "data.csv")
    assert len(images) == 4 and all(Path(p).is_file() for p in images.sources)


def test_a_windows_drive_path_is_named_as_the_cause(tmp_path):
    (tmp_path / "data.csv").write_text("path,label\nC:\\Users\\me\\a.png,a\nC:\\Users\\me\\b.png,b\n")
    with pytest.raises(DataError, match="drive letter"):
        resolve_data(tmp_path / "data.csv")


# ---------------------------------------------------------------------------------------------
# 8. HEIC photos


def heic_bytes(brand: bytes = b"heic", compatible: tuple[bytes, ...] = (b"mif1", b"heic")) -> bytes:
    box = b"ftyp" + brand + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 4 + len(box)) + box + bytes(200)


@pytest.mark.parametrize(
    ("name", "payload"),
    [("IMG_0001.HEIC", heic_bytes()), ("IMG_0002.heif", heic_bytes(b"mif1", (b"mif1", b"heix"))), ("renamed.jpg", heic_bytes(b"heix"))],
)
def test_heic_photos_are_named_with_the_plugin_that_reads_them(name, payload, tmp_path):
    data = write_image_folder(tmp_path / "data", n_per_class=2, size=8)
    (data / "red" / name).write_bytes(payload)
    with pytest.raises(DataError) as error:
        decode_images(resolve_data(data), 8, cache_dir=False)
    assert "HEIC" in str(error.value) and "pillow-heif" in str(error.value) and name in str(error.value)
    if not name.endswith(".jpg"):  # a .jpg is taken at its word until it is decoded (above)
        with pytest.raises(DataError, match="pillow-heif"):
            find_images([data / "red" / name])


def test_avif_is_not_called_heic():
    assert validate.unreadable_format(heic_bytes(b"avif", (b"avif", b"mif1"))) is None
    assert validate.unreadable_format(b"\x89PNG\r\n\x1a\n" + bytes(40)) is None


def test_a_heic_upload_is_named(field_model):
    from fastapi.testclient import TestClient

    from transferkit.serve import create_app

    with TestClient(create_app(field_model, precision="fp32")) as client:  # auto may serve bf16 on a bf16-native CPU
        response = client.post("/predict", files=[("files", ("photo.heic", heic_bytes(), "image/heic"))])
    assert response.status_code == 415 and "pillow-heif" in response.text


def test_pillow_heif_is_registered_when_installed(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=lambda: calls.append(1)))
    validate.register_optional_openers()
    assert calls == [1]


# ---------------------------------------------------------------------------------------------
# 9. Imbalance: the yardstick next to every accuracy


def imbalanced_folder(root: Path, big: int = 48, small: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for label, n in (("common", big), ("rare", small)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("strategy", "extra", "label"),
    [
        ("svm", [], "inner-CV accuracy of the chosen C"),
        ("logistic", [], "inner-CV accuracy of the chosen C"),
        ("head", ["--epochs", 1, "--batch-size", 8], "held-out split accuracy"),
        ("svm", ["--C", 1], "no validation score"),
    ],
)
def test_every_fit_prints_the_majority_class_rate_and_notes_imbalance(strategy, extra, label, cli_fit, tmp_path):
    data = imbalanced_folder(tmp_path / "data")
    result = invoke("fit", data, "--out", tmp_path / "model", "--strategy", strategy, "--quiet", "--json", tmp_path / "fit.json",
                    *extra, *cli_fit)
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert label in output
    if label != "no validation score":
        assert "(majority-class rate 0.9412" in output  # 48 / 51, printed next to the score
    assert "imbalanced ('common' 48 vs 'rare' 3 images, 16.0x)" in output
    report = json.loads((tmp_path / "fit.json").read_text())
    assert report["imbalance_note"] and report["class_counts"] == {"common": 48, "rare": 3}
    if label != "no validation score":  # a network's held-out split too: its best epoch's balanced accuracy
        assert report["validation"]["balanced_accuracy"] is not None and "balanced accuracy" in output
    if strategy == "head":
        best = report["history"][report["best_epoch"] - 1]
        assert report["validation"]["balanced_accuracy"] == best["val_balanced_accuracy"]


def test_cv_prints_the_majority_class_rate_and_balanced_accuracy(cli_fit, tmp_path):
    data = imbalanced_folder(tmp_path / "data", big=12, small=4)
    result = invoke("fit", data, "--out", tmp_path / "model", "--strategy", "svm", "--C", 1, "--cv", 3, "--quiet", *cli_fit)
    assert result.exit_code == 0, result.output
    assert "(95% Wilson interval" in result.output and "majority-class rate 0.7500, balanced accuracy" in flat(result.output)


def test_the_report_shows_the_overlap_and_the_majority_class_rate(field_model, image_folder, tmp_path):
    result = invoke("report", field_model, image_folder, "--out", tmp_path / "report", "--mistakes", 0)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "report.json").read_text())["metrics"]
    assert metrics["train_test_overlap"] == 24 and metrics["majority_class_rate"] == pytest.approx(1 / 3)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "24 of the 24 test images are byte copies of training images" in html and "majority-class rate" in html


def test_compare_prints_the_majority_class_rate_and_notes_imbalance(cli_fit, tmp_path):
    data = imbalanced_folder(tmp_path / "data", big=12, small=3)
    result = invoke("compare", data, "--strategies", "svm", "--cv", 3, *cli_fit)
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert "majority-class rate 0.8000 (always 'common')" in output and "imbalanced ('common' 12 vs 'rare' 3" in output


def test_the_held_out_split_of_the_network_strategies_holds_no_copy_of_a_training_image():
    from transferkit.strategies.network import _copies_together, _split

    rng = np.random.default_rng(0)
    unique = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    pixels = np.concatenate([unique, unique])  # every picture twice
    targets = np.tile(np.arange(2), 20)
    train, val = _split(None, targets, 0.3, seed=0)
    train, val = _copies_together(pixel_groups(pixels), train, val)
    digests = [row.tobytes() for row in pixels]
    assert len(val) > 0 and not {digests[i] for i in train} & {digests[i] for i in val}
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(40))


def test_pixel_groups_of_selected_rows_equal_those_of_the_copy_and_read_a_mapped_cache_in_chunks(tmp_path, monkeypatch):
    import transferkit.data.duplicates as duplicates

    rng = np.random.default_rng(0)
    pixels = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.uint8, shape=(12, 8, 8, 3))
    pixels[:] = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    pixels[5] = pixels[2]  # one pair of copies
    monkeypatch.setattr(duplicates, "GROUP_CHUNK", 5)
    released = []
    monkeypatch.setattr(duplicates, "release_pages", lambda array: released.append(array is pixels))
    rows = np.array([0, 2, 3, 5, 9, 11])
    grouped = pixel_groups(pixels, rows)
    assert len(released) >= 2 and all(released)  # after each chunk of 5 rows, on the mapped array itself
    assert (grouped == pixel_groups(np.array(pixels[rows]))).all()
    assert grouped[1] == grouped[3] and len(np.unique(grouped)) == 5
