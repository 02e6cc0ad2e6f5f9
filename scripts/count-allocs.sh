#!/usr/bin/env bash
# Heap allocations per request of `caliper serve` (not a test): glibc malloc, calloc, realloc and
# free calls on the server's threads, counted by uprobes (`perf stat`) over N sequential
# keep-alive single-image requests from one client, and divided by N. Deterministic enough to
# compare two builds exactly, where their CPU time cannot be told apart (docs/BENCHMARKS.md,
# session 21). Needs perf (linux-perf) and root for the uprobes.
# Usage: scripts/count-allocs.sh [MODEL_DIR] [IMAGE] [N]   (env CALIPER_BIN, default
#   target/release/caliper; MODEL_DIR defaults to models/mnist, IMAGE to tests/data/digits/7.png)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL_DIR="$(cd "${1:-$ROOT/models/mnist}" && pwd)"; IMAGE="$(realpath "${2:-$ROOT/tests/data/digits/7.png}")"
N="${3:-2000}"; BIN="${CALIPER_BIN:-$ROOT/target/release/caliper}"
NAME="$(basename "$MODEL_DIR")"; CALIB="$(dirname "$(dirname "$MODEL_DIR")")/calib/$NAME.json"
LIBC="$(ldd "$BIN" | awk '/libc.so.6/ {print $3}')"
for f in malloc calloc realloc free; do
  perf probe -q -x "$LIBC" "$f" 2>/dev/null || perf probe -l 2>/dev/null | grep -q "probe_libc:$f " \
    || { echo "cannot place a uprobe on $f in $LIBC (root and perf needed)" >&2; exit 1; }
done
WORK="$(mktemp -d)"; mkdir -p "$WORK/models" "$WORK/calib"
ln -s "$MODEL_DIR" "$WORK/models/$NAME"; [[ -f "$CALIB" ]] && ln -s "$CALIB" "$WORK/calib/$NAME.json"
"$BIN" serve --addr 127.0.0.1:0 --models "$WORK/models" --calib "$WORK/calib" 2> "$WORK/server.log" &
SERVER=$!; trap 'kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 600); do grep -q "listening on" "$WORK/server.log" && break; sleep 0.1; done
ADDR="$(grep -o "listening on [0-9.:]*" "$WORK/server.log" | head -1 | cut -d' ' -f3)"
cat > "$WORK/client.py" <<PY
import http.client, sys
host, port = "$ADDR".rsplit(":", 1)
body = open("$IMAGE", "rb").read()
c = http.client.HTTPConnection(host, int(port))
for _ in range(int(sys.argv[1])):
    c.request("POST", "/v1/models/$NAME/predict", body, {"Content-Type": "image/png"})
    r = c.getresponse(); r.read(); assert r.status == 200, r.status
PY
python3 "$WORK/client.py" 300   # warm-up: lazily built state, allocator caches
perf stat --per-thread -x, -o "$WORK/stat.csv" -p "$SERVER" \
  -e probe_libc:malloc -e probe_libc:calloc -e probe_libc:realloc -e probe_libc:free \
  -- python3 "$WORK/client.py" "$N"
python3 - "$WORK/stat.csv" "$N" <<'PY'
import collections, sys
n = int(sys.argv[2]); counts = collections.Counter()
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) < 4 or not f[1].isdigit():
        continue
    thread = f[0].rsplit("-", 1)[0]
    thread = "async workers" if thread.startswith("caliper-http") else thread
    counts[(thread, f[3].split(":")[-1])] += int(f[1])
for thread in sorted({t for t, _ in counts}):
    per = {e: counts[(thread, e)] / n for e in ("malloc", "calloc", "realloc", "free")}
    print(f"{thread}: " + ", ".join(f"{e} {v:.1f}" for e, v in per.items()) + " per request")
PY
