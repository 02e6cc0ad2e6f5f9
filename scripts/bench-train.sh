#!/usr/bin/env bash
# Training throughput of caliper-train (ONNX Runtime, one graph per step) against PyTorch on the
# CPU: lenet at 1x28x28 (MNIST) and resnet20 at 3x32x32 (CIFAR-10), same batch size, thread count,
# optimizer and loss, random data (data loading excluded on both sides), median of STEPS steps;
# and the step-time overhead of GCE over CE. Not a test: numbers go to docs/BENCHMARKS.md.
#
#   scripts/bench-train.sh            # builds caliper-train (dev profile), makes .venv-bench
#   PYTHON=/path/to/python scripts/bench-train.sh   # reuse a Python that has torch
#
# Environment: STEPS (default 30), THREADS (2), BATCH (128), PYTHON (default .venv-bench/bin/python,
# created with `pip install torch` from PyPI if missing), RUNS (1: repeat the whole table),
# BASELINE_BIN (optional: another caliper-train binary, e.g. one built from an older commit, timed
# in the same loop so that before, after and PyTorch share the machine's load; extra columns).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-30}
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
PYTHON=${PYTHON:-.venv-bench/bin/python}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet torch
  PYTHON=.venv-bench/bin/python
fi
cargo build --quiet --bin caliper-train
BIN=target/debug/caliper-train
BASELINE_BIN=${BASELINE_BIN:-}
RUNS=${RUNS:-1}
for run in $(seq "$RUNS"); do
echo "# run $run: $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# batch $BATCH, threads $THREADS, median of $STEPS steps"
printf '%-9s %-4s %14s %14s %10s %10s %14s %10s\n' arch loss "caliper ms" "pytorch ms" "caliper/s" \
  "ratio" "baseline ms" "base ratio"
for spec in "lenet 1,28,28" "resnet20 3,32,32"; do
  set -- $spec
  for loss in ce gce; do
    c=$($BIN bench --arch "$1" --input-shape "$2" --loss "$loss" --batch-size "$BATCH" \
        --threads "$THREADS" --steps "$STEPS")
    b='{}'
    if [ -n "$BASELINE_BIN" ]; then
      b=$("$BASELINE_BIN" bench --arch "$1" --input-shape "$2" --loss "$loss" --batch-size "$BATCH" \
          --threads "$THREADS" --steps "$STEPS")
    fi
    p=$("$PYTHON" scripts/bench_train_torch.py --arch "$1" --input-shape "$2" --loss "$loss" \
        --batch-size "$BATCH" --threads "$THREADS" --steps "$STEPS")
    python3 - "$1" "$loss" "$c" "$p" "$b" <<'PY'
import json, sys
arch, loss = sys.argv[1], sys.argv[2]
c, p, b = (json.loads(a) for a in sys.argv[3:6])
line = (f"{arch:<9} {loss:<4} {c['median_ms']:14.1f} {p['median_ms']:14.1f} {c['images_per_s']:10.0f} "
        f"{p['median_ms'] / c['median_ms']:9.2f}x")
if b:
    line += f" {b['median_ms']:14.1f} {p['median_ms'] / b['median_ms']:9.2f}x"
print(line)
PY
  done
done
done
