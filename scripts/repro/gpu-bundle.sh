#!/usr/bin/env bash
# Prepares the three transfer bundles of scripts/repro/gpu.sh in .gpu1/ .gpu2/ .gpu3/ (ignored by
# git through .git/info/exclude): the CUDA provider of onnxruntime-gpu 1.31.1 stripped to sm_90,
# the ONNX Runtime core, release binaries and the datasets. Needs pip (PyPI), zstd, data/ fetched.
#   scripts/repro/gpu-bundle.sh
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
B=$(mktemp -d)
cp target/release/caliper target/release/caliper-train "$B"/
tar c -C "$B" . | zstd -q -19 -T0 > .gpu2/bins.tar.zst
rm -rf "$B"
# A call carries the working tree (~11 MB) plus its stage folders, at most 64 MiB in all: .gpu2
# holds CIFAR-10 (with the libraries and binaries, ~33 MB), .gpu3 Fashion-MNIST, MNIST and
# PneumoniaMNIST (~46 MB).
rm -rf .gpu2/mnist.tar.zst .gpu2/pneumoniamnist.npz .gpu2/fashion-mnist .gpu3/*.gz
cp "${CALIPER_DATA_MIRROR:-../shared/data}/cifar10-jpg.tar.gz" .gpu2/
mkdir -p .gpu3/fashion-mnist && cp data/fashion-mnist/*.gz .gpu3/fashion-mnist/
tar c -C data mnist | zstd -q -19 -T0 > .gpu3/mnist.tar.zst
cp data/pneumoniamnist.npz .gpu3/
rm -rf "$T"
du -sh .gpu0 .gpu1 .gpu2 .gpu3
for a in "0 1" "0 2" "0 3"; do set -- $a; echo "stage carry .gpu$1 + .gpu$2: $(du -cb .gpu$1 .gpu$2 | tail -1 | cut -f1) bytes (plus the working tree; limit $((64 << 20)) in all)"; done
