#!/usr/bin/env bash
# CPU-machine check of the CUDA build (issue 20), not a test: after `make build CUDA=1`, starts
# `caliper serve --device cuda:0` and `caliper-train check-step --device cuda:0` against a
# stand-in for the NVIDIA driver (a libcuda.so.1 built
# here, whose entry points report no device), with no ORT_DYLIB_PATH. Passes when the refusal
# comes from the CUDA runtime itself ("CUDA failure N"), which shows that the GPU build of ONNX
# Runtime was found in third_party/ and that its CUDA provider loaded with every NVIDIA library
# it links against (cuBLAS, cuDNN, ...: the preload list) -- all a machine without a GPU can
# show. Without the stand-in the refusal must name the missing driver instead. On a GPU
# machine run scripts/repro/gpu-check.sh.
# Usage: scripts/repro/cuda-load-check.sh   (needs gcc)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
BINS=("$ROOT/target/release/caliper serve --addr 127.0.0.1:0" "$ROOT/target/release/caliper-train check-step")
[[ -f third_party/onnxruntime-cuda/lib/libonnxruntime_providers_cuda.so ]] ||
  { echo "no CUDA build here: run make build CUDA=1 first" >&2; exit 2; }
[[ -z "${ORT_DYLIB_PATH:-}" ]] || { echo "unset ORT_DYLIB_PATH: the point is to need none" >&2; exit 2; }
STUB="$(mktemp -d)"
trap 'rm -rf "$STUB"' EXIT
cat > "$STUB/stub.c" <<'C'
/* Every driver entry point reports CUDA_ERROR_NO_DEVICE (100). */
typedef int CUresult;
static CUresult no_device(void) { return 100; }
CUresult cuInit(unsigned int f) { (void)f; return 100; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuGetProcAddress_v2(const char *s, void **p, int v, unsigned long long f, int *st) {
  (void)s; (void)v; (void)f; *p = (void *)no_device; if (st) *st = 0; return 0; }
CUresult cuGetProcAddress(const char *s, void **p, int v, unsigned long long f) {
  return cuGetProcAddress_v2(s, p, v, f, 0); }
CUresult cuTensorMapEncodeTiled(void) { return 100; }
CUresult cuGetExportTable(const void **t, const void *id) { (void)id; *t = 0; return 100; }
C
gcc -shared -fPIC -O2 -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so.1" "$STUB/stub.c"
fail=0
check() { # name, expected text, env...
  local name="$1" want="$2"; shift 2
  local bin start out
  for bin in "${BINS[@]}"; do
    start=$EPOCHREALTIME
    # shellcheck disable=SC2086 # the command and its arguments
    out="$(env "$@" timeout 60 $bin --device cuda:0 2>&1 | grep '^error' || true)"
    printf '%s, %s (%s s): %s\n' "$(basename "${bin%% *}")" "$name" \
      "$(python3 -c "print(round($EPOCHREALTIME - $start, 2))")" "$out"
    if [[ "$out" != *"$want"* ]]; then echo "  FAIL: expected \"$want\"" >&2; fail=1; fi
  done
}
if ldconfig -p | grep -q 'libcuda.so.1 '; then
  echo "this machine has an NVIDIA driver: run scripts/repro/gpu-check.sh instead" >&2
  exit 2
fi
check "no driver" "no NVIDIA driver on this machine"
check "stand-in driver" "CUDA failure" LD_LIBRARY_PATH="$STUB"
exit "$fail"
