#!/usr/bin/env bash
# Bounded soak of `caliper serve` (issue 23; not a benchmark): DURATION seconds (default 180) of
# mixed valid and hostile traffic against the bundled models (digits to mnist with label
# feedback; 4096 x 4096 and 16,777,216 x 1 PNGs, corrupt images, malformed and large V2 bodies,
# forged feedback), readiness polled every 200 ms, peak RSS read from /proc; then kill -9, a
# restart on the same state directory, and the acknowledged labels counted against the restarted
# server's monitor. The last stdout line is one JSON object; exit 1 when a label was lost or
# readiness failed (scripts/soak.py has the details). `make bench` runs it after bench-serve.sh.
#
# Usage: DURATION=30 scripts/soak.sh     Env: CALIPER_BIN (default target/release/caliper)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-180}"
CALIPER_BIN="${CALIPER_BIN:-target/release/caliper}"
# Like the other benchmark scripts, the last stdout line is JSON even when it cannot start.
fail() { echo "$1" >&2; printf '{"benchmark": "soak", "ok": false, "failures": ["%s"]}\n' "$1"; exit 1; }
command -v python3 >/dev/null || fail "python3 not found (apt-get install python3)"
[[ -x "$CALIPER_BIN" ]] || fail "$CALIPER_BIN not found: run make build"
for m in mnist cifar10; do
  [[ -f "models/$m/model.onnx" ]] || fail "models/$m is missing"
done
WORK="$(mktemp -d "${TMPDIR:-/tmp}/caliper-soak.XXXXXX")"
echo "soak: ${DURATION}s, work dir $WORK" >&2
python3 scripts/soak.py "$CALIPER_BIN" models calib "$WORK" "$DURATION"
