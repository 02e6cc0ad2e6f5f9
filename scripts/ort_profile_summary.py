#!/usr/bin/env python3
"""Summarise an ONNX Runtime profile (CALIPER_ORT_PROFILE=prefix caliper-train bench ...).

Prints kernel time per operator type, per step (total over the profile divided by the number
of graph runs), largest first, and the node count. Benchmark tooling, not part of the product.

    scripts/ort_profile_summary.py runs/prof/resnet20_*.json
"""
import collections
import json
import sys


def main(path):
    events = json.load(open(path))
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = max(runs, 1)
    per_op = collections.Counter()
    nodes = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] += e["dur"]
            nodes[op].add(e["name"])
    total = sum(per_op.values())
    run_us = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    print(f"{path}: {runs} runs, median model_run {sorted(run_us)[len(run_us) // 2] / 1e3:.1f} ms, "
          f"kernel time {total / runs / 1e3:.1f} ms/step")
    for op, us in per_op.most_common():
        print(f"  {op:<22} {us / runs / 1e3:8.2f} ms  {100 * us / total:5.1f}%  {len(nodes[op]):4d} nodes")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
