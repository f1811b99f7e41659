"""Public image data sets that ship inside packages, written out as image folders for benchmarks.

Each data set becomes ``ROOT/NAME/train/CLASS/*.png`` and ``ROOT/NAME/test/CLASS/*.png``: a fixed,
stratified split (seed 0), PNG files at the images' native size. Writing is idempotent: a set whose
folders already hold the expected number of files is left alone (a ``.complete`` marker records it).
Nothing is downloaded: every image comes from a file inside an installed package.

| name | source | train / test | classes | image | domain |
|---|---|---|---|---|---|
| ``lfw`` | ``skimage.data.lfw_subset()`` | 150 / 50 | 2 (face, nonface) | 25x25 grey | face crops vs other patches of the same photos |
| ``digits`` | ``sklearn.datasets.load_digits()`` | 1,347 / 450 | 10 | 8x8 grey (16 levels) | handwritten digits, far from ImageNet |
| ``animals`` | ``animal-mnist`` wheel (bundled pickle) | 2,000 / 600 of 10,000 | 10 animals | 28x28 grey | animal silhouettes (ImageNet classes, drawn) |
| ``spatial`` | drawn here (numpy, seed 0) | 2,000 / 400 | 4 (left, right, above, below) | 64x64 colour | where a square sits relative to a disc (random colours, clutter): a spatial task that flips change |
| ``elpv`` | built in: ``elpv:train`` / ``elpv:test`` | 1,968 / 656 | 4 defect probabilities | 300x300 grey | solar-cell electroluminescence, far from ImageNet |
| ``letters`` | drawn here: A-Z in 14 of matplotlib's bundled fonts (seed 0) | 156 / 104 | 26 (6 / 4 a class) | 48x48 grey | many classes, few images each |
| ``textures`` | drawn here: band-pass noise (seed 0) | 150 / 100 | 5 (4 orientations, isotropic) | 64x64 grey | random-phase textures, far from ImageNet |

ELPV is not exported: transferkit reads it by its built-in names. ``animal-mnist`` declares
tensorflow as a dependency that it only needs for its own loaders; install it with
``pip install --no-deps animal-mnist`` (this module reads the bundled file without importing it).

    python benchmarks/datasets.py --root runs/bench/data
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

SEED = 0


@dataclass(frozen=True)
class BenchSet:
    """Where one data set lives: DATA arguments for ``transferkit fit`` / ``evaluate``."""

    name: str
    train: str
    test: str
    description: str


def _write_split(root: Path, name: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 test_size: int | float, train_size: int | float | None = None) -> tuple[Path, Path]:
    """Stratified split of uint8 images (N, H, W) or (N, H, W, 3) into ROOT/NAME/{train,test}/CLASS/*.png."""
    base = root / name
    marker = base / ".complete"
    idx = np.arange(len(images))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, train_size=train_size, stratify=labels,
                                           random_state=SEED)
    expected = f"{len(train_idx)} {len(test_idx)}"
    if marker.exists() and marker.read_text().strip() == expected:
        return base / "train", base / "test"
    if base.exists():
        shutil.rmtree(base)
    for part, chosen in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        for class_name in classes:
            (base / part / class_name).mkdir(parents=True, exist_ok=True)
        for i in chosen:
            Image.fromarray(images[i]).save(base / part / classes[labels[i]] / f"{i:05d}.png")
    marker.write_text(expected + "\n")
    return base / "train", base / "test"


def lfw(root: Path) -> BenchSet:
    """200 grey 25x25 crops from scikit-image (100 faces, then 100 non-faces): 150 train / 50 test."""
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)
    labels = np.array([0] * 100 + [1] * 100)
    train, test = _write_split(root, "lfw", images, labels, ["face", "nonface"], test_size=50)
    return BenchSet("lfw", str(train), str(test),
                    "150 train / 50 test, 2 classes (face, nonface), 25x25 grey, face crops (skimage lfw_subset)")


def digits(root: Path) -> BenchSet:
    """scikit-learn's 1,797 8x8 digits (values 0-16, scaled to 0-255): stratified 75/25."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0 * 255).round().astype(np.uint8)
    train, test = _write_split(root, "digits", images, bunch.target, [str(d) for d in range(10)], test_size=0.25)
    return BenchSet("digits", str(train), str(test),
                    "1347 train / 450 test, 10 classes, 8x8 grey, handwritten digits (sklearn load_digits)")


ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def animals(root: Path, n_train: int = 2000, n_test: int = 600) -> BenchSet:
    """Animal-MNIST (10,000 28x28 grey silhouettes, 1,000 per class), a stratified 2,000 / 600 subset.

    The labels 0-9 are named in the order the package's description lists the classes (alphabetical);
    the package does not name them in code. Read straight from the wheel's gzip'd pickle of a uint8
    array: importing ``animal_mnist`` would import tensorflow.
    """
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("animal-mnist is not installed: pip install --no-deps animal-mnist")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    train, test = _write_split(root, "animals", images, labels, ANIMAL_CLASSES, test_size=n_test, train_size=n_train)
    return BenchSet("animals", str(train), str(test),
                    f"{n_train} train / {n_test} test of 10,000, 10 classes, 28x28 grey, animal silhouettes (animal-mnist)")


SPATIAL_CLASSES = ["above", "below", "left", "right"]


def draw_spatial(n: int, side: int = 64, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` colour images: a disc and a square on a cluttered background; the class says where the
    square sits relative to the disc (``SPATIAL_CLASSES``, balanced).

    Which object is which is told by *shape* only: both take random, different colours in every
    image, the background is a random colour gradient with noise, and small distractors (bars and
    rings in random colours) are scattered around. Sizes and places vary, so neither a colour nor
    one position answers, and raw pixels do not either: the relation between two shapes does. A
    horizontal flip turns ``left`` into ``right`` (and a vertical one ``above`` into ``below``).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    images = np.empty((n, side, side, 3), np.uint8)
    labels = np.arange(n) % len(SPATIAL_CLASSES)
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        corners = rng.integers(40, 200, size=(2, 3)).astype(float)
        direction = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(direction) * xx + np.sin(direction) * yy) / (side * 1.5) + 0.5
        image = corners[0] * (1 - ramp[..., None]) + corners[1] * ramp[..., None] + rng.normal(0, 12, (side, side, 3))
        for _ in range(int(rng.integers(2, 5))):  # distractors: thin bars and rings
            cy, cx = rng.integers(4, side - 4, 2)
            colour = rng.integers(0, 256, 3)
            if rng.random() < 0.5:
                length = int(rng.integers(4, 10))
                image[cy : cy + 2, max(0, cx - length) : cx + length] = colour
            else:
                r = int(rng.integers(3, 6))
                ring = np.abs(np.hypot(yy - cy, xx - cx) - r) < 0.8
                image[ring] = colour
        radius, half = int(rng.integers(5, 9)), int(rng.integers(4, 8))
        gap = int(rng.integers(radius + half + 3, side // 2))
        offset = int(rng.integers(-gap // 3, gap // 3 + 1))
        dy, dx = {"above": (-gap, offset), "below": (gap, offset), "left": (offset, -gap), "right": (offset, gap)}[SPATIAL_CLASSES[label]]
        margin = radius + half + 1
        low_y, high_y = max(margin, margin - dy), min(side - margin, side - margin - dy)
        low_x, high_x = max(margin, margin - dx), min(side - margin, side - margin - dx)
        cy, cx = int(rng.integers(low_y, high_y)), int(rng.integers(low_x, high_x))
        disc_colour, square_colour = rng.permutation(_SATURATED)[:2]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius] = disc_colour
        sy, sx = cy + dy, cx + dx
        image[sy - half : sy + half + 1, sx - half : sx + half + 1] = square_colour
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels


_SATURATED = np.array([(220, 40, 40), (40, 60, 220), (40, 190, 60), (230, 200, 30), (200, 50, 200), (30, 200, 210),
                       (250, 250, 250), (15, 15, 15)])
"""Object colours: strong, so the shapes stand out, and drawn anew for each image."""


def spatial(root: Path, n_train: int = 2000, n_test: int = 400) -> BenchSet:
    """2,000 / 400 drawn 64x64 colour images, 4 relative-position classes (see :func:`draw_spatial`)."""
    images, labels = draw_spatial(n_train + n_test)
    train, test = _write_split(root, "spatial", images, labels, SPATIAL_CLASSES, test_size=n_test, train_size=n_train)
    return BenchSet("spatial", str(train), str(test),
                    f"{n_train} train / {n_test} test, 4 classes (square above/below/left/right of disc), 64x64 colour, drawn")


def elpv(root: Path) -> BenchSet:  # noqa: ARG001 - built in, nothing to write
    return BenchSet("elpv", "elpv:train", "elpv:test",
                    "1968 train / 656 test, 4 classes (defect probability), 300x300 grey, solar-cell EL images (built in)")


LETTER_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique", "DejaVuSerif",
                "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSansMono", "DejaVuSansMono-Bold", "STIXGeneral",
                "STIXGeneralBol", "STIXGeneralItalic", "cmr10", "cmss10")


def draw_letters(per_class: int = 10, side: int = 48, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Capital letters A-Z, each drawn in a random bundled font at a random size, angle (+-15
    degrees) and place, dark on a light background with noise: 26 classes, ``per_class`` each."""
    import matplotlib
    from PIL import ImageDraw, ImageFont

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, letter in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        for _ in range(per_class):
            font = ImageFont.truetype(str(fonts / f"{rng.choice(LETTER_FONTS)}.ttf"), int(rng.integers(26, 38)))
            canvas = Image.new("L", (2 * side, 2 * side), 0)
            ImageDraw.Draw(canvas).text((side, side), letter, fill=255, font=font, anchor="mm")
            canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
            shift = rng.integers(-6, 7, size=2)
            glyph = np.asarray(canvas)[side // 2 + shift[0]: side // 2 + shift[0] + side, side // 2 + shift[1]: side // 2 + shift[1] + side]
            background = rng.uniform(170, 240)
            ink = rng.uniform(10, 90)
            image = background + (ink - background) * glyph / 255.0 + rng.normal(0, 6, (side, side))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels)


def letters(root: Path) -> BenchSet:
    """260 letters (26 classes, 10 each): 156 train / 104 test, 6 and 4 a class."""
    images, labels = draw_letters()
    classes = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    train, test = _write_split(root, "letters", images, labels, classes, test_size=104)
    return BenchSet("letters", str(train), str(test), "156 train / 104 test, 26 classes (A-Z, 6 / 4 a class), 48x48 grey, "
                    "letters in 14 fonts (drawn)")


TEXTURE_CLASSES = ["diagonal-down", "diagonal-up", "horizontal", "isotropic", "vertical"]


def draw_textures(per_class: int = 50, side: int = 64, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Random-phase band-pass noise: white noise filtered in the frequency domain to one band of
    spatial frequencies and, for four classes, one orientation (0, 45, 90, 135 degrees, +-20);
    the fifth keeps every orientation. No two images share a pixel pattern: only the spectrum's
    shape tells the class (a texture task far from ImageNet's objects; a flip swaps the diagonals)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij")
    radius, angle = np.hypot(fx, fy), np.arctan2(fy, fx)
    orientations = {"diagonal-down": np.pi / 4, "diagonal-up": -np.pi / 4, "horizontal": np.pi / 2, "isotropic": None,
                    "vertical": 0.0}
    images, labels = [], []
    for label, name in enumerate(TEXTURE_CLASSES):
        for _ in range(per_class):
            centre = rng.uniform(0.08, 0.2)
            band = np.exp(-((radius - centre) ** 2) / (2 * 0.03 ** 2))
            theta = orientations[name]
            if theta is not None:
                # orientation of the stripes' normal, modulo pi
                delta = np.angle(np.exp(2j * (angle - theta - rng.normal(0, 0.1)))) / 2
                band = band * np.exp(-(delta ** 2) / (2 * np.deg2rad(20) ** 2))
            field = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(side, side))) * band))
            field = (field - field.mean()) / (field.std() + 1e-9)
            images.append(np.clip(128 + 40 * field + rng.normal(0, 4, (side, side)), 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels)


def textures(root: Path) -> BenchSet:
    """250 textures (5 classes, 50 each): 150 train / 100 test."""
    images, labels = draw_textures()
    train, test = _write_split(root, "textures", images, labels, TEXTURE_CLASSES, test_size=100)
    return BenchSet("textures", str(train), str(test), "150 train / 100 test, 5 classes (4 orientations, isotropic), 64x64 grey, "
                    "band-pass noise textures (drawn)")


BUILDERS: dict[str, Callable[[Path], BenchSet]] = {
    "lfw": lfw, "digits": digits, "animals": animals, "spatial": spatial, "elpv": elpv, "letters": letters, "textures": textures,
}


def materialise(root: str | Path, names: list[str] | None = None) -> dict[str, BenchSet]:
    """Write (or find) each named data set under ``root``; returns name -> BenchSet."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return {name: BUILDERS[name](root) for name in (names or list(BUILDERS))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/bench/data", help="folder to write the image folders into")
    parser.add_argument("--sets", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    args = parser.parse_args(argv)
    for name, bench in materialise(args.root, args.sets).items():
        print(f"{name:8s} {bench.description}  [{bench.train} | {bench.test}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
