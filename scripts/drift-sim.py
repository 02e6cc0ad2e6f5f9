#!/usr/bin/env python3
"""Drift simulator (issue 22, section 5): streams real test images through a caliper server
with a scripted shift, posts their labels after a delay, and records the server's live
monitor over time.

Scenarios (--scenario, several allowed):
  label_shift  from the onset on, --shift-share (0.8) of the traffic comes from two classes
               (drawn per stream), the rest uniformly from the others;
  covariate    from the onset on, a corruption rises linearly to --severity at the end of the
               stream (contrast loss plus Gaussian noise by default; --corruption blur|noise|contrast);
  none         i.i.d. draws from the test set.

Each stream gets a fresh server when --caliper is given (the script starts `caliper serve` on
port 0 with a private copy of calib/<model>.json and a private state dir, so that recalibrations
and feedback of one stream never leak into the next), else every stream talks to --url.

Every --record-every predictions it reads GET /v1/models/M/monitor and records: the live ECE,
accuracy, NLL, mean confidence and labelled count, the shadow calibrators' prequential scores
against the incumbent (shadow.ts / shadow.ats), the calibration method serving, and whatever the
report holds under `estimated`, `alarm`, `coverage` or `conformal` (fields other work adds; absent
ones are skipped). The script's own view, from the labels it knows, adds the accuracy, coverage and
mean size of the conformal sets served at --alpha over the last --record-every predictions. Servers
started with --caliper use --monitor-window 500 (default), so that the live figures follow the
traffic rather than average the whole stream.

Output: <out>/<dataset>-<scenario>.json (every stream's time series and the command) and
<out>/<dataset>-<scenario>.svg (one panel per figure, one line per stream; a plain SVG writer, no
matplotlib needed). Needs python3 with numpy and pillow (scripts/install-test-deps.sh).

Example (what made docs/drift/):
  scripts/drift-sim.py --caliper target/debug/caliper --server-arg=--auto-recalibrate \\
      --model mnist --dataset mnist \\
      --streams 2 --requests 3000 --out docs/drift
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
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent


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

    def predict(self, model, pngs, alpha):
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
        query = f"?alpha={alpha}&top_k=1" if alpha else "?top_k=1"
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
        """Sum of caliper_recalibrations_total for the model (None when not exported)."""
        req = urllib.request.Request(self.url + "/metrics", headers=self.headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith("caliper_recalibrations_total{") and f'model="{model}"' in line:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        return total if seen else 0.0


class Server:
    """`caliper serve` on port 0 over models/ and a private copy of calib/<model>.json."""

    def __init__(self, caliper, models, calib, model, window, extra):
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
            "--monitor-window", str(window),
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
# One stream


def pick(report, path):
    v = report
    for p in path.split("."):
        if not isinstance(v, dict) or p not in v:
            return None
        v = v[p]
    return v


def record(report, t, labelled_posted, local):
    live = report.get("live") or {}
    row = {
        "t": t,
        "labels_posted": labelled_posted,
        "labelled": live.get("labelled"),
        "ece": live.get("ece"),
        "accuracy": live.get("accuracy"),
        "mean_confidence": live.get("mean_confidence"),
        "nll": pick(live, "full.nll"),
        "drift_pvalue": pick(live, "drift.p_value"),
    }
    for m in ("ts", "ats"):
        for k in ("n", "nll", "ece", "incumbent_nll", "incumbent_ece", "p_value"):
            row[f"shadow_{m}_{k}"] = pick(report, f"shadow.{m}.{k}")
    # Fields of the shift estimates, alarms and conformal coverage, when the server has them.
    for key in ("estimated", "alarm", "coverage", "conformal"):
        if key in report:
            row[key] = report[key]
        elif key in live:
            row[key] = live[key]
    row.update(local)
    return row


def run_stream(args, client, images, labels, classes, seed, scenario):
    rng = np.random.default_rng(seed)
    n = args.requests
    onset = int(args.onset * n)
    by_class = [np.flatnonzero(np.asarray(labels) == c) for c in range(classes)]
    heavy = rng.choice(classes, size=2, replace=False).tolist()
    series, pending, posted = [], [], 0
    window = []  # (covered, set size) of the last --record-every labelled predictions
    method_seen = None
    t = 0
    while t < n:
        batch = min(args.batch, n - t)
        idx, pngs = [], []
        for j in range(batch):
            step = t + j
            if scenario == "label_shift" and step >= onset and rng.random() < args.shift_share:
                c = heavy[rng.integers(2)]
            elif scenario == "label_shift" and step >= onset:
                others = [c for c in range(classes) if c not in heavy]
                c = others[rng.integers(len(others))]
            else:
                c = None
            i = int(rng.choice(by_class[c])) if c is not None else int(rng.integers(len(labels)))
            img = images[i]
            if scenario == "covariate" and step >= onset:
                sev = args.severity * (step - onset + 1) / max(1, n - onset)
                img = corrupt(img, sev, args.corruption, rng)
            idx.append(i)
            pngs.append(encode_png(img))
        preds = client.predict(args.model, pngs, args.alpha)
        for k, (i, p) in enumerate(zip(idx, preds)):
            y = int(labels[i])
            pending.append((t + k + args.delay, {"prediction_id": p["prediction_id"], "label": y}))
            method_seen = p.get("calibration_method")
            correct = int(p["class_index"] == y)
            if "prediction_set" in p:
                window.append((correct, classes_index(p, y, args), len(p["prediction_set"])))
            else:
                window.append((correct, None, None))
        t += batch
        due = [item for when, item in pending if when < t]
        pending = [(when, item) for when, item in pending if when >= t]
        if due:
            client.feedback(due)
            posted += len(due)
        window = window[-args.record_every :]
        if t % args.record_every == 0 or t == n:
            local = {"calibration_method": method_seen}
            if window:
                local["sim_accuracy"] = sum(a for a, _, _ in window) / len(window)
                sets = [(c, s) for _, c, s in window if c is not None]
                if sets:
                    local["sim_coverage"] = sum(c for c, _ in sets) / len(sets)
                    local["sim_set_size"] = sum(s for _, s in sets) / len(sets)
            local["promotions"] = client.promotions(args.model)
            series.append(record(client.monitor(args.model), t, posted, local))
            print(f"  {scenario} seed {seed}: {t}/{n}  ece={series[-1]['ece']}", file=sys.stderr)
    return {"seed": seed, "heavy_classes": heavy if scenario == "label_shift" else None,
            "series": series}


def classes_index(pred, y, args):
    return int(args.labels[y] in pred["prediction_set"])


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
        extra = ' stroke-dasharray="5 3"' if dash else ""
        out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.4"{extra}><title>{label}</title></polyline>')
    return out


def plot(path, title, streams, onset, alpha):
    figures = [
        ("Live ECE (window)", [("ece", False)]),
        ("Live NLL (window)", [("nll", False)]),
        ("Accuracy of the last predictions (sim's labels)", [("sim_accuracy", False)]),
        ("Shadow TS NLL vs incumbent (dashed)", [("shadow_ts_nll", False), ("shadow_ts_incumbent_nll", True)]),
        ("Shadow ATS NLL vs incumbent (dashed)", [("shadow_ats_nll", False), ("shadow_ats_incumbent_nll", True)]),
        (f"Conformal coverage at alpha={alpha} (sim's labels)", [("sim_coverage", False)]),
        ("Calibrators promoted (auto)", [("promotions", False)]),
    ]
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
        for s, stream in enumerate(streams):
            xs = [r["t"] for r in stream["series"]]
            for key, dash in keys:
                lines.append((f"seed {stream['seed']} {key}", xs,
                              [r.get(key) for r in stream["series"]], COLOURS[s % len(COLOURS)], dash))
        out += panel(x0, y0, w, h, name, lines, onset)
    out.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">predictions served (dashed vertical: shift onset); one colour per stream</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (else --caliper starts one per stream)")
    ap.add_argument("--caliper", help="the caliper binary: start a fresh server per stream")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra `caliper serve` flag (repeat), e.g. --server-arg=--auto-recalibrate")
    ap.add_argument("--api-key")
    ap.add_argument("--model", default="mnist")
    ap.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--calib", default=str(ROOT / "calib"))
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--scenario", action="append", choices=["label_shift", "covariate", "none"])
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--requests", type=int, default=3000, help="predictions per stream")
    ap.add_argument("--batch", type=int, default=50, help="images per predict request")
    ap.add_argument("--delay", type=int, default=200, help="labels arrive this many predictions later")
    ap.add_argument("--onset", type=float, default=0.3, help="shift onset, as a share of the stream")
    ap.add_argument("--shift-share", type=float, default=0.8)
    ap.add_argument("--severity", type=float, default=0.8)
    ap.add_argument("--corruption", default="contrast+noise", choices=["contrast+noise", "contrast", "noise", "blur"])
    ap.add_argument("--alpha", type=float, default=0.1, help="conformal level of the served sets (0: none)")
    ap.add_argument("--record-every", type=int, default=250)
    ap.add_argument("--monitor-window", type=int, default=500,
                    help="--monitor-window of the servers started with --caliper (the live figures' window)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "drift"))
    args = ap.parse_args()
    if not args.url and not args.caliper:
        ap.error("give --url (a running server) or --caliper (start one per stream)")
    scenarios = args.scenario or ["label_shift", "covariate", "none"]
    toml = (Path(args.models) / args.model / "model.toml").read_text()
    labels_block = toml.split("labels = [", 1)[1].split("]", 1)[0]
    args.labels = [s.strip().strip('"') for s in labels_block.split(",") if s.strip()]
    images, labels = load_dataset(args.dataset, Path(args.data_dir), args.labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "scripts/drift-sim.py " + " ".join(sys.argv[1:])
    for scenario in scenarios:
        streams = []
        for s in range(args.streams):
            seed = args.seed + s
            server = Server(args.caliper, args.models, args.calib, args.model, args.monitor_window, args.server_arg) if args.caliper else None
            try:
                client = Client(f"http://{server.addr}" if server else args.url, args.api_key)
                streams.append(run_stream(args, client, images, labels, len(args.labels), seed, scenario))
            finally:
                if server:
                    server.close()
        stem = f"{args.dataset}-{scenario}"
        result = {
            "command": command, "scenario": scenario, "model": args.model, "dataset": args.dataset,
            "requests": args.requests, "delay": args.delay, "onset": int(args.onset * args.requests),
            "shift_share": args.shift_share if scenario == "label_shift" else None,
            "severity": args.severity if scenario == "covariate" else None,
            "corruption": args.corruption if scenario == "covariate" else None,
            "alpha": args.alpha, "server_args": args.server_arg,
            "monitor_window": args.monitor_window if args.caliper else None, "streams": streams,
        }
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        onset = None if scenario == "none" else int(args.onset * args.requests)
        plot(out / f"{stem}.svg", f"{args.model} on {args.dataset}: {scenario.replace('_', ' ')} "
             f"({args.streams} streams, labels {args.delay} predictions late)", streams, onset, args.alpha)
        print(f"wrote {out / stem}.json and .svg", file=sys.stderr)


if __name__ == "__main__":
    main()
