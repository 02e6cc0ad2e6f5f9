#!/usr/bin/env python3
"""Python side of scripts/bench-calibration.sh (benchmark only, not a test).

  gen OUT_DIR                 seeded 50,000 x 100 logits + labels as .npy
  ref OUT_DIR CALIPER.json    time netcal's TemperatureScaling fit and ECE on the same data,
                              compute every metric with the numpy reference of
                              scripts/make-metric-reference.py, and compare with caliper's
                              `eval --json` output (must agree to 1e-6).
  ats OUT_DIR CALIPER_ATS.json
                              time a NumPy/SciPy ATS written the way a user would write it
                              (there is no Python ATS package): the same definition as
                              docs/METHOD.md and caliper's defaults, one temperature per
                              equal-mass piece by scipy.optimize, and compare its temperatures
                              with caliper's fitted file (must agree to 1e-6 relative).
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


def ats_numpy(logits, labels, pieces=15, shrinkage=10.0, t_min=0.05, t_max=10.0):
    """ATS as docs/METHOD.md defines it, with caliper's defaults, in plain NumPy/SciPy:
    NLL in beta = 1/T minimised by scipy's bounded scalar search, per-piece NLL plus
    tau * (beta - beta_global)^2 with tau = shrinkage * mean per-sample curvature at the
    global optimum. Returns (global temperature, per-piece temperatures)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp, softmax

    def nll(beta, z, y):
        s = beta * z
        return np.sum(logsumexp(s, axis=1) - s[np.arange(len(y)), y])

    def solve(f):
        r = minimize_scalar(f, bounds=(1.0 / t_max, 1.0 / t_min), method="bounded",
                            options={"xatol": 1e-10})
        return r.x

    beta_g = solve(lambda b: nll(b, logits, labels))
    p = softmax(beta_g * logits, axis=1)
    mean = np.sum(p * logits, axis=1)
    curvature = np.mean(np.sum(p * logits**2, axis=1) - mean**2)
    tau = shrinkage * curvature
    conf = softmax(logits, axis=1).max(axis=1)
    srt = np.sort(conf)
    n = len(conf)
    cut = [min(max(int(round(m * n / pieces)), 1), n - 1) for m in range(1, pieces)]
    edges = np.array([0.5 * (srt[i - 1] + srt[i]) for i in cut])
    piece = np.searchsorted(edges, conf, side="left")
    temps = []
    for m in range(pieces):
        z, y = logits[piece == m], labels[piece == m]
        b = solve(lambda b: nll(b, z, y) + tau * (b - beta_g) ** 2)
        temps.append(1.0 / b)
    return 1.0 / beta_g, temps


def ats(out, caliper_ats_json):
    logits = np.load(out / "logits.npy").astype(np.float64)
    labels = np.load(out / "labels.npy")
    t0 = time.perf_counter()
    t_global, temps = ats_numpy(logits, labels)
    fit_s = time.perf_counter() - t0
    ours = json.loads(pathlib.Path(caliper_ats_json).read_text())["calibrator"]
    theirs = [t_global] + temps
    mine = [ours["global_temperature"]] + ours["temperatures"]
    worst = max(abs(a - b) / b for a, b in zip(theirs, mine))
    print(json.dumps({
        "numpy_scipy_ats_fit_s": fit_s,
        "max_rel_temperature_diff_vs_caliper": worst,
        "numpy_scipy_temperatures": theirs,
    }, indent=1))
    if worst > 1e-6:
        sys.exit(f"caliper and the NumPy/SciPy ATS disagree by {worst} (relative)")


if __name__ == "__main__":
    cmd, out = sys.argv[1], pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if cmd == "gen":
        gen(out)
    elif cmd == "ats":
        ats(out, sys.argv[3])
    else:
        ref(out, sys.argv[3])
