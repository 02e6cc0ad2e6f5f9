#!/usr/bin/env bash
# Fetch the ONNX Runtime C library from the official PyPI wheel into third_party/onnxruntime/lib/.
# Idempotent: does nothing when the library is already there. Nothing is installed into Python;
# the wheel is only downloaded and two members are unzipped. Pinning platform and Python version
# makes the download independent of the host's Python.
set -euo pipefail
VERSION="${ORT_VERSION:-1.31.1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/third_party/onnxruntime/lib"
LIB="$DEST/libonnxruntime.so.$VERSION"

if [[ -f "$LIB" ]]; then
  exit 0
fi
mkdir -p "$DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "fetching onnxruntime==$VERSION from PyPI" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
  -d "$TMP" "onnxruntime==$VERSION"
WHEEL="$(ls "$TMP"/onnxruntime-"$VERSION"-*.whl)"
python3 - "$WHEEL" "$DEST" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime") and ".so" in name:
            (dest / pathlib.Path(name).name).write_bytes(z.read(name))
PY
# Check what we got: a real shared object exporting the C API entry point.
if ! [[ -f "$LIB" ]] || ! grep -q OrtGetApiBase "$LIB"; then
  echo "error: $LIB missing or not an ONNX Runtime library" >&2
  exit 1
fi
ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
echo "ONNX Runtime $VERSION in $DEST" >&2
