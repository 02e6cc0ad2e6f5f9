#!/usr/bin/env python3
"""Builds docs/REPRODUCTION.md from the raw results in docs/results/ (issue 6). Standard library only.

    scripts/repro/report.py collect RESULTS_DIR...   # runs/*/results/*.json -> docs/results/<exp>.json
    scripts/repro/report.py render                   # docs/results/*.json -> docs/REPRODUCTION.md
    REPORT_DOCS=runs/x/docs scripts/repro/report.py render   # another docs tree (results/ in)

`collect` keeps, per run, its definition, the device, the wall time, the best epoch, the test metrics
(raw / TS / ATS at 15 and 20 bins), the per-class test accuracy and a compact epoch log. `render`
computes every number in the report from those files: means and sample standard deviations over
seeds, paired t-tests over seeds, and fills the hand-written commentary of
docs/results/commentary.md (sections keyed by `## key`) under each table. Rerun both after new runs.
"""
import glob
import json
import math
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
# REPORT_DOCS points the report at another docs tree (results/ in, REPRODUCTION.md out), e.g. a
# fabricated one under runs/ to check the rendering of settings that have no results yet.
DOCS = pathlib.Path(os.environ.get("REPORT_DOCS", ROOT / "docs"))
RESULTS = DOCS / "results"
COLLAPSE = 0.2  # test accuracy below this on 10 classes = the run collapsed to a constant answer


def collect(dirs):
    by_exp = {}
    for d in dirs:
        for f in sorted(glob.glob(str(pathlib.Path(d) / "*.json"))):
            r = json.loads(pathlib.Path(f).read_text())
            r["epochs"] = [{"epoch": e["epoch"], "lr": round(e["lr"], 6),
                            "train_loss": round(e["train_loss"], 5),
                            "val_accuracy": round(e["val"]["accuracy"], 5),
                            "val_ece": round(e["val"]["ece"], 5)} for e in r.get("epochs", [])]
            by_exp.setdefault(r["exp"], {})[r["id"]] = r
    RESULTS.mkdir(parents=True, exist_ok=True)
    for exp, runs in by_exp.items():
        path = RESULTS / f"{exp}.json"
        old = {r["id"]: r for r in json.loads(path.read_text())["runs"]} if path.exists() else {}
        old.update(runs)
        path.write_text(json.dumps({"experiment": exp, "runs": [old[k] for k in sorted(old)]},
                                   indent=1) + "\n")
        print(f"{path}: {len(old)} runs")


# ---- statistics -------------------------------------------------------------------------------

def mean(xs):
    return sum(xs) / len(xs)


def sd(xs):
    if len(xs) < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def betacf(a, b, x):
    """Continued fraction of the regularised incomplete beta (Numerical Recipes, Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-12:
            break
    return h


def betainc(a, b, x):
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbt) * betacf(a, b, x) / a
    return 1 - math.exp(lbt) * betacf(b, a, 1 - x) / b


def paired_t(a, b):
    """Mean of a-b, its sd, t and the two-sided p-value of the paired t-test (n-1 dof)."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n < 2:
        return mean(d), float("nan"), float("nan"), float("nan")
    s = sd(d)
    if s == 0:
        return mean(d), 0.0, float("inf"), 0.0
    t = mean(d) / (s / math.sqrt(n))
    dof = n - 1
    p = betainc(dof / 2, 0.5, dof / (dof + t * t))
    return mean(d), s, t, p



# ---- the computed summary ---------------------------------------------------------------------

def settings(exps):
    """(experiment, dataset) of every setting with a GCE run, in report order."""
    out = []
    for exp in EXPERIMENTS:
        for ds in sorted({r["dataset"] for r in exps.get(exp, [])}):
            if group(exps[exp], ds, "gce"):
                out.append((exp, ds))
    return out


# Report order of the experiments; e1i, e2b and e5s are the reruns of issue 18 section 2.
EXPERIMENTS = ["e1", "e1i", "e1w", "e2", "e2b", "e3", "e4", "e5", "e5s"]
SETTING_NAMES = {"e1w": " (warm-up)", "e2": " (imbalanced validation)", "e2b": " (balanced validation)",
                 "e5": " (validation before the fraction)", "e5s": " (validation scaled with the fraction)"}


def setting_name(exp, ds):
    if exp == "e1i":
        return ds + f" (PyTorch head init, {truncation(ds)})"
    return ds + SETTING_NAMES.get(exp, "") + (" (no warm-up)" if exp == "e1" and ds == "mnist" else "")


def truncation(ds, exps=None):
    """'first E of N epochs' of the e1i runs (their --stop-after-epochs of --epochs)."""
    runs = [r for r in (exps or LOADED).get("e1i", []) if r["dataset"] == ds]
    stops = sorted({epochs_run(r) for r in runs})
    totals = sorted({int(option(r, "--epochs")) for r in runs})
    return f"first {'/'.join(map(str, stops))} of {'/'.join(map(str, totals))} epochs"


def verdict(tests, lower_is_better):
    """Counts settings where GCE is significantly better / worse after Holm, and says so."""
    better = [n for n, t in tests if t and t["p_holm"] < ALPHA and (t["diff"] < 0) == lower_is_better]
    worse = [n for n, t in tests if t and t["p_holm"] < ALPHA and (t["diff"] < 0) != lower_is_better]
    none = [n for n, t in tests if t and t["p_holm"] >= ALPHA]
    parts = []
    if better:
        parts.append(f"GCE significantly better in {len(better)} ({', '.join(better)})")
    if worse:
        parts.append(f"significantly worse in {len(worse)} ({', '.join(worse)})")
    if none:
        parts.append(f"no significant difference in {len(none)}")
    return "; ".join(parts) + f" of {len(better) + len(worse) + len(none)} settings (Holm, α = {ALPHA})"


def claim_row(exps, claim, b, key, cal, bins, lower_is_better, only_lt=False):
    tests = []
    for exp, ds in settings(exps):
        if only_lt and "-lt" not in ds:
            continue
        t = FAMILY.get((exp, ds, "gce", b, key, cal, bins, False))
        if t is not None:
            tests.append((setting_name(exp, ds), t))
    here = "; ".join(f"{n}: {cell(t)}" for n, t in tests)
    return f"| {claim} | {here} | {verdict(tests, lower_is_better)} |"


def ranking(runs, ds, cal, bins):
    losses = sorted({r["loss"] for r in runs if r["dataset"] == ds})
    means = {loss: mean([metric(r, "ece", cal, bins) for r in group(runs, ds, loss)]) for loss in losses}
    return sorted(losses, key=lambda loss: means[loss])


def ranking_row(exps):
    """Settings whose loss ranking by mean ECE differs between 15 and 20 bins."""
    changed, total = [], 0
    for exp, ds in settings(exps):
        runs = exps[exp]
        for cal in ["raw", "ats"]:
            total += 1
            r15, r20 = ranking(runs, ds, cal, 15), ranking(runs, ds, cal, 20)
            if r15 != r20:
                changed.append(f"{setting_name(exp, ds)} {cal}: {' < '.join(r15)} at 15 bins, "
                               f"{' < '.join(r20)} at 20")
    verdict_text = (f"the ranking changes in {len(changed)} of {total} (setting, raw/ATS) cases"
                    if changed else f"the same ranking in all {total} cases")
    return (f"| ECE with 15 and 20 bins rank the losses the same way | "
            f"{'; '.join(changed) or '–'} | {verdict_text} |")


def ts_vs_ats_row(exps):
    """Settings and losses where ATS's mean test ECE-15 is below TS's, and where it is not."""
    better, worse = [], []
    for exp, ds in settings(exps):
        runs = exps[exp]
        for loss in sorted({r["loss"] for r in runs if r["dataset"] == ds}):
            g = group(runs, ds, loss)
            ats, ts = mean([metric(r, "ece", "ats") for r in g]), mean([metric(r, "ece", "ts") for r in g])
            (better if ats < ts else worse).append(f"{setting_name(exp, ds)} {loss} "
                                                   f"({ats * 100:.2f} vs {ts * 100:.2f})")
    return (f"| ATS calibrates better than TS (test ECE-15, mean over seeds) | ATS lower: "
            f"{'; '.join(better) or '–'}. TS lower or equal: {'; '.join(worse) or '–'} | "
            f"ATS lower in {len(better)} of {len(better) + len(worse)} (setting, loss) pairs; "
            "not tested for significance |")


def cost_rows():
    """GCE's step-time overhead over CE per benchmark file, framework variant and architecture."""
    rows = []
    for f in sorted(RESULTS.glob("bench-*.jsonl")):
        for r in cost_records(f):
            rows.append(r)
    return rows


def cost_records(f):
    records = [json.loads(line) for line in f.read_text().splitlines() if line.startswith("{")]
    out = []
    for fw in sorted({r.get("framework", "caliper") for r in records}):
        if not fw.startswith("caliper"):
            continue
        for arch in sorted({r["arch"] for r in records if r.get("framework", "caliper") == fw}):
            ms = {r["loss"]: r["median_ms"] for r in records
                  if r.get("framework", "caliper") == fw and r["arch"] == arch}
            if "ce" in ms and "gce" in ms:
                out.append({"file": f.stem[len("bench-"):], "framework": fw, "arch": arch,
                            "ce": ms["ce"], "gce": ms["gce"], "overhead": ms["gce"] / ms["ce"] - 1})
    return out


def cost_row():
    rows = [r for r in cost_rows() if not r["framework"].startswith("caliper-train-prev")]
    if not rows:
        return "| GCE costs little | no benchmark files | – |"
    by = {}
    for r in rows:
        key = ("CUDA graph" if "cuda-graph" in r["framework"] else
               "CUDA eager" if "cuda" in r["framework"] else "CPU", r["arch"])
        by.setdefault(key, []).append(r["overhead"] * 100)
    here = "; ".join(f"{dev} {arch}: {min(v):+.0f}% to {max(v):+.0f}% ({len(v)} runs)"
                     for (dev, arch), v in sorted(by.items()))
    worst = max(max(v) for v in by.values())
    return (f"| GCE costs little (step time vs CE) | {here} | overhead up to {worst:+.0f}% per step "
            "in the recorded GPU runs; see section 7 |")


def summary_table(exps):
    rows = [
        "| claim | here (GCE − CE unless said; pp; n seeds; paired t-test p and Holm p) | verdict (computed) |",
        "| --- | --- | --- |",
        stability_row(exps),
        claim_row(exps, "GCE beats CE in accuracy", "ce", "accuracy", "raw", 15, False),
        claim_row(exps, "GCE beats CE in raw ECE-15", "ce", "ece", "raw", 15, True),
        claim_row(exps, "GCE beats CE in raw ECE-20 (the paper's bins)", "ce", "ece", "raw", 20, True),
        claim_row(exps, "GCE beats CE in ECE-15 after ATS", "ce", "ece", "ats", 15, True),
        claim_row(exps, "GCE beats CE in ECE-20 after ATS", "ce", "ece", "ats", 20, True),
        claim_row(exps, "gains clearest on long-tailed data: accuracy", "ce", "accuracy", "raw", 15,
                  False, only_lt=True),
        claim_row(exps, "GCE + ATS reaches focal + ATS calibration (ECE-15 ATS, GCE − focal)", "focal",
                  "ece", "ats", 15, True),
        claim_row(exps, "... without focal's accuracy loss (accuracy, GCE − focal)", "focal", "accuracy",
                  "raw", 15, False),
        claim_row(exps, "raw GCE ECE worse than focal's (reviewers; raw ECE-15, GCE − focal)", "focal",
                  "ece", "raw", 15, True),
        ts_vs_ats_row(exps),
        ranking_row(exps),
        cost_row(),
    ]
    return "\n".join(rows)


def fisher_exact(a, b, c, d):
    """Two-sided p of Fisher's exact test for the 2x2 table [[a, b], [c, d]]: the summed
    probability of every table with the same margins no more likely than the observed one."""
    n1, n2, k = a + b, c + d, a + c
    total = math.comb(n1 + n2, k)
    prob = lambda x: math.comb(n1, x) * math.comb(n2, k - x) / total  # noqa: E731
    p_obs = prob(a)
    lo, hi = max(0, k - n2), min(k, n1)
    return min(1.0, sum(prob(x) for x in range(lo, hi + 1) if prob(x) <= p_obs * (1 + 1e-9)))


def collapse_counts(runs, ds, keys=None):
    """{loss: (collapsed, runs)} of a setting, over the (loss, seed) pairs in `keys` if given."""
    out = {}
    for r in runs:
        if r["dataset"] == ds and (keys is None or (r["loss"], r["seed"]) in keys):
            c, n = out.get(r["loss"], (0, 0))
            out[r["loss"]] = (c + collapsed(r), n + 1)
    return out


def stability(exps):
    """The stability headline under each head initialisation, computed: collapses of GCE and of
    every other loss on MNIST at lr 0.05 without warm-up (e1: He head, e1i: PyTorch's head),
    Fisher's exact test of the non-GCE collapse rate He vs PyTorch. None without e1i."""
    if "e1" not in exps or "e1i" not in exps:
        return None
    # Only the (loss, seed) runs both grids have: the comparison is paired by seed.
    both = ({(r["loss"], r["seed"]) for r in exps["e1"] if r["dataset"] == "mnist"} &
            {(r["loss"], r["seed"]) for r in exps["e1i"] if r["dataset"] == "mnist"})
    he, pt = collapse_counts(exps["e1"], "mnist", both), collapse_counts(exps["e1i"], "mnist", both)
    others = lambda c: (sum(v[0] for k, v in c.items() if k != "gce"),  # noqa: E731
                        sum(v[1] for k, v in c.items() if k != "gce"))
    (he_c, he_n), (pt_c, pt_n) = others(he), others(pt)
    p = fisher_exact(he_c, he_n - he_c, pt_c, pt_n - pt_c)
    gce_pt = pt.get("gce", (0, 0))
    holds = lambda c, gce: c > 0 and gce[0] == 0  # noqa: E731
    if holds(pt_c, gce_pt):
        verdict = "survives: under PyTorch's head init other losses still collapse and GCE does not"
    elif pt_c == 0 and gce_pt[0] == 0:
        verdict = ("does not survive: under PyTorch's head init no loss collapsed, so the difference "
                   "comes from the He-initialised head")
    else:
        verdict = "does not survive: under PyTorch's head init GCE collapsed too"
    return {"he": he, "pt": pt, "he_others": (he_c, he_n), "pt_others": (pt_c, pt_n), "p": p,
            "verdict": verdict}


def stability_row(exps):
    st = stability(exps)
    if st is None:
        return ("| GCE trains where CE and the focal family collapse (lr 0.05, no warm-up) | "
                "no PyTorch-head rerun (e1i) | – |")
    fmt = lambda c: ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(c.items()))  # noqa: E731
    return (f"| GCE trains where CE and the focal family collapse (MNIST, lr 0.05, no warm-up; "
            f"collapsed runs / seeds, on the seeds both grids ran) | He head (e1, 8 epochs): "
            f"{fmt(st['he'])}; PyTorch `nn.Linear` "
            f"head (e1i, {truncation('mnist', exps)}): {fmt(st['pt'])} | non-GCE collapses "
            f"{st['he_others'][0]}/{st['he_others'][1]} with He vs {st['pt_others'][0]}/"
            f"{st['pt_others'][1]} with PyTorch's init (Fisher's exact p = {st['p']:.2g}); the "
            f"headline {st['verdict']} |")


def protocol_notes(exps):
    """Facts about the runs that qualify what the tables measure, read from their arguments."""
    notes = []
    gammas = {}
    for runs in exps.values():
        for r in runs:
            if r["loss"] in ("focal", "dual-focal", "flsd53"):
                gammas.setdefault(r["loss"], set()).add(option(r, "--focal-gamma", "3"))
    if gammas:
        notes.append("Focal-family gamma as run: " + "; ".join(
            f"{loss}: {', '.join(sorted(g))}" for loss, g in sorted(gammas.items())) +
            ". Dual focal's paper uses gamma 5; these runs used the trainer's shared `--focal-gamma` "
            "default.")
    lt = [r for r in exps.get("e2", [])]
    if lt and all(not option(r, "--val-split") for r in lt):
        rerun = sorted({r["dataset"] for r in exps.get("e2b", [])})
        # Settings with fewer balanced runs than imbalanced ones are not rerun in full.
        missing = sorted(ds for ds in {r["dataset"] for r in lt}
                         if len(group_all(exps.get("e2b", []), ds)) < len(group_all(lt, ds)))
        notes.append("Long-tailed settings (section 2): experiment 2's validation (checkpoint choice "
                     "and the TS/ATS fit) was carved from the long-tailed training split, so it is as "
                     "imbalanced as training, while the test split is balanced: ECE after TS/ATS there "
                     "measures calibration transferred across a label shift, not in-distribution "
                     "calibration; those settings are labelled *imbalanced validation*. " +
                     ("Rerun with a class-balanced validation split (`--val-balanced`, labelled "
                      "*balanced validation*, experiment 2b): " + "; ".join(
                          f"{ds} ({', '.join(sorted(r['loss'] + ' seed ' + str(r['seed']) for r in exps['e2b'] if r['dataset'] == ds))})"
                          for ds in rerun) + ". " if rerun else "") +
                     (f"Not (fully) rerun with balanced validation: {', '.join(missing)}; their "
                      "*imbalanced validation* numbers measure calibration across the label shift "
                      "(the cost is in the commentary of section 2)." if missing else ""))
    de = [r for r in exps.get("e5", [])]
    if de and all(option(r, "--train-fraction") for r in de):
        scaled = sorted({r["dataset"] for r in exps.get("e5s", [])})
        notes.append("Data efficiency (section 5): experiment 5's validation was carved (10% of the "
                     "full training split) before `--train-fraction` subsampled the rest, so at 1% the "
                     "models trained on about 540 images and chose checkpoints and fitted calibrators "
                     "on about 6,000 (labelled *validation before the fraction*). " +
                     (f"Rerun with validation scaled with the fraction (`--val-after-fraction`: 10% of "
                      f"the run's own images, 60 at 1% and 600 at 10%; labelled *validation scaled "
                      f"with the fraction*, experiment 5s): {', '.join(scaled)}. " if scaled else "") +
                     (f"Not rerun so: {', '.join(sorted({r['dataset'] for r in de} - set(scaled)))}."
                      if {r["dataset"] for r in de} - set(scaled) else ""))
    if "e1i" in exps:
        notes.append("The MNIST collapse grid (section 1) was rerun with the classifier head started "
                     "as PyTorch's `nn.Linear` (`--head-init linear-default`, experiment 1i) for the "
                     f"{truncation('mnist', exps)} of the same schedule on the CPU; its accuracy and "
                     "ECE are those of that truncated budget, comparable between its losses, not "
                     "with experiment 1's 8 epochs.")
    return "\n".join(f"- {n}" for n in notes)


# ---- tables -----------------------------------------------------------------------------------

LOADED = {}


def load():
    exps = LOADED
    for f in sorted(RESULTS.glob("e*.json")):
        exps[f.stem] = json.loads(f.read_text())["runs"]
    return exps


def metric(r, key, cal="raw", bins=15):
    return r["test"][f"bins{bins}"][cal][key]


def pm(xs, scale=100, digits=2):
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0] * scale:.{digits}f}"
    return f"{mean(xs) * scale:.{digits}f} ± {sd(xs) * scale:.{digits}f}"


def group(runs, dataset, loss):
    return sorted((r for r in runs if r["dataset"] == dataset and r["loss"] == loss),
                  key=lambda r: r["seed"])


def collapsed(r):
    return metric(r, "accuracy") < COLLAPSE and r["test"]["bins15"]["raw"]["classes"] >= 10


def main_table(runs, dataset, losses):
    out = ["| loss | seeds (collapsed) | accuracy % | ECE-15 raw | ECE-15 TS | ECE-15 ATS | "
           "ECE-20 raw | ECE-20 ATS | NLL raw | NLL ATS |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for loss in losses:
        g = group(runs, dataset, loss)
        if not g:
            continue
        col = sum(collapsed(r) for r in g)
        m = lambda k, c="raw", b=15: [metric(r, k, c, b) for r in g]  # noqa: E731
        out.append(f"| {loss} | {len(g)} ({col}) | {pm(m('accuracy'))} | {pm(m('ece'))} | "
                   f"{pm(m('ece', 'ts'))} | {pm(m('ece', 'ats'))} | {pm(m('ece', 'raw', 20))} | "
                   f"{pm(m('ece', 'ats', 20))} | {pm(m('nll'), 1, 3)} | {pm(m('nll', 'ats'), 1, 3)} |")
    return "\n".join(out)


def more_table(runs, dataset, losses):
    out = ["| loss | AdaECE raw | AdaECE ATS | classwise ECE raw | classwise ECE ATS | Brier raw | "
           "Brier ATS |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for loss in losses:
        g = group(runs, dataset, loss)
        if not g:
            continue
        m = lambda k, c="raw": [metric(r, k, c) for r in g]  # noqa: E731
        out.append(f"| {loss} | {pm(m('adaece'))} | {pm(m('adaece', 'ats'))} | "
                   f"{pm(m('classwise_ece'))} | {pm(m('classwise_ece', 'ats'))} | "
                   f"{pm(m('brier'), 1, 4)} | {pm(m('brier', 'ats'), 1, 4)} |")
    return "\n".join(out)


PAIRED_METRICS = [("accuracy", "raw", 15, "accuracy"), ("ece", "raw", 15, "ECE-15 raw"),
                  ("ece", "raw", 20, "ECE-20 raw"), ("ece", "ats", 15, "ECE-15 ATS"),
                  ("ece", "ats", 20, "ECE-20 ATS")]


def paired_test(runs, dataset, a, b, key, cal, bins, healthy_only=False):
    """Paired t-test of a - b (in percentage points) over the seeds both losses ran; with
    `healthy_only`, only seeds where neither run collapsed. None when fewer than 2 pairs."""
    ga = {r["seed"]: r for r in group(runs, dataset, a)}
    gb = {r["seed"]: r for r in group(runs, dataset, b)}
    seeds = sorted(set(ga) & set(gb))
    if healthy_only:
        seeds = [x for x in seeds if not collapsed(ga[x]) and not collapsed(gb[x])]
    if len(seeds) < 2:
        return None
    d, sdev, t, pval = paired_t([metric(ga[x], key, cal, bins) * 100 for x in seeds],
                                [metric(gb[x], key, cal, bins) * 100 for x in seeds])
    return {"diff": d, "sd": sdev, "t": t, "p": pval, "n": len(seeds)}


def holm(pvalues):
    """Holm's step-down adjustment: adjusted p-values in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    m, running, out = len(pvalues), 0.0, [1.0] * len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


class Family:
    """Every paired test the report states, so that one Holm correction covers them all. Tests
    are registered first (by `register`), adjusted once (`adjust`), then looked up."""

    def __init__(self):
        self.tests, self.adjusted = {}, None

    def register(self, key, test):
        if test is not None and not math.isnan(test["p"]):
            self.tests[key] = test

    def adjust(self):
        keys = sorted(self.tests)
        for k, q in zip(keys, holm([self.tests[k]["p"] for k in keys])):
            self.tests[k]["p_holm"] = q
        self.adjusted = True

    def get(self, key):
        return self.tests.get(key)


FAMILY = Family()
ALPHA = 0.05


def cell(test, unit="pp"):
    if test is None:
        return "too few seeds"
    return (f"{test['diff']:+.2f} {unit} (n = {test['n']}, p = {test['p']:.3f}, "
            f"Holm p = {test['p_holm']:.3f})")


def paired_rows(runs, dataset, a="gce", b="ce", label="", exp=""):
    ga = {r["seed"]: r for r in group(runs, dataset, a)}
    gb = {r["seed"]: r for r in group(runs, dataset, b)}
    seeds = sorted(set(ga) & set(gb))
    healthy = [x for x in seeds if not collapsed(ga[x]) and not collapsed(gb[x])]
    rows = []
    for name, only in [("all seeds", False)] + ([("seeds where neither collapsed", True)]
                                                if healthy != seeds else []):
        tests = [FAMILY.get((exp, dataset, a, b, k, c, bins, only)) for k, c, bins, _ in PAIRED_METRICS]
        if all(t is None for t in tests):
            rows.append(f"| {label}{dataset} | {name} | too few seeds | | | | | |")
            continue
        n = next(t["n"] for t in tests if t)
        rows.append(f"| {label}{dataset} | {name} | {n} | " + " | ".join(
            cell(t) if t else "–" for t in tests) + " |")
    return rows


def register_pairs(exps):
    """Registers every GCE-vs-CE and GCE-vs-focal test of every setting (all seeds and, where a
    run collapsed, the healthy seeds) in the Holm family."""
    for exp, ds in settings(exps):
        runs = exps[exp]
        for b in ["ce", "focal"]:
            if not group(runs, ds, b) or not group(runs, ds, "gce"):
                continue
            for only in [False, True]:
                for k, c, bins, _ in PAIRED_METRICS:
                    FAMILY.register((exp, ds, "gce", b, k, c, bins, only),
                                    paired_test(runs, ds, "gce", b, k, c, bins, only))
    FAMILY.adjust()


def paired_table(rows, b="CE"):
    head = " | ".join(f"{name} GCE − {b}" for *_, name in PAIRED_METRICS)
    return "\n".join([f"| setting | seeds | n | {head} |",
                      "| --- | --- | ---: | " + " | ".join("---" for _ in PAIRED_METRICS) + " |",
                      *rows,
                      "",
                      "Differences in percentage points, paired over seeds; p from the paired t-test, "
                      f"Holm p adjusted over all {len(FAMILY.tests)} paired tests of this report "
                      "(every setting, metric and comparison in the summary)."])


def rare_table(runs, dataset, losses, k=10, rare=3):
    out = [f"| loss | seeds | accuracy % | ECE-15 raw | ECE-15 ATS | accuracy of the {rare} rarest "
           "classes % (each) |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for loss in losses:
        g = group(runs, dataset, loss)
        if not g:
            continue
        per = [[r["test_per_class_accuracy"][c] for r in g] for c in range(k - rare, k)]
        out.append(f"| {loss} | {len(g)} | {pm([metric(r, 'accuracy') for r in g])} | "
                   f"{pm([metric(r, 'ece') for r in g])} | {pm([metric(r, 'ece', 'ats') for r in g])} | "
                   + ", ".join(f"class {k - rare + i}: {pm(p, 100, 1)}" for i, p in enumerate(per)) + " |")
    return "\n".join(out)


def option(r, flag, default=None):
    args = r.get("args", [])
    return args[args.index(flag) + 1] if flag in args else default


def epochs_run(r):
    """Epochs a run trained, from its epoch log (a stopped or extended run differs from its
    --epochs), else from its arguments."""
    if r.get("epochs"):
        return max(e["epoch"] for e in r["epochs"])
    return int(option(r, "--epochs"))


def budget(runs):
    if not runs:
        return ""
    devs = sorted({r.get("device") or "?" for r in runs})
    epochs = sorted({epochs_run(r) for r in runs})
    walls = [r["wall_s"] for r in runs if r.get("wall_s")]
    return (f"Budget: {len(runs)} runs, {', '.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''} each, on "
            f"{', '.join(devs)}; wall time per run {min(walls):.0f}-{max(walls):.0f} s "
            f"(several trainers shared the device).")


def validation_note(runs):
    """Which validation images the runs picked their epoch on and fitted TS / ATS on."""
    own = sorted({option(r, "--val-split") for r in runs if option(r, "--val-split")})
    carved = sorted({option(r, "--val-fraction", "0.1") for r in runs if not option(r, "--val-split")})
    parts = [f"{sum(1 for r in runs if option(r, '--val-split') == s)} runs on the dataset's own "
             f"`{s}` split (`--val-split {s}`, the whole training split trained on)" for s in own]
    parts += [f"{sum(1 for r in runs if not option(r, '--val-split') and option(r, '--val-fraction', '0.1') == f)} "
              f"runs on {float(f) * 100:g}% of the training split (`--val-fraction {f}`, stratified, seeded)"
              for f in carved]
    return "Validation and calibration data: " + "; ".join(parts) + "."


def ratio(r):
    return float(option(r, "--imbalance-ratio", "1"))


def lt_datasets(runs):
    """The long-tailed settings, by dataset, the larger imbalance ratio first."""
    first = {}
    for r in runs:
        first.setdefault(r["dataset"], r)
    return sorted(first, key=lambda d: (first[d]["dataset"].rsplit("-lt", 1)[0], -ratio(first[d])))


def commentary():
    path = RESULTS / "commentary.md"
    sections, key = {}, None
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                key = line[3:].strip()
                sections[key] = []
            elif key:
                sections[key].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


def render():
    exps, notes = load(), commentary()
    register_pairs(exps)
    six = ["ce", "gce", "focal", "flsd53", "dual-focal", "label-smoothing"]
    three = ["ce", "gce", "focal"]
    parts = ["# Reproducing the GCE paper's claims with caliper",
             "",
             "Generated by `scripts/repro/report.py render` from the raw per-run results in "
             "`docs/results/*.json` (do not edit by hand; the commentary comes from "
             "`docs/results/commentary.md`). Every run was trained by `caliper-train` and scored by "
             "`caliper calibrate` / `caliper eval` (`scripts/repro/experiments.py`): TS and ATS are "
             "fitted on the run's validation split (10% of the training data, stratified, seeded, unless "
             "a section says otherwise) and applied to the test split. Numbers are mean ± sample standard deviation over seeds, in "
             "percent unless they are NLL or Brier. A run whose test accuracy is below 20% (on ten "
             "classes) is counted as *collapsed*: it predicts one class for everything.",
             "",
             "## Summary (computed)",
             "",
             "Every comparison in this table is computed from the JSON by `report.py`: the paired "
             "t-test over seeds of each setting, with Holm's correction over every paired test in "
             "this report. A verdict counts a setting only where the Holm-adjusted p is below 0.05.",
             "",
             summary_table(exps),
             "",
             protocol_notes(exps),
             "", notes.get("summary", ""), ""]

    def section(title, key, body):
        parts.extend([f"## {title}", "", body, "", notes.get(key, ""), ""])

    if "e1" in exps:
        r = exps["e1"]
        body = []
        for ds in ["mnist", "fashion-mnist"]:
            body += [f"### {ds} (LeNet, lr 0.05 cosine, no warm-up)", "", budget(group_all(r, ds)), "",
                     main_table(r, ds, six), "", more_table(r, ds, six), ""]
        rows = paired_rows(r, "mnist", exp="e1") + paired_rows(r, "fashion-mnist", exp="e1")
        if "e1i" in exps:
            body += collapse_grid(exps)
            rows += paired_rows(exps["e1i"], "mnist", label="PyTorch head: ", exp="e1i")
        if "e1w" in exps:
            w = exps["e1w"]
            body += ["### mnist again, with one epoch of linear warm-up (CPU)", "", budget(w), "",
                     main_table(w, "mnist", three), "", more_table(w, "mnist", three), ""]
            rows += paired_rows(w, "mnist", label="warm-up: ", exp="e1w")
        body += ["### Paired test, GCE vs CE (same seeds)", "", paired_table(rows)]
        section("1. MNIST and Fashion-MNIST: six losses", "e1", "\n".join(body))
    if "e2" in exps:
        r = exps["e2"]
        b = exps.get("e2b", [])
        body = []
        for ds in lt_datasets(r + b):
            g = group_all(r + b, ds)
            body += [f"### {ds} (imbalance ratio {ratio(g[0]):g})", ""]
            for exp, runs in [("e2", r), ("e2b", b)]:
                if group_all(runs, ds):
                    body += [f"#### {VALIDATION_LABELS[exp]}", "", budget(group_all(runs, ds)), "",
                             lt_validation_note(group_all(runs, ds)), "", rare_table(runs, ds, three), ""]
            if group_all(r, ds) and group_all(b, ds):
                body += [validation_comparison(r, b, ds, three), ""]
        rows = [row for ds in lt_datasets(r) for row in paired_rows(r, ds, label="imbalanced validation: ",
                                                                     exp="e2")]
        rows += [row for ds in lt_datasets(b) for row in paired_rows(b, ds, label="balanced validation: ",
                                                                     exp="e2b")]
        body += ["### Paired test, GCE vs CE", "", paired_table(rows)]
        ratios = " and ".join(f"{x:g}" for x in sorted({ratio(x) for x in r}, reverse=True))
        section(f"2. Long-tailed data (imbalance ratio {ratios})", "e2", "\n".join(body))
    if "e3" in exps:
        r = exps["e3"]
        epochs = "/".join(str(e) for e in sorted({epochs_run(x) for x in r}))
        body = [budget(r), "", main_table(r, "cifar10", three), "", more_table(r, "cifar10", three),
                "", paired_table(paired_rows(r, "cifar10", exp="e3"))]
        section(f"3. CIFAR-10, ResNet-20 ({epochs} epochs per run)", "e3", "\n".join(body))
    if "e4" in exps:
        r = exps["e4"]
        body = [budget(r), "", validation_note(r), "", main_table(r, "pneumonia", three), "",
                more_table(r, "pneumonia", three), "", paired_table(paired_rows(r, "pneumonia", exp="e4"))]
        section("4. Medical: PneumoniaMNIST (binary)", "e4", "\n".join(body))
    if "e5" in exps:
        r = exps["e5"]
        sc = exps.get("e5s", [])
        body = []
        for ds in sorted({x["dataset"] for x in r + sc}):
            body += [f"### {ds}", ""]
            for exp, runs in [("e5", r), ("e5s", sc)]:
                if group_all(runs, ds):
                    body += [f"#### {VALIDATION_LABELS[exp]}", "", budget(group_all(runs, ds)), "",
                             lt_validation_note(group_all(runs, ds)), "",
                             main_table(runs, ds, ["ce", "gce"]), ""]
        rows = [row for ds in sorted({x["dataset"] for x in r})
                for row in paired_rows(r, ds, label="validation before the fraction: ", exp="e5")]
        rows += [row for ds in sorted({x["dataset"] for x in sc})
                 for row in paired_rows(sc, ds, label="validation scaled: ", exp="e5s")]
        body += ["(100% of the data is experiment 1's MNIST rows.)", "", paired_table(rows)]
        section("5. Data efficiency: 1% and 10% of MNIST", "e5", "\n".join(body))
    if "e6" in exps:
        section("6. Out-of-distribution detection: MNIST models on Fashion-MNIST", "e6", ood_table(exps["e6"]))
    section("7. Cost of GCE", "e7", cost_table())
    parts.extend(["## Reliability diagrams", "", notes.get("diagrams", ""), ""])
    for d in sorted((DOCS / "reproduction").glob("*-raw.svg")):
        stem = d.name[:-len("-raw.svg")]
        parts.append(f"| {stem}: uncalibrated | {stem}: ATS |\n| --- | --- |\n"
                     f"| ![](reproduction/{stem}-raw.svg) | ![](reproduction/{stem}-ats.svg) |\n")
    text = "\n".join(parts).replace("\n\n\n", "\n\n").rstrip() + "\n"
    (DOCS / "REPRODUCTION.md").write_text(text)
    print(f"wrote {DOCS / 'REPRODUCTION.md'}")


VALIDATION_LABELS = {
    "e2": "imbalanced validation: 10% of each class of the long-tailed training split (experiment 2)",
    "e2b": "balanced validation: the same number of every class, 20% of the rarest class's count "
           "(`--val-balanced`, experiment 2b)",
    "e5": "validation before the fraction: 10% of the full training split, then the fraction of "
          "the rest trained on (experiment 5)",
    "e5s": "validation scaled with the fraction: the fraction first, 10% of it held out "
           "(`--val-after-fraction`, experiment 5s)",
}


def lt_validation_note(runs):
    """Validation size and the ATS pieces fitted, as the results recorded them."""
    sizes = sorted({r["val_samples"] for r in runs if r.get("val_samples")})
    pieces = sorted({(r.get("ats_fitted") or {}).get("pieces") or 0 for r in runs if r.get("ats_fitted")})
    if not sizes:
        return ("Validation images per run: not recorded in these results (10% of the training "
                "images the run's options select).")
    text = f"Validation images per run: {', '.join(map(str, sizes))}."
    if pieces:
        text += (f" ATS pieces fitted on them: {', '.join(map(str, pieces))} (15 asked; fewer where "
                 "the split has under 10 images per piece, 0 = plain TS).")
    return text


def best_val_accuracy(r):
    return max(e["val_accuracy"] for e in r["epochs"]) if r.get("epochs") else float("nan")


def validation_comparison(imb, bal, ds, losses):
    """Both validations of a long-tailed setting side by side: validation vs test accuracy (the
    label-shift symptom of issue 18) and test ECE after TS and ATS fitted on each."""
    out = [f"Both validations of {ds} side by side (mean over seeds; the runs differ in the "
           "images held out, so they are not paired):", "",
           "| loss | validation | seeds | best validation accuracy % | test accuracy % | "
           "test ECE-15 raw | test ECE-15 TS | test ECE-15 ATS | test ECE-20 ATS |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for loss in losses:
        for name, runs in [("imbalanced", imb), ("balanced", bal)]:
            g = group(runs, ds, loss)
            if not g:
                continue
            out.append(f"| {loss} | {name} | {len(g)} | {pm([best_val_accuracy(x) for x in g])} | "
                       f"{pm([metric(x, 'accuracy') for x in g])} | {pm([metric(x, 'ece') for x in g])} | "
                       f"{pm([metric(x, 'ece', 'ts') for x in g])} | {pm([metric(x, 'ece', 'ats') for x in g])} | "
                       f"{pm([metric(x, 'ece', 'ats', 20) for x in g])} |")
    return "\n".join(out)


def collapse_grid(exps):
    """Experiment 1i beside experiment 1: per loss and seed, the validation accuracy after the
    first epoch (the same learning rates in both: epoch 1 of the 8-epoch cosine schedule) and
    whether the run ended collapsed (test accuracy below 20%), then the computed verdict."""
    he, pt = exps["e1"], exps["e1i"]
    seeds = sorted({r["seed"] for r in pt if r["dataset"] == "mnist"})
    out = [f"### mnist with PyTorch's head initialisation (lr 0.05 cosine, no warm-up; "
           f"{truncation('mnist', exps)})", "", budget(group_all(pt, "mnist")), "",
           "The collapse grid of the table above, rerun with the classifier head started as "
           "PyTorch's `nn.Linear` (`--head-init linear-default`: weight and bias U(±1/sqrt(128)), "
           "instead of He's U(±sqrt(6/128)) weight and zero bias); same seeds (so the same split, "
           "batches and body initialisation), same recipe. Each cell: validation accuracy after "
           "epoch 1 (%), ✗ where the run ended collapsed (test accuracy < 20%).", "",
           "| loss | head | " + " | ".join(f"seed {x}" for x in seeds) + " | collapsed |",
           "| --- | --- | " + " | ".join("---:" for _ in seeds) + " | ---: |"]
    for loss in LOSSES_ORDER:
        for name, runs in [("He (e1)", he), ("PyTorch (e1i)", pt)]:
            g = {r["seed"]: r for r in group(runs, "mnist", loss) if r["seed"] in seeds}
            if not g:
                continue
            cells = []
            for x in seeds:
                r = g.get(x)
                if r is None or not r.get("epochs"):
                    cells.append("–")
                    continue
                cells.append(f"{r['epochs'][0]['val_accuracy'] * 100:.1f}{' ✗' if collapsed(r) else ''}")
            n = sum(collapsed(r) for r in g.values())
            out.append(f"| {loss} | {name} | " + " | ".join(cells) + f" | {n}/{len(g)} |")
    st = stability(exps)
    out += ["", f"**Computed** (the seeds both grids ran): non-GCE runs collapsed "
            f"{st['he_others'][0]} of {st['he_others'][1]} "
            f"with the He head, {st['pt_others'][0]} of {st['pt_others'][1]} with PyTorch's (Fisher's "
            f"exact test p = {st['p']:.2g}); GCE {st['he'].get('gce', (0, 0))[0]} of "
            f"{st['he'].get('gce', (0, 0))[1]} and {st['pt'].get('gce', (0, 0))[0]} of "
            f"{st['pt'].get('gce', (0, 0))[1]}. The stability headline {st['verdict']}.", "",
           "Run by run (PyTorch head; final = the epoch the run stopped at):", "",
           "| loss | seed | collapsed | final validation accuracy % | test accuracy % | test ECE-15 raw | "
           "test ECE-15 ATS | wall s |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for loss in LOSSES_ORDER:
        for r in group(pt, "mnist", loss):
            out.append(f"| {loss} | {r['seed']} | {'yes' if collapsed(r) else 'no'} | "
                       f"{r['epochs'][-1]['val_accuracy'] * 100:.2f} | {metric(r, 'accuracy') * 100:.2f} | "
                       f"{metric(r, 'ece') * 100:.2f} | {metric(r, 'ece', 'ats') * 100:.2f} | "
                       f"{r.get('wall_s') or '–'} |")
    out += ["", main_table(pt, "mnist", LOSSES_ORDER), "", more_table(pt, "mnist", LOSSES_ORDER), ""]
    return out


LOSSES_ORDER = ["ce", "gce", "focal", "flsd53", "dual-focal", "label-smoothing"]


def group_all(runs, dataset):
    return [r for r in runs if r["dataset"] == dataset]


def ood_table(runs):
    out = ["| model (loss) | seeds | score | AUROC % | FPR at 95% TPR % | AUPR % |",
           "| --- | ---: | --- | ---: | ---: | ---: |"]
    for loss in ["ce", "gce", "focal"]:
        g = [r for r in runs if r["loss"] == loss]
        if not g:
            continue
        for score in g[0]["scores"]:
            vals = lambda k: [r["scores"][score][k] for r in g if score in r["scores"]]  # noqa: E731
            out.append(f"| {loss} | {len(g)} | {score} | {pm(vals('auroc'))} | {pm(vals('fpr95'))} | "
                       f"{pm(vals('aupr'))} |")
    return "\n".join(out)


def cost_table():
    out = ["| file | trainer | arch | CE ms/step | GCE ms/step | GCE overhead |",
           "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in cost_rows():
        out.append(f"| {r['file']} | {r['framework']} | {r['arch']} | {r['ce']:.2f} | {r['gce']:.2f} | "
                   f"{r['overhead'] * 100:+.1f}% |")
    out += ["", "One row per benchmark file, trainer variant (eager or CUDA graph; "
            "`caliper-train-prev` is the previous trainer build timed in the same run) and "
            "architecture; median of 50 steps each."]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "collect":
        collect(sys.argv[2:])
    elif len(sys.argv) == 2 and sys.argv[1] == "render":
        render()
    else:
        sys.exit(__doc__)
