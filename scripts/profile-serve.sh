#!/usr/bin/env bash
# Where the server's CPU goes per request (issue 19), not a test: `caliper serve` on one model
# under the same 64-client wrk load as scripts/bench-serve.sh, sampled by `perf record` (every
# thread of the server, user and kernel), the samples grouped by what the code is for (ONNX
# Runtime, the OOD scores, the allocator, the kernel, the HTTP stack, decode, JSON, ...) and
# each group's share turned into microseconds per request with the server's own CPU time per
# request measured over the same run (/proc). The last stdout line is one JSON object; a table
# goes to docs/BENCHMARKS.md (section `serve-profile[-NAME][-cCONNS]`, CONNS shown when not 64).
#
# Usage: scripts/profile-serve.sh [MODEL_DIR] [IMAGE]   (default models/mnist and a digit)
#   Env: DURATION (s, default 10), CONNS (64), CALIPER_BIN (target/release/caliper),
#   BATCHED (N: every request is a multipart upload of N copies of IMAGE, as bench-serve.sh's
#   batched runs, 8 clients unless CONNS says otherwise; figures are then per image).
# Needs perf (Debian: linux-perf), wrk, curl, python3; perf must be allowed to sample the
# server (root, or kernel.perf_event_paranoid <= 1).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# For bench_wrk_post and bench_multipart only (no bench_init: this script prints its own JSON
# line).
source scripts/bench-lib.sh
MODEL_DIR="${1:-models/mnist}"
IMAGE="${2:-tests/data/digits/7.png}"
NAME="$(basename "$MODEL_DIR")"
DURATION="${DURATION:-10}"
BATCHED="${BATCHED:-1}"
CONNS="${CONNS:-$([[ "$BATCHED" -gt 1 ]] && echo 8 || echo 64)}"
CALIPER_BIN="${CALIPER_BIN:-target/release/caliper}"
OUT="$ROOT/runs/profile-$NAME"
for tool in perf wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install linux-perf wrk curl python3)" >&2; exit 1; }
done
[[ -x "$CALIPER_BIN" ]] || cargo build --release --locked --bins --example bench_raw >&2
rm -rf "$OUT"; mkdir -p "$OUT/models" "$OUT/calib"
ln -s "$ROOT/$MODEL_DIR" "$OUT/models/$NAME"
CALIB="$(dirname "$(dirname "$MODEL_DIR")")/calib/$NAME.json"
[[ "$(dirname "$MODEL_DIR")" == models ]] && CALIB="calib/$NAME.json"
[[ -f "$CALIB" ]] && ln -s "$ROOT/$CALIB" "$OUT/calib/$NAME.json"

"$CALIPER_BIN" serve --addr 127.0.0.1:0 --models "$OUT/models" --calib "$OUT/calib" \
  --max-concurrent-requests 1024 2> "$OUT/server.log" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 1 600); do
  ADDR="$(grep -o "listening on [0-9.:]*" "$OUT/server.log" 2>/dev/null | head -1 | cut -d' ' -f3 || true)"
  [[ -n "$ADDR" ]] && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$ADDR" ]] || { echo "server did not start; see $OUT/server.log" >&2; exit 1; }
if [[ "$BATCHED" -gt 1 ]]; then
  bench_multipart "$OUT/body" "$ROOT/$IMAGE" "$BATCHED"
  bench_wrk_post "$OUT/post.lua" "$OUT/body" "multipart/form-data; boundary=$BENCH_BOUNDARY"
else
  bench_wrk_post "$OUT/post.lua" "$ROOT/$IMAGE" image/png
fi
URL="http://$ADDR/v1/models/$NAME/predict"
wrk -t"$(( CONNS < 2 ? 1 : 2 ))" -c"$CONNS" --timeout 30s -d3s -s "$OUT/post.lua" "$URL" > /dev/null
ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
t0="$(ticks)"
wrk -t"$(( CONNS < 2 ? 1 : 2 ))" -c"$CONNS" --timeout 30s -d"${DURATION}s" -s "$OUT/post.lua" "$URL" > "$OUT/wrk.txt" &
WRK=$!
# The sampling window sits inside the load (1 s after it starts, 1 s before it ends).
sleep 1
perf record -q -F 1999 -g -p "$SERVER" -o "$OUT/perf.data" -- sleep $((DURATION - 2)) 2> "$OUT/perf.log"
wait "$WRK"
t1="$(ticks)"
perf report -i "$OUT/perf.data" --no-children -g none --sort dso,sym --stdio 2> /dev/null > "$OUT/report.txt"
# Kernel stacks (frame pointers) of every sample, for the loopback figure below.
perf script -i "$OUT/perf.data" -F ip,sym 2> /dev/null > "$OUT/stacks.txt"
python3 - "$OUT" "$((t1 - t0))" "$(getconf CLK_TCK)" "$MODEL_DIR" "$IMAGE" "$DURATION" "$CONNS" "$BATCHED" <<'PY'
import datetime, json, pathlib, platform, re, subprocess, sys
out, ticks, hz, model, image, duration, conns, batched = sys.argv[1:9]
out = pathlib.Path(out)
wrk = (out / "wrk.txt").read_text()
# With BATCHED > 1 every figure is per image ("request" below then means one image).
requests = int(re.search(r"(\d+) requests in", wrk).group(1)) * int(batched)
cpu_us = int(ticks) * 1e6 / int(hz) / requests
# First matching group wins: (name, test on the dso, test on the symbol).
groups = [
    ("ONNX Runtime", lambda d, s: "onnxruntime" in d, None),
    ("allocator (malloc/free)", None, lambda s: re.search(r"^(_?_?libc_)?(malloc|free|cfree|calloc|realloc)|_int_(malloc|free)|malloc_consolidate|unlink_chunk|^mi_|_mi_", s)),
    ("kernel: scheduling, futex", lambda d, s: d == "[kernel.kallsyms]" and re.search(r"sched|switch|futex|wake|spin|idle|irq|rcu", s), None),
    ("kernel: network, syscalls", lambda d, s: d == "[kernel.kallsyms]", None),
    ("OOD scores (KNN, Mahalanobis, RMDS, ViM)", None, lambda s: "trust::ood" in s or "quicksort" in s or "select_nth" in s),
    ("calibration, conformal, probabilities", None, lambda s: re.search(r"trust::(calibration|conformal)|numeric::|softmax|exp", s)),
    ("monitor: ids, windows, alarm, logit store", None, lambda s: re.search(r"serve::monitor|infer::(live|feedback)|blake|sha2|hmac|hashbrown", s)),
    ("image decode, preprocessing", None, lambda s: re.search(r"png::|fdeflate|image::|zune|preprocess|resample|crc32|adler", s)),
    ("JSON response", None, lambda s: re.search(r"serde_json|zmij|ryu|itoa|serde", s)),
    ("memcpy/memset", None, lambda s: s.startswith("__mem")),
    ("HTTP stack (hyper, axum, tower, tokio)", None, lambda s: re.search(r"hyper|axum|tower|tokio|http::|bytes::|h1::|mio", s)),
    ("prometheus metrics", None, lambda s: "prometheus" in s),
]
shares = {g[0]: 0.0 for g in groups}
shares["other"] = 0.0
for line in (out / "report.txt").read_text().splitlines():
    m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    for name, on_dso, on_sym in groups:
        if (on_dso and on_dso(dso, sym)) or (on_sym and on_sym(sym)):
            shares[name] += pct
            break
    else:
        shares["other"] += pct
total = sum(shares.values()) or 1.0
rows = sorted(((k, v / total) for k, v in shares.items()), key=lambda kv: -kv[1])
# Work the loopback load puts on the server's CPU that a client on another machine would not:
# a response sent over loopback runs the client's receive path and wakes the client inside the
# server's send (net_rx_action below tcp_sendmsg), and the woken client, sharing the cores,
# often preempts the server right after it (schedule on the way out of writev). Counted on the kernel
# stacks; the groups above are by leaf symbol and include these samples.
stacks = (out / "stacks.txt").read_text().split("\n\n")
def frames(block):
    return [l.split(None, 1)[1] for l in block.strip().splitlines() if len(l.split(None, 1)) == 2]
client, preempted = 0, 0
for block in stacks:
    f = frames(block)
    if any("tcp_sendmsg" in x for x in f) and any("net_rx_action" in x for x in f):
        client += 1
    # Preempted on the way out of the send syscall (its user frame is libc's writev).
    elif any("writev" in x for x in f) and any(x in ("schedule", "__schedule") for x in f):
        preempted += 1
loopback = (client + preempted) / max(len(stacks), 1)
res = {"model": model, "image": image, "concurrency": int(conns), "duration_s": int(duration), "images_per_request": int(batched),
       "requests_per_s": round(requests / int(duration), 1),
       "server_cpu_us_per_request": round(cpu_us, 1),
       "groups": {k: {"share": round(v, 4), "us_per_request": round(v * cpu_us, 1)} for k, v in rows},
       "loopback_client_share": round(loopback, 4),
       "loopback_client_us_per_request": round(loopback * cpu_us, 1)}
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
machine = f"{cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, {platform.system()} {platform.release()}"
name = pathlib.Path(model).name
section = "serve-profile" if name == "mnist" else f"serve-profile-{name}"
# A profile at another concurrency (e.g. CONNS=1, the latency case) gets its own section.
section += "" if int(conns) == 64 else f"-c{int(conns)}"
# So does a batched profile (BATCHED=N: multipart uploads of N images, figures per image).
section += "" if int(batched) == 1 else f"-b{int(batched)}"
unit = "request" if int(batched) == 1 else "image"
prefix = "" if int(batched) == 1 else f"BATCHED={int(batched)} "
table = "\n".join(f"| {k} | {v * 100:.1f}% | {v * cpu_us:.1f} |" for k, v in rows)
doc = f"""## Where the server's CPU goes ({model})

Generated by `scripts/profile-serve.sh` (rerun it to refresh; raw outputs in `runs/{out.name}/`).
Not a timed test.

- Date: {date}
- Machine: {machine}
- Command: `{prefix}DURATION={duration} CONNS={conns} scripts/profile-serve.sh {model} {image}`
- `perf record -F 1999` of every server thread during {conns}-client wrk load; samples grouped by
  symbol (first matching group in the script wins); microseconds = share x the server's CPU time
  per {unit} over the same run ({cpu_us:.1f} us, {requests / int(duration):.0f} {unit}s/s).

Of these, {loopback * 100:.1f}% ({loopback * cpu_us:.1f} us per {unit}) is the load generator's own
work charged to the server by loopback: sending a response runs the client's receive path and
wake-up inside the server's `writev` (`net_rx_action` below `tcp_sendmsg` on the kernel stack),
and the woken client, on the same cores, then preempts the server (`schedule` on the way out of
`writev`).

| where | share of server CPU | us per {unit} |
| --- | ---: | ---: |
{table}
"""
path = pathlib.Path(out).parent.parent / "docs" / "BENCHMARKS.md"
text = path.read_text() if path.exists() else "# Benchmarks\n"
begin, end = f"<!-- {section}:start (written by scripts/profile-serve.sh) -->", f"<!-- {section}:end -->"
block = f"{begin}\n{doc}{end}"
if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
path.write_text(text)
print(json.dumps(res))
PY
