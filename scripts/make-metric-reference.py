#!/usr/bin/env python3
"""Reference values for caliper's metrics, computed independently with numpy.

Writes tests/data/metric_reference.json: seeded logits and labels, and for several bin counts
the metrics `caliper eval` reports, plus the NLL-optimal temperature. The Rust test
tests/trust/calibration_metrics.rs recomputes them and must agree to 1e-10.

The implementations below are deliberately different from the Rust ones (vectorised numpy,
np.digitize for the bins, all-pairs comparison for AUROC, bisection for the temperature), so a
shared mistake is unlikely. Run:  python3 scripts/make-metric-reference.py  (needs numpy).
"""

import json
import pathlib

import numpy as np


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def equal_width_ece(conf, correct, bins):
    """ECE and MCE with right-closed bins, edges linspace(0, 1, bins + 1)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.digitize(conf, edges[1:-1], right=True)
    ece, mce = 0.0, 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            gap = abs(correct[mask].mean() - conf[mask].mean())
            ece += mask.sum() / len(conf) * gap
            mce = max(mce, gap)
    return ece, mce


def adaptive_ece(conf, correct, bins):
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += abs(correct[chunk].sum() - conf[chunk].sum())
    return total / len(conf)


def classwise_ece(probs, labels, bins):
    edges = np.linspace(0.0, 1.0, bins + 1)
    n, k = probs.shape
    total = 0.0
    for c in range(k):
        p = probs[:, c]
        y = (labels == c).astype(float)
        idx = np.digitize(p, edges[1:-1], right=True)
        for b in range(bins):
            mask = idx == b
            if mask.any():
                total += abs(y[mask].sum() - p[mask].sum())
    return total / (n * k)


def aurc(conf, correct):
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(1.0 - correct[order])
    return float(np.mean(errors / np.arange(1, len(conf) + 1)))


def auroc(conf, correct):
    pos = conf[correct == 1]
    neg = conf[correct == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def optimal_temperature(logits, labels):
    """Bisection on d/dbeta of the NLL (monotone: the NLL is convex in beta = 1/T)."""

    def grad(beta):
        p = softmax(beta * logits)
        return float(np.mean((p * logits).sum(axis=1) - logits[np.arange(len(labels)), labels]))

    lo, hi = 1e-3, 1e3
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if grad(mid) > 0:
            hi = mid
        else:
            lo = mid
    return 1.0 / np.sqrt(lo * hi)


def metrics(logits, labels, bins):
    probs = softmax(logits)
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    correct = (pred == labels).astype(float)
    onehot = np.eye(logits.shape[1])[labels]
    ece, mce = equal_width_ece(conf, correct, bins)
    return {
        "accuracy": float(correct.mean()),
        "nll": float(-np.mean(np.log(probs[np.arange(len(labels)), labels]))),
        "brier": float(np.mean(((probs - onehot) ** 2).sum(axis=1))),
        "ece": float(ece),
        "adaece": float(adaptive_ece(conf, correct, bins)),
        "mce": float(mce),
        "classwise_ece": float(classwise_ece(probs, labels, bins)),
        "aurc": aurc(conf, correct),
        "auroc": auroc(conf, correct),
    }


def main():
    rng = np.random.default_rng(20260426)
    n, k = 300, 4
    spread = rng.uniform(0.3, 4.0, size=(n, 1))
    logits = rng.normal(size=(n, k)) * spread
    labels = rng.integers(0, k, size=n)
    # Half the labels follow the argmax so accuracy is far from chance.
    follow = rng.uniform(size=n) < 0.5
    labels[follow] = logits[follow].argmax(axis=1)
    # Duplicate a few rows so ties in confidence are exercised (AUROC, AdaECE, AURC).
    logits[290:300] = logits[0:10]
    labels[295:300] = (labels[0:5] + 1) % k
    out = {
        "generator": "scripts/make-metric-reference.py (numpy %s)" % np.__version__,
        "logits": logits.tolist(),
        "labels": labels.tolist(),
        "ts_temperature": optimal_temperature(logits, labels),
        "metrics": {str(b): metrics(logits, labels, b) for b in (1, 10, 15, 20)},
    }
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "metric_reference.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
