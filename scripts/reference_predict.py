#!/usr/bin/env python3
"""An independent prediction pipeline for an imported classifier: ONNX Runtime + Pillow + numpy,
following the preprocessing that docs/IMPORT.md documents (not caliper's code). Used by
tests/serve/own_model.rs to check `caliper import` + `caliper serve` end to end.

    reference_predict.py MODEL.onnx LABELS.json --input NAME --size H,W --resize-shorter S \
        --mean M,M,M --std S,S,S IMAGE...

Prints one JSON object: {"predictions": [{"image", "top5": [{"label", "probability"}]}]}, where
probability is the plain softmax of the logits (an imported model has no calibrator yet).
"""
import argparse
import json
import math

import numpy as np
import onnxruntime as ort
from PIL import Image


def half_up(x):
    return int(math.floor(x + 0.5))


def preprocess(path, h, w, shorter, mean, std):
    img = Image.open(path).convert("RGB")
    iw, ih = img.size
    # docs/IMPORT.md: one scale for both sides, the shorter side to `shorter`, never below the crop.
    s = max(shorter / min(iw, ih), w / iw, h / ih)
    rw, rh = max(half_up(iw * s), w), max(half_up(ih * s), h)
    left, top = (rw - w) // 2, (rh - h) // 2
    planes = []
    for band, m, sd in zip(img.split(), mean, std):
        # Scaled to [0, 1] first, then resized as 32-bit floats (Pillow's mode "F"), as documented;
        # an 8-bit resize would round every pixel to 1/255.
        f = Image.fromarray(np.asarray(band, dtype=np.float32) / 255.0, mode="F")
        f = f.resize((rw, rh), Image.BILINEAR).crop((left, top, left + w, top + h))
        planes.append((np.asarray(f, dtype=np.float32) - m) / sd)
    return np.stack(planes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("labels")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--input", default="input")
    ap.add_argument("--size", default="224,224")
    ap.add_argument("--resize-shorter", type=int, default=256)
    ap.add_argument("--mean", default="0.485,0.456,0.406")
    ap.add_argument("--std", default="0.229,0.224,0.225")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split(","))
    mean = [float(v) for v in a.mean.split(",")]
    std = [float(v) for v in a.std.split(",")]
    labels = json.load(open(a.labels))
    sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    out = []
    for path in a.images:
        x = preprocess(path, h, w, a.resize_shorter, mean, std)[None].astype(np.float32)
        z = sess.run(None, {a.input: x})[0][0].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        top = np.argsort(-p)[:5]
        out.append({
            "image": path,
            "top5": [{"label": labels[i], "probability": float(p[i])} for i in top],
        })
    print(json.dumps({"predictions": out}))


if __name__ == "__main__":
    main()
