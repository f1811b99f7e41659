"""Decoding speed before and after issue 20's decoding rules, in one run, on ELPV.

Issue 20 changed how an image's mode becomes RGB (one bit-depth scale for 16-bit, 32-bit and
float images; every alpha encoding composited onto white). This script decodes ``elpv:train``
(or a stratified subset) cold — no transferkit cache; the files are read once first, so both
sides find them in the OS page cache — with the mode conversion of before (copied below from
git main, 833e09d) and with today's, alternating the order each round, and reports the ratio.
It also checks that both give the same pixels on ELPV (8-bit gray PNGs) and times what a fit
now adds: the content hash of every training image (kept with the model) and the grouping of
identical decoded images (inner CV).

    python benchmarks/decode_speed.py --json runs/bench/decode.json    # make bench-decode
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from common import stratified_subset, write_json
from transferkit.data import content_digests, decode, pixel_groups, resolve_data


# --- the conversion of git main before issue 20 (decode.py at 833e09d), unchanged -----------
def old_to_gray_or_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        if "transparency" not in image.info:
            return image.convert("RGB")
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("PA", "RGBa", "La"):
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA"):
        return _old_composite_on_black(np.asarray(image))
    if mode.startswith("I") or mode == "F":
        return _old_scale_to_8bit(image)
    return image.convert("RGB")


def _old_composite_on_black(pixels: np.ndarray) -> Image.Image:
    alpha = pixels[..., -1:].astype(np.uint16)
    out = ((pixels[..., :-1].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    if out.shape[-1] == 1:
        return Image.fromarray(out[..., 0])
    return Image.fromarray(out)


def _old_scale_to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("L", image.size, 0)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if hi > lo:
        scaled = (np.where(finite, values, lo) - lo) * (255.0 / (hi - lo))
    else:
        full = (1.0 if 0.0 <= lo <= 1.0 else 255.0) if image.mode == "F" else (65535.0 if image.mode.startswith("I;16") or lo > 255 else 255.0)
        scaled = np.full(values.shape, min(max(lo / full, 0.0), 1.0) * 255.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


# ----------------------------------------------------------------------------------------------


def decode_seconds(images, size: int, convert) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds (all threads of this process) of a cold decode, and the pixels."""
    new = decode._to_gray_or_rgb
    decode._to_gray_or_rgb = convert
    try:
        started, cpu = time.perf_counter(), time.process_time()
        pixels = decode.decode_images(images, size, cache_dir=False, progress=False).pixels
        return time.perf_counter() - started, time.process_time() - cpu, pixels
    finally:
        decode._to_gray_or_rgb = new


def conversion_seconds(images, convert, repeats: int) -> float:
    """Seconds per image of the mode conversion alone (files already decoded in memory)."""
    started = time.perf_counter()
    for _ in range(repeats):
        for image in images:
            convert(image)
    return (time.perf_counter() - started) / (repeats * len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="elpv:train")
    parser.add_argument("--subset", type=int, default=None, help="a stratified subset of this many images")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="before/after pairs, order alternating (5: 1.5-3 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    images = stratified_subset(resolve_data(args.data), args.subset, args.seed)
    started = time.perf_counter()
    digests = content_digests(images)  # reads every file once: both sides then start from the page cache
    hash_seconds = time.perf_counter() - started
    times: dict[str, list[float]] = {"before": [], "after": []}
    cpu_times: dict[str, list[float]] = {"before": [], "after": []}
    pixels: dict[str, np.ndarray] = {}
    sides = {"before": old_to_gray_or_rgb, "after": decode._to_gray_or_rgb}
    for round_ in range(args.rounds):
        for side in (("before", "after") if round_ % 2 == 0 else ("after", "before")):
            seconds, cpu, pixels[side] = decode_seconds(images, args.image_size, sides[side])
            times[side].append(seconds)
            cpu_times[side].append(cpu)
            print(f"round {round_ + 1} {side:>6}: {seconds:.2f} s wall, {cpu:.2f} s CPU ({len(images) / seconds:.0f} images/s)", flush=True)
    # The conversion alone, without reading files or resizing: what the change touched, far less noisy.
    loaded = []
    for source in images.sources[:300]:
        with Image.open(source) as image:
            image.load()
            loaded.append(image)
    conversion = {"before": [], "after": []}
    for round_ in range(args.rounds):
        for side in (("before", "after") if round_ % 2 == 0 else ("after", "before")):
            conversion[side].append(conversion_seconds(loaded, sides[side], repeats=20))
    started = time.perf_counter()
    groups = pixel_groups(pixels["after"])
    group_seconds = time.perf_counter() - started
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    report = {
        "data": images.name or args.data, "images": len(images), "image_size": args.image_size, "rounds": args.rounds,
        "before_seconds": times["before"], "after_seconds": times["after"],
        "before_median_seconds": before, "after_median_seconds": after, "after_over_before": after / before,
        "before_cpu_seconds": cpu_times["before"], "after_cpu_seconds": cpu_times["after"],
        "cpu_after_over_before": statistics.median(cpu_times["after"]) / statistics.median(cpu_times["before"]),
        "same_pixels": bool(np.array_equal(pixels["before"], pixels["after"])),
        "conversion_before_ns": statistics.median(conversion["before"]) * 1e9,
        "conversion_after_ns": statistics.median(conversion["after"]) * 1e9,
        "content_hash_seconds": hash_seconds, "pixel_groups_seconds": group_seconds,
        "exact_duplicates": len(digests) - len(set(digests)), "identical_decoded_images": int(len(groups) - len(np.unique(groups))),
    }
    print(f"{report['images']} images at {args.image_size} px, median of {args.rounds}: before {before:.2f} s, after {after:.2f} s, "
          f"after / before {after / before:.3f} (CPU time: {report['cpu_after_over_before']:.3f}); same pixels: {report['same_pixels']}")
    print(f"the mode conversion alone, per image: before {report['conversion_before_ns']:.0f} ns, after "
          f"{report['conversion_after_ns']:.0f} ns (modes: {sorted({image.mode for image in loaded})})")
    print(f"a fit now also hashes the files ({hash_seconds:.2f} s) and groups identical decoded images ({group_seconds:.2f} s); "
          f"{report['exact_duplicates']} exact duplicates, {report['identical_decoded_images']} identical decoded images")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
