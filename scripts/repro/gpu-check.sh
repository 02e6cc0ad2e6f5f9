#!/usr/bin/env bash
# The GPU checks of issue 20 in one go, for a session that is lent a GPU machine (H100/H200, CUDA
# 13 driver, PyTorch cu130 with its nvidia-* wheels, Python 3.12, no network, no Rust, 64 MiB per
# transfer, the working tree included). Here, then two device stages back to back on the same warm
# machine (it is given back 30 s after a call):
#
#   here:    scripts/repro/gpu-check.sh bundle
#            fetches the GPU runtime (`scripts/fetch-onnxruntime.sh --cuda`, cached), builds the
#            release binaries with CALIPER_CUDA=1, the benchmark examples and the serving test
#            binary, and packs .gpuc1/ (the CUDA provider stripped to sm_90, ~50 MiB, and the
#            Python onnxruntime-gpu package for the baseline) and .gpuc2/ (ONNX Runtime, binaries,
#            EfficientNet-Lite0 when fetched). Both are git-ignored through .git/info/exclude.
#   here:    scripts/repro/gpu-check.sh park1      (commit first: see "park" below)
#   device:  run(command="scripts/repro/gpu-check.sh stage1", carry=[".gpuc1"], timeout_s=120)
#   here:    scripts/repro/gpu-check.sh park2      (at once: the machine waits 30 s)
#   device:  run(command="scripts/repro/gpu-check.sh stage2", carry=[".gpuc2"], timeout_s=540)
#            (or `diag` instead of `stage2`: see diag() below)
#   here:    scripts/repro/gpu-check.sh unpark
#
# park: the tracked tree travels with every call and is itself ~58 MB (docs/ ~38, calib/ ~11), so
# each stage first moves the top-level folders it does not read out of the checkout, to
# ../<checkout>.parked/, and out of git's index (git rm --cached; their files stay untouched);
# stage1 keeps scripts/ alone, stage2 scripts/, models/, calib/ and tests/. `unpark` moves them
# back and restores the index from HEAD: commit before parking, so nothing staged is lost.
#
# stage2, with no ORT_DYLIB_PATH and no LD_LIBRARY_PATH set: libonnxruntime.so sits beside the
# binaries (their second lookup) with a preload.txt naming the machine's own CUDA 13 / cuDNN 9
# libraries (PyTorch's nvidia-* wheels; what `make build CUDA=1` would have unpacked from PyPI).
# Then: the GPU serving tests (CALIPER_TEST_CUDA=1 `device::`: every shipped model's answers on
# cuda:0 equal the CPU's to 1e-4, a real `caliper serve --device cuda:0`), `caliper-train
# check-step` and `bench` on cuda:0, and the serving benchmark of issue 20 (BENCH=0 skips it):
# raw ONNX Runtime CUDA in process (examples/bench_raw.rs, DEVICE=cuda:0) against
# `caliper serve --device cuda:0` under 1, 64 and 256 closed-loop clients
# (examples/bench_load.rs), and against the plain Python server a user would otherwise write
# (scripts/bench_python_server.py on onnxruntime-gpu's CUDA provider, BENCH_DEVICE=cuda:0) under
# 1 and 64, for ResNet-20 (models/cifar10) and EfficientNet-Lite0 (224x224).
# Everything is written to $OUT (summary.txt, tests.log, bench.jsonl) and the log.
# Device time: about 1-2 minutes for stage1 with the start, 4-6 for stage2.
set -uo pipefail
cd "$(dirname "$0")/../.."
MODE="${1:-}"
W=/tmp/calgc
B=$W/bin

bundle() {
  set -e
  for d in .gpuc1 .gpuc2; do
    grep -qx "/$d/" .git/info/exclude || echo "/$d/" >>.git/info/exclude
    rm -rf "$d" && mkdir -p "$d"
  done
  scripts/fetch-onnxruntime.sh --cuda
  local L=third_party/onnxruntime-cuda/lib T
  T=$(mktemp -d)
  python3 scripts/repro/strip-fatbin.py "$L/libonnxruntime_providers_cuda.so" "$T/prov.so" 90
  zstd -q -19 --long=27 -T0 -f "$T/prov.so" -o .gpuc1/prov.zst
  # The Python baseline's onnxruntime-gpu for the device's Python 3.12 (the machine has only the
  # CPU wheel): its package without the libraries stage1 already brings (~9 MB packed).
  local wheels=${CALIPER_WHEEL_CACHE:-third_party/.cache/wheels}
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 3.12 --implementation cp -d "$wheels" "onnxruntime-gpu==1.31.1"
  mkdir -p "$T/py"
  unzip -q "$wheels"/onnxruntime_gpu-1.31.1-cp312-*.whl 'onnxruntime/*' -d "$T/py" \
    -x 'onnxruntime/capi/libonnxruntime.so*' 'onnxruntime/capi/libonnxruntime_providers_cuda.so' \
    'onnxruntime/capi/libonnxruntime_providers_tensorrt.so' 'onnxruntime/transformers/*' \
    'onnxruntime/quantization/*' 'onnxruntime/tools/*'
  tar c -C "$T/py" onnxruntime | zstd -q -19 --long=27 -T0 >.gpuc1/ortpy.tar.zst
  # The device has no zstd: Debian's travels with each stage.
  cp "$(command -v zstd)" .gpuc1/ && cp "$(command -v zstd)" .gpuc2/
  zstd -q -19 -T0 -f "$L/libonnxruntime.so.1.31.1" -o .gpuc2/core.zst
  cp "$L/libonnxruntime_providers_shared.so" .gpuc2/
  CALIPER_CUDA=1 cargo build --release --locked --bins --example bench_raw --example bench_load
  local test_bin
  test_bin=$(CALIPER_CUDA=1 cargo test --locked --test serve --no-run --message-format=json \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "serve":
        print(m["executable"])')
  mkdir -p "$T/bin"
  cp target/release/caliper target/release/caliper-train target/release/examples/bench_raw \
    target/release/examples/bench_load "$T/bin/"
  cp "$test_bin" "$T/bin/serve-test"
  strip "$T/bin/"*
  tar c -C "$T/bin" . | zstd -q -19 -T0 >.gpuc2/bins.tar.zst
  # The test binary looks for the repository (tests/data, models/) and for target/debug/caliper
  # under the folder it was built in; stage2 links that path to the device's copy.
  pwd >.gpuc2/manifest_dir
  if [[ -f data/third_party_models/efficientnet-lite0.onnx ]]; then
    mkdir -p .gpuc2/effnet
    cp data/third_party_models/efficientnet-lite0.onnx data/third_party_models/imagenet1k-labels.json \
      data/third_party_models/photos/chelsea.png .gpuc2/effnet/
  fi
  rm -rf "$T"
  du -sh .gpuc1 .gpuc2
  echo "stage1 carries $(du -cb .gpuc1 | tail -1 | cut -f1) bytes, stage2 $(du -cb .gpuc2 | tail -1 | cut -f1) (plus the working tree; limit $((64 << 20)))"
}

stage1() {
  mkdir -p $B $W/site
  .gpuc1/zstd -q -d -f .gpuc1/prov.zst -o $B/libonnxruntime_providers_cuda.so && ls -la $B
  .gpuc1/zstd -q -d -c --long=27 .gpuc1/ortpy.tar.zst | tar x -C $W/site &&
    ln -sf $B/libonnxruntime_providers_cuda.so $W/site/onnxruntime/capi/ && ls $W/site/onnxruntime/capi
}

# Moves the tracked top-level folders not named out of the checkout and out of git's index.
park() {
  local p="../$(basename "$PWD").parked" d
  mkdir -p "$p"
  for d in $(git ls-files | grep / | cut -d/ -f1 | sort -u); do
    [[ " $* " == *" $d "* || ! -d "$d" ]] && continue
    mv "$d" "$p/" && git rm -r -q --cached "$d"
  done
  echo "travels: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes tracked; parked: $(ls "$p" | tr '\n' ' ')"
}

unpark() {
  local p="../$(basename "$PWD").parked" d
  shopt -s dotglob # .ci/ too
  for d in "$p"/*; do
    [[ -e "$d" ]] || continue
    mv "$d" . && git reset -q -- "$(basename "$d")"
  done
  rmdir "$p" 2>/dev/null
  git status --short
}

# The machine's CUDA 13 / cuDNN 9 libraries, by file name, in the order the fetch script writes.
write_preload() {
  : >$B/preload.txt
  local l p
  for l in libcudart.so.13 libcublasLt.so.13 libcublas.so.13 libcurand.so.10 libcufft.so.12 \
    libnvJitLink.so.13 libnvrtc.so.13 libcudnn.so.9; do
    p=$(find / -xdev -name "$l" -path '*nvidia*' 2>/dev/null | head -1)
    if [[ -n "$p" ]]; then echo "$p" >>$B/preload.txt; else echo "missing on this machine: $l"; fi
  done
  cat $B/preload.txt
}

# Waits (up to 2 minutes) until the server on port 18080 is ready or its process $1 has ended.
wait_ready() {
  for _ in $(seq 1 480); do
    curl -fsS http://127.0.0.1:18080/v2/health/ready >/dev/null 2>&1 && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.25
  done
}

bench() {
  local name=$1 dir=$2 image=$3 models=$4 calib=$5
  echo "== bench $name: raw ONNX Runtime CUDA in process (batch 128 and 1, 2 sessions)"
  DEVICE=cuda:0 timeout 120 $B/bench_raw "$dir" "$image" 128 2 1 8 |
    sed "s/^{/{\"bench\":\"raw\",\"model\":\"$name\",/" | tee -a "$OUT/bench.jsonl"
  echo "== bench $name: caliper serve --device cuda:0"
  local log=$W/serve-$name.log
  $B/caliper serve --device cuda:0 --addr 127.0.0.1:18080 --models "$models" --calib "$calib" \
    --state-dir $W/state-$name >"$log" 2>&1 &
  local pid=$!
  wait_ready $pid
  grep -E "warmed up|CUDA device ready|error|no session of its own" "$log" | cut -c1-300
  # The sessions per padded size hold their own weights and arenas: the device memory in use.
  echo "GPU memory in use with the server ready: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"
  for c in 1 64 256; do
    timeout 60 $B/bench_load "http://127.0.0.1:18080/v1/models/$name/predict" "$image" $c 8 |
      sed "s/^{/{\"bench\":\"server\",\"model\":\"$name\",/" | tee -a "$OUT/bench.jsonl"
  done
  echo "GPU memory in use after the loads: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"
  kill $pid; wait $pid 2>/dev/null
  echo "== bench $name: plain Python server on onnxruntime-gpu (BENCH_DEVICE=cuda:0)"
  local calib_file=$calib/$name.json
  [[ -f $calib_file ]] || calib_file=-
  # Only the Python server sees the NVIDIA library folders; caliper finds them through preload.txt.
  PYTHONPATH=$W/site BENCH_DEVICE=cuda:0 LD_LIBRARY_PATH=$(xargs -n1 dirname <$B/preload.txt | sort -u | paste -sd:) \
    python3 scripts/bench_python_server.py "$dir" "$calib_file" 18081 >$W/python-$name.log 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    grep -qs listening $W/python-$name.log && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  cut -c1-300 $W/python-$name.log
  for c in 1 64; do
    timeout 60 $B/bench_load "http://127.0.0.1:18081/v1/models/$name/predict" "$image" $c 8 |
      sed "s/^{/{\"bench\":\"python\",\"model\":\"$name\",/" | tee -a "$OUT/bench.jsonl"
  done
  kill $pid; wait $pid 2>/dev/null
}

# Unpacks stage2's ONNX Runtime and binaries beside stage1's provider; output to $OUT/summary.txt.
unpack() {
  [[ -f $B/libonnxruntime_providers_cuda.so ]] || { echo "run stage1 first (same warm machine)"; exit 1; }
  : "${OUT:=$W/out}"
  mkdir -p "$OUT"
  exec > >(tee "$OUT/summary.txt") 2>&1
  date -u; nvidia-smi -L
  .gpuc2/zstd -q -d -f .gpuc2/core.zst -o $B/libonnxruntime.so.1.31.1
  ln -sf libonnxruntime.so.1.31.1 $B/libonnxruntime.so
  cp .gpuc2/libonnxruntime_providers_shared.so $B/
  .gpuc2/zstd -q -d -c .gpuc2/bins.tar.zst | tar x -C $B
  write_preload
  unset ORT_DYLIB_PATH LD_LIBRARY_PATH
}

# The counters of one model's runs since `$2` (a /metrics scrape), as one line.
run_counters() {
  local before=$1 model=$2 after
  after=$(curl -fsS http://127.0.0.1:18080/metrics)
  python3 - "$model" "$before" "$after" <<'PY'
import re, sys
model, before, after = sys.argv[1:4]
def read(text):
    out = {}
    for name in ("caliper_batch_size", "caliper_queue_duration_seconds", "caliper_inference_duration_seconds"):
        for part in ("sum", "count"):
            m = re.search(rf'^{name}_{part}{{[^}}]*model="{model}"[^}}]*}} (\S+)', text, re.M)
            out[f"{name}_{part}"] = float(m.group(1)) if m else 0.0
    return out
b, a = read(before), read(after)
d = {k: a[k] - b[k] for k in a}
runs = max(d["caliper_batch_size_count"], 1)
print(f"runs {runs:.0f}, images per run {d['caliper_batch_size_sum'] / runs:.1f}, "
      f"run {1e3 * d['caliper_inference_duration_seconds_sum'] / max(d['caliper_inference_duration_seconds_count'], 1):.3f} ms, "
      f"queue wait {1e3 * d['caliper_queue_duration_seconds_sum'] / max(d['caliper_queue_duration_seconds_count'], 1):.3f} ms per image")
PY
}

# The serving paths on the GPU side by side (`diag`, after stage1 like stage2, ~2 minutes): the
# device tests, then each batching variant under 1, 64 and 256 clients with its run counters
# (images per run, run time, queue wait), and the machine's timed waits. Session 25 found with it
# why 64 clients were answered 200 times slower than one (docs/BENCHMARKS.md, CUDA section).
diag() {
  unpack
  python3 - <<'PY'
import threading, time
def lat(f, n=2000):
    xs = []
    for _ in range(n):
        t = time.perf_counter(); f(); xs.append(time.perf_counter() - t)
    xs.sort()
    return f"p50 {xs[n // 2] * 1e6:.0f} us, p99 {xs[n * 99 // 100] * 1e6:.0f} us"
e = threading.Event()
print("timed wait of 100 us (Event.wait):", lat(lambda: e.wait(100e-6)))
print("sleep of 100 us:", lat(lambda: time.sleep(100e-6)))
print("sleep of 1 ms:", lat(lambda: time.sleep(1e-3), 500))
PY
  echo "cores: $(nproc)"
  local built
  built=$(cat .gpuc2/manifest_dir)
  if [[ "$built" != "$PWD" && ! -e "$built" ]]; then mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"; fi
  mkdir -p target && rm -rf target/debug && ln -s $B target/debug
  CALIPER_TEST_CUDA=1 timeout 120 $B/serve-test device:: --test-threads 1 --nocapture 2>&1 |
    tee "$OUT/tests.log" | grep -E "test result|within|ready on|panicked"
  local m=$W/diag/models c=$W/diag/calib e=$W/diag/effnet
  mkdir -p $m $c $e/models && cp -r models/cifar10 $m/ && cp calib/cifar10.json $c/
  [[ -d .gpuc2/effnet ]] && $B/caliper import .gpuc2/effnet/efficientnet-lite0.onnx --name effnet \
    --models-dir $e/models --labels .gpuc2/effnet/imagenet1k-labels.json --preset imagenet >/dev/null 2>&1
  # Each variant: "ENVIRONMENT|FLAGS|MODEL" (MODEL cifar10 unless named).
  # DIAG_VARIANTS adds more, e.g. "|--max-batch-size 16|effnet".
  local v
  for v in "|" "|--max-queue-delay-us 0" "|--sessions-per-model 1" "||effnet" ${DIAG_VARIANTS:-}; do
    local envs=${v%%|*} rest=${v#*|}
    local args=${rest%%|*} model=${rest#*|}
    local models=$m image=tests/data/cifar10/ship.png
    if [[ $model == effnet ]]; then
      models=$e/models image=.gpuc2/effnet/chelsea.png
      [[ -d $models/effnet ]] || continue
    else
      model=cifar10
    fi
    echo "== $model on cuda:0: ${envs:-defaults} $args"
    local t0=$SECONDS
    env $envs $B/caliper serve --device cuda:0 --addr 127.0.0.1:18080 --models $models --calib $c \
      --state-dir $W/state-diag $args >$W/diag.log 2>&1 &
    local pid=$!
    wait_ready $pid
    echo "ready after $((SECONDS - t0)) s"
    local clients before
    for clients in 1 64 256; do
      before=$(curl -fsS http://127.0.0.1:18080/metrics)
      timeout 30 $B/bench_load "http://127.0.0.1:18080/v1/models/$model/predict" $image $clients 4 |
        sed "s/^{/{\"bench\":\"diag\",\"model\":\"$model\",\"variant\":\"$envs $args\",/" | tee -a "$OUT/bench.jsonl"
      run_counters "$before" $model
    done
    kill $pid; wait $pid 2>/dev/null
  done
  grep -iE "warn|error" $W/diag.log | cut -c1-300 | head -5
  date -u
}

stage2() {
  unpack
  echo "== the refusal path is not testable here; the GPU tests:"
  CALIPER_TEST_CUDA=1 timeout 300 $B/serve-test device:: --test-threads 1 --nocapture 2>&1 |
    tee "$OUT/tests.log" | grep -E "^test |test result|within|ready on|panicked|skipped"

  echo "== caliper-train on cuda:0 (no ORT_DYLIB_PATH)"
  timeout 120 $B/caliper-train check-step --arch resnet20 --input-shape 3,32,32 --loss gce --device cuda:0 2>&1 | cut -c1-400
  timeout 120 $B/caliper-train bench --arch resnet20 --input-shape 3,32,32 --loss gce --device cuda:0 \
    --steps 30 --threads 2 --cuda-graph 2>&1 | tail -2 | cut -c1-400

  if [[ "${BENCH:-1}" == 1 ]]; then
    bench cifar10 models/cifar10 tests/data/cifar10/ship.png models calib
    if [[ -d .gpuc2/effnet ]]; then
      local e=$W/effnet
      mkdir -p $e/models $e/calib
      $B/caliper import .gpuc2/effnet/efficientnet-lite0.onnx --name effnet --models-dir $e/models \
        --labels .gpuc2/effnet/imagenet1k-labels.json --preset imagenet 2>&1 | tail -2
      bench effnet $e/models/effnet .gpuc2/effnet/chelsea.png $e/models $e/calib
    fi
  fi
  date -u
}

case "$MODE" in
  bundle) bundle ;;
  stage1) stage1 ;;
  stage2) stage2 ;;
  diag) diag ;;
  park1) park scripts ;;
  park2) unpark >/dev/null; park scripts models calib tests ;;
  unpark) unpark ;;
  *) echo "usage: $0 bundle|park1|stage1|park2|stage2|unpark (see the header)" >&2; exit 2 ;;
esac
