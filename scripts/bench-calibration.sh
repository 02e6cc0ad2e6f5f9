#!/usr/bin/env bash
# Benchmark (not a test): fit TS and ATS on 50,000 x 100 logits and evaluate every metric with
# caliper, side by side with netcal (TemperatureScaling, ECE), a numpy metric reference and a
# NumPy/SciPy ATS (no Python package implements ATS; this is the one a user would write).
# Results go to runs/bench-calibration/; docs/BENCHMARKS.md quotes them.
#
#   scripts/bench-calibration.sh
#
# Builds caliper in release mode without LTO (same code generation level, minutes less to build
# on a small machine); installs numpy, scipy and netcal into the ignored .venv-calib on first use.
# Ends with the fit times side by side; the machine is shared, so run it a few times.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/bench-calibration
mkdir -p "$out"

CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  cargo build --release --bin caliper >&2
bin=target/release/caliper

if [[ ! -x .venv-calib/bin/python ]]; then
  python3 -m venv .venv-calib
fi
.venv-calib/bin/python -c "import numpy, scipy, netcal" 2>/dev/null ||
  .venv-calib/bin/pip install -q numpy scipy netcal >&2
py=.venv-calib/bin/python

[[ -f $out/logits.npy ]] || $py scripts/bench_calibration_reference.py gen "$out"

timed() { # name, command...: prints the command's stdout, appends "name wall_s max_rss_kib"
  local name=$1; shift
  /usr/bin/time -f "$name %e %M" -a -o "$out/times.txt" "$@"
}
: > "$out/times.txt"
for method in ts ats; do
  for run in 1 2 3; do
    timed "calibrate-$method" "$bin" calibrate --logits "$out/logits.npy" \
      --labels "$out/labels.npy" --method "$method" --out "$out/$method.json"
  done
done | tee "$out/caliper-fit.txt"
timed eval "$bin" eval --logits "$out/logits.npy" --labels "$out/labels.npy" --json \
  > "$out/caliper-eval.json"
timed eval-with-ats "$bin" eval --logits "$out/logits.npy" --labels "$out/labels.npy" \
  --calib "$out/ats.json" --json > /dev/null
timed python-reference $py scripts/bench_calibration_reference.py ref "$out" \
  "$out/caliper-eval.json" | tee "$out/python.json"
timed python-ats $py scripts/bench_calibration_reference.py ats "$out" "$out/ats.json" \
  | tee "$out/python-ats.json"
echo "--- wall seconds and max RSS (KiB) per process"
cat "$out/times.txt"
echo "--- fit times (caliper: the fit alone, as calibrate prints it)"
$py - "$out" <<'PY'
import json, pathlib, re, statistics, sys
out = pathlib.Path(sys.argv[1])
fits = {"ts": [], "ats": []}
for line in (out / "caliper-fit.txt").read_text().splitlines():
    m = re.match(r"(ts|ats): .* fit ([0-9.]+) ms", line)
    if m:
        fits[m.group(1)].append(float(m.group(2)))
ref = json.loads((out / "python.json").read_text())
ats = json.loads((out / "python-ats.json").read_text())
for name, py_s in [("ts", ref["netcal_ts_fit_s"]), ("ats", ats["numpy_scipy_ats_fit_s"])]:
    ms = fits[name]
    print(f"{name}: caliper {', '.join(f'{v:.0f}' for v in ms)} ms; python {py_s * 1e3:.0f} ms; "
          f"ratio {py_s * 1e3 / statistics.median(ms):.1f}x (vs the median)")
print(f"ats vs netcal TS fit: {ref['netcal_ts_fit_s'] * 1e3 / statistics.median(fits['ats']):.1f}x")
PY
