#!/usr/bin/env python3
"""Python side of scripts/bench-calibration.sh (benchmark only, not a test).

  gen OUT_DIR                 seeded 50,000 x 100 logits + labels as .npy
  ref OUT_DIR CALIPER.json    time netcal's TemperatureScaling fit and ECE on the same data,
                              compute every metric with the numpy reference of
                              scripts/make-metric-reference.py, and compare with caliper's
                              `eval --json` output (must agree to 1e-6).
"""

import importlib.util
import json
import pathlib
import resource
import sys
import time

import numpy as np

N, K = 50_000, 100


def gen(out):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, K, size=N)
    logits = rng.normal(size=(N, K)) * 1.5
    # The label gets a confidence-dependent head start: over-confident when sure.
    boost = rng.gamma(2.0, 2.0, size=N)
    logits[np.arange(N), labels] += boost
    flip = rng.uniform(size=N) < 0.25
    logits[flip, rng.integers(0, K, size=flip.sum())] += boost[flip] * 1.2
    np.save(out / "logits.npy", logits.astype(np.float32))
    np.save(out / "labels.npy", labels.astype(np.int64))


def ref(out, caliper_json):
    here = pathlib.Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("mref", here / "make-metric-reference.py")
    mref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mref)
    logits = np.load(out / "logits.npy").astype(np.float64)
    labels = np.load(out / "labels.npy")
    probs = mref.softmax(logits)

    from netcal.metrics import ECE
    from netcal.scaling import TemperatureScaling

    t0 = time.perf_counter()
    ts = TemperatureScaling()
    ts.fit(probs, labels)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    netcal_ece = ECE(bins=15).measure(probs, labels)
    ece_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    numpy_metrics = mref.metrics(logits, labels, 15)
    numpy_s = time.perf_counter() - t0

    ours = json.loads(pathlib.Path(caliper_json).read_text())
    worst = max(abs(ours[k] - v) for k, v in numpy_metrics.items())
    print(json.dumps({
        "netcal_ts_fit_s": fit_s,
        "netcal_ece_s": ece_s,
        "numpy_all_metrics_s": numpy_s,
        "python_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "netcal_ece": float(netcal_ece),
        "caliper_ece": ours["ece"],
        "max_abs_diff_vs_numpy": worst,
        "numpy": numpy_metrics,
    }, indent=1))
    if worst > 1e-6:
        sys.exit(f"caliper and numpy disagree by {worst}")


if __name__ == "__main__":
    cmd, out = sys.argv[1], pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    gen(out) if cmd == "gen" else ref(out, sys.argv[3])
