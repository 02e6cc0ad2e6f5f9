#!/usr/bin/env python3
"""Near-OOD by the open-set protocol of Neal et al. 2018 (issue 18, section 4): train ResNet-20 on
6 CIFAR-10 classes, treat the test images of the other 4 as OOD, and score every OOD score of
`caliper eval-ood` (MSP, energy, Mahalanobis, KNN, ViM, RMDS, ...), one known/unknown split per
seed. No code in caliper knows about class subsets: each split is a folder dataset
(`folder:DIR`, docs/DATA.md) whose class folders are symlinks into data/cifar10.

    scripts/repro/near_ood.py run --seeds 0,1,2 --epochs 2 [--threads 1] [--bin-dir target/release]
    scripts/repro/near_ood.py report          # mean +- sd over the seeds -> docs/ood/cifar6-near-ood.json

`run` trains the listed seeds one after the other and skips a seed whose model exists (the
results in docs/ood/ ran one `run --seeds S --threads 1` per seed, side by side, 2 epochs).

Splits: the first three of the five published CIFAR-10 splits of Neal et al. (as distributed
with Vaze et al. 2022, `osr_splits.py`, and ARPL's split.py), seed i uses split i. Recipe: the
ResNet-20 recipe of scripts/repro/experiments.py (SGD 0.1, cosine, wd 5e-4, 10% validation,
crop + flip) with cross-entropy, the loss the open-set and OpenOOD baselines use.

Layout under --root (default runs/near-ood, git-ignored):
    split-sN/{train,test}/<known class> -> data/cifar10/{train,test}/<class>
    split-sN/ood/<unknown class>        -> data/cifar10/test/<class>
    models/osr-sN/, calib/osr-sN.json   the trainer's export (its calibration file carries the
                                        Mahalanobis, RMDS, KNN and ViM detectors)
    runs/osr-sN/, logs/osr-sN.log       the trainer's run folder and output
    results/osr-sN.json                 `caliper eval-ood --json` of the split
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Known classes of the published splits (Neal et al. 2018; Vaze et al. 2022 osr_splits.py).
KNOWN = [[0, 1, 2, 4, 5, 9], [0, 3, 5, 7, 8, 9], [0, 1, 5, 6, 7, 8],
         [3, 4, 5, 7, 8, 9], [0, 1, 2, 3, 7, 8]]
RECIPE = ["--arch", "resnet20", "--batch-size", "128", "--lr", "0.1", "--schedule", "cosine",
          "--weight-decay", "5e-4", "--val-fraction", "0.1", "--augment", "crop-flip",
          "--input-size", "32,32", "--loss", "ce"]
# The scores issue 18 compares (eval-ood reports the others too; they stay in the per-seed files).
SCORES = ["msp", "energy", "max_logit", "mahalanobis", "rmds", "knn", "vim"]


def make_view(root, data_dir, seed):
    """The split's folder dataset: symlinked class folders, rebuilt idempotently."""
    view = root / f"split-s{seed}"
    known = [CLASSES[i] for i in KNOWN[seed]]
    unknown = [c for c in CLASSES if c not in known]
    for part, src, names in [("train", "train", known), ("test", "test", known), ("ood", "test", unknown)]:
        d = view / part
        d.mkdir(parents=True, exist_ok=True)
        for name in names:
            link = d / name
            if not link.is_symlink():
                link.symlink_to((data_dir / "cifar10" / src / name).resolve())
    return view, known, unknown


def run_seed(root, bins, data_dir, seed, epochs, threads):
    view, known, unknown = make_view(root, data_dir, seed)
    rid = f"osr-s{seed}"
    models = ["--models-dir", str(root / "models"), "--calib-dir", str(root / "calib")]
    for d in ["logs", "results", "models", "calib", "runs"]:
        (root / d).mkdir(exist_ok=True)
    if not (root / "models" / rid / "model.toml").exists():
        cmd = [str(bins / "caliper-train"), "train", "--out", rid, "--dataset", f"folder:{view}",
               *RECIPE, "--epochs", str(epochs), "--seed", str(seed), "--threads", str(threads),
               "--no-progress", *models, "--run-dir", str(root / "runs" / rid)]
        t = time.time()
        with open(root / "logs" / f"{rid}.log", "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                sys.exit(f"{rid}: trainer failed, see {root}/logs/{rid}.log")
        (root / "runs" / rid / "wall_s").write_text(f"{time.time() - t:.1f}\n")
    out = subprocess.run([str(bins / "caliper"), "eval-ood", "--model", rid, *models,
                          "--id", f"folder:{view}/test", "--ood", f"folder:{view}/ood", "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{rid}: eval-ood failed: {out.stderr.strip()[-2000:]}")
    report = json.loads(out.stdout)
    report["split"] = {"seed": seed, "known": known, "unknown": unknown}
    (root / "results" / f"{rid}.json").write_text(json.dumps(report, indent=1))
    print(rid, {k: round(report["scores"][k]["auroc"], 4) for k in SCORES if k in report["scores"]},
          flush=True)


def report(root, out):
    seeds = sorted(root.glob("results/osr-s*.json"))
    if not seeds:
        sys.exit(f"no results under {root}/results")
    per_seed = [json.loads(p.read_text()) for p in seeds]
    table = {}
    for k in SCORES + [s for s in per_seed[0]["scores"] if s not in SCORES]:
        rows = [r["scores"][k] for r in per_seed if k in r["scores"]]
        if len(rows) != len(per_seed):
            continue
        entry = {"input": rows[0]["input"]}
        for metric in ["auroc", "fpr_at_95_tpr", "aupr_out", "aupr_in"]:
            vals = [r[metric] for r in rows]
            entry[metric] = {"mean": statistics.fmean(vals),
                             "sd": statistics.stdev(vals) if len(vals) > 1 else None, "per_seed": vals}
        table[k] = entry
    runs = []
    for p, r in zip(seeds, per_seed):
        rid = p.stem
        log = [json.loads(line) for line in (root / "runs" / rid / "log.jsonl").read_text().splitlines()
               if line.strip()]
        runs.append({"id": rid, "split": r["split"], "epochs": len(log),
                     "val_accuracy_last": log[-1]["val"]["accuracy"] if log else None,
                     "id_test_images": r["scores"]["msp"]["id_samples"],
                     "ood_test_images": r["scores"]["msp"]["ood_samples"],
                     "train_wall_s": float((root / "runs" / rid / "wall_s").read_text())
                     if (root / "runs" / rid / "wall_s").exists() else None,
                     "closed_set_test_accuracy": per_seed_accuracy(root, rid)})
    doc = {"protocol": "Neal et al. 2018 open-set CIFAR-10: 6 known classes (ID), the test images of "
                       "the other 4 as OOD; splits 0..n-1 of the published five, one per seed",
           "recipe": " ".join(RECIPE), "seeds": len(per_seed), "runs": runs, "scores": table}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    # The Markdown table of docs/OOD.md, best mean AUROC first.
    pm = lambda s, m: f"{100 * s[m]['mean']:.2f} ± {100 * (s[m]['sd'] or 0):.2f}"
    print("| score | input | AUROC % | FPR@95%TPR % | AUPR-Out % | AUROC per seed % |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for k, v in sorted(table.items(), key=lambda kv: -kv[1]["auroc"]["mean"]):
        seeds = " / ".join(f"{100 * a:.2f}" for a in v["auroc"]["per_seed"])
        print(f"| {k} | {v['input']} | {pm(v, 'auroc')} | {pm(v, 'fpr_at_95_tpr')} | {pm(v, 'aupr_out')} | {seeds} |")
    for r in runs:
        print(r["id"], r["split"]["known"], "acc", r["closed_set_test_accuracy"], "epochs", r["epochs"],
              "wall", r["train_wall_s"])


def per_seed_accuracy(root, rid):
    """Closed-set accuracy on the 6 known classes' test images, from the trainer's test logits."""
    sys.path.insert(0, str(ROOT / "scripts" / "repro"))
    from experiments import read_npy  # noqa: PLC0415 - the one .npy reader of the repro scripts
    z, (n, k) = read_npy(root / "runs" / rid / "test_logits.npy")
    y, _ = read_npy(root / "runs" / rid / "test_labels.npy")
    correct = sum(max(range(k), key=z[i * k:(i + 1) * k].__getitem__) == y[i] for i in range(n))
    return correct / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "report"])
    ap.add_argument("--root", default=str(ROOT / "runs" / "near-ood"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "ood" / "cifar6-near-ood.json"))
    a = ap.parse_args()
    root = pathlib.Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    if a.command == "run":
        for s in a.seeds.split(","):
            run_seed(root, pathlib.Path(a.bin_dir), pathlib.Path(a.data_dir), int(s), a.epochs, a.threads)
    else:
        report(root, pathlib.Path(a.out))


if __name__ == "__main__":
    sys.exit(main())
