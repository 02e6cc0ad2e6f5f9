#!/usr/bin/env bash
# Whole-system benchmark of `caliper serve` (not a test). Measures on the same model and machine:
#   1. raw in-process ONNX Runtime throughput at the server's batch size, without and with PNG
#      decoding (examples/bench_raw.rs), and raw single-image latency;
#   2. the server under 64 concurrent clients posting a PNG (wrk), and at 1 client (p50/p99);
#   3. the same load against a plain Python server (scripts/bench_python_server.py: stdlib HTTP +
#      onnxruntime + Pillow), the baseline a user would otherwise write.
# The last output line is one JSON object with every figure and the ratios; the results are also
# written to docs/BENCHMARKS.md.
#
# Usage: scripts/bench-serve.sh [MODEL_DIR] [IMAGE]
#   MODEL_DIR defaults to models/mnist, else the test fixture tests/data/models/mnist-mlp.
#   Env: DURATION (s, default 15), CONNS (64), BATCH (32), SESSIONS (2), INTRA (1),
#        PYTHON (a python3 with onnxruntime, Pillow, numpy; default: runs/bench-venv, created).
# Needs wrk (apt-get install wrk).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODEL_DIR="${1:-}"
if [[ -z "$MODEL_DIR" ]]; then
  if [[ -f models/mnist/model.onnx ]]; then MODEL_DIR=models/mnist; else MODEL_DIR=tests/data/models/mnist-mlp; fi
fi
IMAGE="${2:-tests/data/digits/7.png}"
NAME="$(basename "$MODEL_DIR")"
MODELS_ROOT="$(dirname "$MODEL_DIR")"
CALIB_ROOT="$(dirname "$MODELS_ROOT")/calib"
[[ "$MODELS_ROOT" == models ]] && CALIB_ROOT=calib
DURATION="${DURATION:-15}"
CONNS="${CONNS:-64}"
BATCH="${BATCH:-32}"
SESSIONS="${SESSIONS:-2}"
INTRA="${INTRA:-1}"
OUT="$ROOT/runs/bench"
mkdir -p "$OUT"

command -v wrk >/dev/null || { echo "error: wrk not found (apt-get install wrk)" >&2; exit 1; }
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON="$ROOT/runs/bench-venv/bin/python"
  if ! "$PYTHON" -c "import onnxruntime, PIL, numpy" 2>/dev/null; then
    echo "creating runs/bench-venv (onnxruntime, Pillow, numpy; benchmark only)" >&2
    python3 -m venv "$ROOT/runs/bench-venv"
    "$ROOT/runs/bench-venv/bin/pip" install --quiet onnxruntime==1.31.1 pillow numpy
  fi
fi

scripts/fetch-onnxruntime.sh
echo "building release binaries (LTO; slow the first time)" >&2
cargo build --release --locked --bins --example bench_raw >&2

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Waits for "listening on HOST:PORT" in a log file and prints HOST:PORT.
wait_listening() {
  local log="$1" pid="$2"
  for _ in $(seq 1 600); do
    if grep -q "listening on" "$log" 2>/dev/null; then
      grep -o "listening on [0-9.:]*" "$log" | head -1 | cut -d' ' -f3
      return
    fi
    kill -0 "$pid" 2>/dev/null || { echo "error: server exited; see $log" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: server did not start; see $log" >&2
  exit 1
}

cat > "$OUT/post.lua" <<LUA
local f = assert(io.open("$ROOT/$IMAGE", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/png"
LUA

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# load NAME URL PID: 64-client and 1-client runs, RSS sampled mid-run and peak.
load() {
  local name="$1" url="$2" pid="$3"
  wrk -t2 -c"$CONNS" -d3s -s "$OUT/post.lua" "$url" >/dev/null   # warm-up
  (sleep $((DURATION / 2)); rss_kb "$pid" > "$OUT/$name-rss-kb.txt") &
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$OUT/post.lua" "$url" > "$OUT/$name-wrk-$CONNS.txt"
  wait
  hwm_kb "$pid" > "$OUT/$name-hwm-kb.txt"
  wrk -t1 -c1 -d"${DURATION}s" --latency -s "$OUT/post.lua" "$url" > "$OUT/$name-wrk-1.txt"
}

echo "1/3 raw ONNX Runtime ($MODEL_DIR, batch $BATCH, $SESSIONS sessions x $INTRA threads)" >&2
target/release/examples/bench_raw "$MODEL_DIR" "$IMAGE" "$BATCH" "$SESSIONS" "$INTRA" "$DURATION" > "$OUT/raw.json"

echo "2/3 caliper serve" >&2
target/release/caliper serve --addr 127.0.0.1:0 --models "$MODELS_ROOT" --calib "$CALIB_ROOT" \
  --max-batch-size "$BATCH" --sessions-per-model "$SESSIONS" --intra-op-threads "$INTRA" \
  --max-concurrent-requests 1024 2> "$OUT/server.log" &
SERVER=$!
PIDS+=("$SERVER")
ADDR="$(wait_listening "$OUT/server.log" "$SERVER")"
load server "http://$ADDR/v1/models/$NAME/predict" "$SERVER"
curl -s "http://$ADDR/metrics" > "$OUT/server-metrics.txt"
kill -TERM "$SERVER"; wait "$SERVER" || true

echo "3/3 Python baseline" >&2
CALIB_FILE="$CALIB_ROOT/$NAME.json"; [[ -f "$CALIB_FILE" ]] || CALIB_FILE=-
"$PYTHON" scripts/bench_python_server.py "$MODEL_DIR" "$CALIB_FILE" 0 > "$OUT/python.log" 2>&1 &
PYSERVER=$!
PIDS+=("$PYSERVER")
PYADDR="$(wait_listening "$OUT/python.log" "$PYSERVER")"
load python "http://$PYADDR/" "$PYSERVER"
kill "$PYSERVER"; wait "$PYSERVER" 2>/dev/null || true

python3 - "$OUT" "$CONNS" "$MODEL_DIR" "$IMAGE" "$DURATION" <<'PY'
import json, os, platform, re, subprocess, sys, datetime, pathlib
out, conns, model_dir, image, duration = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
root = out.parent.parent

def wrk(path):
    text = (out / path).read_text()
    if "Non-2xx" in text or "Socket errors" in text:
        raise SystemExit(f"{path}: errors during the run:\n{text}")
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    lat = {p: float(v) * unit[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    return float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)), lat

raw = json.loads((out / "raw.json").read_text())
s64, _ = wrk(f"server-wrk-{conns}.txt")
_, s1 = wrk("server-wrk-1.txt")
p64, _ = wrk(f"python-wrk-{conns}.txt")
_, p1 = wrk("python-wrk-1.txt")
kb = lambda f: int((out / f).read_text().split()[0])
m = re.search(r'caliper_batch_size_sum\{model="[^"]+"\} ([\d.e+]+)\s+caliper_batch_size_count\{model="[^"]+"\} (\d+)',
              (out / "server-metrics.txt").read_text())
res = {
    "model": model_dir, "image": image, "concurrency": int(conns), "duration_s": int(duration),
    **raw,
    "server_images_per_s": s64,
    "server_mean_batch": round(float(m.group(1)) / int(m.group(2)), 2) if m else None,
    "server_p50_ms_1client": s1["50"], "server_p99_ms_1client": s1["99"],
    "server_p50_overhead_ms": round(s1["50"] - raw["raw_single_p50_ms"], 3),
    "server_rss_mb_under_load": round(kb("server-rss-kb.txt") / 1024, 1),
    "server_peak_rss_mb": round(kb("server-hwm-kb.txt") / 1024, 1),
    "python_images_per_s": p64, "python_p50_ms_1client": p1["50"], "python_p99_ms_1client": p1["99"],
    "python_rss_mb_under_load": round(kb("python-rss-kb.txt") / 1024, 1),
    "server_vs_raw_ratio": round(s64 / raw["raw_decode_ort_images_per_s"], 3),
    "server_vs_raw_ort_only_ratio": round(s64 / raw["raw_ort_images_per_s"], 3),
    "server_vs_python_ratio": round(s64 / p64, 2),
}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
machine = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
rows = "\n".join(f"| `{k}` | {v} |" for k, v in res.items())
doc = f"""# Benchmarks

Generated by `scripts/bench-serve.sh` (rerun it to refresh this file; raw outputs land in
`runs/bench/`). Not a timed test.

- Date: {date}
- Machine: {machine}
- Command: `DURATION={duration} CONNS={conns} BATCH={raw['batch_size']} SESSIONS={raw['sessions']} INTRA={raw['intra_op_threads']} scripts/bench-serve.sh {model_dir} {image}`
- Load generator: wrk 4.1 (2 threads, {conns} connections; then 1 thread, 1 connection), on the
  same machine as the server, so it competes with the server for the same cores.

## What each figure means

- `raw_ort_images_per_s`: ONNX Runtime alone, in process, batches of `batch_size`, one thread per
  session as the server runs them. `raw_decode_ort_images_per_s`: the same plus PNG decoding and
  preprocessing of every image (the work the server must also do). `raw_single_p50_ms`: one image
  decoded and run on one thread, no batching.
- `server_images_per_s`: `caliper serve` with {conns} concurrent clients each posting the PNG
  (`POST /v1/models/NAME/predict`), full JSON response with calibrated probabilities and OOD scores.
  `server_vs_raw_ratio` = server / raw decode + ONNX Runtime (target >= 0.9).
- `server_p50_ms_1client`: latency seen by a single client; `server_p50_overhead_ms` = that minus
  the raw single-image latency (target <= 1 ms).
- `python_*`: a plain Python server (standard library HTTP server + onnxruntime + Pillow,
  `scripts/bench_python_server.py`) under the same load; `server_vs_python_ratio` (target >= 3).
- RSS: resident memory sampled half-way through the {conns}-client run, and the peak.

## Results

| figure | value |
| --- | --- |
{rows}
"""
(root / "docs" / "BENCHMARKS.md").write_text(doc)
print(json.dumps(res))
PY
