#!/usr/bin/env bash
# Runs the reproduction experiments (scripts/repro/experiments.py) and the CUDA training benchmark
# on a lent GPU machine (H100, CUDA 13, PyTorch installed, no network) whose transfers are limited
# to 64 MiB per call, so the bundle travels in three stages that must run back to back on the
# same warm machine:
#   stage1: the CUDA execution provider (.gpu1/prov.zst: the onnxruntime-gpu 1.31.1 provider
#           with every GPU architecture but sm_90 blanked by scripts/repro/strip-fatbin.py)
#   stage2: ONNX Runtime core, the release binaries, MNIST, PneumoniaMNIST, CIFAR-10 (.gpu2/);
#           CUDA smoke test and benchmark against PyTorch; starts the GPU experiment queue
#   stage3: Fashion-MNIST (.gpu3/); starts its runs, waits until DEADLINE_S, packs results to $OUT
# Everything lives under /tmp/cal on the machine. Made by scripts/repro/gpu-bundle.sh here.
# Every call must carry .gpu0 (zstd) and its own stage folder: on the device, an ignored path
# that a call does not name in `carry` is deleted, so stages cannot leave bundles for each other
# (only what they unpacked under /tmp/cal survives, while the machine stays warm: 30 s).
set -uo pipefail
export PATH="$PWD/.gpu0:$PATH"
W=/tmp/cal
mkdir -p $W/ort $W/data $W/repro/bin
export ORT_DYLIB_PATH=$W/ort/libonnxruntime.so.1.31.1
# CUDA 13 / cuDNN 9 from PyTorch's nvidia-* wheels.
LD_LIBRARY_PATH=$(find / -xdev \( -name 'libcudart.so.13*' -o -name 'libcudnn.so.9*' -o -name 'libcublas.so.13*' \
  -o -name 'libcurand.so.10*' -o -name 'libcufft.so.12*' -o -name 'libnvrtc.so.13*' \) \
  -path '*nvidia*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
REPRO="python3 scripts/repro/experiments.py --root $W/repro --data-dir $W/data"

case "$1" in
stage1)
  zstd -q -d -f .gpu1/prov.zst -o $W/ort/libonnxruntime_providers_cuda.so && ls -la $W/ort
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  ;;
stage2)
  zstd -q -d -f .gpu2/core.zst -o $W/ort/libonnxruntime.so.1.31.1
  cp .gpu2/libonnxruntime_providers_shared.so $W/ort/
  zstd -q -d -c .gpu2/bins.tar.zst | tar x -C $W/repro/bin
  zstd -q -d -c .gpu2/mnist.tar.zst | tar x -C $W/data
  cp .gpu2/pneumoniamnist.npz $W/data/
  tar xzf .gpu2/cifar10-jpg.tar.gz -C $W/data
  ls $W/data $W/repro/bin
  B=$W/repro/bin/caliper-train
  {
    for spec in "lenet 1,28,28" "resnet20 3,32,32"; do
      set -- $spec
      for loss in ce gce; do
        timeout 120 $B bench --arch $1 --input-shape $2 --loss $loss --device cuda:0 --steps 50 --threads 2 \
          | sed 's/^{/{"framework":"caliper-train cuda:0",/'
        timeout 120 python3 scripts/bench_train_torch.py --arch $1 --input-shape $2 --loss $loss \
          --device cuda --steps 50 --threads 2
      done
    done
  } 2>&1 | tee $W/repro/bench-cuda.jsonl
  # GPU queue if CUDA trains, else the CPU (16 cores) without the ResNet runs.
  if grep -q '"framework":"caliper-train cuda:0".*"arch":"resnet20"' $W/repro/bench-cuda.jsonl; then
    ms=$(grep '"framework":"caliper-train cuda:0".*"arch":"resnet20","loss":"ce"' $W/repro/bench-cuda.jsonl \
      | sed 's/.*"median_ms":\([0-9.]*\).*/\1/')
    E=$(python3 -c "print(max(3, min(60, int(420 / (7.7 * 351 * $ms / 1000 * 1.5)))))")
    echo "cuda resnet20 step $ms ms -> CIFAR epochs $E" | tee $W/repro/plan.txt
    setsid nohup $REPRO run --device cuda:0 --threads 1 --jobs 7 --cifar-epochs $E \
      --only e3-cifar10-ce-s0,e3-cifar10-gce-s0,e3-cifar10-focal-s0,e3-cifar10-ce-s1,e3-cifar10-gce-s1,e3-cifar10-focal-s1,e2-cifar10-lt100-ce-s0,e2-cifar10-lt100-gce-s0,e2-cifar10-lt100-focal-s0,e2-cifar10-lt100-ce-s1,e2-cifar10-lt100-gce-s1,e2-cifar10-lt100-focal-s1 \
      > $W/repro/queue-cifar.log 2>&1 < /dev/null &
    DEV=cuda:0
  else
    echo "CUDA training failed: CPU fallback without ResNet runs" | tee $W/repro/plan.txt
    DEV=cpu
  fi
  echo $DEV > $W/repro/device
  setsid nohup $REPRO run --device $DEV --threads 1 --jobs 8 --only e1-mnist,e4,e5 \
    > $W/repro/queue-lenet.log 2>&1 < /dev/null &
  sleep 5; cat $W/repro/queue-*.log
  ;;
stage3)
  mkdir -p $W/data/fashion-mnist && cp .gpu3/*.gz $W/data/fashion-mnist/
  DEV=$(cat $W/repro/device)
  setsid nohup $REPRO run --device $DEV --threads 1 --jobs 6 --only e1-fashion-mnist,e2-fashion-mnist \
    > $W/repro/queue-fashion.log 2>&1 < /dev/null &
  end=$((SECONDS + ${DEADLINE_S:-420}))
  while (( SECONDS < end )) && pgrep -f experiments.py >/dev/null; do
    sleep 10
    echo "$(date +%T) results: $(ls $W/repro/results 2>/dev/null | wc -l), running: $(pgrep -c -f 'caliper-train train')"
  done
  pkill -f experiments.py; pkill -f 'caliper-train train'; sleep 1
  cat $W/repro/plan.txt $W/repro/queue-*.log | grep -v ': done in' | tail -40
  cd $W/repro
  # Results, logs, benchmark and diagrams first; then models and logits by priority, within the
  # 8 files x 16 MiB the tool returns.
  tar c results logs diagrams bench-cuda.jsonl plan.txt queue-*.log 2>/dev/null | zstd -q -19 -T0 > $OUT/results.tar.zst
  ls models > /tmp/models.txt 2>/dev/null
  grep -E '^(e1-mnist-(ce|gce)-s[0-4]|e1-fashion-mnist-gce-s0|e4-pneumonia-gce-s0|e3-cifar10-gce-s0)$' /tmp/models.txt \
    | sed 's|^|models/|' > /tmp/pick.txt
  sed 's|models/\(.*\)|calib/\1.json|' /tmp/pick.txt >> /tmp/pick.txt
  tar c -T /tmp/pick.txt 2>/dev/null | zstd -q -19 -T0 | split -b 15M - $OUT/models.tar.zst.
  find runs -name '*_l*.npy' | sort -t- -k1,1 | grep -E -- '-s[01]/' > /tmp/npy.txt
  tar c -T /tmp/npy.txt 2>/dev/null | zstd -q -19 -T0 | head -c 30M | split -b 15M - $OUT/logits.tar.zst.
  ls -la $OUT
  ;;
esac
