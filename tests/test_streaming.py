"""Memory that does not grow with the number of images: the decode cache is written and read in chunks.

The resident memory of a mapped file is read from ``/proc/self/smaps`` (Linux): the pages of the
cache file that this process holds at each step must stay near one chunk's worth, whereas
holding the whole cache would show all of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_BACKBONE
from transferkit.data import ImageSet, decode_images
from transferkit.data import decode as decode_module
from transferkit.strategies import features as features_module
from transferkit.strategies.features import FeatureExtractor
from transferkit.training.runtime import resolve_runtime

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")

N, SIDE, CHUNK = 1000, 32, 100
IMAGE_BYTES = SIDE * SIDE * 3
SLACK = 256 * 1024  # page granularity and the kernel's fault-around (64 KB) on both sides


def mapped_bytes(path: str | os.PathLike) -> int:
    """Resident bytes of this process's mappings of ``path``."""
    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                inside = len(fields) >= 6 and os.path.realpath(fields[5]) == target
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.fixture
def many_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, SIDE, SIDE, 3), dtype=np.uint8)
    return ImageSet(sources=list(images), labels=[str(i % 3) for i in range(N)])


def test_the_decode_writes_the_cache_one_chunk_at_a_time(many_images, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_module, "DECODE_CHUNK", CHUNK)
    monkeypatch.setattr(decode_module, "_HASH_CHUNK", CHUNK * IMAGE_BYTES // 16)  # the checksum reads CHUNK images per step
    held = []
    real = decode_module.release_pages

    def spy(pixels):
        if getattr(pixels, "filename", None):
            held.append(mapped_bytes(pixels.filename))  # before the release: what one step holds
        real(pixels)

    monkeypatch.setattr(decode_module, "release_pages", spy)
    decoded = decode_images(many_images, SIDE, cache_dir=tmp_path, progress=False)
    assert decoded.pixels.shape == (N, SIDE, SIDE, 3)
    assert len(held) >= N // CHUNK
    assert max(held) <= CHUNK * IMAGE_BYTES + SLACK < N * IMAGE_BYTES // 2


def test_feature_extraction_reads_a_memory_mapped_cache_chunk_by_chunk(many_images, tiny_weights, tmp_path, monkeypatch):
    pixels = decode_images(many_images, SIDE, cache_dir=tmp_path, progress=False).pixels
    assert isinstance(pixels, np.memmap)
    monkeypatch.setattr(features_module, "EXTRACT_CHUNK", CHUNK)
    extractor = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=resolve_runtime("cpu", "fp32"), cache_dir=tmp_path)
    held = []
    real = FeatureExtractor._forward
    monkeypatch.setattr(FeatureExtractor, "_forward", lambda self, rt, batch: held.append(mapped_bytes(pixels.filename)) or real(self, rt, batch))
    features = extractor.transform(pixels)
    assert features.shape == (N, extractor.dim)
    assert len(held) >= N // 64
    assert max(held) <= 2 * CHUNK * IMAGE_BYTES + SLACK < N * IMAGE_BYTES
    # chunked extraction gives the features of an in-memory, one-go extraction
    again = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=resolve_runtime("cpu", "fp32"), cache_dir=False)
    np.testing.assert_array_equal(again.transform(np.array(pixels)), features)


def test_features_of_chosen_rows_are_read_chunk_by_chunk_without_a_copy(many_images, tiny_weights, tmp_path, monkeypatch):
    """The symmetry test scores held-out rows flipped: ``rows=`` reads them a chunk at a time
    (no copy of the held-out fifth in memory) and gives the features of the copied, flipped rows."""
    pixels = decode_images(many_images, SIDE, cache_dir=tmp_path, progress=False).pixels
    monkeypatch.setattr(features_module, "EXTRACT_CHUNK", CHUNK)
    extractor = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=resolve_runtime("cpu", "fp32"), cache_dir=tmp_path)
    rows = np.arange(3, N, 2)  # every other image: 499 rows spread over the whole cache
    held = []
    real = FeatureExtractor._forward
    monkeypatch.setattr(FeatureExtractor, "_forward", lambda self, rt, batch: held.append(mapped_bytes(pixels.filename)) or real(self, rt, batch))
    features = extractor.transform(pixels, view="horizontal", rows=rows)
    assert features.shape == (len(rows), extractor.dim)
    assert max(held) <= 2 * CHUNK * IMAGE_BYTES + SLACK < len(rows) * IMAGE_BYTES
    plain = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=resolve_runtime("cpu", "fp32"), cache_dir=False)
    np.testing.assert_array_equal(plain.transform(np.ascontiguousarray(np.array(pixels)[rows][:, :, ::-1])), features)
    assert extractor.transform(pixels, rows=np.array([], dtype=int)).shape == (0, extractor.dim)
