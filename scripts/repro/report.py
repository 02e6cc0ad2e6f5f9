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
    for exp in ["e1", "e1w", "e2", "e3", "e4", "e5"]:
        for ds in sorted({r["dataset"] for r in exps.get(exp, [])}):
            if group(exps[exp], ds, "gce"):
                out.append((exp, ds))
    return out


SETTING_NAMES = {"e1": "", "e1w": " (warm-up)", "e2": "", "e3": "", "e4": "", "e5": ""}


def setting_name(exp, ds):
    return ds + SETTING_NAMES.get(exp, "") + (" (no warm-up)" if exp == "e1" and ds == "mnist" else "")


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
        notes.append("Long-tailed settings (section 2): validation (checkpoint choice and the TS/ATS "
                     "fit) was carved from the long-tailed training split, so it is as imbalanced as "
                     "training, while the test split is balanced: ECE after TS/ATS there measures "
                     "calibration transferred across a label shift, not in-distribution calibration.")
    de = [r for r in exps.get("e5", [])]
    if de and all(option(r, "--train-fraction") for r in de):
        notes.append("Data efficiency (section 5): validation was carved (10% of the full training "
                     "split) before `--train-fraction` subsampled the rest, so at 1% the models trained "
                     "on about 540 images and chose checkpoints and fitted calibrators on about 6,000.")
    return "\n".join(f"- {n}" for n in notes)


# ---- tables -----------------------------------------------------------------------------------

def load():
    exps = {}
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
    return (f"Budget: {len(runs)} runs, {', '.join(map(str, epochs))} epochs each, on "
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
        if "e1w" in exps:
            w = exps["e1w"]
            body += ["### mnist again, with one epoch of linear warm-up (CPU)", "", budget(w), "",
                     main_table(w, "mnist", three), "", more_table(w, "mnist", three), ""]
            rows += paired_rows(w, "mnist", label="warm-up: ", exp="e1w")
        body += ["### Paired test, GCE vs CE (same seeds)", "", paired_table(rows)]
        section("1. MNIST and Fashion-MNIST: six losses", "e1", "\n".join(body))
    if "e2" in exps:
        r = exps["e2"]
        body = []
        for ds in lt_datasets(r):
            g = group_all(r, ds)
            body += [f"### {ds} (imbalance ratio {ratio(g[0]):g})", "", budget(g), "",
                     rare_table(r, ds, three), ""]
        rows = [row for ds in lt_datasets(r) for row in paired_rows(r, ds, exp="e2")]
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
        body = []
        for ds in sorted({x["dataset"] for x in r}):
            body += [f"### {ds}", "", budget(group_all(r, ds)), "", main_table(r, ds, ["ce", "gce"]), ""]
        rows = [row for ds in sorted({x["dataset"] for x in r}) for row in paired_rows(r, ds, exp="e5")]
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
