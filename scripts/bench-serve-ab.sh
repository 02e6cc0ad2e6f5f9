#!/usr/bin/env bash
# A/B of two caliper binaries on one model (not a test): alternated rounds of the server's CPU
# per request at 64 clients (its threads' run time from /proc, divided by the requests answered),
# its peak RSS and the p50 at one client, on the same machine in one call, so that load drifts
# hit both.
# Usage: scripts/bench-serve-ab.sh OLD_BINARY NEW_BINARY   (env ROUNDS=3, D=8 seconds,
#   MODEL_DIR=models/mnist and IMAGE=tests/data/digits/7.png; the model's calibration file is
#   used when calib/NAME.json exists beside its models/ folder; BATCHED=N adds, per round, the
#   server's CPU per image for multipart uploads of N copies of IMAGE at 8 clients and its ratio
#   to the single-image figure, as bench-serve.sh's batched runs; with V2=1 the same upload is a
#   KServe V2 JSON request of N base64 strings instead of multipart). Needs wrk.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/bench-lib.sh"
OLD=$1; NEW=$2; ROUNDS=${ROUNDS:-3}; D=${D:-8}
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
MODEL_DIR="$(cd "${MODEL_DIR:-$ROOT/models/mnist}" && pwd)"; IMAGE="$(realpath "${IMAGE:-$ROOT/tests/data/digits/7.png}")"
NAME="$(basename "$MODEL_DIR")"; CALIB="$(dirname "$(dirname "$MODEL_DIR")")/calib/$NAME.json"
mkdir -p "$WORK/models" "$WORK/calib"
ln -s "$MODEL_DIR" "$WORK/models/$NAME"
[[ -f "$CALIB" ]] && ln -s "$CALIB" "$WORK/calib/$NAME.json"
bench_wrk_post "$WORK/post.lua" "$IMAGE" image/png
BATCHED=${BATCHED:-1}
if ((BATCHED > 1)); then
  if [[ ${V2:-0} == 1 ]]; then
    bench_v2_body "$WORK/v2.body" "$IMAGE" "$BATCHED"
    bench_wrk_post "$WORK/batched.lua" "$WORK/v2.body" application/json
  else
    bench_multipart "$WORK/multipart.body" "$IMAGE" "$BATCHED"
    bench_wrk_post "$WORK/batched.lua" "$WORK/multipart.body" "multipart/form-data; boundary=$BENCH_BOUNDARY"
  fi
fi
BATCHED_URL=http://127.0.0.1:18090/v1/models/$NAME/predict
[[ ${V2:-0} == 1 ]] && BATCHED_URL=http://127.0.0.1:18090/v2/models/$NAME/infer
TICK_US=$((1000000 / $(getconf CLK_TCK)))
cpu_us() { awk -v t="$TICK_US" '{printf "%d", ($14 + $15) * t}' "/proc/$1/stat"; }
URL=http://127.0.0.1:18090/v1/models/$NAME/predict
for r in $(seq 1 "$ROUNDS"); do
  for tag in old new; do
    bin=$OLD; [[ $tag == new ]] && bin=$NEW
    "$bin" serve --addr 127.0.0.1:18090 --models "$WORK/models" --calib "$WORK/calib" --max-concurrent-requests 1024 2>/dev/null &
    pid=$!
    for _ in $(seq 1 600); do curl -sf http://127.0.0.1:18090/v2/health/ready >/dev/null && break; sleep 0.1; done
    wrk -t2 -c64 -d2s -s "$WORK/post.lua" "$URL" >/dev/null
    c0=$(cpu_us $pid)
    out=$(wrk -t2 -c64 -d"${D}s" -s "$WORK/post.lua" "$URL")
    c1=$(cpu_us $pid)
    n=$(echo "$out" | grep -o "[0-9]* requests in" | cut -d' ' -f1)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(wrk -t1 -c1 -d5s --latency -s "$WORK/post.lua" "$URL" | awk '$1=="50%" {print $2}')
    batched=""
    if ((BATCHED > 1)); then
      wrk -t2 -c8 -d2s --timeout 30s -s "$WORK/batched.lua" "$BATCHED_URL" >/dev/null
      b0=$(cpu_us $pid)
      bn=$(wrk -t2 -c8 -d"${D}s" --timeout 30s -s "$WORK/batched.lua" "$BATCHED_URL" | grep -o "[0-9]* requests in" | cut -d' ' -f1)
      b1=$(cpu_us $pid)
      per=$(( (b1 - b0) / (bn * BATCHED) ))
      batched=" cpu_us_per_img_b$BATCHED=$per ratio=$(awk -v a="$per" -v b="$(( (c1 - c0) / n ))" 'BEGIN {printf "%.3f", a / b}')"
    fi
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    kill $pid; wait $pid 2>/dev/null || true
    echo "round $r $tag cpu_us_per_req=$(( (c1 - c0) / n )) rps=$rps p50_1client=$p50 peak_rss_kb=$hwm$batched load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
