#!/usr/bin/env python3
"""ONNX Runtime CPU kernels that the trainer's step graph could use, timed alone (benchmark
tooling, not part of the product; the figures are in docs/BENCHMARKS.md, "Session 5").

1. Per ResNet-20 convolution shape (batch 128): a plain `Conv` whose weight is a graph input (how
   a training graph's convolutions run without the NCHWc lowering), the lowered form
   (ReorderInput + `com.microsoft.nchwc` Conv fed a weight reordered in the graph + ReorderOutput,
   as src/train/nchwc.rs writes it), and the `ConvTranspose` input gradient. Checks that the
   lowered form gives the plain one's output.
2. Batch norm's per-channel sum(dy * xc): Mul + ReduceSum against a batched dot-product MatMul.

    pip install onnx onnxruntime==1.31.1 numpy      # e.g. into .venv-bench
    .venv-bench/bin/python scripts/bench_ort_kernels.py

Medians of 20-30 runs, 2 intra-op threads. The tensors stay in cache between runs, so these
numbers are lower than the same kernels inside a whole step; compare them with each other only.
"""
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

ort.set_default_logger_severity(3)


def session(nodes, inputs, outputs, consts):
    init = [helper.make_tensor(k, TensorProto.INT64, [len(v)], v) for k, v in consts.items()]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=init)
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft.nchwc", 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def median_ms(f, n=20):
    f()
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def block_size():
    s = session([helper.make_node("ReorderInput", ["x"], ["y"], domain="com.microsoft.nchwc")],
                ["x"], ["y"], {})
    return s.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1]


def convolutions(block):
    print(f"NCHWc block size {block}; ms per call")
    print("C -> O, H, stride | Conv (weight input) | lowered | ConvTranspose (dx) | max |diff|")
    for cin, cout, hw, stride in [(16, 16, 32, 1), (32, 32, 16, 1), (64, 64, 8, 1), (16, 32, 32, 2)]:
        n, oh = 128, hw // stride
        x = np.random.randn(n, cin, hw, hw).astype(np.float32)
        w = (np.random.randn(cout, cin, 3, 3) * 0.1).astype(np.float32)
        dy = np.random.randn(n, cout, oh, oh).astype(np.float32)
        attrs = dict(pads=[1, 1, 1, 1], strides=[stride, stride])
        plain = session([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], ["x", "w"], ["y"], {})
        # OIHW -> OIHWBiBo, the layout MlasReorderFilterOIHWBiBo documents.
        consts = {"s1": [cout // block, block, cin // block, block, 3, 3], "s2": [cout, cin, 3, 3]}
        lowered = session([
            helper.make_node("Reshape", ["w", "s1"], ["w1"]),
            helper.make_node("Transpose", ["w1"], ["w2"], perm=[0, 2, 4, 5, 3, 1]),
            helper.make_node("Reshape", ["w2", "s2"], ["wr"]),
            helper.make_node("ReorderInput", ["x"], ["xb"], domain="com.microsoft.nchwc"),
            helper.make_node("Conv", ["xb", "wr"], ["yb"], domain="com.microsoft.nchwc",
                             kernel_shape=[3, 3], **attrs),
            helper.make_node("ReorderOutput", ["yb"], ["y"], domain="com.microsoft.nchwc",
                             channels=cout),
        ], ["x", "w"], ["y"], consts)
        transposed = session([helper.make_node(
            "ConvTranspose", ["dy", "w"], ["dx"], output_padding=[stride - 1, stride - 1], **attrs)],
            ["dy", "w"], ["dx"], {})
        diff = np.abs(plain.run(None, {"x": x, "w": w})[0] - lowered.run(None, {"x": x, "w": w})[0]).max()
        t_plain = median_ms(lambda: plain.run(None, {"x": x, "w": w}))
        t_low = median_ms(lambda: lowered.run(None, {"x": x, "w": w}))
        t_tr = median_ms(lambda: transposed.run(None, {"dy": dy, "w": w}))
        print(f"{cin} -> {cout}, {hw}x{hw}, {stride} | {t_plain:.2f} | {t_low:.2f} | {t_tr:.2f} | {diff:.1e}")


def batch_norm_sum():
    print("per-channel sum(dy * xc), ms per call")
    print("N, C, H | Mul + ReduceSum | batched dot MatMul + ReduceSum")
    for n, c, hw in [(128, 16, 32), (128, 32, 16), (128, 64, 8)]:
        a = np.random.randn(n, c, hw, hw).astype(np.float32)
        b = np.random.randn(n, c, hw, hw).astype(np.float32)
        mul = session([helper.make_node("Mul", ["a", "b"], ["m"]),
                       helper.make_node("ReduceSum", ["m", "ax"], ["y"], keepdims=0)],
                      ["a", "b"], ["y"], {"ax": [0, 2, 3]})
        dot = session([helper.make_node("Reshape", ["a", "s1"], ["a1"]),
                       helper.make_node("Reshape", ["b", "s2"], ["b1"]),
                       helper.make_node("MatMul", ["a1", "b1"], ["m"]),
                       helper.make_node("ReduceSum", ["m", "ax"], ["y"], keepdims=0)],
                      ["a", "b"], ["y"], {"s1": [n, c, 1, hw * hw], "s2": [n, c, hw * hw, 1],
                                          "ax": [0, 2, 3]})
        feed = {"a": a, "b": b}
        print(f"{n}, {c}, {hw}x{hw} | {median_ms(lambda: mul.run(None, feed), 30):.2f} | "
              f"{median_ms(lambda: dot.run(None, feed), 30):.2f}")


if __name__ == "__main__":
    convolutions(block_size())
    batch_norm_sum()
