"""Near-copies of training images among test images: what `evaluate` names (issue 30).

For each set: the training images' thumbnails (as a saved model keeps them) against a test set
made of the set's own test split (clean) plus ``--copies`` training images re-saved three ways
(resized to 70 % with bicubic, JPEG quality 70, shifted right by one source pixel), each decoded at
``--image-size`` as `evaluate` decodes. Recall: copies named with their own original; false
rate: clean test images named (any training image).

    python benchmarks/near_copies.py --root /work/bench30/data --sets animals spatial lfw digits elpv --json runs/bench/near_copies.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import stratified_subset  # noqa: E402

from transferkit.data import decode_images, resolve_data, thumbnails  # noqa: E402
from transferkit.data.near_copies import near_copies  # noqa: E402

EDITS = ("resized", "jpeg", "shifted")


def edit(path: str, kind: str, size: int) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if kind == "resized":
        image = image.resize((max(4, round(image.width * 0.7)), max(4, round(image.height * 0.7))), Image.BICUBIC)
    elif kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    else:
        array = np.asarray(image).copy()
        array[:, 1:] = array[:, :-1].copy()
        image = Image.fromarray(array)
    return np.asarray(image.resize((size, size), Image.BICUBIC))  # evaluate's decode: whole image, bicubic


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--sets", nargs="+", default=["animals", "spatial", "lfw", "digits", "elpv"])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=20, help="training images copied per edit")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = {}
    for name in args.sets:
        train_data, test_data = ("elpv:train", "elpv:test") if name == "elpv" else (f"{args.root}/{name}/train", f"{args.root}/{name}/test")
        train = stratified_subset(resolve_data(train_data), args.max_train, 0)
        test = resolve_data(test_data)
        train_thumbs = thumbnails(decode_images(train, args.image_size, progress=False).pixels)
        clean = thumbnails(decode_images(test, args.image_size, progress=False).pixels)
        picked = np.random.default_rng(0).choice(len(train), min(args.copies, len(train)), replace=False)
        entry = {"train": len(train), "clean_test": len(test)}
        named_clean = {item.query for item in near_copies(clean, train_thumbs)}
        entry["clean_named"] = len(named_clean)
        entry["clean_named_share"] = round(len(named_clean) / len(test), 4)
        found_all = 0
        for kind in EDITS:
            copies = thumbnails(np.stack([edit(train.sources[i], kind, args.image_size) for i in picked]))
            hits = {item.query for item in near_copies(copies, train_thumbs) if item.reference == picked[item.query]}
            entry[f"{kind}_named"] = f"{len(hits)}/{len(picked)}"
            found_all += len(hits)
        entry["copies_named_share"] = round(found_all / (len(EDITS) * len(picked)), 3)
        report[name] = entry
        print(name, json.dumps(entry), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"image_size": args.image_size, "sets": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
