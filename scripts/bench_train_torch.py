#!/usr/bin/env python3
"""PyTorch CPU baseline for scripts/bench-train.sh (benchmark only, not part of the product).

Times one training step (forward, loss, backward, SGD momentum 0.9 + weight decay 5e-4 update) of
the same architectures caliper-train builds (`lenet`, `resnet20` with 1x1 projection shortcuts),
at the same batch size, thread count and loss (CE or GCE, docs/METHOD.md#gce-loss), on random data.
Prints one JSON line like `caliper-train bench`.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    def __init__(self, c, h, w, k):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 128)
        self.fc = nn.Linear(128, k)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(F.relu(self.fc1(torch.flatten(x, 1))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, c, k, width=1.0):
        super().__init__()
        ws = [round(16 * width), round(32 * width), round(64 * width)]
        self.conv1 = nn.Conv2d(c, ws[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ws[0])
        layers, cin = [], ws[0]
        for si, cout in enumerate(ws):
            for bi in range(3):
                layers.append(Block(cin, cout, 2 if si > 0 and bi == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, k)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def gce_loss(z, y, lam=1.0):
    """Stable GCE (docs/METHOD.md#gce-loss): mean(-logp[i,y_i] + lam * lse_{y_i}) - lam * log n."""
    logp = F.log_softmax(z, dim=1)
    lse = torch.logsumexp(logp, dim=0)
    n = z.shape[0]
    return (-logp.gather(1, y[:, None]).squeeze(1) + lam * lse[y]).mean() - lam * math.log(n)


def profile_ops(step, n):
    """Self CPU time per operator, in ms per step over n steps, largest first (stderr)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) / n / 1e3
    print(f"torch.profiler, {n} steps: {total:.1f} ms self CPU per step", file=sys.stderr)
    for e in ops[:15]:
        print(f"  {e.self_cpu_time_total / n / 1e3:8.2f} ms  {e.key}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="lenet")
    ap.add_argument("--loss", default="gce")
    ap.add_argument("--input-shape", default="1,28,28")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (eager mode)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="capture the whole step as one CUDA graph (PyTorch's whole-network "
                         "capture recipe) and replay it, like caliper-train --cuda-graph")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, print torch.profiler's self CPU time per operator "
                         "(ms per step over 10 steps) to stderr: where PyTorch's step goes, "
                         "for comparison with caliper-train's ONNX Runtime profile")
    a = ap.parse_args()
    dev = torch.device(a.device)
    # CUDA kernels run asynchronously: time only after the step's work has finished.
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c, h, w = (int(v) for v in a.input_shape.split(","))
    net = (LeNet(c, h, w, a.classes) if a.arch == "lenet" else ResNet20(c, a.classes)).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    lossf = gce_loss if a.loss == "gce" else F.cross_entropy
    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = lossf(net(x), y)
        loss.backward()
        opt.step()
        return loss

    def batch():
        x = (torch.rand(a.batch_size, c, h, w) * 2 - 1).to(dev)
        return x, torch.randint(0, a.classes, (a.batch_size,)).to(dev)

    if a.cuda_graph:
        # torch.cuda.graphs docs, "whole network capture": warm up on a side stream, capture
        # one step with static input/label tensors, then copy each batch in and replay.
        sx, sy = batch()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(sx, sy)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = lossf(net(sx), sy)
            static_loss.backward()
            opt.step()

        def run(x, y):
            sx.copy_(x)
            sy.copy_(y)
            graph.replay()
            return static_loss
    else:
        run = step
    times = []
    for i in range(a.warmup + a.steps):
        x, y = batch()
        sync()
        t = time.perf_counter()
        loss = run(x, y)
        loss.item()  # caliper-train's step also returns the loss to the host
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    if a.profile:
        profile_ops(lambda: run(*batch()).item(), 10)
    med = statistics.median(times)
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}" + (" cuda-graph" if a.cuda_graph else ""), "arch": a.arch, "loss": a.loss,
        "device": a.device, "batch_size": a.batch_size, "threads": a.threads, "steps": a.steps,
        "median_ms": med * 1e3, "images_per_s": a.batch_size / med,
    }))


if __name__ == "__main__":
    main()
