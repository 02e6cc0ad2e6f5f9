#!/usr/bin/env python3
"""The reproduction experiments of issue 6 (docs/REPRODUCTION.md): one definition of every run,
a runner that trains the pending ones in parallel with caliper-train and scores each finished run
with the caliper binary, and nothing else (no numpy: the standard library only).

    scripts/repro/experiments.py list [--only e1,e3]
    scripts/repro/experiments.py run --jobs 4 --device cpu [--only e1] [--cifar-epochs 30]
        [--cuda-graph]               # ResNet-20 runs on cuda:N replayed as CUDA graphs
        [--bin-dir target/debug]     # binaries (default target/release), linked into ROOT/bin
    scripts/repro/experiments.py score RUN_ID
    scripts/repro/experiments.py ood --only e1w-mnist --ood-data fashion-mnist:test   # experiment 6

Layout under --root (default runs/repro, git-ignored):
    runs/<id>/           the trainer's run folder (log.jsonl, checkpoints, val/test logits .npy)
    models/<id>/, calib/<id>.json   the export (kept out of the served models/ folder)
    logs/<id>.log        stdout + stderr of the trainer
    results/<id>.json    the scored result (what docs/results/ and the report are built from)
    diagrams/<id>-{raw,ats}.svg     reliability diagrams of seed-0 CE and GCE runs

Scoring: TS and ATS are fitted on the run's validation logits with `caliper calibrate`, and the
raw, TS and ATS test probabilities are scored with `caliper eval --json` at 15 and 20 bins, so the
numbers come from the same code the server and the CLI use.
"""
import argparse
import array
import ast
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]

LENET_BASE = ["--arch", "lenet", "--batch-size", "128", "--lr", "0.05", "--schedule", "cosine",
              "--weight-decay", "5e-4"]
LENET = LENET_BASE + ["--val-fraction", "0.1"]
# PneumoniaMNIST ships MedMNIST's own validation split (524 images): experiment 4 trains on all
# 4,708 training images and validates / calibrates on that split (issue 6). Its first runs carved
# 10% out of the training images instead (LENET), which is why their validation accuracy (~98%)
# said nothing about the test split (~85%). With the official split, GCE seed 1 diverged (NaN
# loss at epoch 1, step 10, on the CPU) without warm-up and trained with one epoch of it, so the
# redone runs use the warm-up recipe, as every run after the experiment 1 finding does.
LENET_OWN_VAL = LENET_BASE + ["--val-split", "val", "--warmup-epochs", "1"]
RESNET = ["--arch", "resnet20", "--batch-size", "128", "--lr", "0.1", "--schedule", "cosine",
          "--weight-decay", "5e-4", "--val-fraction", "0.1"]
# The same with one epoch of linear warm-up: at lr 0.05 without it, CE, focal, FLSD-53, dual focal
# and label smoothing collapsed to a constant prediction on some seeds (dead ReLUs after an early
# loss spike; seen on CUDA and on the CPU alike), GCE on none. Runs after that finding use it.
LENET_WARMUP = LENET + ["--warmup-epochs", "1"]
# Issue 18, section 2. (a) The collapse grid again with the classifier head started as PyTorch's
# nn.Linear (U(+-1/sqrt(fan_in)) for weight and bias) instead of He's 2.45x wider rule. On the
# 2-core CPU the 30 runs get the first epoch of the same 8-epoch cosine schedule
# (`--stop-after-epochs`, learning rates as in the full schedule): every collapse of the He grid
# (10 runs) was complete at its first epoch's validation and none recovered or came later.
E1I_STOP = 1
LENET_TORCH_HEAD = LENET + ["--head-init", "linear-default"]
# (b) Long-tailed runs validated on a class-balanced split, like their balanced test split:
# `--val-balanced` holds out the same number of every class, a fraction of the rarest class's
# count. 0.2 of it, not the 0.1 of the stratified split, so that Fashion-MNIST-LT at ratio 100
# (60 images in the rarest class) keeps 12 per class (120) rather than 6 (60).
LENET_WARMUP_BALANCED = LENET_BASE + ["--val-fraction", "0.2", "--val-balanced", "--warmup-epochs", "1"]
# (c) Data efficiency with validation carved after `--train-fraction` (`--val-after-fraction`),
# so a run at 1% of MNIST has 540 training and 60 validation images, not 540 and 6,000.
LENET_VAL_SCALED = LENET + ["--val-after-fraction"]
LOSSES = {
    "ce": [],
    "gce": [],
    "focal": ["--focal-gamma", "3"],
    "flsd53": [],
    "dual-focal": [],
    "label-smoothing": ["--label-smoothing", "0.05"],
}


def run_def(exp, dataset, loss, seed, recipe, epochs, extra=(), tag=""):
    # REPRO_EPOCHS overrides every run's epochs: a smoke test of the pipeline, not a result.
    epochs = int(os.environ.get("REPRO_EPOCHS", epochs))
    rid = f"{exp}-{dataset}{tag}-{loss}-s{seed}"
    args = ["--dataset", dataset, *recipe, "--epochs", str(epochs), "--loss", loss,
            *LOSSES[loss], "--seed", str(seed), *extra]
    return {"id": rid, "exp": exp, "dataset": dataset + tag, "loss": loss, "seed": seed,
            "args": args}


def grid(cifar_epochs):
    """Every run, in the order they should be started (longest first within what matters most)."""
    runs = []
    # 3. CIFAR-10, ResNet-20: the longest runs start first.
    for seed in range(3):
        for loss in ["ce", "gce", "focal"]:
            runs.append(run_def("e3", "cifar10", loss, seed, RESNET, cifar_epochs))
    # 1. MNIST and Fashion-MNIST, LeNet, six losses, five seeds.
    for dataset, epochs in [("mnist", 8), ("fashion-mnist", 15)]:
        for seed in range(5):
            for loss in LOSSES:
                runs.append(run_def("e1", dataset, loss, seed, LENET, epochs))
    # 1w. MNIST again with the warm-up recipe, CE / GCE / focal, five seeds (paired with 1).
    for seed in range(5):
        for loss in ["ce", "gce", "focal"]:
            runs.append(run_def("e1w", "mnist", loss, seed, LENET_WARMUP, 4))
    # 1i. The MNIST collapse grid of experiment 1 with PyTorch's head initialisation (issue 18),
    # the seeds that held experiment 1's collapses first (3: five losses, 1: three, 0: two).
    for seed in [3, 1, 0, 2, 4]:
        for loss in LOSSES:
            runs.append(run_def("e1i", "mnist", loss, seed, LENET_TORCH_HEAD, 8,
                                ["--stop-after-epochs", str(min(E1I_STOP, int(os.environ.get("REPRO_EPOCHS", 8))))]))
    # 5s. Experiment 5 with validation scaled with the training fraction (issue 18).
    for frac, epochs in [("0.01", 60), ("0.1", 20)]:
        for seed in range(5):
            for loss in ["ce", "gce"]:
                runs.append(run_def("e5s", "mnist", loss, seed, LENET_VAL_SCALED, epochs,
                                    ["--train-fraction", frac], f"-{round(float(frac) * 100)}pct"))
    # 2b. Fashion-MNIST-LT (experiment 2's runs) validated on a class-balanced split (issue 18);
    # seeds 0-1 of each ratio first (the fewest a paired test takes), so that a partial grid is
    # usable, then one seed of both ratios at a time.
    for seeds in [(0, 1), (2,), (3,), (4,)]:
        for rho, seed in [(rho, seed) for rho in ["100", "10"] for seed in seeds]:
            for loss in ["ce", "gce", "focal"]:
                runs.append(run_def("e2b", "fashion-mnist", loss, seed, LENET_WARMUP_BALANCED, 20,
                                    ["--imbalance-ratio", rho], f"-lt{rho}"))
    # 4. PneumoniaMNIST (binary, 28x28), five seeds, on its official validation split.
    for seed in range(5):
        for loss in ["ce", "gce", "focal"]:
            runs.append(run_def("e4", "pneumonia", loss, seed, LENET_OWN_VAL, 20))
    # 5. Data efficiency: 1% and 10% of MNIST's training split (100% is experiment 1).
    for frac, epochs in [("0.01", 60), ("0.1", 20)]:
        for seed in range(5):
            for loss in ["ce", "gce"]:
                runs.append(run_def("e5", "mnist", loss, seed, LENET, epochs,
                                    ["--train-fraction", frac], f"-{round(float(frac) * 100)}pct"))
    # 2. Long-tailed: Fashion-MNIST-LT, then CIFAR-10-LT, imbalance 100 and 10.
    for dataset, recipe, epochs, seeds in [("fashion-mnist", LENET_WARMUP, 20, 5),
                                           ("cifar10", RESNET, cifar_epochs, 3)]:
        for rho in ["100", "10"]:
            for seed in range(seeds):
                for loss in ["ce", "gce", "focal"]:
                    runs.append(run_def("e2", dataset, loss, seed, recipe, epochs,
                                        ["--imbalance-ratio", rho], f"-lt{rho}"))
    return runs


def read_npy(path):
    """A little-endian .npy (f4, f8 or i8, C order) as (flat list, shape)."""
    data = pathlib.Path(path).read_bytes()
    assert data[:6] == b"\x93NUMPY", f"{path}: not an .npy file"
    hlen = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    start = 10 + hlen if data[6] == 1 else 12 + hlen
    header = ast.literal_eval(data[start - hlen:start].decode("latin1"))
    assert not header["fortran_order"], f"{path}: Fortran order"
    code = {"<f4": "f", "<f8": "d", "<i8": "q"}[header["descr"]]
    values = array.array(code)
    values.frombytes(data[start:])
    return values, header["shape"]


def per_class_accuracy(run_dir):
    z, (n, k) = read_npy(run_dir / "test_logits.npy")
    y, _ = read_npy(run_dir / "test_labels.npy")
    total, correct = [0] * k, [0] * k
    for i in range(n):
        row = z[i * k:(i + 1) * k]
        pred = max(range(k), key=row.__getitem__)
        total[y[i]] += 1
        correct[y[i]] += int(pred == y[i])
    return [c / t if t else None for c, t in zip(correct, total)]


def caliper(root, *args):
    out = subprocess.run([str(root / "bin" / "caliper"), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"caliper {' '.join(args)}: {out.stderr.strip()[-2000:]}")
    return out.stdout


def score(root, run):
    """Fits TS and ATS on the validation logits and scores raw / TS / ATS test probabilities."""
    rid = run["id"]
    rd = root / "runs" / rid
    val = ["--logits", str(rd / "val_logits.npy"), "--labels", str(rd / "val_labels.npy")]
    test = ["--logits", str(rd / "test_logits.npy"), "--labels", str(rd / "test_labels.npy")]
    calib = {}
    for method in ["ts", "ats"]:
        path = rd / f"calib-{method}.json"
        # ATS without `--method`: the same 15 pieces wherever validation has the 150 images they
        # need, fewer (then TS) on the small balanced or scaled splits of issue 18, which
        # `--method ats` would refuse; the result records the pieces fitted.
        how = ["--method", method] if method == "ts" else []
        caliper(root, "calibrate", *val, *how, "--out", str(path))
        calib[method] = json.loads(path.read_text())
    metrics = {}
    for bins in [15, 20]:
        raw = json.loads(caliper(root, "eval", *test, "--bins", str(bins), "--json"))
        metrics[f"bins{bins}"] = {"raw": raw.get("uncalibrated", raw)}
        for method in ["ts", "ats"]:
            both = json.loads(caliper(root, "eval", *test, "--calib", str(rd / f"calib-{method}.json"),
                                      "--bins", str(bins), "--json"))
            metrics[f"bins{bins}"][method] = both["calibrated"]
    if run["seed"] == 0 and run["loss"] in ("ce", "gce"):
        (root / "diagrams").mkdir(exist_ok=True)
        caliper(root, "eval", *test, "--diagram", str(root / "diagrams" / f"{rid}-raw.svg"))
        caliper(root, "eval", *test, "--calib", str(rd / "calib-ats.json"),
                "--diagram", str(root / "diagrams" / f"{rid}-ats.svg"))
    report = json.loads((root / "models" / rid / "report.json").read_text())
    epochs = [json.loads(l) for l in (rd / "log.jsonl").read_text().splitlines() if l.strip()]
    result = {
        **{k: run[k] for k in ("id", "exp", "dataset", "loss", "seed", "args")},
        "best_epoch": report.get("best_epoch"),
        "train_images_per_s": report.get("train_images_per_s"),
        "temperature_ts": calib["ts"]["calibrator"].get("temperature"),
        "ats_fitted": ats_fitted(calib["ats"]),
        "val_data": report.get("validation", {}).get("data"),
        "val_samples": report.get("validation", {}).get("samples"),
        "test": metrics,
        "test_per_class_accuracy": per_class_accuracy(rd),
        "epochs": epochs,
        "wall_s": run.get("wall_s"),
        "device": run.get("device"),
    }
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / f"{rid}.json").write_text(json.dumps(result, indent=1))
    return result


def ats_fitted(calib):
    """What `caliper calibrate` fitted for ATS: the method and, for ATS, its piece count."""
    c = calib["calibrator"]
    return {"method": c.get("method"), "pieces": len(c["temperatures"]) if "temperatures" in c else None}


def option(args, flag, default=None):
    return args[args.index(flag) + 1] if flag in args else default


def data_specs(run):
    """The dataset specs (docs/DATA.md) of a run's validation and training images, for
    `caliper calibrate --data` and `--train-data`: the trainer's carved split as a `[val=..]` /
    `[fit=..]` selector, or the dataset's own validation split and its whole training split."""
    args, ds = run["args"], option(run["args"], "--dataset")
    own = option(args, "--val-split")
    if own:
        if option(args, "--train-fraction", "1") != "1" or option(args, "--imbalance-ratio", "1") != "1":
            raise ValueError(f"{run['id']}: no spec names a subsampled training split next to --val-split")
        return f"{ds}:{own}", f"{ds}:train"
    sel = f"{option(args, '--val-fraction', '0.1')},seed={run['seed']}"
    for flag, key in [("--train-fraction", "train_fraction"), ("--imbalance-ratio", "imbalance_ratio")]:
        if flag in args:
            sel += f",{key}={option(args, flag)}"
    for flag, key in [("--val-balanced", "val_balanced"), ("--val-after-fraction", "val_after_fraction")]:
        if flag in args:
            sel += f",{key}=1"
    return f"{ds}:train[val={sel}]", f"{ds}:train[fit={sel}]"


def ood(root, run, ood_data, data_dir):
    """Experiment 6: refits the run's calibrator with a Mahalanobis detector (training-split
    features) and scores every OOD score of its model on the ID test split vs `ood_data`."""
    rid, ds = run["id"], option(run["args"], "--dataset")
    val_spec, train_spec = data_specs(run)
    models = ["--models-dir", str(root / "models"), "--data-dir", str(data_dir)]
    calib_dir = root / "calib-ood"
    calib_dir.mkdir(exist_ok=True)
    caliper(root, "calibrate", "--model", rid, "--data", val_spec, "--train-data", train_spec,
            "--out", str(calib_dir / f"{rid}.json"), *models)
    report = json.loads(caliper(root, "eval-ood", "--model", rid, "--id", f"{ds}:test", "--ood", ood_data,
                                "--calib-dir", str(calib_dir), "--json", *models))
    result = {"id": f"e6-{rid}", "exp": "e6", "source_run": rid, "dataset": run["dataset"],
              "loss": run["loss"], "seed": run["seed"], "ood_data": ood_data,
              "scores": {k: {"auroc": v["auroc"], "fpr95": v["fpr_at_95_tpr"], "aupr": v["aupr_out"],
                             "input": v["input"]} for k, v in report["scores"].items()}}
    (root / "results" / f"e6-{rid}.json").write_text(json.dumps(result, indent=1))
    return result


def train(root, run, device, threads, data_dir):
    rid = run["id"]
    (root / "logs").mkdir(exist_ok=True)
    cmd = [str(root / "bin" / "caliper-train"), "train", "--out", rid, *run["args"],
           "--device", device, "--threads", str(threads), "--no-progress",
           "--data-dir", str(data_dir), "--models-dir", str(root / "models"),
           "--calib-dir", str(root / "calib"), "--run-dir", str(root / "runs" / rid)]
    t = time.time()
    with open(root / "logs" / f"{rid}.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    run = {**run, "wall_s": round(time.time() - t, 1), "device": device}
    if rc != 0:
        return rid, f"trainer exited {rc} (see logs/{rid}.log)"
    try:
        score(root, run)
    except Exception as e:  # noqa: BLE001 - reported per run, the others go on
        return rid, f"scoring failed: {e}"
    return rid, f"done in {run['wall_s']} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["list", "run", "score", "ood"])
    ap.add_argument("run_id", nargs="?")
    ap.add_argument("--root", default=str(ROOT / "runs" / "repro"))
    ap.add_argument("--only", default="", help="comma-separated experiment or run-id prefixes")
    ap.add_argument("--seeds", default="", help="comma-separated seeds to keep (default all)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads per trainer")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--cifar-epochs", type=int, default=30)
    ap.add_argument("--cuda-graph", action="store_true",
                    help="ResNet-20 runs on a CUDA device replay their step as a CUDA graph "
                         "(caliper-train --cuda-graph; recorded in each run's args)")
    ap.add_argument("--ood-data", default="fashion-mnist:test")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"),
                    help="where caliper and caliper-train are (e.g. target/debug for a smoke run); "
                         "linked into ROOT/bin on the first run")
    a = ap.parse_args()
    root = pathlib.Path(a.root)
    runs = grid(a.cifar_epochs)
    if a.cuda_graph and a.device.startswith("cuda"):
        for r in runs:
            if option(r["args"], "--arch") == "resnet20":
                r["args"].append("--cuda-graph")
    if a.only:
        prefixes = a.only.split(",")
        runs = [r for r in runs if any(r["id"].startswith(p) for p in prefixes)]
    if a.seeds:
        runs = [r for r in runs if str(r["seed"]) in a.seeds.split(",")]
    if a.command == "list":
        for r in runs:
            done = (root / "results" / f"{r['id']}.json").exists()
            print(f"{'done' if done else 'todo'} {r['id']}")
        return
    if a.command == "score":
        run = next(r for r in runs if r["id"] == a.run_id)
        print(json.dumps(score(root, run), indent=1))
        return
    if a.command == "ood":
        for r in runs:
            if (root / "results" / f"{r['id']}.json").exists():
                res = ood(root, r, a.ood_data, a.data_dir)
                print(res["id"], {k: round(v["auroc"], 4) for k, v in res["scores"].items()}, flush=True)
        return
    # The binaries are looked up in root/bin so that a copied results tree is self-describing.
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for b in ["caliper", "caliper-train"]:
        target, binary = root / "bin" / b, pathlib.Path(a.bin_dir).resolve() / b
        if target.is_symlink() and not target.exists():  # dangling: its target was removed
            target.unlink()
        if not target.exists():
            if not binary.exists():
                sys.exit(f"{binary} not found: build it (cargo build --release) or pass --bin-dir")
            target.symlink_to(binary)
    todo = [r for r in runs if not (root / "results" / f"{r['id']}.json").exists()]
    print(f"{len(todo)} runs to do, {a.jobs} at a time on {a.device}", flush=True)
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(train, root, r, a.device, a.threads, a.data_dir) for r in todo]
        for f in concurrent.futures.as_completed(futures):
            rid, status = f.result()
            print(f"{time.strftime('%H:%M:%S')} {rid}: {status}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
