#!/usr/bin/env bash
# The prepared GPU check (issue 32): one short run (under 8 minutes) for a machine with a GPU.
#
#   bash benchmarks/gpu_check.sh            # needs .venv (make install-dev), or PYTHON=...
#
# Where `nvidia-smi` sees a GPU it runs, in order, each bounded by `timeout`:
#   1. the CUDA-relevant tests (device and precision handling, save/load across devices, info);
#   2. `transferkit fit elpv:train` at 300 px with a 5-minute budget, then `evaluate` on elpv:test;
#   3. the loop benchmark (benchmarks/loop_speed.py) on the GPU in its native precision;
# and prints device, precision, images/s and accuracy, one `gpu_check:` line each, to paste into
# benchmarks/RESULTS.md. On a machine without a GPU it says so and runs only step 1's CPU half,
# so the script itself is exercised everywhere (tests/test_benchmarks.py runs it that way).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
say() { echo "gpu_check: $*"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    say "no GPU found (nvidia-smi lists none): nothing to measure here; the CPU half of the device tests follows"
    timeout 300 "$PYTHON" -m pytest -q tests/test_info.py -k "gpu or cuda or device" -p no:cacheprovider
    say "done (no GPU)"
    exit 0
fi

say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
"$PYTHON" - <<'EOF'
import torch
from transferkit.training.runtime import prediction_runtime, resolve_runtime
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
train, predict = resolve_runtime("auto", "auto"), prediction_runtime("auto", "auto")
print(f"gpu_check: training precision {train.precision} ({train.precision_reason}); predictions {predict.precision}")
EOF

say "1/3 CUDA-relevant tests"
timeout 150 "$PYTHON" -m pytest -q -x tests/test_info.py tests/test_persistence.py tests/test_precision.py -p no:cacheprovider \
    || say "tests FAILED (see above)"

say "2/3 fit elpv:train at 300 px, 5-minute budget, then evaluate elpv:test"
START=$(date +%s)
timeout 420 "$PYTHON" -m transferkit.cli fit elpv:train --image-size 300 --budget-minutes 5 --device cuda \
    --out "$OUT/elpv300" --json "$OUT/fit.json" --quiet 2> --quiet --overwrite 2>&11 | tail -3 \
    || say "fit did not finish"
timeout 120 "$PYTHON" -m transferkit.cli evaluate "$OUT/elpv300" elpv:test --device cuda --json "$OUT/test.json" --quiet >/dev/null 2>&1 \
    || say "evaluate did not finish"
"$PYTHON" - "$OUT" "$START" <<'EOF'
import json, sys, time
from pathlib import Path
out, start = Path(sys.argv[1]), float(sys.argv[2])
try:
    fit, test = json.loads((out / "fit.json").read_text()), json.loads((out / "test.json").read_text())
except (OSError, ValueError) as exc:
    print(f"gpu_check: no fit/evaluate figures ({exc})")
    raise SystemExit(0)
epochs = fit.get("history") or []
speed = max((e.get("images_per_second") or 0 for e in epochs), default=0)
print(f"gpu_check: fit chose {fit['strategy']} in {fit['fit_seconds']} s; precision {fit['precision']['chosen']}; "
      f"training {speed:.0f} images/s; test accuracy {test['accuracy']:.4f}, balanced {test['balanced_accuracy']:.4f}, "
      f"binary {test.get('binary_accuracy', float('nan')):.4f}; {time.time() - start:.0f} s for fit + evaluate")
EOF

say "3/3 loop benchmark on the GPU"
timeout 150 "$PYTHON" benchmarks/loop_speed.py --image-size 224 --images 640 --batch-size 64 --augment none standard \
    --precision auto --json "$OUT/loop.json" 2>&1 | tail -6 || say "loop benchmark did not finish"
say "done"
