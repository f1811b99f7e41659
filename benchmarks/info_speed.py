"""How long the light commands take as whole processes: `info`, `models`, `cache info`, `--version`.

(`info --torch`, which imports torch on purpose, is timed too; a checkout without the option
is left out of that row.)

Each command runs as a fresh process (as a user types it), ``--repeats`` times, interleaved
with two baselines measured in the same run: ``python -c pass`` (the interpreter's own start)
and ``python -c "import torch"`` (what a command that reports torch's view of the machine
cannot avoid). The median of the repeats is reported for each, and each command's median
minus the torch baseline. ``--cores 0,1`` pins every process to those cores (``taskset``), to
measure "on 2 cores" on a larger machine. Issue 21's target: ``transferkit info`` under 2 s.

    python benchmarks/info_speed.py --repeats 5 --cores 0,1 --before /tmp/base/src --json runs/bench/info_speed.json

(``--before``: the sources of another commit, e.g. ``git archive 833e09d src | tar -x -C /tmp/base``.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "transferkit --version": ["-m", "transferkit.cli", "--version"],
    "transferkit info": ["-m", "transferkit.cli", "info"],
    "transferkit info --torch": ["-m", "transferkit.cli", "info", "--torch"],
    "transferkit models": ["-m", "transferkit.cli", "models"],
    "transferkit cache info": ["-m", "transferkit.cli", "cache", "info"],
}


def time_once(argv: list[str], env: dict[str, str], cores: str | None) -> float | None:
    """Wall seconds of one run; None when the command fails (e.g. --version on an older checkout)."""
    command = [sys.executable, *argv]
    if cores:
        command = ["taskset", "-c", cores, *command]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(f"{' '.join(command)} failed ({env['PYTHONPATH'].split(os.pathsep)[0]}): "
              f"{result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return seconds


def measure(repeats: int, cores: str | None, src: Path = SRC, before: Path | None = None) -> dict[str, list[float]]:
    """Median-ready wall times per command; with ``before``, the transferkit commands of that
    source tree too (named "before: ..."), interleaved in the same loop."""
    cache = tempfile.mkdtemp(prefix="tk-info-speed-")

    def env_for(tree: Path) -> dict[str, str]:  # the same small (empty) cache for every run
        return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "100",
                "TRANSFERKIT_CACHE": cache}

    runs = {name: (argv, env_for(src)) for name, argv in COMMANDS.items()}
    if before is not None:
        runs |= {f"before: {name}": (argv, env_for(before)) for name, argv in COMMANDS.items() if name.startswith("transferkit")}
    try:  # a first run of each warms the file system cache (the first start reads every .so from disk)
        runs = {name: run for name, run in runs.items() if time_once(run[0], run[1], cores) is not None}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):  # interleaved, so a burst of load on the machine hits every command alike
            for name, (argv, env) in runs.items():
                times[name].append(time_once(argv, env, cores))
        return times
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cores", help="taskset core list, e.g. 0,1 (default: no pinning)")
    parser.add_argument("--src", type=Path, default=SRC, help="the transferkit sources to time (e.g. another checkout's src)")
    parser.add_argument("--before", type=Path, help="also time the transferkit commands of this source tree, in the same loop")
    parser.add_argument("--json")
    args = parser.parse_args()

    times = measure(args.repeats, args.cores, args.src, args.before)
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_baseline = medians["python -c 'import torch'"]
    print(f"{args.src}: median of {args.repeats} runs, seconds (cores: {args.cores or 'all'}, {os.cpu_count()} logical)")
    print(f"{'command':<36} {'median':>7} {'min':>6} {'max':>6} {'- import torch':>15}")
    for name, values in times.items():
        print(f"{name:<36} {medians[name]:7.2f} {min(values):6.2f} {max(values):6.2f} {medians[name] - torch_baseline:15.2f}")
    if args.json:
        import json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"repeats": args.repeats, "cores": args.cores, "times": times, "medians": medians}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
