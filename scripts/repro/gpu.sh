#!/usr/bin/env bash
# Runs the reproduction experiments (scripts/repro/experiments.py) and the CUDA training benchmark
# on a lent GPU machine (H100, CUDA 13, PyTorch installed, no network) whose transfers are limited
# to 64 MiB per call, so the bundle travels in three stages that must run back to back on the
# same warm machine:
#   stage1: the CUDA execution provider (.gpu1/prov.zst: the onnxruntime-gpu 1.31.1 provider
#           with every GPU architecture but sm_90 blanked by scripts/repro/strip-fatbin.py)
#   stage2: ONNX Runtime core, the release binaries, CIFAR-10 (.gpu2/); `check-step` on cuda:0
#           (the CUDA step against the CPU graph as written), CUDA benchmark against
#           PyTorch (each with and without CUDA graphs), a profile of the ResNet-20 step, a check
#           that --cuda-graph trains ResNet-20 like the ordinary step (then the CIFAR runs use it);
#           starts the GPU queue CIFAR_RUNS (epochs sized to CIFAR_S s)
#   stage3: Fashion-MNIST, MNIST, PneumoniaMNIST (.gpu3/); starts GPU_RUNS on the training device
#           and STAGE3_RUNS (if any) on the CPU; waits until DEADLINE_S, packs results to $OUT
#           (results every minute, so a call cut short still returns them)
#   verify: (after stage1, instead of stage2) check-step, benchmark (against the previous build
#           in .gpu2/bins-prev.tar.zst, when there) and --cuda-graph check; results in $OUT
#   ship:   (after stage1, instead of stage2) trains the shipped models/cifar10 alone (.gpu2/)
# The device starts with an empty results folder: name seeds in the --only prefixes (e.g.
# e1-fashion-mnist-ce-s4) or finished runs are trained again.
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

# ONNX Runtime core, the binaries and CIFAR-10 from .gpu2/.
unpack2() {
  zstd -q -d -f .gpu2/core.zst -o $W/ort/libonnxruntime.so.1.31.1
  cp .gpu2/libonnxruntime_providers_shared.so $W/ort/
  zstd -q -d -c .gpu2/bins.tar.zst | tar x -C $W/repro/bin
  tar xzf .gpu2/cifar10-jpg.tar.gz -C $W/data
  ls $W/data $W/repro/bin
}
B=$W/repro/bin/caliper-train
# caliper-train BIN (labelled LABEL) launching one kernel per node, the same replayed as CUDA
# graphs (--cuda-graph), PyTorch eager and PyTorch replaying its whole step as a CUDA graph, side
# by side, for each "arch C,H,W" given; NO_TORCH=1 leaves PyTorch out.
bench_cuda() {
  local bin=$1 label=$2; shift 2
  for spec in "$@"; do
    set -- $spec
    for loss in ce gce; do
      for g in "" --cuda-graph; do
        timeout 120 $bin bench --arch $1 --input-shape $2 --loss $loss --device cuda:0 --steps 50 --threads 2 \
          $g | sed "s/^{/{\"framework\":\"$label cuda:0${g:+ cuda-graph}\",/"
      done
      [[ ${NO_TORCH:-0} == 1 ]] && continue
      for g in "" --cuda-graph; do
        timeout 120 python3 scripts/bench_train_torch.py --arch $1 --input-shape $2 --loss $loss \
          --device cuda --steps 50 --threads 2 $g
      done
    done
  done
}
# The CUDA step computes what the CPU computes (the graph as written, every output, TF32 off).
check_steps() {
  for spec in "resnet20 3,32,32" "lenet 1,28,28"; do
    set -- $spec
    timeout 120 $B check-step --arch $1 --input-shape $2 --loss gce --device cuda:0 2>&1 | cut -c1-400
  done
}
# The replayed step must train like the ordinary one: the same short CIFAR-10 run (same seed)
# with and without --cuda-graph, epoch logs compared; ResNet-20 decides whether the CIFAR runs
# use it.
graph_check() {
  mkdir -p $W/chk
  for g in plain graph; do
    timeout 150 $B train --out chk-$1-$g --dataset cifar10 --arch $1 --train-fraction 0.1 --epochs 2 --seed 0 \
      --device cuda:0 --threads 1 --no-progress --data-dir $W/data --models-dir $W/chk/models \
      --calib-dir $W/chk/calib --run-dir $W/chk/runs/$1-$g $([[ $g == graph ]] && echo --cuda-graph) \
      > $W/chk/$1-$g.log 2>&1 || { tail -5 $W/chk/$1-$g.log; return 1; }
  done
  python3 scripts/repro/compare-logs.py $W/chk/runs/$1-plain/log.jsonl $W/chk/runs/$1-graph/log.jsonl
}

case "$1" in
ship)
  # The shipped models/cifar10: experiment 3's recipe (GCE, seed 0) for SHIP_EPOCHS epochs, alone
  # on the GPU with --cuda-graph (carry .gpu0 and .gpu2 after stage1); the export, its
  # calibration file and the epoch log come back in $OUT/ship.tar.zst.
  unpack2
  mkdir -p $W/ship
  timeout ${SHIP_TIMEOUT:-330} $B train --out cifar10 --dataset cifar10 --arch resnet20 --batch-size 128 \
    --lr 0.1 --schedule cosine --weight-decay 5e-4 --val-fraction 0.1 --epochs ${SHIP_EPOCHS:-40} \
    --loss gce --seed 0 --device cuda:0 --cuda-graph --threads 4 --no-progress --data-dir $W/data \
    --models-dir $W/ship/models --calib-dir $W/ship/calib --run-dir $W/ship/runs/cifar10 2>&1 | tail -20
  tar c -C $W/ship models calib runs/cifar10/log.jsonl | zstd -q -19 -T0 > $OUT/ship.tar.zst
  cut -c1-160 $W/ship/runs/cifar10/log.jsonl | tail -3
  ;;
verify)
  # After stage1, instead of stage2 (carry .gpu0 and .gpu2): the current binaries on CUDA against
  # the CPU graph (check-step), against the previous build (.gpu2/bins-prev.tar.zst, when there)
  # and PyTorch side by side, and --cuda-graph against the ordinary step; results in $OUT.
  unpack2
  mkdir -p $W/prev
  {
    bench_cuda $B caliper-train "resnet20 3,32,32" "lenet 1,28,28"
    if [[ -f .gpu2/bins-prev.tar.zst ]]; then
      zstd -q -d -c .gpu2/bins-prev.tar.zst | tar x -C $W/prev
      NO_TORCH=1 bench_cuda $W/prev/caliper-train caliper-train-prev "resnet20 3,32,32" "lenet 1,28,28"
    fi
  } 2>&1 | tee $OUT/bench-cuda.jsonl
  check_steps 2>&1 | tee $OUT/check-step.txt
  graph_check resnet20 2>&1 | tee $OUT/graph-check.txt
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/device.txt
  ;;
stage1)
  zstd -q -d -f .gpu1/prov.zst -o $W/ort/libonnxruntime_providers_cuda.so && ls -la $W/ort
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  ;;
stage2)
  unpack2
  bench_cuda $B caliper-train "lenet 1,28,28" "resnet20 3,32,32" 2>&1 | tee $W/repro/bench-cuda.jsonl
  check_steps 2>&1 | tee -a $W/repro/check-step.txt
  # Where the per-node step goes: ONNX Runtime's profile of ten ResNet-20 CE steps.
  mkdir -p $W/prof $W/chk
  CALIPER_ORT_PROFILE=$W/prof/r20 timeout 120 $B bench --arch resnet20 --input-shape 3,32,32 --loss ce \
    --device cuda:0 --steps 10 --warmup 2 >/dev/null 2>&1
  python3 scripts/ort_profile_summary.py $W/prof/r20*.json 2>&1 | head -45 | tee $W/repro/profile-r20.txt
  echo "== cuda-graph check resnet20" | tee -a $W/repro/graph-check.txt
  graph_check resnet20 2>&1 | tee -a $W/repro/graph-check.txt
  GRAPH=false
  grep -q '^MATCH' $W/repro/graph-check.txt && GRAPH=true
  # LeNet (on CIFAR-10's 3x32x32 images) for the record only: the LeNet queue does not use it.
  echo "== cuda-graph check lenet (record only)" | tee -a $W/repro/graph-check.txt
  graph_check lenet 2>&1 | tee -a $W/repro/graph-check.txt
  echo "train with --cuda-graph: $GRAPH" | tee -a $W/repro/plan.txt
  echo $GRAPH > $W/repro/cuda-graph
  mode=$([[ $GRAPH == true ]] && echo " cuda-graph")
  pat="\"framework\":\"caliper-train cuda:0$mode\",\"arch\":\"resnet20\",\"loss\":\"gce\""
  if grep -q "$pat" $W/repro/bench-cuda.jsonl; then
    ms=$(grep "$pat" $W/repro/bench-cuda.jsonl | head -1 | sed 's/.*"median_ms":\([0-9.]*\).*/\1/')
    # CIFAR budget: ~${CIFAR_S:-480} s of GPU for CIFAR_RUNS, sized as CIFAR_EQ (default 9: experiment 3)
    # full runs of 351 steps per epoch, at twice the benchmark's step time (the runs share the GPU
    # and the CPUs, and each epoch ends with a validation pass).
    E=$(python3 -c "print(max(4, min(60, int(${CIFAR_S:-480} / ($ms / 1000 * 351 * ${CIFAR_EQ:-9} * 2)))))")
    echo "cuda resnet20 step $ms ms -> CIFAR epochs $E" | tee -a $W/repro/plan.txt
    setsid nohup $REPRO run --device cuda:0 --threads 1 --jobs 9 --cifar-epochs $E ${mode:+--cuda-graph} \
      --only ${CIFAR_RUNS:-e3-cifar10} > $W/repro/queue-cifar.log 2>&1 < /dev/null &
    DEV=cuda:0
  else
    echo "CUDA training failed: CPU fallback without ResNet runs" | tee -a $W/repro/plan.txt
    DEV=cpu
  fi
  echo $DEV > $W/repro/device
  sleep 5; cat $W/repro/queue-*.log
  ;;
stage3)
  zstd -q -d -c .gpu3/mnist.tar.zst | tar x -C $W/data
  cp .gpu3/pneumoniamnist.npz $W/data/
  cp -r .gpu3/fashion-mnist $W/data/
  # No --cuda-graph: stage2 checks it on ResNet-20 only, and these are the LeNet runs.
  setsid nohup $REPRO run --device "$(cat $W/repro/device)" --threads 1 --jobs ${JOBS:-8} \
    --only ${GPU_RUNS:-e1-fashion-mnist,e2-fashion-mnist} > $W/repro/queue-fashion.log 2>&1 < /dev/null &
  if [[ -n ${STAGE3_RUNS:-} ]]; then
    setsid nohup $REPRO run --device cpu --threads 1 --jobs 4 --only $STAGE3_RUNS \
      > $W/repro/queue-stage3.log 2>&1 < /dev/null &
  fi
  # Results are small: packed into $OUT every minute, so a call cut off by the device budget
  # still brings back everything finished by then.
  pack() { (cd $W/repro && tar c results logs diagrams bench-cuda.jsonl plan.txt graph-check.txt check-step.txt profile-r20.txt queue-*.log 2>/dev/null \
    | zstd -q -19 -T0 > $OUT/results.tar.zst.tmp && mv $OUT/results.tar.zst.tmp $OUT/results.tar.zst); }
  end=$((SECONDS + ${DEADLINE_S:-420}))
  while (( SECONDS < end )) && pgrep -f experiments.py >/dev/null; do
    sleep 10
    echo "$(date +%T) results: $(ls $W/repro/results 2>/dev/null | wc -l), running: $(pgrep -c -f 'caliper-train train')"
    (( SECONDS % 60 < 10 )) && pack
  done
  pkill -f experiments.py; pkill -f 'caliper-train train'; sleep 1
  cat $W/repro/plan.txt $W/repro/queue-*.log | grep -v ': done in' | tail -40
  pack
  cd $W/repro
  # Models and logits by priority, within the 8 files x 16 MiB the tool returns.
  ls models > /tmp/models.txt 2>/dev/null
  grep -E '^(e3-cifar10-gce-s0|e4-pneumonia-gce-s0|e1-fashion-mnist-gce-s3)$' /tmp/models.txt \
    | sed 's|^|models/|' > /tmp/pick.txt
  sed 's|models/\(.*\)|calib/\1.json|' /tmp/pick.txt >> /tmp/pick.txt
  tar c -T /tmp/pick.txt 2>/dev/null | zstd -q -19 -T0 | split -b 15M - $OUT/models.tar.zst.
  find runs -name '*_l*.npy' | grep -E -- '-s[0-2]/' | sort > /tmp/npy.txt
  tar c -T /tmp/npy.txt 2>/dev/null | zstd -q -19 -T0 | head -c 45M | split -b 15M - $OUT/logits.tar.zst.
  ls -la $OUT
  ;;
esac
