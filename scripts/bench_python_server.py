#!/usr/bin/env python3
"""Benchmark-only baseline: the plain Python server a user would otherwise write (standard
library HTTP server, one thread per connection, onnxruntime + Pillow), with the same
preprocessing, softmax and temperature scaling as caliper. Not part of the product.

Usage: bench_python_server.py MODEL_DIR CALIB_JSON_OR_- PORT   (port 0 picks a free one)
BENCH_DEVICE=cuda:N runs the model on onnxruntime-gpu's CUDA provider (the GPU baseline of
scripts/repro/gpu-check.sh); it stops if that provider is not the one the session got.
"""

import json
import os
import sys
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

model_dir, calib_path, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
meta = tomllib.loads((model_dir / "model.toml").read_text())
spec, labels = meta["input"], meta["labels"]
mean = np.array(spec["mean"], np.float32).reshape(-1, 1, 1)
std = np.array(spec["std"], np.float32).reshape(-1, 1, 1)
temperature = 1.0
if calib_path != "-" and Path(calib_path).is_file():
    temperature = json.loads(Path(calib_path).read_text())["calibrator"].get("temperature", 1.0)
device = os.environ.get("BENCH_DEVICE", "cpu")
if device.startswith("cuda:"):
    want, options = "CUDAExecutionProvider", {"device_id": int(device[5:])}
else:
    want, options = "CPUExecutionProvider", {}
session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=[(want, options)])
# onnxruntime falls back to the CPU silently when the CUDA provider cannot load: a baseline
# that measured the CPU under a GPU label would be worse than none.
if session.get_providers()[0] != want:
    sys.exit(f"{device}: onnxruntime gave {session.get_providers()}, not {want}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without it, keep-alive responses written in two parts wait out the 40 ms delayed ACK; a
    # fair baseline sets it, as any production Python server does.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        img = Image.open(BytesIO(body)).convert("L" if spec["channels"] == 1 else "RGB")
        if img.size != (spec["width"], spec["height"]):
            img = img.resize((spec["width"], spec["height"]), Image.BILINEAR)
        x = np.asarray(img, np.float32) / 255.0
        x = x.reshape(spec["height"], spec["width"], -1).transpose(2, 0, 1)
        x = ((x - mean) / std)[None].astype(np.float32)
        z = session.run([meta["output"]["logits"]], {spec["name"]: x})[0][0].astype(np.float64)
        p = np.exp((z - z.max()) / temperature)
        p /= p.sum()
        k = int(p.argmax())
        out = json.dumps({"label": labels[k], "confidence": float(p[k]),
                          "probabilities": p.tolist()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
