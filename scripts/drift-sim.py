#!/usr/bin/env python3
"""Drift simulator (issue 22, section 5): streams real test images through caliper servers with
a scripted shift, posts their labels after a delay, records the live monitor over time and
measures the issue's targets itself.

Scenarios (--scenario, several allowed):
  label_shift  from --onset on, --shift-share (0.8) of the traffic comes from two classes (drawn
               per stream), the rest uniformly from the others; the stream ends
               --label-shift-after (2000) predictions after the onset;
  covariate    from --onset on, a corruption rises linearly to --severity over --ramp (5000)
               predictions, then holds (contrast loss plus Gaussian noise by default;
               --corruption blur|noise|contrast); --requests (6000) predictions in all;
  none         i.i.d. draws from the test set; --requests predictions.
A covariate or no-shift stream whose first automatic promotion leaves fewer than
--after-promotion predictions before its end runs on until it has them (at most --max-requests).

Two servers per stream (with --caliper: each started on port 0 with a private copy of
calib/<model>.json and a private state dir, so nothing leaks between streams or servers) receive
the same images in the same order, and each gets the labels of its own predictions (nothing is
counted twice):
  reference  the shipped calibrator, no correction, no recalibration: the "without" arm, and the
             server whose alarm is measured;
  treated    label_shift: every request asks ?adapt=label_shift;
             covariate and none: started with --auto-recalibrate;
             with --treat aci (any scenario): started with --adaptive-conformal <model> only
             (--aci-gamma passed on when given), no recalibration, no adapt; neither arm's requests
             name an alpha (ACI builds only the sets of such requests), so both serve sets at the
             calibration file's level, static on the reference and alpha_t on the treated server.
Both use --shift-window (2000, so that the label-shift window holds exactly the 2,000 post-onset
predictions when the estimate is read) and --monitor-window (500).

Measured per stream (summary over streams in <out>/<dataset>-summary.json and .md):
  label_shift  total variation (L1 / 2) between the reference server's estimated prior (EM and
               BBSE, /monitor `estimated`) and the true class mix of the window (the 2,000
               post-onset predictions), read after the last of them; ECE and NLL of the
               probabilities served by each arm on the post-onset predictions (from the full
               `probabilities` vectors), and their difference (without - with);
  covariate    the first automatic promotion on the treated server (seen on /metrics before each
               batch), then the ECE of the next --after-promotion (1000) predictions under the
               promoted calibrator (treated) and under the shipped one (reference) on the same
               images;
  --treat aci  coverage and mean size of each arm's served sets (the responses' `prediction_set`
               against the label) over the post-onset predictions and the last --aci-last (1000)
               of each stream, against the target 1 - alpha; in the summary as means over streams
               with intervals, the mean |coverage - target| and how many streams are within 0.02
               of the target; the treated server's `adaptive_conformal.alpha` (alpha_t) over time;
  every        whether the reference server's `alarm` fired, its reason, and when (in predictions
               served, polled every --record-every predictions); promotions of the treated one.
ECE: 15 equal-width bins on the top-label confidence, like the server. Intervals over streams:
bootstrap percentile, 10,000 resamples, seeded.

Every --record-every predictions it also records both servers' /monitor (live ECE, NLL,
accuracy, shadows, `estimated`, `alarm`, `conformal`) and plots them: <out>/<dataset>-<scenario>
.json (time series, per-stream results, the command) and .svg (a plain SVG writer, no matplotlib).
Needs python3 with numpy and pillow (scripts/install-test-deps.sh). `--summary-only` rebuilds the
summary from the JSON files in --out.

Example (what made docs/drift/; see docs/MONITORING.md, "Drift simulator"):
  scripts/drift-sim.py --caliper target/release/caliper --model mnist --dataset mnist \\
      --streams 20 --out docs/drift
With and without adaptive conformal inference (docs/drift/aci/; docs/MONITORING.md, "Conformal
coverage held in production"):
  scripts/drift-sim.py --caliper target/release/caliper --model cifar10 --dataset cifar10 \\
      --streams 20 --scenario covariate --onset 300 --ramp 700 --requests 2000 --treat aci \\
      --out docs/drift/aci
"""

import argparse
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
BINS = 15
PROB_FLOOR = 1e-6  # served probabilities are rounded; the NLL of a rounded-to-0 label is capped

# ---------------------------------------------------------------------------------------------
# Data (docs/DATA.md): MNIST / Fashion-MNIST IDX files, CIFAR-10 JPEG folders.


def read_idx(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(folder, stem):
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    sys.exit(f"error: {folder / stem} not found: run scripts/fetch-data.sh")


def load_dataset(name, data_dir, class_names):
    """(images as uint8 arrays HxW or HxWx3, labels as model class indices)."""
    if name in ("mnist", "fashion-mnist"):
        folder = data_dir / name
        x = read_idx(find(folder, "t10k-images-idx3-ubyte"))
        y = read_idx(find(folder, "t10k-labels-idx1-ubyte")).astype(int)
        return list(x), list(y)
    if name == "cifar10":
        folder = data_dir / "cifar10" / "test"
        if not folder.is_dir():
            sys.exit(f"error: {folder} not found: run scripts/fetch-data.sh")
        images, labels = [], []
        for cls in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            if cls not in class_names:
                sys.exit(f"error: class folder {cls!r} is not a label of the model")
            for f in sorted((folder / cls).iterdir()):
                images.append(np.asarray(Image.open(f).convert("RGB")))
                labels.append(class_names.index(cls))
        return images, labels
    sys.exit(f"error: unknown dataset {name!r} (mnist, fashion-mnist, cifar10)")


def corrupt(img, severity, kind, rng):
    """A corrupted copy of a uint8 image; severity in [0, 1]."""
    if severity <= 0:
        return img
    x = img.astype(np.float64)
    if kind in ("contrast", "contrast+noise"):
        mean = x.mean()
        x = mean + (x - mean) * (1.0 - 0.75 * severity)
    if kind in ("noise", "contrast+noise"):
        x = x + rng.normal(0.0, 80.0 * severity, size=x.shape)
    if kind == "blur":
        pil = Image.fromarray(img)
        return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=2.5 * severity)))
    return np.clip(x, 0, 255).astype(np.uint8)


def encode_png(img):
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# HTTP


class Client:
    def __init__(self, url, api_key=None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(self, method, path, body=None, ctype=None):
        headers = dict(self.headers)
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise SystemExit(f"error: {method} {path}: {e.code} {e.read()[:300]!r}")

    def predict(self, model, pngs, alpha, adapt=False):
        boundary = uuid.uuid4().hex
        parts = []
        for i, data in enumerate(pngs):
            parts.append(
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"; "
                f"filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n".encode()
                + data
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        query = "?top_k=1" + (f"&alpha={alpha}" if alpha else "") + ("&adapt=label_shift" if adapt else "")
        v = self.request(
            "POST",
            f"/v1/models/{model}/predict{query}",
            body,
            f"multipart/form-data; boundary={boundary}",
        )
        return v["predictions"]

    def feedback(self, items):
        for i in range(0, len(items), 1000):
            self.request(
                "POST",
                "/v1/feedback",
                json.dumps({"feedback": items[i : i + 1000]}).encode(),
                "application/json",
            )

    def monitor(self, model):
        return self.request("GET", f"/v1/models/{model}/monitor")

    def promotions(self, model):
        """Sum of caliper_recalibrations_total for the model (0 when not exported)."""
        req = urllib.request.Request(self.url + "/metrics", headers=self.headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("caliper_recalibrations_total{") and f'model="{model}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


class Server:
    """`caliper serve` on port 0 over models/ and a private copy of calib/<model>.json."""

    def __init__(self, caliper, models, calib, model, extra):
        self.dir = tempfile.mkdtemp(prefix="drift-sim-")
        cal = Path(self.dir) / "calib"
        cal.mkdir()
        src = Path(calib) / f"{model}.json"
        if src.exists():
            shutil.copy(src, cal / src.name)
        args = [
            caliper, "--log-json", "serve", "--addr", "127.0.0.1:0", "--models", str(models),
            "--calib", str(cal), "--state-dir", str(Path(self.dir) / "state"),
            "--feedback-key", "drift-sim", "--sessions-per-model", "1",
        ] + extra
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.addr = None
        deadline = time.time() + 180
        for line in self.proc.stderr:
            try:
                msg = json.loads(line).get("fields", {}).get("message", "")
            except json.JSONDecodeError:
                msg = ""
            if msg.startswith("listening on "):
                self.addr = msg[len("listening on ") :]
                break
            if time.time() > deadline:
                break
        if not self.addr:
            self.close()
            sys.exit("error: the server did not start")
        # Keep draining its log so that it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Figures


def ece(conf, correct, bins=BINS):
    """Top-label ECE with equal-width bins (the server's definition)."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    if len(conf) == 0:
        return None
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += abs(correct[m].mean() - conf[m].mean()) * m.sum()
    return float(total / len(conf))


def scores(probs, labels):
    """(ECE, NLL, accuracy) of full probability vectors."""
    p = np.asarray(probs, float)
    y = np.asarray(labels, int)
    top = p.argmax(axis=1)
    conf = p[np.arange(len(y)), top]
    nll = -np.log(np.maximum(p[np.arange(len(y)), y], PROB_FLOOR))
    return ece(conf, top == y), float(nll.mean()), float((top == y).mean())


def tv(p, q):
    return 0.5 * float(np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


def pick(report, path):
    v = report
    for p in path.split("."):
        if not isinstance(v, dict) or p not in v:
            return None
        v = v[p]
    return v


def record(report, prefix=""):
    live = report.get("live") or {}
    row = {
        "labelled": live.get("labelled"),
        "ece": live.get("ece"),
        "accuracy": live.get("accuracy"),
        "mean_confidence": live.get("mean_confidence"),
        "nll": pick(live, "full.nll"),
    }
    for m in ("ts", "ats"):
        for k in ("n", "nll", "ece", "incumbent_nll", "incumbent_ece", "nll_gain", "e_value", "p_value"):
            row[f"shadow_{m}_{k}"] = pick(report, f"shadow.{m}.{k}")
    for k in ("alarm", "calibration_evalue", "exchangeability_martingale", "label_shift_evalue", "reason"):
        row[f"alarm_{k}"] = pick(report, f"alarm.{k}")
    for k in ("prior", "prior_bbse", "shift_pvalue", "accuracy", "served"):
        row[f"estimated_{k}"] = pick(report, f"estimated.{k}")
    row["conformal_coverage"] = pick(report, "conformal.coverage")
    return {prefix + k: v for k, v in row.items()}


# ---------------------------------------------------------------------------------------------
# One stream


def run_stream(args, ref, treat, images, labels, classes, seed, scenario):
    rng = np.random.default_rng(seed)
    onset = args.onset
    n = onset + args.label_shift_after if scenario == "label_shift" else args.requests
    ramp_end = onset + args.ramp
    by_class = [np.flatnonzero(np.asarray(labels) == c) for c in range(classes)]
    heavy = rng.choice(classes, size=2, replace=False).tolist()
    others = [c for c in range(classes) if c not in heavy]
    series, pending = [], []
    recent = deque(maxlen=args.shift_window)  # true classes of the label-shift window
    sets = deque(maxlen=args.record_every)  # (covered, size) of the reference's served sets
    treat_sets = deque(maxlen=args.record_every)  # the same for the treated server's sets
    covered = {"ref": [], "treat": []}  # (covered, size) of every served set, per arm (--treat aci)
    aci = args.treat == "aci"
    # ACI builds the sets of requests that name no alpha, so with --treat aci neither arm names one
    # (both serve the calibration file's level: the same request to both servers).
    alpha = None if aci else args.alpha
    aci_gamma = None
    ref_probs, treat_probs, ys = [], [], []
    promoted_at, promotions = None, 0.0
    alarm = None  # (t, reason) when the reference's alarm was first seen
    treat_alarm = None
    pool = ThreadPoolExecutor(max_workers=2)
    t = 0
    while t < n:
        batch = min(args.batch, n - t)
        if scenario != "label_shift":
            promotions = treat.promotions(args.model)
            if promotions > 0 and promoted_at is None:
                promoted_at = t  # every prediction from here on is served by a promoted calibrator
                # Run on until --after-promotion predictions were served after it (capped).
                n = min(max(n, t + args.after_promotion), args.max_requests)
        idx, pngs = [], []
        for j in range(batch):
            step = t + j
            if scenario == "label_shift" and step >= onset:
                c = heavy[rng.integers(2)] if rng.random() < args.shift_share else others[rng.integers(len(others))]
                i = int(rng.choice(by_class[c]))
            else:
                i = int(rng.integers(len(labels)))
            img = images[i]
            if scenario == "covariate" and step >= onset:
                sev = args.severity * min(1.0, (step - onset + 1) / max(1, ramp_end - onset))
                img = corrupt(img, sev, args.corruption, rng)
            idx.append(i)
            pngs.append(encode_png(img))
        f_ref = pool.submit(ref.predict, args.model, pngs, alpha)
        f_treat = pool.submit(treat.predict, args.model, pngs, alpha, scenario == "label_shift" and not aci)
        p_ref, p_treat = f_ref.result(), f_treat.result()
        for k, i in enumerate(idx):
            y = int(labels[i])
            due = t + k + args.delay
            pending.append((due, ref, {"prediction_id": p_ref[k]["prediction_id"], "label": y}))
            pending.append((due, treat, {"prediction_id": p_treat[k]["prediction_id"], "label": y}))
            ref_probs.append(p_ref[k]["probabilities"])
            treat_probs.append(p_treat[k]["probabilities"])
            ys.append(y)
            recent.append(y)
            for arm, p, window in (("ref", p_ref[k], sets), ("treat", p_treat[k], treat_sets)):
                if "prediction_set" in p:
                    cs = (int(args.labels[y] in p["prediction_set"]), len(p["prediction_set"]))
                    window.append(cs)
                    if aci:
                        covered[arm].append(cs)
        t += batch
        for client in (ref, treat):
            due = [item for when, c, item in pending if when < t and c is client]
            if due:
                client.feedback(due)
        pending = [(when, c, item) for when, c, item in pending if when >= t]
        if t % args.record_every == 0 or t == n:
            rep_ref, rep_treat = ref.monitor(args.model), treat.monitor(args.model)
            row = {"t": t, "promotions": promotions}
            row.update(record(rep_ref))
            row.update(record(rep_treat, "treat_"))
            mix = np.bincount(np.asarray(recent), minlength=classes) / max(1, len(recent))
            row["true_mix"] = mix.tolist()
            for key in ("prior", "prior_bbse"):
                est = row.get(f"estimated_{key}")
                row[f"tv_{key}"] = tv(est, mix) if est else None
            w = min(args.record_every, len(ys))
            last = scores(ref_probs[-w:], ys[-w:])
            row["sim_accuracy"] = last[2]
            if sets:
                row["sim_coverage"] = sum(c for c, _ in sets) / len(sets)
                row["sim_set_size"] = sum(s for _, s in sets) / len(sets)
            if treat_sets:
                row["sim_treat_coverage"] = sum(c for c, _ in treat_sets) / len(treat_sets)
                row["sim_treat_set_size"] = sum(s for _, s in treat_sets) / len(treat_sets)
            row["treat_aci_alpha"] = pick(rep_treat, "adaptive_conformal.alpha")
            row["treat_aci_target_alpha"] = pick(rep_treat, "adaptive_conformal.target_alpha")
            aci_gamma = pick(rep_treat, "adaptive_conformal.gamma")
            if row["treat_aci_target_alpha"] is not None:
                row["target_coverage"] = 1 - row["treat_aci_target_alpha"]
            if alarm is None and row.get("alarm_alarm"):
                alarm = (t, row.get("alarm_reason"))
            if treat_alarm is None and row.get("treat_alarm_alarm"):
                treat_alarm = (t, row.get("treat_alarm_reason"))
            series.append(row)
            print(f"  {scenario} seed {seed}: {t}/{n}  ece={row['ece']}  treated ece={row['treat_ece']}"
                  f"  promotions={promotions}  alarm={row.get('alarm_alarm')}", file=sys.stderr, flush=True)
    pool.shutdown()
    result = {"seed": seed, "requests": n, "series": series,
              "alarm_at": alarm[0] if alarm else None, "alarm_reason": alarm[1] if alarm else None,
              "treated_alarm_at": treat_alarm[0] if treat_alarm else None,
              "promotions": promotions, "first_promotion_at": promoted_at}
    if aci:
        # Coverage and mean size of the served sets, per arm, after the onset and over the last
        # --aci-last predictions (the same images for both arms).
        start = onset if scenario != "none" else 0
        spans = {"post_onset": slice(start, None), "last": slice(-args.aci_last, None)}
        result["aci"] = {
            "target_alpha": series[-1].get("treat_aci_target_alpha"), "final_alpha": series[-1].get("treat_aci_alpha"),
            "gamma": aci_gamma,
            "last_n": min(args.aci_last, len(covered["treat"])),
            **{name: {arm: ({"coverage": float(np.mean([c for c, _ in covered[arm][span]])),
                             "set_size": float(np.mean([z for _, z in covered[arm][span]])),
                             "n": len(covered[arm][span])} if covered[arm][span] else None)
                      for arm in ("ref", "treat")}
               for name, span in spans.items()},
        }
    if scenario == "label_shift" and not aci:
        last = series[-1]
        nominal = np.full(classes, (1 - args.shift_share) / len(others))
        nominal[heavy] = args.shift_share / 2
        post = slice(onset, n)
        e_ref, nll_ref, acc_ref = scores(ref_probs[post], ys[post])
        e_tr, nll_tr, acc_tr = scores(treat_probs[post], ys[post])
        result.update({
            "heavy_classes": heavy, "true_mix": last["true_mix"], "nominal_mix": nominal.tolist(),
            "window_served": last.get("estimated_served"),
            "prior_em": last.get("estimated_prior"), "prior_bbse": last.get("estimated_prior_bbse"),
            "tv_em": last.get("tv_prior"), "tv_bbse": last.get("tv_prior_bbse"),
            "tv_em_nominal": tv(last["estimated_prior"], nominal) if last.get("estimated_prior") else None,
            "tv_bbse_nominal": tv(last["estimated_prior_bbse"], nominal) if last.get("estimated_prior_bbse") else None,
            "post_onset": {"n": n - onset, "without": {"ece": e_ref, "nll": nll_ref, "accuracy": acc_ref},
                           "with": {"ece": e_tr, "nll": nll_tr, "accuracy": acc_tr}},
        })
    elif promoted_at is not None and not aci:
        after = slice(promoted_at, promoted_at + args.after_promotion)
        got = len(ys[after])
        e_tr, nll_tr, acc_tr = scores(treat_probs[after], ys[after])
        e_ref, nll_ref, acc_ref = scores(ref_probs[after], ys[after])
        result["after_promotion"] = {
            "n": got, "complete": got >= args.after_promotion,
            "promoted": {"ece": e_tr, "nll": nll_tr, "accuracy": acc_tr},
            "incumbent": {"ece": e_ref, "nll": nll_ref, "accuracy": acc_ref},
        }
    return result


# ---------------------------------------------------------------------------------------------
# Plots: a small SVG writer (matplotlib is not a test dependency).

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def panel(x0, y0, w, h, title, lines, onset):
    """lines: list of (label, xs, ys, colour, dash)."""
    pts = [(x, y) for _, xs, ys, _, _ in lines for x, y in zip(xs, ys) if y is not None]
    out = [f'<text x="{x0 + w / 2}" y="{y0 - 8}" text-anchor="middle" font-size="13">{title}</text>']
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
    if not pts:
        out.append(f'<text x="{x0 + w / 2}" y="{y0 + h / 2}" text-anchor="middle" font-size="11" fill="#888">not reported</text>')
        return out
    xmin, xmax = 0, max(x for x, _ in pts)
    ymin, ymax = min(0.0, min(y for _, y in pts)), max(y for _, y in pts)
    ymax = ymax if ymax > ymin else ymin + 1
    sx = lambda x: x0 + (x - xmin) / max(1e-9, xmax - xmin) * w
    sy = lambda y: y0 + h - (y - ymin) / (ymax - ymin) * h
    for k in range(5):
        v = ymin + (ymax - ymin) * k / 4
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
    for k in range(5):
        v = xmin + (xmax - xmin) * k / 4
        out.append(f'<text x="{sx(v):.1f}" y="{y0 + h + 14}" text-anchor="middle" font-size="10">{v:.0f}</text>')
    if onset is not None:
        out.append(f'<line x1="{sx(onset):.1f}" x2="{sx(onset):.1f}" y1="{y0}" y2="{y0 + h}" stroke="#aaa" stroke-dasharray="4 3"/>')
    for label, xs, ys, colour, dash in lines:
        seg = [(sx(x), sy(y)) for x, y in zip(xs, ys) if y is not None]
        if len(seg) < 2:
            continue
        d = " ".join(f"{a:.1f},{b:.1f}" for a, b in seg)
        extra = ' stroke-dasharray="1.5 2.5"' if dash == "dot" else ' stroke-dasharray="5 3"' if dash else ""
        out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.4"{extra}><title>{label}</title></polyline>')
    return out


def plot(path, title, streams, onset, alpha, scenario, treat="default"):
    if treat == "aci":
        treated = "--adaptive-conformal"
    else:
        treated = "adapt=label_shift" if scenario == "label_shift" else "--auto-recalibrate"
    figures = [
        (f"Live ECE: reference (solid), {treated} (dashed)", [("ece", False), ("treat_ece", True)]),
        (f"Live NLL: reference (solid), {treated} (dashed)", [("nll", False), ("treat_nll", True)]),
        ("Accuracy of the last predictions (sim's labels)", [("sim_accuracy", False)]),
        ("Shadow TS NLL vs incumbent (dashed), treated server", [("treat_shadow_ts_nll", False), ("treat_shadow_ts_incumbent_nll", True)]),
        ("log10 promotion e-value, TS (solid) / ATS (dashed)", [("log_e_ts", False), ("log_e_ats", True)]),
        (f"Conformal coverage at alpha={alpha} (reference)", [("sim_coverage", False)]),
        ("Calibrators promoted (treated server)", [("promotions", False)]),
        ("TV of the estimated prior to the window's mix: EM (solid), BBSE (dashed)", [("tv_prior", False), ("tv_prior_bbse", True)]),
        ("log10 alarm statistics (reference): calibration (solid), exchangeability (dashed), label shift (dotted)",
         [("log_alarm_cal", False), ("log_alarm_exch", True), ("log_alarm_shift", "dot")]),
    ]
    if treat == "aci":
        level = "the calibration file's alpha" if alpha is None else f"alpha={alpha}"
        figures[5] = (f"Coverage of the last sets at {level}: reference (solid), ACI (dashed)",
                      [("sim_coverage", False), ("sim_treat_coverage", True)])
        figures[6] = ("Mean set size of the last sets: reference (solid), ACI (dashed)",
                      [("sim_set_size", False), ("sim_treat_set_size", True)])
        figures += [("ACI level alpha_t (treated server's /monitor), target dotted",
                     [("treat_aci_alpha", False), ("treat_aci_target_alpha", "dot")]),
                    ("Coverage, mean over streams: reference (blue), ACI (red), target (dotted)", "mean"),
                    ("Mean set size, mean over streams: reference (blue), ACI (red)", "mean_size")]
    log10 = lambda v: None if v is None or v <= 0 else float(np.log10(v))
    for stream in streams:
        for r in stream["series"]:
            r["log_e_ts"] = log10(r.get("treat_shadow_ts_e_value"))
            r["log_e_ats"] = log10(r.get("treat_shadow_ats_e_value"))
            r["log_alarm_cal"] = log10(r.get("alarm_calibration_evalue"))
            r["log_alarm_exch"] = log10(r.get("alarm_exchangeability_martingale"))
            r["log_alarm_shift"] = log10(r.get("alarm_label_shift_evalue"))
    w, h, cols = 340, 170, 3
    rows = (len(figures) + cols - 1) // cols
    W, H = cols * (w + 70) + 20, rows * (h + 60) + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    for k, (name, keys) in enumerate(figures):
        x0 = 60 + (k % cols) * (w + 70)
        y0 = 60 + (k // cols) * (h + 60)
        lines = []
        if keys in ("mean", "mean_size"):
            # One line per arm: the mean over streams at each recorded step they all reached.
            pairs = ([("sim_coverage", COLOURS[0], False), ("sim_treat_coverage", COLOURS[1], False),
                      ("target_coverage", "#555", "dot")] if keys == "mean" else
                     [("sim_set_size", COLOURS[0], False), ("sim_treat_set_size", COLOURS[1], False)])
            steps = sorted(set.intersection(*(set(r["t"] for r in st["series"]) for st in streams)))
            for key, colour, dash in pairs:
                ys = []
                for t in steps:
                    v = [r.get(key) for st in streams for r in st["series"] if r["t"] == t]
                    v = [x for x in v if x is not None]
                    ys.append(float(np.mean(v)) if v else None)
                lines.append((f"mean {key}", steps, ys, colour, dash))
            out += panel(x0, y0, w, h, name, lines, onset)
            continue
        for s, stream in enumerate(streams):
            xs = [r["t"] for r in stream["series"]]
            for key, dash in keys:
                lines.append((f"seed {stream['seed']} {key}", xs,
                              [r.get(key) for r in stream["series"]], COLOURS[s % len(COLOURS)], dash))
        out += panel(x0, y0, w, h, name, lines, onset)
    out.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">predictions served (dashed vertical: shift onset); one colour per stream; alarm threshold 3/alpha</text>')
    out.append("</svg>")
    for stream in streams:
        for r in stream["series"]:
            for key in ("log_e_ts", "log_e_ats", "log_alarm_cal", "log_alarm_exch", "log_alarm_shift"):
                r.pop(key, None)
    Path(path).write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------
# Summary over streams


def interval(values, seed=0, resamples=10_000):
    """Mean and bootstrap percentile 95% interval of the mean."""
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    return {"mean": float(v.mean()), "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
            "n": int(len(v))}


def summarize(out, dataset):
    found = {s: json.loads((out / f"{dataset}-{s}.json").read_text())
             for s in ("label_shift", "covariate", "none") if (out / f"{dataset}-{s}.json").exists()}
    if not found:
        return None
    summary = {"dataset": dataset, "scenarios": {}}
    for scen, d in found.items():
        streams = d["streams"]
        onset = d["onset"] if scen != "none" else 0
        fired = [s for s in streams if s["alarm_at"] is not None]
        after = [s for s in fired if s["alarm_at"] > onset] if scen != "none" else fired
        delays = sorted(s["alarm_at"] - onset for s in after)
        entry = {
            "command": d["command"], "streams": len(streams), "requests": d["requests"], "onset": d.get("onset"),
            "label_delay": d.get("delay"), "ramp": d.get("ramp"), "severity": d.get("severity"),
            "requests_served": [s["requests"] for s in streams],
            "alarm": {
                "alpha": d.get("alarm_alpha"),
                "fired": len(fired), "fraction": len(fired) / len(streams),
                "fired_before_onset": len(fired) - len(after) if scen != "none" else None,
                "fired_after_onset": len(after) if scen != "none" else None,
                "median_delay_predictions": float(np.median(delays)) if delays and scen != "none" else None,
                "reasons": sorted({s["alarm_reason"] for s in fired if s["alarm_reason"]}),
                "resolution_predictions": d.get("record_every"),
            },
            "promotions": {"streams_with_one": sum(1 for s in streams if s["promotions"] > 0),
                           "total": sum(s["promotions"] for s in streams),
                           "first_at": [s["first_promotion_at"] for s in streams]},
        }
        if d.get("treat") == "aci":
            entry["treat"] = "aci"
            entry["aci"] = aci_summary(d, streams)
        elif scen == "label_shift":
            tv_em = [s["tv_em"] for s in streams]
            tv_bbse = [s["tv_bbse"] for s in streams]
            within = lambda v: sum(1 for x in v if x is not None and x <= 0.05) / len(v)
            d_ece = [s["post_onset"]["without"]["ece"] - s["post_onset"]["with"]["ece"] for s in streams]
            d_nll = [s["post_onset"]["without"]["nll"] - s["post_onset"]["with"]["nll"] for s in streams]
            entry["label_shift"] = {
                "window": d.get("shift_window"),
                "after_onset": d["requests"] - d["onset"],
                "tv_em": {"median": float(np.median([x for x in tv_em if x is not None])), "max": max(x for x in tv_em if x is not None),
                          "within_0.05": within(tv_em), "mean": interval(tv_em)},
                "tv_bbse": ({"median": float(np.median([x for x in tv_bbse if x is not None])), "max": max(x for x in tv_bbse if x is not None),
                             "within_0.05": within(tv_bbse), "mean": interval(tv_bbse)} if any(x is not None for x in tv_bbse) else None),
                "tv_em_vs_nominal_mix": interval([s["tv_em_nominal"] for s in streams]),
                "ece_without": interval([s["post_onset"]["without"]["ece"] for s in streams]),
                "ece_with": interval([s["post_onset"]["with"]["ece"] for s in streams]),
                "nll_without": interval([s["post_onset"]["without"]["nll"] for s in streams]),
                "nll_with": interval([s["post_onset"]["with"]["nll"] for s in streams]),
                "ece_reduction": interval(d_ece), "nll_reduction": interval(d_nll),
                "streams_ece_lower_with": sum(1 for x in d_ece if x > 0),
                "streams_nll_lower_with": sum(1 for x in d_nll if x > 0),
            }
        else:
            done = [s["after_promotion"] for s in streams if s.get("after_promotion") and s["after_promotion"]["complete"]]
            entry["after_promotion"] = {
                "predictions": d.get("after_promotion"),
                "streams_measured": len(done),
                "streams_promoted_too_late": sum(1 for s in streams if s.get("after_promotion") and not s["after_promotion"]["complete"]),
                "ece_promoted": interval([a["promoted"]["ece"] for a in done]),
                "ece_incumbent": interval([a["incumbent"]["ece"] for a in done]),
                "ece_reduction": interval([a["incumbent"]["ece"] - a["promoted"]["ece"] for a in done]),
                "nll_reduction": interval([a["incumbent"]["nll"] - a["promoted"]["nll"] for a in done]),
                "streams_ece_lower_promoted": sum(1 for a in done if a["promoted"]["ece"] < a["incumbent"]["ece"]),
            }
        summary["scenarios"][scen] = entry
    (out / f"{dataset}-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / f"{dataset}-summary.md").write_text(markdown(summary))
    return summary


def aci_summary(d, streams, tolerance=0.02):
    """Reference against ACI: coverage and set size of the served sets after the onset and over
    the last `aci_last` predictions, means over streams with intervals."""
    targets = {s["aci"]["target_alpha"] for s in streams}
    target = 1 - targets.pop() if len(targets) == 1 and None not in targets else None
    gammas = {s["aci"].get("gamma") for s in streams}
    res = {"target_coverage": target, "tolerance": tolerance,
           "gamma": gammas.pop() if len(gammas) == 1 else sorted(gammas, key=str),
           "final_alpha": interval([s["aci"]["final_alpha"] for s in streams])}
    for span in ("post_onset", "last"):
        block = {"predictions": [s["aci"][span]["treat"]["n"] for s in streams if s["aci"][span]["treat"]]}
        for arm in ("ref", "treat"):
            cov = [s["aci"][span][arm]["coverage"] for s in streams if s["aci"][span][arm]]
            block[arm] = {"coverage": interval(cov),
                          "set_size": interval([s["aci"][span][arm]["set_size"] for s in streams if s["aci"][span][arm]]),
                          "gap_to_target": interval([abs(c - target) for c in cov]) if target is not None else None,
                          "streams_within_tolerance": (sum(1 for c in cov if abs(c - target) <= tolerance)
                                                       if target is not None else None)}
        block["predictions"] = sorted(set(block["predictions"]))
        res[span] = block
    return res


def fmt(iv, digits=4):
    if not iv:
        return "n/a"
    return f"{iv['mean']:.{digits}f} [{iv['ci95'][0]:.{digits}f}, {iv['ci95'][1]:.{digits}f}]"


def markdown(summary):
    ds = summary["dataset"]
    lines = [f"# Drift simulator: {ds}", "",
             "Means over streams with bootstrap 95% intervals of the mean. Made by the command in each",
             f"scenario of `{ds}-summary.json`.", "",
             "Alarm: the reference server's (shipped calibrator, no correction), polled every",
             "`record_every` predictions; delays in predictions served after the onset (labels arrive",
             "`label_delay` predictions late). Requests: per stream (a covariate or no-shift stream runs",
             "on after a late first promotion until 1,000 predictions followed it, up to `max_requests`).", "",
             "| scenario | streams | requests | onset | alarm fired | median alarm delay (predictions after onset) | streams with a promotion |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for scen, e in summary["scenarios"].items():
        a = e["alarm"]
        fired = f"{a['fired']}/{e['streams']} ({a['fraction']:.2f}) at alpha {a['alpha']}"
        if a["fired_before_onset"]:
            fired += f", {a['fired_before_onset']} before onset"
        delay = "n/a" if a["median_delay_predictions"] is None else f"{a['median_delay_predictions']:.0f}"
        served = e.get("requests_served") or [e["requests"]]
        span = f"{min(served)}" if min(served) == max(served) else f"{min(served)}-{max(served)}"
        lines.append(f"| {scen} | {e['streams']} | {span} | {e['onset'] if e['onset'] is not None else '-'} | {fired} | {delay} | {e['promotions']['streams_with_one']}/{e['streams']} |")
    ls = summary["scenarios"].get("label_shift", {}).get("label_shift")
    if ls:
        lines += ["", f"Label shift, after {ls['after_onset']} post-onset predictions (window of the "
                  f"estimate: {ls['window']}):", "", "| figure | value |", "| --- | --- |",
                  f"| TV(EM prior, true mix): median / max | {ls['tv_em']['median']:.4f} / {ls['tv_em']['max']:.4f} |",
                  f"| streams with TV(EM) <= 0.05 | {ls['tv_em']['within_0.05']:.2f} |"]
        if ls["tv_bbse"]:
            lines += [f"| TV(BBSE prior, true mix): median / max | {ls['tv_bbse']['median']:.4f} / {ls['tv_bbse']['max']:.4f} |",
                      f"| streams with TV(BBSE) <= 0.05 | {ls['tv_bbse']['within_0.05']:.2f} |"]
        lines += [f"| ECE of post-onset predictions without / with adapt=label_shift | {fmt(ls['ece_without'])} / {fmt(ls['ece_with'])} |",
                  f"| ECE reduction (without - with) | {fmt(ls['ece_reduction'])}, lower in {ls['streams_ece_lower_with']} streams |",
                  f"| NLL without / with | {fmt(ls['nll_without'])} / {fmt(ls['nll_with'])} |",
                  f"| NLL reduction (without - with) | {fmt(ls['nll_reduction'])}, lower in {ls['streams_nll_lower_with']} streams |"]
    for scen, e in summary["scenarios"].items():
        a = e.get("aci")
        if not a:
            continue
        target = "n/a" if a["target_coverage"] is None else f"{a['target_coverage']:.2f}"
        lines += ["", f"{scen}, adaptive conformal inference (treated: `--adaptive-conformal`, gamma {a['gamma']}) "
                  f"against the static split-conformal sets of the reference, target coverage {target}; coverage "
                  "and mean size of the served sets (the same images for both arms); |gap| = |coverage - target| "
                  f"per stream; within: streams whose coverage is within {a['tolerance']} of the target:", "",
                  "| predictions | arm | coverage | mean set size | mean |gap| | streams within |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for span, label in (("post_onset", "after the onset" if e["onset"] is not None else "all"), ("last", "last")):
            b = a[span]
            n = "/".join(str(x) for x in b["predictions"])
            for arm, name in (("ref", "reference (static)"), ("treat", "ACI")):
                r = b[arm]
                within = "n/a" if r["streams_within_tolerance"] is None else f"{r['streams_within_tolerance']}/{e['streams']}"
                lines.append(f"| {label} ({n}) | {name} | {fmt(r['coverage'])} | {fmt(r['set_size'], 3)} | "
                             f"{fmt(r['gap_to_target'])} | {within} |")
        lines.append(f"\nACI level alpha_t at the end of the stream: {fmt(a['final_alpha'])}.")
    for scen in ("covariate", "none"):
        ap = summary["scenarios"].get(scen, {}).get("after_promotion")
        if ap and not ap["streams_measured"] and not ap["streams_promoted_too_late"]:
            lines += ["", f"{scen}: no stream had an automatic promotion."]
        elif ap:
            lines += ["", f"{scen}: the {ap['predictions']} predictions after the first automatic promotion "
                      f"({ap['streams_measured']} streams measured, {ap['streams_promoted_too_late']} promoted too late to have them):", "",
                      "| figure | value |", "| --- | --- |",
                      f"| ECE promoted / incumbent (same predictions) | {fmt(ap['ece_promoted'])} / {fmt(ap['ece_incumbent'])} |",
                      f"| ECE reduction (incumbent - promoted) | {fmt(ap['ece_reduction'])}, lower in {ap['streams_ece_lower_promoted']} streams |",
                      f"| NLL reduction (incumbent - promoted) | {fmt(ap['nll_reduction'])} |"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="the reference server, already running (with --treated-url; else --caliper)")
    ap.add_argument("--treated-url", help="the treated server, already running (see above)")
    ap.add_argument("--caliper", help="the caliper binary: start fresh servers per stream")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra `caliper serve` flag for both servers (repeat), e.g. --server-arg=--alarm-alpha=0.05")
    ap.add_argument("--api-key")
    ap.add_argument("--model", default="mnist")
    ap.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--calib", default=str(ROOT / "calib"))
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--scenario", action="append", choices=["label_shift", "covariate", "none"])
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--requests", type=int, default=6000, help="predictions per covariate and no-shift stream")
    ap.add_argument("--onset", type=int, default=1000, help="predictions before the shift starts")
    ap.add_argument("--label-shift-after", type=int, default=2000,
                    help="label-shift streams end this many predictions after the onset (when the estimate is read)")
    ap.add_argument("--after-promotion", type=int, default=1000,
                    help="predictions after the first promotion whose ECE is compared")
    ap.add_argument("--batch", type=int, default=50, help="images per predict request")
    ap.add_argument("--delay", type=int, default=200, help="labels arrive this many predictions later")
    ap.add_argument("--shift-share", type=float, default=0.8)
    ap.add_argument("--severity", type=float, default=0.8)
    ap.add_argument("--ramp", type=int, default=5000,
                    help="covariate: the corruption reaches --severity this many predictions after the onset, then holds")
    ap.add_argument("--max-requests", type=int, default=9000,
                    help="covariate and none: a stream whose first promotion comes late runs on until "
                         "--after-promotion predictions followed it, up to this many")
    ap.add_argument("--corruption", default="contrast+noise", choices=["contrast+noise", "contrast", "noise", "blur"])
    ap.add_argument("--alpha", type=float, default=0.1,
                    help="conformal level of the served sets (0: none); with --treat aci no request names one")
    ap.add_argument("--treat", default="default", choices=["default", "aci"],
                    help="the treated arm: default (label_shift: ?adapt=label_shift; covariate and none: "
                         "--auto-recalibrate) or aci (--adaptive-conformal MODEL only, in every scenario)")
    ap.add_argument("--aci-gamma", type=float, help="--aci-gamma of the treated server (--treat aci; else the server's default)")
    ap.add_argument("--aci-last", type=int, default=1000,
                    help="--treat aci: coverage is also compared over the last this many predictions of each stream")
    ap.add_argument("--record-every", type=int, default=100)
    ap.add_argument("--monitor-window", type=int, default=500, help="--monitor-window of started servers")
    ap.add_argument("--shift-window", type=int, default=2000, help="--shift-window of started servers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "drift"))
    ap.add_argument("--summary-only", action="store_true", help="only rebuild the summary from --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.summary_only:
        print(json.dumps(summarize(out, args.dataset), indent=1))
        return
    if not args.caliper and not (args.url and args.treated_url):
        ap.error("give --caliper (start servers per stream), or --url and --treated-url")
    scenarios = args.scenario or ["label_shift", "covariate", "none"]
    toml = (Path(args.models) / args.model / "model.toml").read_text()
    labels_block = toml.split("labels = [", 1)[1].split("]", 1)[0]
    args.labels = [s.strip().strip('"') for s in labels_block.split(",") if s.strip()]
    images, labels = load_dataset(args.dataset, Path(args.data_dir), args.labels)
    out.mkdir(parents=True, exist_ok=True)
    command = "scripts/drift-sim.py " + " ".join(sys.argv[1:])
    base = ["--monitor-window", str(args.monitor_window), "--shift-window", str(args.shift_window)] + args.server_arg
    for scenario in scenarios:
        if args.treat == "aci":
            treated_flags = base + ["--adaptive-conformal", args.model] + (
                ["--aci-gamma", str(args.aci_gamma)] if args.aci_gamma is not None else [])
        else:
            treated_flags = base + ([] if scenario == "label_shift" else ["--auto-recalibrate"])
        streams, alarm_alpha = [], None
        for s in range(args.streams):
            seed = args.seed + s
            servers = []
            try:
                if args.caliper:
                    servers = [Server(args.caliper, args.models, args.calib, args.model, base),
                               Server(args.caliper, args.models, args.calib, args.model, treated_flags)]
                    urls = [f"http://{x.addr}" for x in servers]
                else:
                    urls = [args.url, args.treated_url]
                ref, treat = (Client(u, args.api_key) for u in urls)
                stream = run_stream(args, ref, treat, images, labels, len(args.labels), seed, scenario)
                alarm_alpha = pick(ref.monitor(args.model), "alarm.alpha") or alarm_alpha
                streams.append(stream)
            finally:
                for x in servers:
                    x.close()
        stem = f"{args.dataset}-{scenario}"
        result = {
            "command": command, "scenario": scenario, "model": args.model, "dataset": args.dataset,
            "requests": args.onset + args.label_shift_after if scenario == "label_shift" else args.requests,
            "delay": args.delay, "onset": args.onset if scenario != "none" else None,
            "shift_share": args.shift_share if scenario == "label_shift" else None,
            "severity": args.severity if scenario == "covariate" else None,
            "ramp": args.ramp if scenario == "covariate" else None, "max_requests": args.max_requests,
            "corruption": args.corruption if scenario == "covariate" else None,
            "alpha": None if args.treat == "aci" else args.alpha, "alarm_alpha": alarm_alpha, "server_args": base,
            "treat": args.treat, "aci_last": args.aci_last if args.treat == "aci" else None,
            "treated_server_args": treated_flags,
            "treated_requests_adapt": scenario == "label_shift" and args.treat != "aci",
            "monitor_window": args.monitor_window, "shift_window": args.shift_window,
            "record_every": args.record_every, "after_promotion": args.after_promotion,
            "streams": streams,
        }
        (out / f"{stem}.json").write_text(json.dumps(result) + "\n")
        onset = None if scenario == "none" else args.onset
        plot(out / f"{stem}.svg", f"{args.model} on {args.dataset}: {scenario.replace('_', ' ')} "
             f"({args.streams} streams, labels {args.delay} predictions late)", streams, onset,
             None if args.treat == "aci" else args.alpha, scenario, args.treat)
        print(f"wrote {out / stem}.json and .svg", file=sys.stderr)
        summarize(out, args.dataset)


if __name__ == "__main__":
    main()
