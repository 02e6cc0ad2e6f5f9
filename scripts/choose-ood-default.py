#!/usr/bin/env python3
"""Refits each shipped model's calibration file and chooses its default OOD score (the one the
server decides `is_ood` with) from validation data only (issue 18, section 4).

    scripts/choose-ood-default.py [--bin target/release/caliper] [--only mnist,cifar10]

For each model, three steps, all through the caliper binary:
1. `caliper calibrate --method ats --data VAL --train-data TRAIN`: the documented refit
   (docs/OOD.md): ATS on the trainer's validation split, every feature detector (Mahalanobis,
   RMDS, KNN, ViM) on its training split, thresholds at 95% TPR on the validation split.
2. `caliper eval-ood --id VAL --ood OOD_VAL` for each OOD validation set: a seeded 10% of the
   *training* split of another bundled dataset, so no image of any test split (ID or the OOD
   test sets of docs/OOD.md, which are all `:test`) takes part in the choice.
3. The served score with the highest AUROC, averaged over the OOD validation sets (ties: lower
   mean FPR at 95% TPR), is written as the default by refitting with `--ood-method BEST`.
   The refit is deterministic (the KNN subsample is seeded), so only `ood.method` changes.

The validation AUROCs and the choice go to docs/ood/defaults.json (docs/OOD.md's table).
"""
import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OOD_VAL = {
    "mnist": "mnist:train[val=0.1,seed=0]",
    "fashion-mnist": "fashion-mnist:train[val=0.1,seed=0]",
}
# model: (validation split = the trainer's, training split, OOD validation sets)
MODELS = {
    "mnist": ("mnist:train[val=0.1,seed=0]", "mnist:train[fit=0.1,seed=0]", [OOD_VAL["fashion-mnist"]]),
    "fashion-mnist": ("fashion-mnist:train[val=0.1,seed=0]", "fashion-mnist:train[fit=0.1,seed=0]",
                      [OOD_VAL["mnist"]]),
    "cifar10": ("cifar10:train[val=0.1,seed=0]", "cifar10:train[fit=0.1,seed=0]",
                [OOD_VAL["mnist"], OOD_VAL["fashion-mnist"]]),
    "pneumonia": ("pneumonia:val", "pneumonia:train", [OOD_VAL["mnist"], OOD_VAL["fashion-mnist"]]),
}


def caliper(binary, *args):
    print("+ caliper " + " ".join(args), file=sys.stderr, flush=True)
    out = subprocess.run([binary, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"caliper {' '.join(args)} failed:\n{out.stderr.strip()[-3000:]}")
    return out.stdout


def calibrate(binary, model, val, train, method):
    return ["calibrate", "--model", model, "--method", "ats", "--data", val, "--train-data", train,
            "--ood-method", method]


def choose(binary, model, val, train, ood_sets):
    caliper(binary, *calibrate(binary, model, val, train, "msp"))
    served = list(json.loads((ROOT / "calib" / f"{model}.json").read_text())["ood"]["thresholds"])
    per_set = {}
    for ood in ood_sets:
        rep = json.loads(caliper(binary, "eval-ood", "--model", model, "--id", val, "--ood", ood, "--json"))
        per_set[ood] = {k: {"auroc": rep["scores"][k]["auroc"], "fpr95": rep["scores"][k]["fpr_at_95_tpr"]}
                        for k in served}
    mean = {k: {m: sum(per_set[o][k][m] for o in ood_sets) / len(ood_sets) for m in ["auroc", "fpr95"]}
            for k in served}
    best = max(served, key=lambda k: (mean[k]["auroc"], -mean[k]["fpr95"]))
    cmd = calibrate(binary, model, val, train, best)
    caliper(binary, *cmd)
    stored = json.loads((ROOT / "calib" / f"{model}.json").read_text())["ood"]["method"]
    assert stored == best, f"{model}: calibration file says {stored}, chose {best}"
    return {"id_validation": val, "train": train, "ood_validation": ood_sets, "default": best,
            "mean": mean, "per_set": per_set, "command": "caliper " + " ".join(cmd)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "caliper"))
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(ROOT / "docs" / "ood" / "defaults.json"))
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc.setdefault("rule", "served score with the highest mean AUROC (ties: lower mean FPR95) on ID "
                           "validation vs OOD validation (10% of other datasets' training splits)")
    doc.setdefault("models", {})
    for model, (val, train, oods) in MODELS.items():
        if a.only and model not in a.only.split(","):
            continue
        doc["models"][model] = choose(a.bin, model, val, train, oods)
        m = doc["models"][model]
        print(model, "->", m["default"], {k: round(v["auroc"], 4) for k, v in m["mean"].items()}, flush=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
