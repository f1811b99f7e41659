"""Does torch.compile pay on this machine? Eager vs compiled, compile time included.

Times the first call (compilation) and the steady throughput of (a) a forward pass of the
whole backbone and (b) a training step of the suffix after ``--freeze`` frozen stages (the
work the frozen-prefix cache leaves), then prints after how many images compiling pays off.

    python benchmarks/compile_check.py --image-size 224 --freeze 5
"""

from __future__ import annotations

import argparse
import time

import torch

from common import fmt, write_json
from transferkit.backbones import Suffix, create_backbone, prefix_forward
from transferkit.training.runtime import resolve_runtime


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--freeze", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="steady-state timing per case")
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    runtime = resolve_runtime("cpu", "fp32")
    print(f"runtime: {runtime.describe()}")
    model, _ = create_backbone("efficientnet_lite0", num_classes=4)
    model = runtime.prepare_model(model).eval()
    images = runtime.images_to_device(torch.randn(args.batch_size, 3, args.image_size, args.image_size))
    results = {}
    with torch.inference_mode():
        results["forward"] = compare(lambda module: module(images), model, args)

    model.requires_grad_(False)
    with torch.no_grad():
        activations = prefix_forward(model, images, args.freeze).contiguous(memory_format=runtime.memory_format())
    suffix = Suffix(model, args.freeze).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(suffix.parameters())
    targets = torch.randint(0, 4, (args.batch_size,))

    def train_step(module):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(activations), targets).backward()
        optimizer.step()

    results[f"train suffix (freeze {args.freeze})"] = compare(train_step, suffix, args)
    for name, result in results.items():
        print(
            f"{name:26} eager {fmt(result['eager_images_per_second'])} img/s, compiled "
            f"{fmt(result['compiled_images_per_second'])} img/s after {fmt(result['compile_seconds'])} s of "
            f"compiling: pays after {fmt(result['break_even_images'], 0)} images"
        )
    write_json(args.json, {"settings": vars(args), "results": results})


def compare(call, module: torch.nn.Module, args: argparse.Namespace) -> dict:
    eager_first, eager = throughput(lambda: call(module), args)
    compiled = torch.compile(module)
    compile_seconds, fast = throughput(lambda: call(compiled), args)
    saved = 1.0 / eager - 1.0 / fast  # seconds saved per image once compiled
    return {
        "eager_images_per_second": eager,
        "compiled_images_per_second": fast,
        "compile_seconds": compile_seconds - eager_first,
        "break_even_images": (compile_seconds - eager_first) / saved if saved > 0 else None,
    }


def throughput(step, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds of the first call, images/s over about ``args.seconds`` after one more warm-up call)."""
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    step()
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < args.seconds:
        step()
        images += args.batch_size
    return first, images / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
