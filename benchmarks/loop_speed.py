"""Training-loop throughput against the raw optimisation step, in one run (issue 23).

The raw step is what the machine can do: forward, backward and AdamW on one batch that already
sits in memory as a normalised float tensor, timed over ``--steps`` steps after a warm-up. The
loop is :func:`transferkit.training.loop.train_model` on uint8 pixels with an augmentation
preset: batch assembly, augmentation, conversion, gradient clipping, the schedule, the progress
bar and bookkeeping included (no validation split, so the epoch is only training). Both use the
same network (EfficientNet-Lite0, every layer training: ``full``), batch size, precision and
image size. The ratio loop / raw is printed per augmentation; the bar is >= 0.6 with
``standard`` at 128 px.

    python benchmarks/loop_speed.py --image-size 128 --images 320 --augment none standard
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def raw_step_images_per_second(model, preprocessing, runtime, batch: int, size: int, steps: int) -> float:
    """Images/s of forward + backward + AdamW step on one resident batch (the machine's ceiling)."""
    from transferkit.training.inputs import to_model_input

    model = runtime.prepare_model(model, train=True).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8)
    inputs = to_model_input(pixels, preprocessing, runtime)
    targets = torch.arange(batch) % 4
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            started = time.perf_counter()
        with runtime.autocast():
            loss = torch.nn.functional.cross_entropy(model(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def loop_images_per_second(augment: str, preprocessing_model, runtime, batch: int, size: int, n_images: int) -> float:
    """Images/s of one epoch of train_model (uint8 pixels, augmentation, the whole loop)."""
    from transferkit.strategies.network import configure_network
    from transferkit.training.augment import build_augmentation
    from transferkit.training.inputs import TrainData
    from transferkit.training.loop import TrainConfig, train_model

    model, preprocessing = preprocessing_model()
    head, backbone, _ = configure_network(model, "full", freeze_stages=None, backbone_lr_factor=0.1)
    pixels = np.random.default_rng(0).integers(0, 255, (n_images, size, size, 3), dtype=np.uint8)
    targets = np.arange(n_images) % 4
    data = TrainData(train=(pixels, targets), val=None, preprocessing=preprocessing, augment=build_augmentation(augment))
    # warm-up: one short epoch on a few batches, so both measurements start with warm kernels
    warm = TrainData(train=(pixels[: 2 * batch], targets[: 2 * batch]), val=None, preprocessing=preprocessing, augment=data.augment)
    train_model(model, (head, backbone), warm, config=TrainConfig(epochs=1, batch_size=batch), runtime=runtime, verbose=False)
    started = time.perf_counter()
    result = train_model(model, (head, backbone), data, config=TrainConfig(epochs=1, batch_size=batch), runtime=runtime, verbose=False)
    seconds = time.perf_counter() - started
    return result.history[-1].images / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=320, help="images in the loop's epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="raw steps timed")
    parser.add_argument("--augment", nargs="+", default=["none", "standard", "strong"])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from transferkit.backbones import create_backbone
    from transferkit.training.runtime import resolve_runtime

    runtime = resolve_runtime("auto", args.precision)

    def fresh():
        torch.manual_seed(0)
        return create_backbone("efficientnet_lite0", num_classes=4)

    print(f"{runtime.describe()}; {args.image_size} px, batch {args.batch_size}, EfficientNet-Lite0, every layer training")
    raw = raw_step_images_per_second(*fresh(), runtime, args.batch_size, args.image_size, args.steps)
    print(f"raw optimisation step: {raw:7.1f} images/s")
    rows = {"raw_images_per_second": raw, "loop": {}}
    for augment in args.augment:
        loop = loop_images_per_second(augment, fresh, runtime, args.batch_size, args.image_size, args.images)
        print(f"loop, augment {augment:9s}: {loop:7.1f} images/s  = {loop / raw:.2f} x the raw step")
        rows["loop"][augment] = {"images_per_second": loop, "ratio": loop / raw}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**vars(args), "json": str(args.json), **rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
