"""Peak memory of a default `transferkit fit` on ELPV (issue 33): N images of elpv:train, or all.

Writes a stratified subset of ``elpv:train`` (``--n 300``: 300 images, the classes in
proportion, seed 0) as a CSV of absolute paths, then runs, in a fresh process with a fresh
(cold) cache, exactly what a user runs::

    /usr/bin/time -v transferkit fit SUBSET.csv --out DIR --json DIR/fit.json --quiet

(``--n 0``: ``elpv:train`` itself, 1,968 images: ``make run``'s fit) and prints the peak
resident memory (``/usr/bin/time``'s "Maximum resident set size", and the fit's own
``peak_memory_mb``), the wall time, what ``auto`` chose and its validation score, the
model's accuracy on ``elpv:test`` (``transferkit evaluate``, as ``make run`` does) and the
cache's size afterwards. The default 10-minute budget applies, so one run takes up to ten
minutes, and on a loaded machine ``auto``'s candidates (costed against measured speeds) may
differ from run to run.

    python benchmarks/fit_memory.py --n 300 --json runs/bench/memory300.json
    python benchmarks/fit_memory.py --n 0 --json runs/bench/memory_elpv.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_json
from transferkit.data import resolve_data
from transferkit.data.cache_admin import cache_summary
from transferkit.data.sources import stratified_sample

CLI = [sys.executable, "-c", "from transferkit.cli import main; main()"]


def subset_csv(n: int, folder: Path) -> str:
    """``elpv:train`` itself (n = 0), or a CSV of a stratified subset of n of its images."""
    if n == 0:
        return "elpv:train"
    images = stratified_sample(resolve_data("elpv:train"), n, seed=0)
    path = folder / f"elpv_train_{n}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(zip(images.sources, images.labels))
    return str(path)


def measure(data: str, out: Path, extra: list[str]) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="tk-cache-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(cache)}
    command = ["/usr/bin/time", "-v", *CLI, "fit", data, "--out", str(out), "--json", str(out / "fit.json"), "--quiet", *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"fit failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    fit = json.loads((out / "fit.json").read_text())
    settings = fit["settings"]
    return {
        "data": data, "command": " ".join(command[:2] + ["transferkit"] + command[len(CLI) + 2 :]),
        "peak_rss_mb": peak_kb / 1024, "fit_peak_memory_mb": fit.get("peak_memory_mb"), "wall_seconds": wall,
        "fit_seconds": fit.get("fit_seconds"), "strategy": fit["strategy"],
        "chosen": {key: settings.get(key) for key in ("strategy", "image_size", "feature_layers", "symmetries", "class_weight")},
        "validation_accuracy": fit.get("validation_accuracy"), "cache_bytes": cache_summary(cache).bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="images of elpv:train (0: all 1,968, make run's fit)")
    parser.add_argument("--out", default=None, help="model folder (default: a temporary one)")
    parser.add_argument("--evaluate", default="elpv:test", help="held-out data to score the model on ('' : none)")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("fit_options", nargs="*", help="more options for fit, after --, e.g. -- --budget-minutes 1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-memory-"))
    out = Path(args.out) if args.out else work / "model"
    report = measure(subset_csv(args.n, work), out, args.fit_options)
    if args.evaluate:
        scored = subprocess.run([*CLI, "evaluate", str(out), args.evaluate, "--json", str(work / "test.json")],
                                capture_output=True, text=True)
        report["test_accuracy"] = json.loads((work / "test.json").read_text()).get("accuracy") if scored.returncode == 0 else None
    print(f"{report['data']}: peak RSS {report['peak_rss_mb']:,.0f} MB (/usr/bin/time -v), {report['wall_seconds']:.0f} s; "
          f"auto -> {report['chosen']}, validation {report['validation_accuracy']}, "
          f"{args.evaluate or 'no test'} {report.get('test_accuracy')}; cache {report['cache_bytes'] / 2**20:,.0f} MB")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
