#!/usr/bin/env bash
# Prepares the three transfer bundles of scripts/repro/gpu.sh in .gpu1/ .gpu2/ .gpu3/ (ignored by
# git through .git/info/exclude): the CUDA provider of onnxruntime-gpu 1.31.1 stripped to sm_90,
# the ONNX Runtime core, release binaries and the datasets. Needs pip (PyPI), zstd, data/ fetched.
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in .gpu0 .gpu1 .gpu2 .gpu3; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
T=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --python-version 3.11 --implementation cp -d "$T" onnxruntime-gpu==1.31.1
unzip -q -o "$T"/onnxruntime_gpu-*.whl 'onnxruntime/capi/libonnxruntime*' -d "$T"
L="$T/onnxruntime/capi"
mkdir -p .gpu0 .gpu1 .gpu2 .gpu3
# The GPU machine has no zstd: Debian's binary (libzstd linked in) travels in every call.
cp "$(command -v zstd)" .gpu0/
python3 scripts/repro/strip-fatbin.py "$L/libonnxruntime_providers_cuda.so" "$T/prov.so"
zstd -q -19 --long=27 -T0 -f "$T/prov.so" -o .gpu1/prov.zst
zstd -q -19 -T0 -f "$L/libonnxruntime.so.1.31.1" -o .gpu2/core.zst
cp "$L/libonnxruntime_providers_shared.so" .gpu2/
cargo build --release --bins
tar c -C target/release caliper caliper-train | zstd -q -19 -T0 > .gpu2/bins.tar.zst
tar c -C data mnist | zstd -q -19 -T0 > .gpu2/mnist.tar.zst
cp data/pneumoniamnist.npz ../shared/data/cifar10-jpg.tar.gz .gpu2/
cp data/fashion-mnist/*.gz .gpu3/
rm -rf "$T"
du -sh .gpu0 .gpu1 .gpu2 .gpu3
