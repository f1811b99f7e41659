"""The disk cache's size cap (issue 33): LRU eviction of decoded images and feature shards,
entries this process uses are kept, a concurrent eviction means a recomputation, `cache info`
shows the cap."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.data import ImageSet, decode_images
from transferkit.data import cache_limit
from transferkit.data.cache_admin import cache_summary
from transferkit.data.cache_limit import CACHE_MAX_ENV, DEFAULT_CACHE_MAX_MB, cache_cap, enforce_cap
from transferkit.errors import ConfigError
from transferkit.strategies.features import FeatureCache

SIZE = 16
IMAGES = 10
ENTRY = IMAGES * SIZE * SIZE * 3  # bytes of one decoded entry's pixels (plus a small .npy header and .json)


def image_set(seed: int) -> ImageSet:
    arrays = list(np.random.default_rng(seed).integers(0, 256, (IMAGES, 20, 20, 3), dtype=np.uint8))
    return ImageSet(arrays, ["a", "b"] * (IMAGES // 2))


def entry_of(cache: Path, seed: int) -> Path | None:
    """The .json of the images entry whose pixels are those of ``image_set(seed)``, if cached."""
    pixels = decode_images(image_set(seed), SIZE, cache_dir=False).pixels
    for meta in (cache / "images").glob("*.json"):
        stored = np.load(meta.with_suffix(".npy"))
        if stored.shape == pixels.shape and np.array_equal(stored, pixels):
            return meta
    return None


def new_run(monkeypatch) -> None:
    """What a later process sees: nothing used yet (the entries of this one are kept otherwise)."""
    monkeypatch.setattr(cache_limit, "_used", set())


def age(meta: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(meta, (when, when))


def cap_for(entries: float) -> str:
    return f"{entries * (ENTRY + 600) / 2**20:.6f}"  # room for ``entries`` entries, headers included


def test_default_cap_and_the_environment_variable(monkeypatch):
    monkeypatch.delenv(CACHE_MAX_ENV, raising=False)
    assert cache_cap().max_bytes == DEFAULT_CACHE_MAX_MB * 2**20 and cache_cap().source == "default"
    monkeypatch.setenv(CACHE_MAX_ENV, "512")
    assert cache_cap().max_bytes == 512 * 2**20 and cache_cap().source == CACHE_MAX_ENV
    monkeypatch.setenv(CACHE_MAX_ENV, "none")
    assert cache_cap().max_bytes is None
    for bad in ("0", "-5", "lots", "inf"):
        monkeypatch.setenv(CACHE_MAX_ENV, bad)
        with pytest.raises(ConfigError, match=f"{CACHE_MAX_ENV} expected a positive number"):
            cache_cap()


def test_the_cap_holds_and_the_least_recently_used_entry_goes_first(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_MAX_ENV, cap_for(2.5))  # two entries fit, three do not
    new_run(monkeypatch)
    for seed in (1, 2):
        decode_images(image_set(seed), SIZE, cache_dir=cache)
    first, second = entry_of(cache, 1), entry_of(cache, 2)
    age(first, 100)  # written first ...
    age(second, 50)

    new_run(monkeypatch)
    decode_images(image_set(1), SIZE, cache_dir=cache)  # ... but read again: now the most recent
    assert first.stat().st_mtime > time.time() - 10
    new_run(monkeypatch)
    decode_images(image_set(3), SIZE, cache_dir=cache)
    assert entry_of(cache, 1) is not None and entry_of(cache, 3) is not None
    assert entry_of(cache, 2) is None and not second.with_suffix(".npy").exists()
    assert cache_summary(cache).bytes <= cache_cap().max_bytes


def test_entries_this_process_uses_are_kept_even_over_the_cap(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_MAX_ENV, cap_for(0.5))  # not even one entry fits
    new_run(monkeypatch)
    first = decode_images(image_set(1), SIZE, cache_dir=cache).pixels
    decode_images(image_set(2), SIZE, cache_dir=cache)
    assert entry_of(cache, 1) is not None and entry_of(cache, 2) is not None  # this run may read them again

    new_run(monkeypatch)
    decode_images(image_set(3), SIZE, cache_dir=cache)
    assert [entry_of(cache, seed) is not None for seed in (1, 2, 3)] == [False, False, True]
    np.testing.assert_array_equal(first, decode_images(image_set(1), SIZE, cache_dir=False).pixels)  # still mapped


def test_a_concurrently_evicted_entry_is_computed_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    new_run(monkeypatch)
    expected = decode_images(image_set(1), SIZE, cache_dir=cache).pixels.copy()
    meta = entry_of(cache, 1)
    # Another process's eviction removes the .json first, then the .npy: a reader may come
    # between the two (sees no .json) or after the .json was read (finds no .npy).
    meta.with_suffix(".npy").unlink()
    np.testing.assert_array_equal(decode_images(image_set(1), SIZE, cache_dir=cache).pixels, expected)
    meta = entry_of(cache, 1)
    meta.unlink()
    np.testing.assert_array_equal(decode_images(image_set(1), SIZE, cache_dir=cache).pixels, expected)
    assert entry_of(cache, 1) is not None  # written again


def test_feature_shards_are_evicted_least_recently_used_and_recomputed(tmp_path, monkeypatch):
    values = {name: np.full((IMAGES, 64), index, np.float32) for index, name in enumerate("abc")}
    digests = {name: [f"{name}{i}" for i in range(IMAGES)] for name in "abc"}
    shard_bytes = IMAGES * 64 * 4 + 128 + 600
    monkeypatch.setenv(CACHE_MAX_ENV, f"{2.5 * shard_bytes / 2**20:.6f}")
    new_run(monkeypatch)
    store = FeatureCache(tmp_path, "model")
    store.put(digests["a"], values["a"])
    store.put(digests["b"], values["b"])
    for index, shard in enumerate(sorted(store.folder.glob("*.json"), key=lambda p: json.loads(p.read_text())["images"][0])):
        age(shard, 100 - 50 * index)  # a older than b

    new_run(monkeypatch)
    reader = FeatureCache(tmp_path, "model")
    np.testing.assert_array_equal(reader.get(digests["a"]), values["a"])  # a is used again
    new_run(monkeypatch)
    writer = FeatureCache(tmp_path, "model")
    writer.put(digests["c"], values["c"])
    later = FeatureCache(tmp_path, "model")
    assert later.missing(digests["a"] + digests["b"] + digests["c"]) == list(range(IMAGES, 2 * IMAGES))  # b went
    # The reader loaded b before the eviction: its rows stay readable (the file was only unlinked).
    np.testing.assert_array_equal(reader.get(digests["b"]), values["b"])


def test_enforce_cap_tolerates_files_vanishing_and_removes_stale_leftovers(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_MAX_ENV, "1")
    images = tmp_path / "images"
    images.mkdir()
    leftover = images / ".abc-123.npy.tmp"
    orphan = images / "deadbeef.npy"  # a writer killed between the .npy and its .json
    fresh = images / ".def-456.npy.tmp"  # a writer at work
    for path in (leftover, orphan, fresh):
        path.write_bytes(b"x" * 100)
    age(leftover, 2 * cache_limit.STALE_SECONDS)
    age(orphan, 2 * cache_limit.STALE_SECONDS)
    assert enforce_cap(tmp_path) == 0  # under the cap: no entry to evict, but leftovers go
    assert not leftover.exists() and not orphan.exists() and fresh.exists()
    assert enforce_cap(tmp_path / "nowhere") == 0


def test_cache_info_shows_the_cap(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path), "--json", "-"], env={CACHE_MAX_ENV: ""})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["max_bytes"] == DEFAULT_CACHE_MAX_MB * 2**20 and summary["max_bytes_source"] == "default"
    result = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)], env={CACHE_MAX_ENV: "300", "COLUMNS": "120"})
    assert result.exit_code == 0 and "300 MB" in result.output and CACHE_MAX_ENV in result.output
    result = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)], env={CACHE_MAX_ENV: "big"})
    assert result.exit_code == 2 and "Received: TRANSFERKIT_CACHE_MAX_MB='big'" in " ".join(result.output.split())
