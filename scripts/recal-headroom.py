#!/usr/bin/env python3
"""How much can recalibration gain under a covariate shift? (issue 22; docs/MONITORING.md, "Drift
simulator"). The drift simulator's shadows can only promote a calibrator that beats the incumbent
by more than --auto-recalibrate-margin nats of NLL per label; this measures the most a refitted
calibrator can gain on a corruption held at a fixed severity, so that a run without promotion can
be told apart from a rule that fails to promote.

For each --setting SEVERITY:KIND it corrupts the MNIST test images with the drift simulator's own
corrupt() (same kinds, same severities), splits them by a seeded permutation into two disjoint
halves of 5,000, fits a calibrator (`caliper calibrate --method`) on the first half and serves the
second half offline (`caliper predict`) under the shipped calibration file and under the refit.
Printed per setting: accuracy, ECE-15 and NLL (the simulator's definitions) of both on the same images,
and paired bootstrap 95% intervals of the NLL gain and of the ECE reduction (2,000 resamples for
the NLL, 500 for the ECE, seeded).

Example (what docs/MONITORING.md quotes):
  scripts/recal-headroom.py --caliper target/release/caliper \\
      --setting 0.8:contrast+noise --setting 0.8:blur --setting 1.0:noise
"""

import argparse
import importlib.util
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def drift_sim():
    """The drift simulator as a module (its data loader and corrupt())."""
    spec = importlib.util.spec_from_file_location("drift_sim", ROOT / "scripts" / "drift-sim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_halves(ds, severity, kind, out, seed):
    """Corrupted test images as folder:out/{fit,test}/<class>/<index>.png."""
    images, labels = ds.load_dataset("mnist", ROOT / "data", [str(i) for i in range(10)])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    half = len(perm) // 2
    for name, idx in (("fit", perm[:half]), ("test", perm[half:])):
        for i in idx:
            d = out / name / str(labels[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.corrupt(images[i], severity, kind, rng)).save(d / f"{i}.png")


def served(caliper, calib_dir, files):
    """Calibrated probabilities of `files` served offline under the file in `calib_dir`."""
    out = []
    for k in range(0, len(files), 500):
        chunk = [str(f) for f in files[k : k + 500]]
        r = subprocess.run(
            [caliper, "predict", "--model", "mnist", "--models", str(ROOT / "models"),
             "--calib", str(calib_dir)] + chunk,
            capture_output=True, text=True, check=True,
        )
        preds = json.loads(r.stdout)["predictions"]
        assert len(preds) == len(chunk)
        out += [p["probabilities"] for p in preds]
    return np.array(out)


def figures(ds, p, y):
    """Per image: top-label confidence, correct or not, NLL (floored as the simulator does)."""
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(float)
    nll = -np.log(np.maximum(p[np.arange(len(y)), y], ds.PROB_FLOOR))
    return conf, correct, nll


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caliper", default=str(ROOT / "target" / "release" / "caliper"))
    ap.add_argument("--setting", action="append", required=True, help="SEVERITY:KIND, e.g. 0.8:blur (repeat)")
    ap.add_argument("--method", default="ts", help="calibrator refitted on the shifted half (caliper calibrate --method)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = drift_sim()
    rng = np.random.default_rng(args.seed)
    for setting in args.setting:
        severity, kind = setting.split(":", 1)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_halves(ds, float(severity), kind, tmp / "data", args.seed)
            refit = tmp / "refit"
            refit.mkdir()
            subprocess.run(
                [args.caliper, "calibrate", "--model", "mnist", "--models-dir", str(ROOT / "models"),
                 "--data", f"folder:{tmp / 'data' / 'fit'}", "--data-dir", str(tmp),
                 "--method", args.method, "--out", str(refit / "mnist.json")],
                capture_output=True, text=True, check=True,
            )
            files = sorted((tmp / "data" / "test").glob("*/*.png"))
            y = np.array([int(f.parent.name) for f in files])
            c0, k0, n0 = figures(ds, served(args.caliper, ROOT / "calib", files), y)
            c1, k1, n1 = figures(ds, served(args.caliper, refit, files), y)
            calibrator = json.loads((refit / "mnist.json").read_text())["calibrator"]
        boot = rng.integers(0, len(y), size=(2000, len(y)))
        gain = n0 - n1
        gains = [gain[i].mean() for i in boot]
        drops = [ds.ece(c0[i], k0[i]) - ds.ece(c1[i], k1[i]) for i in boot[:500]]
        print(f"{severity} {kind} (n = {len(y)}; refit {args.method}: {calibrator}):")
        print(f"  shipped:  accuracy {k0.mean():.4f}  ECE {ds.ece(c0, k0):.4f}  NLL {n0.mean():.4f}")
        print(f"  refitted: accuracy {k1.mean():.4f}  ECE {ds.ece(c1, k1):.4f}  NLL {n1.mean():.4f}")
        print(f"  NLL gain {gain.mean():.4f} [{np.percentile(gains, 2.5):.4f}, {np.percentile(gains, 97.5):.4f}]"
              f"  ECE reduction {ds.ece(c0, k0) - ds.ece(c1, k1):.4f}"
              f" [{np.percentile(drops, 2.5):.4f}, {np.percentile(drops, 97.5):.4f}]")


if __name__ == "__main__":
    main()
