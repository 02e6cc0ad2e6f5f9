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
# `make bench-train` installs what this needs first. The table goes to stdout; its last line is one
# JSON object with every row (sections "lenet-ce", ..., "-runN" for RUNS > 1), also when a section
# fails: then "ok" is false and "failures" names it (scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
STEPS=${STEPS:-30}
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
RUNS=${RUNS:-1}
rows=()
nruns=1; [[ ! "$RUNS" =~ ^[1-9][0-9]*$ ]] || nruns=$RUNS  # RUNS is checked below, under the trap
for run in $(seq "$nruns"); do
  for row in lenet-ce lenet-gce resnet20-ce resnet20-gce; do
    ((run == 1)) || row+="-run$run"
    rows+=("$row")
  done
done
bench_init train setup "${rows[@]}"
bench_section setup
for v in STEPS THREADS BATCH RUNS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || bench_fail "$v must be a positive integer"
done
PYTHON=${PYTHON:-.venv-bench/bin/python}
command -v python3 >/dev/null || bench_fail "python3 not found (apt-get install python3 python3-venv)"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  [[ -x .venv-bench/bin/python ]] || python3 -m venv .venv-bench >&2 ||
    bench_fail "python3 -m venv failed (apt-get install python3-venv)"
  .venv-bench/bin/pip install --quiet torch >&2 || bench_fail "pip install torch into .venv-bench failed"
  PYTHON=.venv-bench/bin/python
fi
bench_record setup "{\"torch\":\"$("$PYTHON" -c 'import torch; print(torch.__version__)')\",\"steps\":$STEPS,\"threads\":$THREADS,\"batch\":$BATCH}"
cargo build --quiet --bin caliper-train >&2
BIN=target/debug/caliper-train
BASELINE_BIN=${BASELINE_BIN:-}
for run in $(seq "$RUNS"); do
echo "# run $run: $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# batch $BATCH, threads $THREADS, median of $STEPS steps"
printf '%-9s %-4s %14s %14s %10s %10s %14s %10s\n' arch loss "caliper ms" "pytorch ms" "caliper/s" \
  "ratio" "baseline ms" "base ratio"
for spec in "lenet 1,28,28" "resnet20 3,32,32"; do
  set -- $spec
  for loss in ce gce; do
    row="$1-$loss"; ((run == 1)) || row+="-run$run"
    bench_section "$row"
    c=$($BIN bench --arch "$1" --input-shape "$2" --loss "$loss" --batch-size "$BATCH" \
        --threads "$THREADS" --steps "$STEPS")
    b='{}'
    if [ -n "$BASELINE_BIN" ]; then
      b=$("$BASELINE_BIN" bench --arch "$1" --input-shape "$2" --loss "$loss" --batch-size "$BATCH" \
          --threads "$THREADS" --steps "$STEPS")
    fi
    p=$("$PYTHON" scripts/bench_train_torch.py --arch "$1" --input-shape "$2" --loss "$loss" \
        --batch-size "$BATCH" --threads "$THREADS" --steps "$STEPS")
    fig=$(mktemp)
    python3 - "$1" "$loss" "$c" "$p" "$b" "$fig" <<'PY'
import json, sys
arch, loss = sys.argv[1], sys.argv[2]
c, p, b = (json.loads(a) for a in sys.argv[3:6])
fig = {"caliper_ms": c["median_ms"], "pytorch_ms": p["median_ms"], "caliper_images_per_s": c["images_per_s"],
       "ratio": round(p["median_ms"] / c["median_ms"], 3)}
if b:
    fig.update(baseline_ms=b["median_ms"], baseline_ratio=round(p["median_ms"] / b["median_ms"], 3))
open(sys.argv[6], "w").write(json.dumps(fig))
line = (f"{arch:<9} {loss:<4} {c['median_ms']:14.1f} {p['median_ms']:14.1f} {c['images_per_s']:10.0f} "
        f"{p['median_ms'] / c['median_ms']:9.2f}x")
if b:
    line += f" {b['median_ms']:14.1f} {p['median_ms'] / b['median_ms']:9.2f}x"
print(line)
PY
    bench_record "$row" "$(<"$fig")"
    rm -f "$fig"
  done
done
done
