#!/usr/bin/env python3
"""Summarise an ONNX Runtime profile (CALIPER_ORT_PROFILE=prefix caliper-train bench ...).

Prints kernel time per operator type, per step (total over the profile divided by the number
of graph runs), largest first, and the node count; with --shapes, per operator type and output
shape instead (which layers the time goes to). Benchmark tooling, not part of the product.

    scripts/ort_profile_summary.py [--shapes] runs/prof/resnet20_*.json
"""
import collections
import json
import sys


def main(path, by_shape=False):
    events = json.load(open(path))
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = max(runs, 1)
    per_op = collections.Counter()
    nodes = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            args = e.get("args", {})
            op = args.get("op_name", "?")
            if by_shape:
                shapes = [list(t.values())[0] for t in args.get("output_type_shape", [])]
                op = f"{op} {shapes}"
            per_op[op] += e["dur"]
            nodes[op].add(e["name"])
    total = sum(per_op.values())
    run_us = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    print(f"{path}: {runs} runs, median model_run {sorted(run_us)[len(run_us) // 2] / 1e3:.1f} ms, "
          f"kernel time {total / runs / 1e3:.1f} ms/step")
    for op, us in per_op.most_common():
        print(f"  {op:<{48 if by_shape else 22}} {us / runs / 1e3:8.2f} ms  {100 * us / total:5.1f}%  {len(nodes[op]):4d} nodes")


if __name__ == "__main__":
    shapes = "--shapes" in sys.argv[1:]
    for p in sys.argv[1:]:
        if p != "--shapes":
            main(p, shapes)
