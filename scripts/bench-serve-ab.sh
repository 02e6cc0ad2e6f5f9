#!/usr/bin/env bash
# A/B of two caliper binaries on models/mnist (not a test): alternated rounds of the server's CPU
# per request at 64 clients (its threads' run time from /proc, divided by the requests answered)
# and the p50 at one client, on the same machine in one call, so that load drifts hit both.
# Usage: scripts/bench-serve-ab.sh OLD_BINARY NEW_BINARY   (env ROUNDS=3, D=8 seconds). Needs wrk.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/bench-lib.sh"
OLD=$1; NEW=$2; ROUNDS=${ROUNDS:-3}; D=${D:-8}
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/models" "$WORK/calib"
ln -s "$ROOT/models/mnist" "$WORK/models/mnist"; ln -s "$ROOT/calib/mnist.json" "$WORK/calib/mnist.json"
bench_wrk_post "$WORK/post.lua" "$ROOT/tests/data/digits/7.png" image/png
TICK_US=$((1000000 / $(getconf CLK_TCK)))
cpu_us() { awk -v t="$TICK_US" '{printf "%d", ($14 + $15) * t}' "/proc/$1/stat"; }
URL=http://127.0.0.1:18090/v1/models/mnist/predict
for r in $(seq 1 "$ROUNDS"); do
  for tag in old new; do
    bin=$OLD; [[ $tag == new ]] && bin=$NEW
    "$bin" serve --addr 127.0.0.1:18090 --models "$WORK/models" --calib "$WORK/calib" --max-concurrent-requests 1024 2>/dev/null &
    pid=$!; sleep 3
    wrk -t2 -c64 -d2s -s "$WORK/post.lua" "$URL" >/dev/null
    c0=$(cpu_us $pid)
    out=$(wrk -t2 -c64 -d"${D}s" -s "$WORK/post.lua" "$URL")
    c1=$(cpu_us $pid)
    n=$(echo "$out" | grep -o "[0-9]* requests in" | cut -d' ' -f1)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(wrk -t1 -c1 -d5s --latency -s "$WORK/post.lua" "$URL" | awk '$1=="50%" {print $2}')
    kill $pid; wait $pid 2>/dev/null || true
    echo "round $r $tag cpu_us_per_req=$(( (c1 - c0) / n )) rps=$rps p50_1client=$p50 load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
