#!/usr/bin/env python3
"""Builds the small, real test fixtures the server tests use (tests/data/), reproducibly.

- tests/data/models/mnist-mlp/{model.onnx, model.toml}: a 784-32-10 ReLU MLP fitted on MNIST in
  numpy (seeded minibatch SGD, a few epochs, about 96% test accuracy). Input "input" f32
  [N,1,28,28] (normalised with mean 0.1307, std 0.3081), outputs "logits" [N,10] and
  "features" [N,32], the same contract as the trainer's exported models.
- tests/data/calib/mnist-mlp.json: a temperature fitted by NLL on 5000 held-out training images.
- tests/data/nan/models/nan/: a model whose logits are always -inf (Log of zeros), to exercise
  the server's refusal of non-finite outputs.
- tests/data/digits/: real MNIST test digits as PNG and JPEG (label in the file name).
- tests/data/reference.json: the numpy forward pass on those files (logits), for exact checks.

Usage: python3 scripts/make-test-model.py [MNIST_DIR]   (default data/mnist, raw IDX files)
Needs numpy, onnx and Pillow (benchmark/fixture tooling only; the server does not use Python).
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data"
MEAN, STD = 0.1307, 0.3081
HIDDEN = 32
SEED = 7


def read_idx(path):
    data = path.read_bytes()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def forward(params, x):
    w1, b1, w2, b2 = params
    h = np.maximum(x @ w1 + b1, 0.0)
    return h, h @ w2 + b2


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def train(x, y, epochs=4, batch=64, lr=0.1):
    rng = np.random.default_rng(SEED)
    w1 = rng.normal(0, np.sqrt(2 / 784), (784, HIDDEN)).astype(np.float32)
    b1 = np.zeros(HIDDEN, np.float32)
    w2 = rng.normal(0, np.sqrt(2 / HIDDEN), (HIDDEN, 10)).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            xb, yb = x[idx], y[idx]
            h, z = forward((w1, b1, w2, b2), xb)
            p = np.exp(log_softmax(z))
            p[np.arange(len(idx)), yb] -= 1.0
            dz = p / len(idx)
            dw2, db2 = h.T @ dz, dz.sum(0)
            dh = (dz @ w2.T) * (h > 0)
            dw1, db1 = xb.T @ dh, dh.sum(0)
            w1 -= lr * dw1
            b1 -= lr * db1
            w2 -= lr * dw2
            b2 -= lr * db2
        print(f"epoch {epoch + 1}/{epochs} done", file=sys.stderr)
    return w1, b1, w2, b2


def fit_temperature(logits, y):
    """NLL-optimal temperature by a fine grid (the loss is smooth and 1-D)."""
    best = None
    for t in np.arange(0.05, 10.0, 0.005):
        nll = -log_softmax(logits / t)[np.arange(len(y)), y].mean()
        if best is None or nll < best[1]:
            best = (float(t), float(nll))
    return best


def export_mlp(params, path):
    w1, b1, w2, b2 = params
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["features"]),
        helper.make_node("Gemm", ["features", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mnist_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", HIDDEN]),
        ],
        inits,
    )
    save_model(graph, path)


def export_nan(path):
    """logits = Log(Flatten(x) @ zeros): -inf for every input."""
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "zeros"], ["z"]),
        helper.make_node("Log", ["z"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "always_nonfinite",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.zeros((16, 2), np.float32), "zeros")],
    )
    save_model(graph, path)


def save_model(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_toml(labels, channels, size, mean, std, sha, features, dataset, command):
    feats = '\nfeatures = "features"' if features else ""
    return f"""schema_version = 1
version = "1"
labels = {json.dumps(labels)}

[input]
name = "input"
layout = "NCHW"
channels = {channels}
height = {size}
width = {size}
mean = [{mean}]
std = [{std}]
resize = "stretch"

[output]
logits = "logits"{feats}

[provenance]
sha256 = "{sha}"
dataset = "{dataset}"
arch = "mlp"
loss = "ce"
seed = {SEED}
command = "{command}"
"""


def main():
    mnist = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "mnist"
    xtr = read_idx(mnist / "train-images-idx3-ubyte").reshape(-1, 784).astype(np.float32)
    ytr = read_idx(mnist / "train-labels-idx1-ubyte").astype(np.int64)
    xte_u8 = read_idx(mnist / "t10k-images-idx3-ubyte")
    yte = read_idx(mnist / "t10k-labels-idx1-ubyte").astype(np.int64)
    norm = lambda a: ((a / 255.0 - MEAN) / STD).astype(np.float32)  # noqa: E731
    xtr = norm(xtr)
    xte = norm(xte_u8.reshape(-1, 784).astype(np.float32))

    # Hold out the last 5000 training images for the temperature fit.
    params = train(xtr[:55000], ytr[:55000])
    _, zval = forward(params, xtr[55000:])
    _, zte = forward(params, xte)
    acc = float((zte.argmax(1) == yte).mean())
    temperature, val_nll = fit_temperature(zval.astype(np.float64), ytr[55000:])
    print(f"test accuracy {acc:.4f}, temperature {temperature:.3f}", file=sys.stderr)

    name = "mnist-mlp"
    onnx_path = OUT / "models" / name / "model.onnx"
    export_mlp(params, onnx_path)
    sha = sha256(onnx_path)
    cmd = "python3 scripts/make-test-model.py"
    labels = [str(d) for d in range(10)]
    (onnx_path.parent / "model.toml").write_text(
        model_toml(labels, 1, 28, MEAN, STD, sha, True, "mnist", cmd)
    )
    calib = {
        "schema_version": 1,
        "model": name,
        "model_sha256": sha,
        "num_classes": 10,
        "calibrator": {"method": "ts", "temperature": round(temperature, 3)},
        "fit": {"split": "train[55000:60000]", "objective": "nll", "val_nll": val_nll,
                "test_accuracy": acc},
    }
    (OUT / "calib").mkdir(parents=True, exist_ok=True)
    (OUT / "calib" / f"{name}.json").write_text(json.dumps(calib, indent=2) + "\n")

    nan_path = OUT / "nan" / "models" / "nan" / "model.onnx"
    export_nan(nan_path)
    (nan_path.parent / "model.toml").write_text(
        model_toml(["a", "b"], 1, 4, 0.0, 1.0, sha256(nan_path), False, "none", cmd)
    )

    # Real test digits: the first test image of each class as PNG, two of them also as JPEG.
    digits = OUT / "digits"
    digits.mkdir(parents=True, exist_ok=True)
    reference = {}
    for d in range(10):
        i = int(np.flatnonzero(yte == d)[0])
        img = Image.fromarray(xte_u8[i])
        files = [f"{d}.png"] + ([f"{d}.jpg"] if d in (3, 7) else [])
        for f in files:
            if f.endswith(".jpg"):
                img.save(digits / f, quality=95)
            else:
                img.save(digits / f)
            # Reference logits from what the file decodes to (JPEG is lossy).
            pix = np.asarray(Image.open(digits / f).convert("L"), np.float32).reshape(1, 784)
            _, z = forward(params, norm(pix))
            reference[f] = {"label": d, "logits": [float(v) for v in z[0]]}
    (OUT / "reference.json").write_text(
        json.dumps({"model": name, "temperature": round(temperature, 3), "files": reference},
                   indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
