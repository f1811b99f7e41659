"""Near-copies (issue 30): resized, JPEG-re-encoded and shifted copies are found; look-alikes are not;
CV groups keep them in one fold; a saved model names the test images that copy its training images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from transferkit.data import ImageSet, duplicate_groups, near_copies, near_copy_pairs, thumbnails
from transferkit.data.near_copies import (
    THUMB_SIDE, decode_thumbnails, encode_thumbnails, similarity, train_test_near_copies,
)


def smooth_images(n: int, side: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` distinct colour pictures: random blobs, blurred (so a one-pixel shift is a small change)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 8, 8, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((side, side), Image.BICUBIC)) for c in coarse])


def resized(image: np.ndarray) -> np.ndarray:
    side = image.shape[0]
    small = Image.fromarray(image).resize((side * 3 // 4, side * 3 // 4), Image.BILINEAR)
    return np.asarray(small.resize((side, side), Image.BILINEAR))


def jpeg(image: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=70)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def shifted(image: np.ndarray) -> np.ndarray:
    out = np.roll(image, 1, axis=1)
    out[:, 0] = out[:, 1]
    return out


@pytest.fixture(scope="module")
def train():
    return smooth_images(60)


@pytest.mark.parametrize("edit", [resized, jpeg, shifted])
def test_edited_copies_of_training_images_are_named(train, edit):
    copies = np.stack([edit(image) for image in train[:10]])
    found = near_copies(thumbnails(copies), thumbnails(train))
    assert sorted((item.query, item.reference) for item in found) == [(i, i) for i in range(10)]
    assert all(item.similarity > 0.9 for item in found)


def test_distinct_pictures_are_not_near_copies(train):
    assert near_copies(thumbnails(smooth_images(40, seed=1)), thumbnails(train)) == []
    assert near_copy_pairs(thumbnails(train)) == []


def test_a_copy_of_a_picture_the_reference_holds_twice_is_still_named(train):
    """The ratio test must not compare the query with the best match's own copy."""
    reference = np.concatenate([train, train[:1]])
    found = near_copies(thumbnails(jpeg(train[0])[None]), thumbnails(reference))
    assert len(found) == 1 and found[0].reference in (0, len(train))


def test_pairs_within_one_set_are_listed_once(train):
    data = np.concatenate([train, [resized(train[3]), shifted(train[7])]])
    pairs = near_copy_pairs(thumbnails(data))
    assert sorted((p.query, p.reference) for p in pairs) == [(3, 60), (7, 61)]


def test_duplicate_groups_put_near_copies_in_one_group(train):
    data = np.concatenate([train, [jpeg(train[5])]])
    images = ImageSet(sources=list(data), labels=["a"] * len(data))
    assert duplicate_groups(images, [str(i) for i in range(len(data))]) is None  # no byte copies: as before
    groups = duplicate_groups(images, [str(i) for i in range(len(data))], pixels=data)
    assert groups[5] == groups[60] and len(np.unique(groups)) == len(data) - 1


def test_thumbnails_are_uint8_and_round_trip_through_text(train):
    thumbs = thumbnails(train[:5])
    assert thumbs.shape == (5, THUMB_SIDE, THUMB_SIDE) and thumbs.dtype == np.uint8
    assert np.array_equal(decode_thumbnails(encode_thumbnails(thumbs)), thumbs)
    with pytest.raises(ValueError):
        decode_thumbnails("AAAA")


def test_flat_images_are_near_copies_of_nothing():
    flat = np.full((3, 32, 32, 3), 128, np.uint8)
    assert np.allclose(similarity(thumbnails(flat), thumbnails(flat)), 0.0)
    assert near_copies(thumbnails(flat), thumbnails(smooth_images(5))) == []


def test_train_test_records_name_both_images(train):
    test = np.concatenate([smooth_images(5, seed=2), [shifted(train[9])]])
    names = [f"test/{i}.png" for i in range(len(test))]
    found = train_test_near_copies(thumbnails(train), [f"train/{i}.png" for i in range(len(train))], thumbnails(test), names)
    assert [(r["test"], r["train"]) for r in found] == [("test/5.png", "train/9.png")]
    assert 0.9 < found[0]["similarity"] <= 1.0


def test_the_same_shape_at_another_brightness_is_not_a_near_copy(train):
    """Correlation ignores brightness; a near-copy keeps it (lfw's flat patches with one edge
    correlated above 0.98 at 35-144 grey levels apart)."""
    darker = np.clip(train[:10].astype(np.int16) // 2, 0, 255).astype(np.uint8)  # same shapes, half the brightness
    assert near_copies(thumbnails(darker), thumbnails(train)) == []
    slightly = np.clip(train[:10].astype(np.int16) - 3, 0, 255).astype(np.uint8)  # 3 grey levels: still a copy
    assert sorted((item.query, item.reference) for item in near_copies(thumbnails(slightly), thumbnails(train))) == [(i, i) for i in range(10)]
