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
# Ends with the fit times side by side; the machine is shared, so run it a few times. The last
# line is one JSON object with the fit times and ratios, also when a section fails: then "ok" is
# false and "failures" names it (scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
bench_init calibration setup generate caliper-fit caliper-eval python-reference python-ats summary
bench_section setup
out=runs/bench-calibration
mkdir -p "$out"
command -v python3 >/dev/null || bench_fail "python3 not found (apt-get install python3 python3-venv)"
[[ -x /usr/bin/time ]] || bench_fail "/usr/bin/time not found (apt-get install time)"

CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  cargo build --release --bin caliper >&2
bin=target/release/caliper

if [[ ! -x .venv-calib/bin/python ]]; then
  python3 -m venv .venv-calib >&2 || bench_fail "python3 -m venv failed (apt-get install python3-venv)"
fi
.venv-calib/bin/python -c "import numpy, scipy, netcal" 2>/dev/null ||
  .venv-calib/bin/pip install -q numpy scipy netcal >&2 ||
  bench_fail "pip install numpy scipy netcal into .venv-calib failed"
py=.venv-calib/bin/python

bench_section generate
[[ -f $out/logits.npy ]] || $py scripts/bench_calibration_reference.py gen "$out"

timed() { # name, command...: prints the command's stdout, appends "name wall_s max_rss_kib"
  local name=$1; shift
  /usr/bin/time -f "$name %e %M" -a -o "$out/times.txt" "$@"
}
: > "$out/times.txt"
bench_section caliper-fit
for method in ts ats; do
  for run in 1 2 3; do
    timed "calibrate-$method" "$bin" calibrate --logits "$out/logits.npy" \
      --labels "$out/labels.npy" --method "$method" --out "$out/$method.json"
  done
done | tee "$out/caliper-fit.txt"
bench_section caliper-eval
timed eval "$bin" eval --logits "$out/logits.npy" --labels "$out/labels.npy" --json \
  > "$out/caliper-eval.json"
timed eval-with-ats "$bin" eval --logits "$out/logits.npy" --labels "$out/labels.npy" \
  --calib "$out/ats.json" --json > /dev/null
bench_section python-reference
timed python-reference $py scripts/bench_calibration_reference.py ref "$out" \
  "$out/caliper-eval.json" | tee "$out/python.json"
bench_section python-ats
timed python-ats $py scripts/bench_calibration_reference.py ats "$out" "$out/ats.json" \
  | tee "$out/python-ats.json"
bench_section summary
echo "--- wall seconds and max RSS (KiB) per process"
cat "$out/times.txt"
echo "--- fit times (caliper: the fit alone, as calibrate prints it)"
$py - "$out" "$out/summary.json" <<'PY'
import json, pathlib, re, statistics, sys
out = pathlib.Path(sys.argv[1])
summary = {}
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
    summary[f"caliper_{name}_fit_ms"] = ms
    summary[f"python_{name}_fit_ms"] = round(py_s * 1e3, 3)
    summary[f"{name}_ratio_vs_median"] = round(py_s * 1e3 / statistics.median(ms), 3)
print(f"ats vs netcal TS fit: {ref['netcal_ts_fit_s'] * 1e3 / statistics.median(fits['ats']):.1f}x")
summary["ats_vs_netcal_ts_ratio"] = round(ref["netcal_ts_fit_s"] * 1e3 / statistics.median(fits["ats"]), 3)
# wall seconds and max RSS per process, as times.txt lists them
summary["processes"] = [dict(zip(("name", "wall_s", "max_rss_kib"), (p[0], float(p[1]), int(p[2]))))
                        for p in (l.split() for l in (out / "times.txt").read_text().splitlines()) if len(p) == 3]
pathlib.Path(sys.argv[2]).write_text(json.dumps(summary))
PY
bench_figures "$(<"$out/summary.json")"
