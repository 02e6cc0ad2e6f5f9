#!/usr/bin/env bash
# Whole-system benchmark of `caliper serve` (not a test). Measures on the same model and machine:
#   1. raw in-process ONNX Runtime throughput at the server's batch size, without and with PNG
#      decoding, and with the whole answer (decode + ORT + calibration, OOD scores, signed id,
#      JSON: the "raw pipeline", everything but serving; examples/bench_raw.rs), and raw
#      single-image latency; run again after the server's runs, and the mean of the two used;
#   2. the server under 64 concurrent clients posting a PNG (wrk), and at 1 client (p50/p99);
#   3. the same load against a plain Python server (scripts/bench_python_server.py: stdlib HTTP +
#      onnxruntime + Pillow), the baseline a user would otherwise write;
#   4. the HTTP floor: the same load against examples/bench_http_floor.rs (tokio + hyper + axum,
#      the server's own stack, answering the server's response bytes with no work at all), whose
#      CPU per request is what serving over HTTP costs before caliper does anything;
#   5. the floor again, each answer held back by a timer so that it answers at about the
#      server's own request rate (every answer then wakes a parked worker, as a model's results
#      do, instead of one wake-up serving many at the floor's 150k requests/s), beside the raw
#      pipeline loop on the same cores and under the same load (alternated with the loop alone):
#      what HTTP costs a server that runs this model, and what the same runs cost on cores shared
#      with serving, and the single-image answer after a lone client's idle gap (the ceiling's parts).
# The last output line is one JSON object with every figure and the ratios, also when a section
# fails: then "ok" is false and "failures" names the section and the error (scripts/bench-lib.sh);
# the results are also written to docs/BENCHMARKS.md. `make bench` installs what this needs first.
#
# Usage: scripts/bench-serve.sh [MODEL_DIR] [IMAGE]
#   MODEL_DIR defaults to models/mnist, else the test fixture tests/data/models/mnist-mlp.
#   Env: DURATION (s, default 15), CONNS (64), BATCH (default: the size the server chooses for the
#   model at load, read from a first start; the raw loop and the measured server then both run
#   at it), SESSIONS (2: the
#   raw loop's threads), SERVER_SESSIONS (unset: the server's own default, one session for a short
#   model on a small CPU; PIN=1 sets it to SESSIONS), INTRA (1),
#        QUEUE_DELAY_US (the server's --max-queue-delay-us, default: the server's default),
#        PIN (0; 1 = load generator on CPU 0, server, raw baseline and Python on CPU 1, one
#        session: the fairer split when wrk shares the machine; written to its own section),
#        PYTHON (a python3 with onnxruntime, Pillow, numpy; default: runs/bench-venv, created),
#        SECTION (a name: the results go to their own docs section `serve-bench[-pinned]-NAME`
#        and to runs/bench[-pinned]-NAME/, so that a second model does not replace the first),
#        CALIPER_BIN (the server binary, default target/release/caliper: to compare two builds),
#        WRK (the load generator, default wrk on PATH).
#   A second model: SECTION=cifar10 scripts/bench-serve.sh models/cifar10 tests/data/cifar10/ship.png
#   Every model of issue 19 in one call: scripts/bench-serve.sh all (LeNet, ResNet-20 and the
#   224x224 EfficientNet-Lite0 of the own-models issue, imported into runs/; see
#   scripts/bench-serve-all.py), whose last line carries every model's figures and targets.
# Besides throughput, the CPU time the server spends per request (its threads' run time from
# /proc, which other processes do not inflate) is compared with raw decode + ONNX Runtime's.
# Needs wrk (apt-get install wrk; `make bench` installs it), curl and python3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [[ "${1:-}" == all ]]; then
  exec python3 scripts/bench-serve-all.py
fi
source scripts/bench-lib.sh
bench_init serve setup raw server raw-after python floor corun report
bench_section setup

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
BATCH="${BATCH:-}"
PIN="${PIN:-0}"
if [[ "$PIN" == 1 ]]; then
  SESSIONS="${SESSIONS:-1}"; ON_SERVER_CPU=(taskset -c 1); ON_LOAD_CPU=(taskset -c 0); WRK_THREADS=1
  SERVER_SESSIONS="${SERVER_SESSIONS:-$SESSIONS}"
  OUT="$ROOT/runs/bench-pinned"
else
  SESSIONS="${SESSIONS:-2}"; ON_SERVER_CPU=(); ON_LOAD_CPU=(); WRK_THREADS=2
  OUT="$ROOT/runs/bench"
fi
INTRA="${INTRA:-1}"
SECTION="${SECTION:-}"
[[ -z "$SECTION" || "$SECTION" =~ ^[a-z0-9-]+$ ]] || bench_fail "SECTION must match [a-z0-9-]+"
[[ -n "$SECTION" ]] && OUT="$OUT-$SECTION"
CALIPER_BIN="${CALIPER_BIN:-target/release/caliper}"
DELAY_ARGS=()
[[ -n "${QUEUE_DELAY_US:-}" ]] && DELAY_ARGS=(--max-queue-delay-us "$QUEUE_DELAY_US")
mkdir -p "$OUT"

WRK="${WRK:-wrk}"
command -v "$WRK" >/dev/null || bench_fail "wrk not found (apt-get install wrk, or run make bench)"
command -v curl >/dev/null || bench_fail "curl not found (apt-get install curl)"
command -v python3 >/dev/null || bench_fail "python3 not found (apt-get install python3 python3-venv)"
[[ "$PIN" != 1 ]] || command -v taskset >/dev/null || bench_fail "taskset not found (apt-get install util-linux), needed by PIN=1"
[[ -f "$IMAGE" ]] || bench_fail "image $IMAGE not found"
[[ -f "$MODEL_DIR/model.onnx" ]] || bench_fail "model $MODEL_DIR/model.onnx not found"
PYTHON="$(scripts/bench-python.sh)" || bench_fail "no Python for the baseline (scripts/bench-python.sh failed)"

scripts/fetch-onnxruntime.sh >&2
echo "building release binaries (LTO; slow the first time)" >&2
cargo build --release --locked --bins --example bench_raw --example bench_http_floor >&2

PIDS=()
# Run by bench-lib's EXIT trap before it writes the JSON line.
bench_cleanup() { for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done; }

# Waits for "listening on HOST:PORT" in a log file and prints HOST:PORT.
wait_listening() {
  local log="$1" pid="$2"
  for _ in $(seq 1 600); do
    if grep -q "listening on" "$log" 2>/dev/null; then
      grep -o "listening on [0-9.:]*" "$log" | head -1 | cut -d' ' -f3
      return
    fi
    kill -0 "$pid" 2>/dev/null || bench_fail "server exited: $(tail -1 "$log" 2>/dev/null) (see $log)"
    sleep 0.1
  done
  bench_fail "server did not start within 60 s; see $log"
}

bench_wrk_post "$OUT/post.lua" "$ROOT/$IMAGE" image/png

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# CPU time (user + system) of a process so far, in microseconds; threads that already exited
# (Python's per-request threads, idle blocking-pool threads) included.
TICK_US=$((1000000 / $(getconf CLK_TCK)))
cpu_us() { awk -v t="$TICK_US" '{printf "%d", ($14 + $15) * t}' "/proc/$1/stat"; }
# Each live thread of a process: "TID NAME CPU_US" (the split of the server's CPU between its
# session threads and the rest; threads that exit in between only show in cpu_us).
thread_cpu() {
  local t
  for t in /proc/"$1"/task/*; do
    # stderr first: a thread that exits meanwhile has no comm to read (no message then).
    printf '%s %s %s\n' "${t##*/}" "$(tr ' ' _ 2>/dev/null < "$t/comm")" \
      "$(awk -v t="$TICK_US" '{printf "%d", ($14 + $15) * t}' "$t/stat" 2>/dev/null || echo 0)"
  done
}

# images_run BASE_URL: how many images caliper has run through ONNX Runtime (the sum of its
# batch-size histogram), which counts the images of requests that a run's end cut off too.
images_run() { curl -sf "$1/metrics" | awk '/^caliper_batch_size_sum/ {n += $2} END {printf "%d", n}'; }

# load NAME URL PID [BASE_URL]: 64-client and 1-client runs, RSS sampled mid-run and peak; with
# BASE_URL (caliper) also the images it ran during the 64-client run.
load() {
  local name="$1" url="$2" pid="$3" base="${4:-}" run0=0
  local wrk=(${ON_LOAD_CPU[@]+"${ON_LOAD_CPU[@]}"} "$WRK")
  "${wrk[@]}" -t"$WRK_THREADS" -c"$CONNS" -d3s -s "$OUT/post.lua" "$url" >/dev/null   # warm-up
  (sleep $((DURATION / 2)); rss_kb "$pid" > "$OUT/$name-rss-kb.txt") &
  local sampler=$! cpu0
  [[ -n "$base" ]] && run0="$(images_run "$base")"
  cpu0="$(cpu_us "$pid")"
  thread_cpu "$pid" > "$OUT/$name-threads-0.txt"
  # The load generator's own CPU time (user, system seconds) too: it shares the cores.
  local TIMEFORMAT='%U %S'
  { time "${wrk[@]}" -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$OUT/post.lua" "$url" > "$OUT/$name-wrk-$CONNS.txt"; } 2> "$OUT/$name-loadgen-cpu-s.txt"
  echo $(($(cpu_us "$pid") - cpu0)) > "$OUT/$name-cpu-us.txt"
  [[ -n "$base" ]] && echo $(($(images_run "$base") - run0)) > "$OUT/$name-images-run.txt"
  thread_cpu "$pid" > "$OUT/$name-threads-1.txt"
  wait "$sampler"
  hwm_kb "$pid" > "$OUT/$name-hwm-kb.txt"
  "${wrk[@]}" -t1 -c1 -d"${DURATION}s" --latency -s "$OUT/post.lua" "$url" > "$OUT/$name-wrk-1.txt"
}

# The model's calibration file, for the raw pipeline (whole answers without a server) and the
# Python baseline's temperature.
CALIB_FILE="$CALIB_ROOT/$NAME.json"; [[ -f "$CALIB_FILE" ]] || CALIB_FILE=-

# A repository holding only the benchmarked model, so that RSS compares with the Python server's.
REPO="$OUT/repository"
rm -rf "$REPO"; mkdir -p "$REPO/models" "$REPO/calib"
ln -s "$ROOT/$MODELS_ROOT/$NAME" "$REPO/models/$NAME"
[[ -f "$CALIB_ROOT/$NAME.json" ]] && ln -s "$ROOT/$CALIB_ROOT/$NAME.json" "$REPO/calib/$NAME.json"

# Without BATCH, the batch size the server chooses for this model at load (on a CPU it measures
# the model's runs at each size: a large model runs smaller batches), read from its V2 metadata
# on a first start; the measured server is then started with it, so that it and the raw loop run
# the same size even if a second start would choose another.
if [[ -z "$BATCH" ]]; then
  ${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} "$CALIPER_BIN" serve --addr 127.0.0.1:0 --models "$REPO/models" --calib "$REPO/calib" \
    ${SERVER_SESSIONS:+--sessions-per-model "$SERVER_SESSIONS"} --intra-op-threads "$INTRA" 2> "$OUT/server-batch.log" &
  PROBE=$!
  PIDS+=("$PROBE")
  PROBE_ADDR="$(wait_listening "$OUT/server-batch.log" "$PROBE")"
  BATCH="$(curl -sf "http://$PROBE_ADDR/v2/models/$NAME" | python3 -c 'import json, sys; print(json.load(sys.stdin)["parameters"]["max_batch_size"])')"
  kill "$PROBE"; wait "$PROBE" 2>/dev/null || true
  echo "   the server chose batch size $BATCH for $NAME" >&2
fi

bench_section raw
echo "1/5 raw ONNX Runtime ($MODEL_DIR, batch $BATCH, $SESSIONS sessions x $INTRA threads)" >&2
${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} target/release/examples/bench_raw "$MODEL_DIR" "$IMAGE" "$BATCH" "$SESSIONS" "$INTRA" "$DURATION" "$CALIB_FILE" > "$OUT/raw.json"
bench_record raw "$(<"$OUT/raw.json")"

bench_section server
echo "2/5 caliper serve" >&2
${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} "$CALIPER_BIN" serve --addr 127.0.0.1:0 --models "$REPO/models" --calib "$REPO/calib" \
  --max-batch-size "$BATCH" ${SERVER_SESSIONS:+--sessions-per-model "$SERVER_SESSIONS"} --intra-op-threads "$INTRA" \
  --max-concurrent-requests 1024 ${DELAY_ARGS[@]+"${DELAY_ARGS[@]}"} 2> "$OUT/server.log" &
SERVER=$!
PIDS+=("$SERVER")
ADDR="$(wait_listening "$OUT/server.log" "$SERVER")"
load server "http://$ADDR/v1/models/$NAME/predict" "$SERVER" "http://$ADDR"
curl -s "http://$ADDR/metrics" > "$OUT/server-metrics.txt"

# batched NAME PATH CTYPE BODY_FILE ROUND: server CPU per image for uploads of BATCHED images each
# (8 clients, so that the queue holds a few requests' images, as the single-image runs' 64 do).
# wrk's default 2 s timeout is shorter than 8 concurrent 32-image uploads of a 224x224 model take
# on 2 cores (each is ~0.3 s of CPU), so it would count slow answers as failures: 30 s.
# The images the server ran are counted too: when wrk stops, the uploads in flight are cut off
# with some of their images run (EfficientNet-Lite0: about one upload's worth, 1.2% of a
# run's CPU), which CPU per answered image would charge to the answered ones.
batched() {
  local name="$1" path="$2" ctype="$3" body="$4" round="$5"
  bench_wrk_post "$OUT/$name.lua" "$body" "$ctype"
  local wrk=(${ON_LOAD_CPU[@]+"${ON_LOAD_CPU[@]}"} "$WRK" --timeout 30s)
  "${wrk[@]}" -t"$WRK_THREADS" -c8 -d2s -s "$OUT/$name.lua" "http://$ADDR$path" >/dev/null
  measured "server-$name-$round" "${wrk[@]}" -t"$WRK_THREADS" -c8 -d"${DURATION}s" --latency -s "$OUT/$name.lua" "http://$ADDR$path"
}
# single ROUND: the many-client single-image run again (no warm-up: it follows load).
single() {
  measured "server-single-$1" ${ON_LOAD_CPU[@]+"${ON_LOAD_CPU[@]}"} "$WRK" -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" \
    -s "$OUT/post.lua" "http://$ADDR/v1/models/$NAME/predict"
}
# measured NAME CMD...: runs the load generator CMD (output to NAME-wrk.txt) and writes the
# server's CPU time (NAME-cpu-us.txt) and the images it ran (NAME-images-run.txt) meanwhile.
measured() {
  local name="$1" cpu0 run0
  shift
  run0="$(images_run "http://$ADDR")"
  cpu0="$(cpu_us "$SERVER")"
  "$@" > "$OUT/$name-wrk.txt"
  echo $(($(cpu_us "$SERVER") - cpu0)) > "$OUT/$name-cpu-us.txt"
  echo $(($(images_run "http://$ADDR") - run0)) > "$OUT/$name-images-run.txt"
}
BATCHED="${BATCHED:-32}"
BATCHED_ROUNDS="${BATCHED_ROUNDS:-2}"
bench_multipart "$OUT/multipart.body" "$IMAGE" "$BATCHED"
bench_v2_body "$OUT/v2.body" "$IMAGE" "$BATCHED"
echo "$BATCHED" > "$OUT/batched-images.txt"
echo "$BATCHED_ROUNDS" > "$OUT/batched-rounds.txt"
rm -f "$OUT"/server-multipart-* "$OUT"/server-v2-* "$OUT"/server-single-* "$OUT"/server-after-*
# Each batched run sits between two single-image runs and is divided by their mean: the VM's
# speed drifts by a few percent within minutes, more than the 1-2% an upload saves on a large
# model (one binary against itself read EfficientNet-Lite0's ratio 0.976-1.014 by rounds). The
# first single run is the one above; multipart and V2 alternate, BATCHED_ROUNDS of each.
echo "   batched uploads of $BATCHED images (multipart, V2 BYTES), $BATCHED_ROUNDS rounds each between single-image runs" >&2
for round in $(seq 1 "$BATCHED_ROUNDS"); do
  batched multipart "/v1/models/$NAME/predict" "multipart/form-data; boundary=$BENCH_BOUNDARY" "$OUT/multipart.body" "$round"
  single $((2 * round - 1))
  batched v2 "/v2/models/$NAME/infer" "application/json" "$OUT/v2.body" "$round"
  single $((2 * round))
done
# The floor server answers these bytes.
curl -sf -X POST -H "Content-Type: image/png" --data-binary "@$ROOT/$IMAGE" "http://$ADDR/v1/models/$NAME/predict" > "$OUT/response.json"
kill -TERM "$SERVER"; wait "$SERVER" || true

# The raw loop again right after the server: the VM's speed drifts by several percent within
# minutes, so the report divides by the mean of the raw runs before and after the server's
# (and gives the drift between them).
bench_section raw-after
echo "   raw ONNX Runtime again (the server's runs bracketed)" >&2
${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} target/release/examples/bench_raw "$MODEL_DIR" "$IMAGE" "$BATCH" "$SESSIONS" "$INTRA" "$DURATION" "$CALIB_FILE" > "$OUT/raw-after.json"

bench_section python
echo "3/5 Python baseline" >&2
${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} "$PYTHON" scripts/bench_python_server.py "$MODEL_DIR" "$CALIB_FILE" 0 > "$OUT/python.log" 2>&1 &
PYSERVER=$!
PIDS+=("$PYSERVER")
PYADDR="$(wait_listening "$OUT/python.log" "$PYSERVER")"
load python "http://$PYADDR/" "$PYSERVER"
kill "$PYSERVER"; wait "$PYSERVER" 2>/dev/null || true

bench_section floor
echo "4/5 HTTP floor (examples/bench_http_floor.rs)" >&2
${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} target/release/examples/bench_http_floor "$OUT/response.json" 2> "$OUT/floor.log" &
FLOOR=$!
PIDS+=("$FLOOR")
load floor "http://$(wait_listening "$OUT/floor.log" "$FLOOR")/predict" "$FLOOR"
kill "$FLOOR"; wait "$FLOOR" 2>/dev/null || true

bench_section corun
echo "5/5 HTTP floor at the server's request rate, beside the raw pipeline (alternated with it alone)" >&2
RATE="$(grep -o 'Requests/sec: *[0-9.]*' "$OUT/server-wrk-$CONNS.txt" | awk '{print $2}')"
# Tokio's timers fire on the millisecond tick after the deadline: half a tick is taken off.
PACE_US="$(python3 -c "print(max(0, round($CONNS * 1e6 / $RATE) - 500))")"
echo "$PACE_US" > "$OUT/paced-delay-us.txt"
FLOOR_DELAY_US="$PACE_US" ${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} target/release/examples/bench_http_floor "$OUT/response.json" 2> "$OUT/paced.log" &
PACED=$!
PIDS+=("$PACED")
PACED_URL="http://$(wait_listening "$OUT/paced.log" "$PACED")/predict"
${ON_LOAD_CPU[@]+"${ON_LOAD_CPU[@]}"} "$WRK" -t"$WRK_THREADS" -c"$CONNS" -d2s -s "$OUT/post.lua" "$PACED_URL" >/dev/null   # warm-up
# The pipeline loop alone, then beside the paced floor under load, three times: what the same
# work costs on cores shared with serving, as a ratio of runs seconds apart (the machine's
# speed drifts by several percent over minutes). wrk runs 2 s longer than the loop, which opens
# its sessions first, so that the loop never runs without the load beside it.
SLICE=$((DURATION >= 6 ? DURATION / 2 : 3))
raw_pipeline() {
  RAW_ONLY=pipeline ${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} target/release/examples/bench_raw \
    "$MODEL_DIR" "$IMAGE" "$BATCH" "$SESSIONS" "$INTRA" "$SLICE" "$CALIB_FILE"
}
rm -f "$OUT"/corun-*.json "$OUT"/paced-wrk-* "$OUT"/paced-loadgen-cpu-s* "$OUT/paced-cpu-us.txt"
for round in 1 2 3; do
  raw_pipeline > "$OUT/corun-alone-$round.json"
  cpu0="$(cpu_us "$PACED")"
  (
    TIMEFORMAT='%U %S'
    { time ${ON_LOAD_CPU[@]+"${ON_LOAD_CPU[@]}"} "$WRK" -t"$WRK_THREADS" -c"$CONNS" -d"$((SLICE + 2))s" -s "$OUT/post.lua" "$PACED_URL" > "$OUT/paced-wrk-$CONNS-$round.txt"; } 2> "$OUT/paced-loadgen-cpu-s-$round.txt"
  ) &
  LOADGEN=$!
  raw_pipeline > "$OUT/corun-raw-$round.json"
  wait "$LOADGEN"
  echo $(($(cpu_us "$PACED") - cpu0)) >> "$OUT/paced-cpu-us.txt"
done
kill "$PACED"; wait "$PACED" 2>/dev/null || true
# A lone client sends its next request about one HTTP round trip (the floor's 1-client p50) after
# the last answer, so a server's run starts on a core idle that long: the single-image pipeline
# after such a gap, beside the back-to-back raw p50 in the same process (the ceiling's p50).
GAP_US="$(python3 -c '
import re, sys
unit = {"us": 1, "ms": 1e3, "s": 1e6}
v, u = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", open(sys.argv[1]).read(), re.M).groups()
print(round(float(v) * unit[u]))' "$OUT/floor-wrk-1.txt")"
RAW_ONLY=single SINGLE_GAP_US="$GAP_US" ${ON_SERVER_CPU[@]+"${ON_SERVER_CPU[@]}"} target/release/examples/bench_raw \
  "$MODEL_DIR" "$IMAGE" "$BATCH" "$SESSIONS" "$INTRA" "$DURATION" "$CALIB_FILE" > "$OUT/gap-single.json"

bench_section report
if ! report="$(python3 scripts/bench_report.py "$OUT" "$CONNS" "$MODEL_DIR" "$IMAGE" "$DURATION" "$PIN" "$SECTION" 2> "$OUT/report.err")"; then
  cat "$OUT/report.err" >&2
  bench_fail "bench_report.py: $(head -1 "$OUT/report.err")"
fi
# bench_report.py's figures stay at the top level of the last line, as before.
bench_figures "$report"
