#!/usr/bin/env python3
"""Bounded soak of `caliper serve` (issue 23): mixed valid and hostile traffic for DURATION
seconds, label feedback whose acknowledgements are counted, readiness polled throughout, the
server's peak RSS read from /proc; then `kill -9`, a restart on the same state directory, and
the acknowledged labels counted against what the restarted server reports.

Standard library only. Usage: soak.py CALIPER_BIN MODELS CALIB WORKDIR DURATION_S
The last stdout line is one JSON object with the figures; the exit status is 0 only when no
acknowledged label was lost and readiness never failed.
"""

import http.client
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

BIN, MODELS, CALIB, WORK, DURATION = sys.argv[1:6]
DURATION = float(DURATION)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "tests", "data", "digits")
KEY = "soak-feedback-key"
STATE = os.path.join(WORK, "state")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def png(width, height, row=None):
    """A grey 8-bit PNG; every row is `row` (default zeros). Compresses to a few KB."""
    row = row if row is not None else bytes(width)
    raw = zlib.compressobj(9)
    data = b"".join(raw.compress(b"\0" + row) for _ in range(height)) + raw.flush()

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def multipart(files):
    boundary = "soakboundary%08x" % random.getrandbits(32)
    out = io.BytesIO()
    for i, body in enumerate(files):
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"; "
                  f"filename=\"f{i}.png\"\r\nContent-Type: image/png\r\n\r\n".encode())
        out.write(body + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class Server:
    def __init__(self):
        self.log = open(os.path.join(WORK, "server.log"), "a")
        self.proc = subprocess.Popen(
            [BIN, "--log-json", "serve", "--addr", "127.0.0.1:0", "--models", MODELS,
             "--calib", CALIB, "--state-dir", STATE, "--feedback-key", KEY,
             "--monitor-window", "10000000", "--request-timeout-ms", "5000",
             "--max-concurrent-requests", "64"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = None
        listening = threading.Event()

        def drain():
            # Keeps reading stderr for the life of the process so that it never blocks.
            for line in self.proc.stderr:
                self.log.write(line)
                if self.port is None and "listening on " in line:
                    msg = json.loads(line)["fields"]["message"]
                    self.port = int(msg.rsplit(":", 1)[1])
                    listening.set()
            listening.set()

        threading.Thread(target=drain, daemon=True).start()
        if not listening.wait(180) or self.port is None:
            raise SystemExit("the server did not start; see " + WORK + "/server.log")

    def request(self, method, path, body=None, ctype=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"content-type": ctype} if ctype else {}
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            return 0, str(e).encode()
        finally:
            conn.close()

    def get(self, path, timeout=10):
        return self.request("GET", path, timeout=timeout)

    def vm_hwm_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def main():
    os.makedirs(STATE, exist_ok=True)
    digits = {name[0]: open(os.path.join(DIGITS, name), "rb").read()
              for name in os.listdir(DIGITS) if name.endswith(".png")}
    big = png(4096, 4096)
    strip = png(16_777_216, 1)
    v2_big = json.dumps({"inputs": [{"name": "input", "shape": [2000, 1, 28, 28],
                                     "datatype": "FP32", "data": [0.5] * (2000 * 784)}]})
    server = Server()
    stop = threading.Event()
    lock = threading.Lock()
    counts = {}
    ids = []  # (prediction_id, label) waiting for feedback
    acked = [0]
    ready = {"probes": 0, "failures": 0, "slowest_ms": 0.0}

    def count(kind, status):
        with lock:
            counts.setdefault(kind, {}).setdefault(str(status), 0)
            counts[kind][str(status)] += 1

    def valid_client():
        while not stop.is_set():
            label = random.choice(sorted(digits))
            if random.random() < 0.5:
                st, body = server.request("POST", "/v1/models/mnist/predict", digits[label], "image/png")
                count("predict", st)
                if st == 200:
                    with lock:
                        ids.append((json.loads(body)["prediction_id"], label))
            else:
                files = [digits[random.choice(sorted(digits))] for _ in range(8)]
                body, ctype = multipart(files)
                st, _ = server.request("POST", "/v1/models/mnist/predict", body, ctype)
                count("predict_multipart", st)

    def feedback_client():
        while not stop.is_set() or ids:
            with lock:
                batch, ids[:] = ids[:50], ids[50:]
            if not batch:
                time.sleep(0.05)
                continue
            payload = json.dumps({"feedback": [{"prediction_id": i, "label": l} for i, l in batch]})
            st, body = server.request("POST", "/v1/feedback", payload, "application/json")
            count("feedback", st)
            if st == 200:
                with lock:
                    acked[0] += json.loads(body).get("accepted", 0)

    def hostile_client():
        attacks = [
            ("png_4096x4096_cifar10", lambda: server.request("POST", "/v1/models/cifar10/predict", big, "image/png", 30)),
            ("png_16777216x1", lambda: server.request("POST", "/v1/models/mnist/predict", strip, "image/png")),
            ("multipart_8x4096", lambda: server.request("POST", "/v1/models/cifar10/predict", *multipart([big] * 8), 30)),
            ("corrupt", lambda: server.request("POST", "/v1/models/mnist/predict", b"\x89PNG\r\n\x1a\n" + os.urandom(200), "image/png")),
            ("v2_malformed", lambda: server.request("POST", "/v2/models/mnist/infer", b'{"inputs": [{"name": "input", "shape": [1,1,28,28], "datatype": "FP32", "data": [1e300', "application/json")),
            ("v2_big_fp32", lambda: server.request("POST", "/v2/models/mnist/infer", v2_big, "application/json", 30)),
            ("forged_feedback", lambda: server.request("POST", "/v1/feedback", json.dumps({"prediction_id": "AAAA" * 30, "label": 3}), "application/json")),
        ]
        while not stop.is_set():
            name, attack = random.choice(attacks)
            st, _ = attack()
            count(name, st)

    def ready_client():
        while not stop.is_set():
            t = time.time()
            st, _ = server.get("/v2/health/ready", timeout=1)
            ms = (time.time() - t) * 1000
            with lock:
                ready["probes"] += 1
                ready["slowest_ms"] = max(ready["slowest_ms"], round(ms, 1))
                if st != 200 or ms >= 1000:
                    ready["failures"] += 1
            time.sleep(0.2)

    threads = ([threading.Thread(target=valid_client) for _ in range(3)]
               + [threading.Thread(target=feedback_client)]
               + [threading.Thread(target=hostile_client) for _ in range(2)]
               + [threading.Thread(target=ready_client)])
    start = time.time()
    for t in threads:
        t.start()
    peak = 0
    while time.time() - start < DURATION:
        peak = max(peak, server.vm_hwm_kb())
        time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    peak = max(peak, server.vm_hwm_kb())
    server.kill9()
    restarted = Server()
    st, body = restarted.get("/v1/models/mnist/monitor")
    recovered = json.loads(body)["live"]["labelled"] if st == 200 else None
    restarted.kill9()
    result = {
        "benchmark": "soak",
        "duration_s": round(time.time() - start, 1),
        "requests": counts,
        "acknowledged_labels": acked[0],
        "recovered_labels": recovered,
        "lost_labels": None if recovered is None else acked[0] - recovered,
        "ready_probes": ready["probes"],
        "ready_failures": ready["failures"],
        "ready_slowest_ms": ready["slowest_ms"],
        "peak_rss_mib": round(peak / 1024, 1),
    }
    result["ok"] = (recovered == acked[0] and ready["failures"] == 0 and acked[0] > 0)
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    try:
        main()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the last line must be JSON
        if isinstance(e, SystemExit) and e.code in (0, 1, None):
            raise
        print(json.dumps({"benchmark": "soak", "ok": False, "failures": [str(e)]}))
        sys.exit(1)
