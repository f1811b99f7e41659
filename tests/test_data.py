"""transferkit.data: sources, every PIL mode to RGB, bad files, decoding, the cache, ELPV, export."""

from __future__ import annotations

import collections
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data import (
    BUILTIN_DATASETS,
    DecodedImages,
    ImageSet,
    SkippedFile,
    check_classes,
    decode_images,
    default_cache_dir,
    elpv_defective,
    export_image_folders,
    find_images,
    load_elpv,
    read_image,
    resolve_data,
)
from transferkit.data import builtin, decode
from transferkit.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Helpers: tiny synthetic images


def save(path: Path, colour=(10, 20, 30), size=(16, 16), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        for i in range(n):
            save(root / label / f"{i}.png", colour=(i * 10, 50, 100))
    return root


def solid(value, shape=(16, 16, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def bad_files(root: Path) -> dict[str, Path]:
    """A zero-byte file, random bytes, a text file and a truncated PNG, all named .png."""
    root.mkdir(parents=True, exist_ok=True)
    empty = root / "empty.png"
    empty.write_bytes(b"")
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    text = root / "notes.png"
    text.write_text("not an image at all\n")
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="PNG")
    truncated = root / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return {"empty": empty, "corrupt": corrupt, "text": text, "truncated": truncated}


# ---------------------------------------------------------------------------------------------
# ImageSet


def test_imageset_converts_labels_and_defaults_strata():
    images = ImageSet(["/a.png", "/b.png", "/c.png"], labels=[1, 0, 1])
    assert images.labels == ["1", "0", "1"]
    assert images.strata == ["1", "0", "1"]
    assert images.classes == ["0", "1"]
    assert len(images) == 3
    assert ImageSet(["/a.png"], labels=None).classes == []


def test_imageset_rejects_length_mismatch():
    with pytest.raises(DataError, match="one value per image"):
        ImageSet(["/a.png", "/b.png"], labels=["x"])


def test_imageset_subset_by_positions_and_mask():
    images = ImageSet(["a", "b", "c"], ["x", "y", "x"], groups=["g1", "g2", "g3"], name="demo")
    picked = images.subset([2, 0])
    assert picked.sources == ["c", "a"] and picked.labels == ["x", "x"] and picked.groups == ["g3", "g1"]
    assert picked.name == "demo"
    masked = images.subset(np.array([False, True, True]))
    assert masked.sources == ["b", "c"]
    with pytest.raises(DataError, match="boolean mask"):
        images.subset(np.array([True, False]))


def test_imageset_describe_and_source_name():
    images = ImageSet(["/p/a.png", solid(0)], ["x", "y"], name="demo")
    assert images.describe() == "demo: 2 images, 2 classes (x: 1, y: 1)"
    assert images.source_name(0) == "/p/a.png"
    assert images.source_name(1) == "demo[1]"
    assert "unlabelled" in ImageSet(["/p/a.png"], None).describe()


# ---------------------------------------------------------------------------------------------
# resolve_data: folders


def test_folder_layout(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 2, "dog": 3})
    save(root / "dog" / "nested" / "deep.jpg")
    save(root / "cat" / ".hidden.png")
    (root / "cat" / "notes.txt").write_text("ignored")
    save(root / ".trash" / "x.png")  # hidden folder: not a class
    save(root / "loose.png")  # files beside the class folders are not images of a class
    images = resolve_data(root)
    assert images.classes == ["cat", "dog"]
    assert collections.Counter(images.labels) == {"cat": 2, "dog": 4}
    assert all(Path(p).is_absolute() for p in images.sources)
    assert str(root / "dog" / "nested" / "deep.jpg") in images.sources
    assert not any(".hidden" in p or "notes" in p for p in images.sources)
    assert images.groups is None and images.name == str(root)
    assert resolve_data(str(root)).sources == images.sources  # str and Path alike


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DataError, match="does not exist.*nowhere"):
        resolve_data(tmp_path / "nowhere")


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 1})
    (root / "x").mkdir()
    with pytest.raises(DataError, match=r"class 'x' has no images in .*data"):
        resolve_data(root)


def test_fewer_than_two_classes(tmp_path):
    root = make_folder(tmp_path / "data", {"only": 3})
    with pytest.raises(DataError, match="at least 2 classes"):
        resolve_data(root)


def test_folder_without_class_folders_points_to_find_images(tmp_path):
    save(tmp_path / "a.png")
    with pytest.raises(DataError, match="find_images"):
        resolve_data(tmp_path)


def test_single_image_is_not_training_data(tmp_path):
    with pytest.raises(DataError, match="single image"):
        resolve_data(save(tmp_path / "a.png"))


def test_folder_rejects_labels(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="labels must be None"):
        resolve_data(root, labels=["a", "b"])


# ---------------------------------------------------------------------------------------------
# resolve_data: CSV


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_relative_paths_groups_and_extra_columns(tmp_path):
    save(tmp_path / "img" / "a.png")
    save(tmp_path / "img" / "b.png")
    save(tmp_path / "img" / "c.png")
    csv_file = write_csv(
        tmp_path / "labels.csv",
        "Path,label,group,comment\nimg/a.png,0,p1,x\nimg/b.png,1,p1,y\n\nimg/c.png,1,p2,z\n",
    )
    images = resolve_data(csv_file)
    assert images.sources == [str(tmp_path / "img" / n) for n in ("a.png", "b.png", "c.png")]
    assert images.labels == ["0", "1", "1"]
    assert images.groups == ["p1", "p1", "p2"]
    assert images.skipped == []


def test_csv_from_another_working_directory(tmp_path, monkeypatch):
    save(tmp_path / "a.png")
    save(tmp_path / "b.png")
    csv_file = write_csv(tmp_path / "labels.csv", "path,label\na.png,x\nb.png,y\n")
    monkeypatch.chdir(tmp_path.parent)
    assert resolve_data(csv_file).sources == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]


def test_csv_missing_column(tmp_path):
    csv_file = write_csv(tmp_path / "labels.csv", "file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) path"):
        resolve_data(csv_file)


def test_csv_missing_files_named_with_line_or_skipped(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "b.png")
    csv_file = write_csv(
        tmp_path / "labels.csv", "path,label\na.png,x\ngone.png,x\nb.png,y\nalso_gone.png,y\n"
    )
    with pytest.raises(DataError) as error:
        resolve_data(csv_file)
    message = str(error.value)
    assert "line 3" in message and str(tmp_path / "gone.png") in message
    assert "line 5" in message and "also_gone.png" in message  # every bad row, not just the first
    assert "skip_bad" in message

    images = resolve_data(csv_file, skip_bad=True)
    assert images.sources == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert [s.path for s in images.skipped] == [str(tmp_path / "gone.png"), str(tmp_path / "also_gone.png")]
    assert all(isinstance(s, SkippedFile) and "not found" in s.reason for s in images.skipped)


# ---------------------------------------------------------------------------------------------
# resolve_data: lists, arrays, ImageSet, built-in names


def test_list_of_paths(tmp_path):
    paths = [save(tmp_path / f"{i}.png") for i in range(3)]
    images = resolve_data(paths, labels=[0, 1, 0])
    assert images.sources == [str(p) for p in paths] and images.labels == ["0", "1", "0"]
    with pytest.raises(DataError, match=r"one value per image \(3\). Received: 2"):
        resolve_data(paths, labels=[0, 1])
    with pytest.raises(DataError, match="labels are required"):
        resolve_data(paths)
    with pytest.raises(DataError, match="do not exist"):
        resolve_data([*paths, tmp_path / "gone.png"], labels=[0, 1, 0, 1])
    kept = resolve_data(tuple([*paths, tmp_path / "gone.png"]), labels=[0, 1, 0, 1], skip_bad=True)
    assert len(kept) == 3 and kept.skipped[0].path == str(tmp_path / "gone.png")


@pytest.mark.parametrize("shape", [(4, 9, 7), (4, 9, 7, 1), (4, 9, 7, 3), (4, 9, 7, 4)])
def test_arrays_of_each_shape(shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    if len(shape) == 4 and shape[-1] == 4:
        array[..., 3] = 255  # opaque: compositing changes nothing
    images = resolve_data(array, labels=["a", "b", "a", "b"])
    decoded = decode_images(images, 9, cache_dir=False)
    assert decoded.pixels.shape == (4, 9, 9, 3) and decoded.pixels.dtype == np.uint8
    reference = Image.fromarray(array[1].squeeze()).convert("RGB")
    expected = np.asarray(reference.resize((9, 9), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decoded.pixels[1], expected)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 8, 8), np.float32), "dtype uint8"),
        (np.zeros((8, 8), np.uint8), r"shape \(N, H, W\)"),
        (np.zeros((2, 8, 8, 2), np.uint8), r"shape \(N, H, W\)"),
    ],
)
def test_arrays_of_wrong_dtype_or_shape(array, match):
    with pytest.raises(DataError, match=match):
        resolve_data(array, labels=["a", "b"][: len(array)])


def test_imageset_is_returned_and_unknown_types_rejected():
    images = ImageSet([solid(0), solid(1)], ["a", "b"])
    assert resolve_data(images) is images
    with pytest.raises(DataError, match="Received: int"):
        resolve_data(42)


def test_builtin_names_resolve():
    assert set(BUILTIN_DATASETS) == {"elpv", "elpv:train", "elpv:test"}
    assert resolve_data("elpv:test").name == "elpv:test"


# ---------------------------------------------------------------------------------------------
# find_images and check_classes


def test_find_images(tmp_path):
    a = save(tmp_path / "dir" / "a.png")
    b = save(tmp_path / "dir" / "sub" / "b.jpg")
    save(tmp_path / "dir" / ".hidden.png")
    (tmp_path / "dir" / "readme.txt").write_text("x")
    c = save(tmp_path / "c.bmp")
    found = find_images([c, tmp_path / "dir", str(a)])
    assert found == sorted([str(a), str(b), str(c)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        find_images([tmp_path / "empty"])
    with pytest.raises(DataError, match="does not exist"):
        find_images([tmp_path / "gone.png"])
    with pytest.raises(DataError, match="expected an image file"):
        find_images([tmp_path / "dir" / "readme.txt"])


def test_check_classes_message():
    images = ImageSet(["1", "2", "3", "4"], ["a", "a", "b", "c"])
    check_classes(images, min_per_class=1)
    with pytest.raises(DataError) as error:
        check_classes(images, min_per_class=2, purpose="a stratified validation split")
    message = str(error.value)
    assert "class 'b' has 1 image" in message and "class 'c' has 1 image" in message
    assert "a stratified validation split needs at least 2 per class" in message
    with pytest.raises(DataError, match="at least 2 classes"):
        check_classes(ImageSet(["1"], ["a"]))
    with pytest.raises(DataError, match="no labels"):
        check_classes(ImageSet(["1"], None))


# ---------------------------------------------------------------------------------------------
# read_image: every mode to RGB


def roundtrip(image: Image.Image, tmp_path: Path, name: str, **save_args) -> Image.Image:
    path = tmp_path / name
    image.save(path, **save_args)
    out = read_image(path)
    assert out.mode == "RGB"
    return out


def test_gray_and_bilevel(tmp_path):
    gray = Image.new("L", (16, 16), 77)
    assert roundtrip(gray, tmp_path, "g.png").getpixel((3, 3)) == (77, 77, 77)
    bilevel = Image.new("1", (16, 16), 1)
    assert roundtrip(bilevel, tmp_path, "b.png").getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_scaled_by_the_bit_depth(tmp_path):
    values = np.array([[1000, 2000], [1500, 65535]], np.uint16).repeat(8, 0).repeat(8, 1)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    out = np.asarray(roundtrip(image, tmp_path, "deep.png"))
    np.testing.assert_array_equal(out[::8, ::8, 0], [[4, 8], [6, 255]])  # v / 257, not the image's own range
    wide = Image.fromarray(values.astype(np.int32))  # mode "I": read as 16-bit values
    np.testing.assert_array_equal(np.asarray(read_image(wide))[::8, ::8, 0], [[4, 8], [6, 255]])


def test_float_read_as_0_to_1_clipped(tmp_path):
    values = np.linspace(-1.0, 3.0, 256, dtype=np.float32).reshape(16, 16)
    out = np.asarray(read_image(Image.fromarray(values)))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert out.flat[96] == round((-1.0 + 96 * 4 / 255) * 255)  # inside [0, 1]: x * 255
    assert np.asarray(read_image(Image.fromarray(np.full((4, 4), 65535, np.uint16))))[0, 0, 0] == 255


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 250, 10, 20] + [0] * 762)
    assert roundtrip(palette, tmp_path, "p.png").getpixel((0, 0)) == (250, 10, 20)
    palette.info["transparency"] = 1
    assert roundtrip(palette, tmp_path, "pt.png", transparency=1).getpixel((0, 0)) == (255, 255, 255)  # on white
    gif = roundtrip(Image.new("P", (16, 16), 1), tmp_path, "g.gif")
    assert gif.size == (16, 16)


def test_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (200, 100, 50, 128))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = roundtrip(rgba, tmp_path, "a.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((5, 5)) == (227, 177, 152)  # (c * 128 + 255 * 127) / 255
    la = Image.new("LA", (16, 16), (200, 255))
    la.putpixel((0, 0), (0, 0))
    out = roundtrip(la, tmp_path, "la.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 200, 200)


def test_cmyk_and_ycbcr(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    assert roundtrip(cmyk, tmp_path, "c.jpg").getpixel((8, 8)) == pytest.approx((255, 255, 255), abs=2)
    ycbcr = Image.new("RGB", (16, 16), (30, 160, 90)).convert("YCbCr")
    assert read_image(ycbcr).getpixel((0, 0)) == pytest.approx((30, 160, 90), abs=3)
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    assert roundtrip(red, tmp_path, "c.tif").getpixel((0, 0)) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (32, 16), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 16))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = roundtrip(image, tmp_path, "phone.jpg", exif=exif.tobytes(), quality=95)
    assert out.size == (16, 32)
    assert out.getpixel((8, 4)) == pytest.approx((255, 0, 0), abs=12)  # the left half is now on top
    assert out.getpixel((8, 28)) == pytest.approx((0, 0, 255), abs=12)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1), (6, 5, 3), (6, 5, 4)])
def test_read_image_arrays(shape):
    array = np.full(shape, 90, np.uint8)
    out = read_image(array)
    assert out.mode == "RGB" and out.size == (5, 6)
    assert out.getpixel((0, 0)) == ((197, 197, 197) if shape[-1] == 4 else (90, 90, 90))  # alpha 90 on white
    with pytest.raises(DataError, match="uint8"):
        read_image(array.astype(np.float32))


@pytest.mark.parametrize("kind", ["empty", "corrupt", "text", "truncated"])
def test_unreadable_files_are_named(tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    with pytest.raises(DataError, match=f"cannot read image {path}: "):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "gone.png")


# ---------------------------------------------------------------------------------------------
# decode_images


def test_decode_shape_dtype_and_order(tmp_path):
    colours = [(i * 4, 255 - i * 4, 7) for i in range(40)]
    paths = [save(tmp_path / f"{i:02d}.png", colour=c, size=(20, 12)) for i, c in enumerate(colours)]
    images = ImageSet([str(p) for p in paths], ["a", "b"] * 20)
    decoded = decode_images(images, 8, cache_dir=False)
    assert isinstance(decoded, DecodedImages)
    assert decoded.pixels.shape == (40, 8, 8, 3) and decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.indices, np.arange(40))
    assert [tuple(p[4, 4]) for p in decoded.pixels] == colours
    assert decoded.skipped == []


def test_gray_decoding_equals_rgb_resize(tmp_path):
    """The fast path (resize gray, then widen to 3 channels) gives read_image(...).resize()."""
    noise = np.random.default_rng(3).integers(0, 256, (30, 30), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(noise).save(path)
    for interpolation in ("bicubic", "bilinear"):
        resample = Image.Resampling[interpolation.upper()]
        decoded = decode_images(ImageSet([str(path)], None), 13, cache_dir=False, interpolation=interpolation)
        expected = np.asarray(read_image(path).resize((13, 13), resample))
        np.testing.assert_array_equal(decoded.pixels[0], expected)


def test_decode_lists_every_bad_file_or_skips_them(tmp_path):
    bad = bad_files(tmp_path / "bad")
    good = [save(tmp_path / f"good{i}.png", colour=(i, i, i)) for i in range(2)]
    sources = [str(good[0]), *map(str, bad.values()), str(good[1])]
    images = ImageSet(sources, ["a", "b", "a", "b", "a", "b"])
    with pytest.raises(DataError) as error:
        decode_images(images, 8, cache_dir=False)
    assert all(str(path) in str(error.value) for path in bad.values())
    assert "skip_bad" in str(error.value)

    decoded = decode_images(images, 8, cache_dir=False, skip_bad=True)
    np.testing.assert_array_equal(decoded.indices, [0, 5])
    assert decoded.pixels.shape == (2, 8, 8, 3) and decoded.pixels[1, 0, 0, 0] == 1
    assert [s.path for s in decoded.skipped] == [str(p) for p in bad.values()]
    assert "empty" in decoded.skipped[0].reason
    assert images.subset(decoded.indices).labels == ["a", "b"]
    with pytest.raises(DataError, match="none of the 4 images could be read"):
        decode_images(images.subset([1, 2, 3, 4]), 8, cache_dir=False, skip_bad=True)


def test_decode_rejects_bad_options():
    images = ImageSet([solid(0)], None)
    with pytest.raises(ConfigError, match="size expected a positive integer"):
        decode_images(images, 0)
    with pytest.raises(ConfigError, match="interpolation expected one of"):
        decode_images(images, 8, interpolation="cubic")
    with pytest.raises(DataError, match="expected an ImageSet"):
        decode_images([solid(0)], 8)


def test_progress_bar_for_many_images():
    images = ImageSet([solid(i % 256, (4, 4)) for i in range(201)], None)
    assert decode_images(images, 4, cache_dir=False, progress=True).pixels.shape == (201, 4, 4, 3)


# ---------------------------------------------------------------------------------------------
# The disk cache


class CountingReader:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = decode._read_gray_or_rgb

        def counting(source):
            self.calls += 1
            return real(source)

        monkeypatch.setattr(decode, "_read_gray_or_rgb", counting)


def test_cache_hit_and_miss(tmp_path, monkeypatch):
    paths = [save(tmp_path / "img" / f"{i}.png", colour=(i * 30, 0, 0)) for i in range(4)]
    images = ImageSet([str(p) for p in paths], ["a", "b", "a", "b"])
    cache = tmp_path / "cache"
    reader = CountingReader(monkeypatch)

    first = decode_images(images, 8, cache_dir=cache)
    assert reader.calls == 4
    assert len(list((cache / "images").glob("*.npy"))) == 1
    assert not list((cache / "images").glob("*.tmp"))  # the temporary file was renamed
    assert isinstance(first.pixels, np.memmap) and not first.pixels.flags.writeable

    second = decode_images(images, 8, cache_dir=cache)
    assert reader.calls == 4  # served from the cache: no image read again
    np.testing.assert_array_equal(second.pixels, first.pixels)

    decode_images(images, 9, cache_dir=cache)  # another size: another entry
    assert reader.calls == 8

    save(paths[2], colour=(1, 2, 3))  # same path, new bytes: never a stale hit
    third = decode_images(images, 8, cache_dir=cache)
    assert reader.calls == 12
    assert tuple(third.pixels[2, 0, 0]) == (1, 2, 3)


def test_cache_of_arrays_keyed_by_content(tmp_path, monkeypatch):
    reader = CountingReader(monkeypatch)
    images = ImageSet([solid(1), solid(2)], ["a", "b"])
    decode_images(images, 4, cache_dir=tmp_path)
    decode_images(ImageSet([solid(1), solid(2)], ["a", "b"]), 4, cache_dir=tmp_path)
    assert reader.calls == 2
    decode_images(ImageSet([solid(1), solid(2, (16, 8, 3))], ["a", "b"]), 4, cache_dir=tmp_path)
    assert reader.calls == 4  # same bytes, another shape: a miss


def test_cache_remembers_skipped_files(tmp_path, monkeypatch):
    bad = bad_files(tmp_path / "bad")["corrupt"]
    good = save(tmp_path / "good.png")
    images = ImageSet([str(bad), str(good)], ["a", "b"])
    decode_images(images, 8, cache_dir=tmp_path / "cache", skip_bad=True)
    reader = CountingReader(monkeypatch)
    hit = decode_images(images, 8, cache_dir=tmp_path / "cache", skip_bad=True)
    assert reader.calls == 0
    assert hit.indices.tolist() == [1] and hit.skipped[0].path == str(bad) and hit.pixels.shape[0] == 1
    with pytest.raises(DataError, match="corrupt.png"):
        decode_images(images, 8, cache_dir=tmp_path / "cache")


def test_no_cache_and_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    images = ImageSet([solid(3)], None)
    pixels = decode_images(images, 4, cache_dir=False).pixels
    assert not isinstance(pixels, np.memmap) and not (tmp_path / "env-cache").exists()
    decode_images(images, 4)
    assert len(list((tmp_path / "env-cache" / "images").glob("*.npy"))) == 1
    monkeypatch.delenv("TRANSFERKIT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "transferkit"


# ---------------------------------------------------------------------------------------------
# ELPV (labels and split only: no pixels, except a handful)


def test_elpv_counts_and_classes():
    images = load_elpv()
    assert len(images) == 2624 and images.name == "elpv"
    assert images.classes == ["0.00", "0.33", "0.67", "1.00"]
    counts = collections.Counter(images.labels)
    assert [counts[c] for c in images.classes] == [1508, 295, 106, 715]
    assert set(images.strata) == {f"{c}|{t}" for c in images.classes for t in ("mono", "poly")}
    assert Path(images.sources[0]).name == "cell0001.png" and Path(images.sources[0]).is_file()
    assert elpv_defective(images).sum() == 106 + 715
    assert elpv_defective(["0.00", "0.33", "0.67", "1.00"]).tolist() == [False, False, True, True]


def test_binary_metrics_only_for_elpv():
    truth, predicted = ["0.00", "0.33", "0.67", "1.00"], ["0.33", "0.00", "1.00", "0.33"]
    scores = builtin.binary_metrics_if_builtin("elpv:test", truth, predicted)
    assert scores["binary_accuracy"] == 0.75 and scores["binary_balanced_accuracy"] == 0.75
    assert builtin.binary_metrics_if_builtin("some/folder", truth, predicted) == {}


def test_elpv_split_sizes_disjoint_deterministic_and_stratified():
    everything, train, test = load_elpv("all"), load_elpv("train"), load_elpv("test")
    assert (len(train), len(test)) == (1968, 656)
    assert (train.name, test.name) == ("elpv:train", "elpv:test")
    assert set(train.sources).isdisjoint(test.sources)
    assert set(train.sources) | set(test.sources) == set(everything.sources)
    builtin._elpv_split.cache_clear()
    assert load_elpv("test").sources == test.sources  # the same split when computed afresh
    overall, in_test = collections.Counter(everything.strata), collections.Counter(test.strata)
    for stratum, n in overall.items():
        assert abs(in_test[stratum] - n * 0.25) <= 1, stratum


def test_elpv_images_decode():
    few = load_elpv("test").subset(range(3))
    decoded = decode_images(few, 32, cache_dir=False)
    assert decoded.pixels.shape == (3, 32, 32, 3)
    assert (decoded.pixels[..., 0] == decoded.pixels[..., 2]).all()  # grayscale cells


def test_elpv_missing_package(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    builtin._elpv_index.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install elpv-dataset"):
            load_elpv()
    finally:
        builtin._elpv_index.cache_clear()


def test_elpv_unknown_split():
    with pytest.raises(DataError, match="split expected one of"):
        load_elpv("val")


@pytest.mark.slow
def test_elpv_decode_all(tmp_path):
    images = load_elpv()
    start = time.perf_counter()
    cold = decode_images(images, 224, cache_dir=tmp_path, progress=False)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = decode_images(images, 224, cache_dir=tmp_path, progress=False)
    warm_s = time.perf_counter() - start
    print(f"ELPV 2,624 images at 224 px: cold {cold_s:.1f} s, from cache {warm_s:.2f} s")
    assert cold.pixels.shape == warm.pixels.shape == (2624, 224, 224, 3)
    assert cold.skipped == [] and warm_s < cold_s
    np.testing.assert_array_equal(cold.pixels[::97], warm.pixels[::97])


# ---------------------------------------------------------------------------------------------
# Export


def contents(images: ImageSet) -> collections.Counter:
    return collections.Counter((label, Path(p).read_bytes()) for p, label in zip(images.sources, images.labels))


def test_export_round_trips(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    save(root / "a" / "sub" / "0.png", colour=(1, 1, 1))  # same file name as a/0.png
    images = resolve_data(root)
    out = export_image_folders(images, tmp_path / "out")
    again = resolve_data(out)
    assert again.classes == images.classes
    assert contents(again) == contents(images)

    with pytest.raises(DataError, match="not empty"):
        export_image_folders(images, out)
    (out / "a" / "0.png").write_bytes(b"stale")
    (out / "a" / "extra.png").write_bytes(b"kept")
    export_image_folders(images.subset([0, 3]), out, overwrite=True)
    assert (out / "a" / "0.png").read_bytes() == Path(images.sources[0]).read_bytes()  # replaced
    assert (out / "a" / "extra.png").read_bytes() == b"kept"  # nothing is deleted


def test_export_arrays_as_png(tmp_path):
    arrays = np.stack([solid(10), solid(20), solid(30)])
    images = resolve_data(arrays, labels=[0, 1, 1])
    out = export_image_folders(images, tmp_path / "out")
    again = resolve_data(out)
    assert again.labels == ["0", "1", "1"]
    np.testing.assert_array_equal(decode_images(again, 16, cache_dir=False).pixels, arrays)


def test_export_rejects_bad_labels_and_unlabelled(tmp_path):
    with pytest.raises(DataError, match="folder names"):
        export_image_folders(ImageSet([solid(0), solid(1)], ["a/b", "c"]), tmp_path / "out")
    with pytest.raises(DataError, match="labelled"):
        export_image_folders(ImageSet([solid(0)], None), tmp_path / "out")


def test_stratified_indices_keep_proportions_and_a_floor_per_class():
    from transferkit.data import stratified_indices

    labels = np.array([0] * 300 + [1] * 96 + [2] * 4)
    rows = stratified_indices(labels, 100, seed=0, at_least=2)
    counts = np.bincount(labels[rows], minlength=3)
    assert list(counts) == [75, 24, 2] and np.all(np.diff(rows) > 0)  # 1 of the rare class by proportion, 2 by the floor
    np.testing.assert_array_equal(rows, stratified_indices(labels, 100, seed=0, at_least=2))
    np.testing.assert_array_equal(stratified_indices(labels[:50], 100, seed=0), np.arange(50))
