#!/usr/bin/env python3
"""Compares two caliper-train epoch logs (log.jsonl) of the same run made two ways, e.g. with
and without --cuda-graph (scripts/repro/gpu.sh stage2). Prints MATCH when every epoch's training
loss agrees within 2% and its validation accuracy within 3 points (the two ways need not be
bit-identical: cuDNN may pick other algorithms per session), DIFFER otherwise (exit status 1).

    scripts/repro/compare-logs.py runs/a/log.jsonl runs/b/log.jsonl
"""
import json
import sys


def main(pa, pb):
    a, b = ([json.loads(line) for line in open(p)] for p in (pa, pb))
    ok = len(a) == len(b) > 0
    for x, y in zip(a, b):
        dl = abs(x["train_loss"] - y["train_loss"]) / max(abs(x["train_loss"]), 1e-12)
        da = abs(x["val"]["accuracy"] - y["val"]["accuracy"])
        print(f"epoch {x['epoch']}: train loss {x['train_loss']:.5f} vs {y['train_loss']:.5f} "
              f"(rel {dl:.1e}), val acc {x['val']['accuracy']:.4f} vs {y['val']['accuracy']:.4f}, "
              f"images/s {x['images_per_s']:.0f} vs {y['images_per_s']:.0f}")
        ok = ok and dl < 0.02 and da < 0.03
    print("MATCH" if ok else "DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
