#!/usr/bin/env python3
"""ONNX Runtime CPU kernels that the trainer's step graph could use, timed alone (benchmark
tooling, not part of the product; the figures are in docs/BENCHMARKS.md, "Session 5").

1. Per ResNet-20 convolution shape (batch 128): a plain `Conv` whose weight is a graph input (how
   a training graph's convolutions run without the NCHWc lowering), the lowered form
   (ReorderInput + `com.microsoft.nchwc` Conv fed a weight reordered in the graph + ReorderOutput,
   as src/train/nchwc.rs writes it), and the `ConvTranspose` input gradient. Checks that the
   lowered form gives the plain one's output.
2. Batch norm's per-channel sum(dy * xc): Mul + ReduceSum against a batched dot-product MatMul.
3. The stride-1 3x3 weight gradient of each ResNet-20 stage (batch 128), with the caches flushed
   before each call (a 64 MB pass, timed alone and subtracted): the split form as
   src/train/layers/conv.rs writes it (row-shifted copies of x, column-shifted copies of dY,
   nine batched MatMuls, each summed over the batch), the same in 8 batch chunks (a Split, then
   per-chunk work that stays in cache), all nine taps stacked into one MatMul (Concat of the
   three shifts of each operand), and the weight gradient as an NCHWc Conv of the transposed
   operands (batch as channels, dY as a 32x32 kernel). Each is checked against a float64
   reference.
4. dY's column shift by one (zeros shifted in) at each stage's shape, caches flushed: a cropping
   Pad, Slice + Pad, a MatMul with a 0/1 shift matrix (what conv.rs writes now), a masked copy
   + a Pad of the flattened planes. All must equal the shift exactly.
5. Reductions, each over 8 different tensors so that none is in cache: per-channel sums of
   squares and sums over N, H, W at once against over H, W then N (`Graph::channel_sum`),
   ReduceSumSquare against a Mul and two plain ReduceSums (what batch norm writes since session
   7), and a weight-gradient tap summed over the batch by ReduceSum against a ones-row MatMul.
6. Two elementwise alternatives, likewise over 6 tensors: batch norm's per-channel affine by
   the BatchNormalization kernel against Mul + Add, and the ReLU backward mask (of a ReLU
   output) by Greater + Cast + Mul against Greater + Where and Sign + Mul.
7. The split weight gradient with the input's row copies made by two Pads (nine products)
   against stacked first (three wider products) by a Gather of rows (what conv.rs writes for
   32x32 planes) or by a MatMul with a 0/1 matrix from the left, per ResNet-20 stage, caches
   flushed.

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


def split_wgrad(nodes, consts, x, dy, n, c, hw, tag, stacked=False):
    """The split weight gradient of a 3x3 "same" layer (c -> c channels, batch n) appended to
    nodes; returns the name of dW laid out [3, 3, O, C]."""
    mk = helper.make_node
    t = lambda v: f"{tag}_{v}"
    consts.update({"pr0": [0, 0, hw, 0, 0, -hw], "pr2": [0, 0, -hw, 0, 0, hw],
                   "pc0": [0, 0, 0, -1, 0, 0, 0, 1], "pc2": [0, 0, 0, 1, 0, 0, 0, -1],
                   "ax0": [0], "s33": [3, 3, c, c], f"f{n}": [n, c, hw * hw]})
    nodes += [mk("Reshape", [x, f"f{n}"], [t("x1")]),
              mk("Pad", [t("x1"), "pr0"], [t("x0")]), mk("Pad", [t("x1"), "pr2"], [t("x2")]),
              mk("Pad", [dy, "pc0"], [t("e0")]), mk("Pad", [dy, "pc2"], [t("e2")])]
    nodes += [mk("Reshape", [v, f"f{n}"], [t(f"d{i}")]) for i, v in enumerate([t("e0"), dy, t("e2")])]
    xs, ds = [t("x0"), t("x1"), t("x2")], [t("d0"), t("d1"), t("d2")]
    if stacked:
        consts["s3c"] = [3, c, 3, c]
        nodes += [mk("Concat", xs, [t("xs")], axis=1), mk("Concat", ds, [t("ds")], axis=1),
                  mk("Transpose", [t("xs")], [t("xst")], perm=[0, 2, 1]),
                  mk("MatMul", [t("ds"), t("xst")], [t("m")]),
                  mk("ReduceSum", [t("m"), "ax0"], [t("r")], keepdims=0),
                  mk("Reshape", [t("r"), "s3c"], [t("r4")]),
                  mk("Transpose", [t("r4")], [t("dw")], perm=[2, 0, 1, 3])]
        return t("dw")
    taps = []
    for a in range(3):
        for b in range(3):
            nodes += [mk("Transpose", [xs[a]], [t(f"t{a}{b}")], perm=[0, 2, 1]),
                      mk("MatMul", [ds[b], t(f"t{a}{b}")], [t(f"m{a}{b}")]),
                      mk("ReduceSum", [t(f"m{a}{b}"), "ax0"], [t(f"r{a}{b}")], keepdims=1)]
            taps.append(t(f"r{a}{b}"))
    nodes += [mk("Concat", taps, [t("cat")], axis=0), mk("Reshape", [t("cat"), "s33"], [t("dw")])]
    return t("dw")


def conv_wgrad(nodes, consts, block, n, c, hw):
    """dW as an NCHWc Conv: x transposed to [C, N, H, W] (batch as channels, blocked), dY
    transposed to a [O, N, H, W] kernel (OIHWBiBo), "same" padding, output [C, O, 3, 3]."""
    mk = helper.make_node
    consts.update({"cx": [n // block, block, c, hw, hw], "cxb": [c, n, hw, hw],
                   "cd": [n // block, block, c // block, block, hw, hw], "ck": [c, n, hw, hw]})
    nodes += [mk("Reshape", ["x", "cx"], ["cx1"]),
              mk("Transpose", ["cx1"], ["cx2"], perm=[2, 0, 3, 4, 1]),
              mk("Reshape", ["cx2", "cxb"], ["cxb1"]),
              mk("Reshape", ["dy", "cd"], ["cd1"]),
              mk("Transpose", ["cd1"], ["cd2"], perm=[2, 0, 4, 5, 1, 3]),
              mk("Reshape", ["cd2", "ck"], ["ck1"]),
              mk("Conv", ["cxb1", "ck1"], ["co"], domain="com.microsoft.nchwc",
                 kernel_shape=[hw, hw], pads=[1] * 4),
              mk("ReorderOutput", ["co"], ["co1"], domain="com.microsoft.nchwc", channels=c),
              mk("Transpose", ["co1"], ["dw"], perm=[2, 3, 1, 0])]
    return "dw"


def cache_flush():
    """A 64 MB tensor whose negation, run first in a timed graph, evicts the caches, and the
    time that pass takes alone (subtracted from the graph's)."""
    big = np.random.randn(16 << 20).astype(np.float32)
    flush = session([helper.make_node("Neg", ["big"], ["bigo"])], ["big"], ["bigo"], {})
    return big, median_ms(lambda: flush.run(None, {"big": big}))


def wgrad_case(c, hw, n=128):
    """Random x and dY of a stride-1 3x3 "same" layer (c -> c channels, hw x hw, batch n) and
    its weight gradient in float64, laid out `[a, b, O, C]` (kernel row, column)."""
    x = np.random.randn(n, c, hw, hw).astype(np.float32)
    dy = np.random.randn(n, c, hw, hw).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.stack([np.stack([np.einsum("nohw,nihw->oi", dy, xp[:, :, a:a + hw, b:b + hw])
                              for b in range(3)]) for a in range(3)])
    return n, x, dy, ref


def weight_gradients(block):
    mk = helper.make_node
    print("stride-1 3x3 weight gradient, batch 128, ms per call after a cache flush")
    print("C, HxW | split (as written) | split, 8 batch chunks | 9 taps stacked | NCHWc Conv")
    big, t_flush = cache_flush()
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        n, x, dy, ref = wgrad_case(c, hw)
        row = f"{c}, {hw}x{hw}"
        for form in ["split", "chunks", "stacked", "conv"]:
            nodes, consts = [mk("Neg", ["big"], ["bigo"])], {}
            if form == "chunks":
                k = 8
                nodes += [mk("Split", [v], [f"{v}{i}" for i in range(k)], axis=0) for v in ["x", "dy"]]
                parts = [split_wgrad(nodes, consts, f"x{i}", f"dy{i}", n // k, c, hw, f"c{i}")
                         for i in range(k)]
                nodes.append(mk("Sum", parts, ["dw"]))
            elif form == "conv":
                conv_wgrad(nodes, consts, block, n, c, hw)
            else:
                out = split_wgrad(nodes, consts, "x", "dy", n, c, hw, "c", stacked=form == "stacked")
                nodes.append(mk("Identity", [out], ["dw"]))
            sess = session(nodes, ["x", "dy", "big"], ["dw", "bigo"], consts)
            feed = {"x": x, "dy": dy, "big": big}
            err = np.abs(sess.run(None, feed)[0] - ref).max() / np.abs(ref).max()
            assert err < 1e-4, (form, err)
            row += f" | {median_ms(lambda: sess.run(None, feed)) - t_flush:.2f}"
        print(row, flush=True)


def column_shift():
    mk = helper.make_node
    print("dY shifted one column right, ms per call after a cache flush")
    print("C, HxW | Pad [1, -1] | Slice + Pad | shift MatMul | mask Mul + flat Pad")
    big, t_flush = cache_flush()
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        n = 128
        dy = np.random.randn(n, c, hw, hw).astype(np.float32)
        want = np.zeros_like(dy)
        want[..., 1:] = dy[..., :-1]
        shift = np.eye(hw, k=1, dtype=np.float32)
        mask = np.ones((1, 1, hw, hw), np.float32)
        mask[..., -1] = 0
        forms = [
            ([mk("Pad", ["dy", "p"], ["y"])], {"p": [0, 0, 0, 1, 0, 0, 0, -1]}),
            ([mk("Slice", ["dy", "st", "en", "ax"], ["s"]), mk("Pad", ["s", "p"], ["y"])],
             {"st": [0], "en": [hw - 1], "ax": [3], "p": [0, 0, 0, 1, 0, 0, 0, 0]}),
            ([mk("MatMul", ["dy", "S"], ["y"])], {}),
            ([mk("Mul", ["dy", "M"], ["d1"]), mk("Reshape", ["d1", "f"], ["d2"]),
              mk("Pad", ["d2", "p"], ["d3"]), mk("Reshape", ["d3", "s4"], ["y"])],
             {"f": [n, c, hw * hw], "p": [0, 0, 1, 0, 0, -1], "s4": [n, c, hw, hw]}),
        ]
        row = f"{c}, {hw}x{hw}"
        for nodes, consts in forms:
            sess = session([mk("Neg", ["big"], ["bigo"])] + nodes, ["dy", "S", "M", "big"],
                           ["y", "bigo"], consts)
            feed = {"dy": dy, "S": shift, "M": mask, "big": big}
            assert np.array_equal(sess.run(None, feed)[0], want)
            row += f" | {median_ms(lambda: sess.run(None, feed)) - t_flush:.2f}"
        print(row, flush=True)


def per_copy(form, k, feed, consts):
    """`form(i)` built for i < k (each copy on its own tensors, outputs `y{i}`, so that no copy
    finds its data in cache): the first copy's result and the median ms per copy."""
    outs = [f"y{i}" for i in range(k)]
    sess = session(sum((form(i) for i in range(k)), []), list(feed), outs, consts)
    return sess.run(None, feed)[0], median_ms(lambda: sess.run(None, feed), 10) / k


def reductions():
    mk = helper.make_node
    k = 8
    print(f"reductions, ms per node (each of {k} nodes on its own tensor)")
    print("C, HxW | sum sq. (0,2,3) | sum sq. (2,3) then 0 | Mul, sum (2,3) then 0 | sum (0,2,3) "
          "| sum (2,3) then 0 | tap batch sum: ReduceSum | ones-row MatMul")
    names = [f"x{i}" for i in range(k)]
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        xs = dict(zip(names, (np.random.randn(128, c, hw, hw).astype(np.float32) for _ in names)))
        ref = (xs["x0"].astype(np.float64) ** 2).sum(axis=(0, 2, 3))
        consts = {"a023": [0, 2, 3], "a23": [2, 3], "a0": [0], "f": [128, c * c]}
        def two(op, i):
            first = (mk(op, [f"x{i}"], [f"p{i}"], axes=[2, 3], keepdims=0) if op == "ReduceSumSquare"
                     else mk(op, [f"x{i}", "a23"], [f"p{i}"], keepdims=0))
            return [first, mk("ReduceSum", [f"p{i}", "a0"], [f"y{i}"], keepdims=0)]
        forms = [
            lambda i: [mk("ReduceSumSquare", [f"x{i}"], [f"y{i}"], axes=[0, 2, 3], keepdims=0)],
            lambda i: two("ReduceSumSquare", i),
            # What norm.rs writes since session 7: the squares, then the two plain sums.
            lambda i: [mk("Mul", [f"x{i}", f"x{i}"], [f"q{i}"]),
                       mk("ReduceSum", [f"q{i}", "a23"], [f"p{i}"], keepdims=0),
                       mk("ReduceSum", [f"p{i}", "a0"], [f"y{i}"], keepdims=0)],
            lambda i: [mk("ReduceSum", [f"x{i}", "a023"], [f"y{i}"], keepdims=0)],
            lambda i: two("ReduceSum", i),
        ]
        row = f"{c}, {hw}x{hw}"
        for j, form in enumerate(forms):
            y, ms = per_copy(form, k, xs, consts)
            if j < 3:
                assert np.allclose(y, ref, rtol=1e-4)
            row += f" | {ms:.3f}"
        taps = {n: np.random.randn(128, c, c).astype(np.float32) for n in names}
        ones = {"ones": np.ones((1, 128), np.float32)}
        red = session([mk("ReduceSum", [n, "a0"], [n + "r"], keepdims=0) for n in names],
                      names, [n + "r" for n in names], consts)
        mm = session(sum(([mk("Reshape", [n, "f"], [n + "f"]),
                           mk("MatMul", ["ones", n + "f"], [n + "r"])] for n in names), []),
                     names + ["ones"], [n + "r" for n in names], consts)
        row += f" | {median_ms(lambda: red.run(None, taps)) / k:.3f}"
        row += f" | {median_ms(lambda: mm.run(None, {**taps, **ones})) / k:.3f}"
        print(row, flush=True)


def elementwise():
    mk = helper.make_node
    k = 6
    print(f"elementwise, ms per node group (each of {k} on its own tensors)")
    print("C, HxW | BatchNormalization | Mul + Add | Greater + Cast + Mul | Greater + Where "
          "| Sign + Mul")
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        xs = {f"x{i}": np.random.randn(128, c, hw, hw).astype(np.float32) for i in range(k)}
        gs = {f"g{i}": np.random.randn(128, c, hw, hw).astype(np.float32) for i in range(k)}
        # The ReLU masks are taken of a ReLU's output, as in the step graph (y >= 0).
        rs = {f"r{i}": np.maximum(xs[f"x{i}"], 0) for i in range(k)}
        p = {"s": np.random.rand(c).astype(np.float32) + 0.5, "b": np.random.randn(c).astype(np.float32),
             "mean0": np.zeros(c, np.float32), "var1": np.ones(c, np.float32), "z": np.zeros(1, np.float32)}
        p["s4"], p["b4"] = p["s"].reshape(1, c, 1, 1), p["b"].reshape(1, c, 1, 1)
        feed = {**xs, **gs, **rs, **p}
        forms = [
            lambda i: [mk("BatchNormalization", [f"x{i}", "s", "b", "mean0", "var1"], [f"y{i}"], epsilon=0.0)],
            lambda i: [mk("Mul", [f"x{i}", "s4"], [f"t{i}"]), mk("Add", [f"t{i}", "b4"], [f"y{i}"])],
            lambda i: [mk("Greater", [f"r{i}", "z"], [f"m{i}"]),
                       mk("Cast", [f"m{i}"], [f"f{i}"], to=TensorProto.FLOAT),
                       mk("Mul", [f"g{i}", f"f{i}"], [f"y{i}"])],
            lambda i: [mk("Greater", [f"r{i}", "z"], [f"m{i}"]), mk("Where", [f"m{i}", f"g{i}", "z"], [f"y{i}"])],
            lambda i: [mk("Sign", [f"r{i}"], [f"f{i}"]), mk("Mul", [f"g{i}", f"f{i}"], [f"y{i}"])],
        ]
        results, row = [], f"{c}, {hw}x{hw}"
        for form in forms:
            y, ms = per_copy(form, k, feed, {})
            results.append(y)
            row += f" | {ms:.3f}"
        assert np.array_equal(results[0], results[1]) and np.array_equal(results[2], results[3])
        assert np.array_equal(results[2], results[4])
        print(row, flush=True)


def stacked_rows():
    """Section 7: the split weight gradient as conv.rs writes it for planes under 32x32 (two
    row-shift Pads of x, nine batched products) against the row copies stacked first, so that
    three wider products do (`Conv2d::weight_grad_stacked_rows`): by a Gather of rows from the
    zero-padded planes (as written) or by a MatMul with a 0/1 matrix from the left. All take
    dY's column copies from the shift MatMuls and sum each product over the batch with a ones
    row. Caches flushed before each call; checked against a float64 reference."""
    mk = helper.make_node
    print("stride-1 3x3 weight gradient, ms per call after a cache flush")
    print("C, HxW | Pads + 9 products | rows stacked by Gather + 3 products "
          "| rows stacked by a left MatMul + 3 products")
    big, t_flush = cache_flush()
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        n, x, dy, ref = wgrad_case(c, hw)
        shift = {b: np.eye(hw, k=b - 1, dtype=np.float32) for b in (0, 2)}  # dY col j-b+1
        rows = np.zeros((3 * hw, hw), np.float32)
        for a in range(3):
            for h in range(hw):
                if 0 <= h + a - 1 < hw:
                    rows[a * hw + h, h + a - 1] = 1
        feed = {"x": x, "dy": dy, "big": big, "ones": np.ones((1, n), np.float32),
                "P0": shift[0], "P2": shift[2], "S": rows}
        consts = {"f": [n, c, hw * hw], "f3": [n, 3 * c, hw * hw], "pr0": [0, 0, hw, 0, 0, -hw],
                  "pr2": [0, 0, -hw, 0, 0, hw], "fo": [n, c * c], "fo3": [n, 3 * c * c],
                  "pp": [0, 0, hw, 0, 0, hw], "fp": [n, c, hw + 2, hw],
                  "src": [h + a for a in range(3) for h in range(hw)]}
        head = [mk("Neg", ["big"], ["bigo"]), mk("MatMul", ["dy", "P0"], ["e0"]),
                mk("MatMul", ["dy", "P2"], ["e2"]), mk("Reshape", ["x", "f"], ["x1"])]
        head += [mk("Reshape", [v, "f"], [f"d{b}"]) for b, v in enumerate(["e0", "dy", "e2"])]

        def products(pairs, flat):
            nodes, sums = [], []
            for i, (xv, b) in enumerate(pairs):
                nodes += [mk("FusedMatMul", [xv, f"d{b}"], [f"m{i}"], domain="com.microsoft", transB=1),
                          mk("Reshape", [f"m{i}", flat], [f"mf{i}"]),
                          mk("MatMul", ["ones", f"mf{i}"], [f"r{i}"])]
                sums.append(f"r{i}")
            return nodes + [mk("Concat", sums, ["dw"], axis=0)]
        split = head + [mk("Pad", ["x1", "pr0"], ["x0"]), mk("Pad", ["x1", "pr2"], ["x2"])]
        split += products([(f"x{a}", b) for a in range(3) for b in range(3)], "fo")
        gather = head + [mk("Pad", ["x1", "pp"], ["xp"]), mk("Reshape", ["xp", "fp"], ["xp4"]),
                         mk("Gather", ["xp4", "src"], ["xs"], axis=2), mk("Reshape", ["xs", "f3"], ["xs3"])]
        gather += products([("xs3", b) for b in range(3)], "fo3")
        left = head + [mk("MatMul", ["S", "x"], ["xs"]), mk("Reshape", ["xs", "f3"], ["xs3"])]
        left += products([("xs3", b) for b in range(3)], "fo3")
        row = f"{c}, {hw}x{hw}"
        # split: [a, b, C, O]; stacked: [b, C, a, O] (the stacked rows are (c, a)).
        stacked_ref = lambda d: d.reshape(3, c, 3, c).transpose(2, 0, 3, 1)
        for nodes, to_ref in [(split, lambda d: d.reshape(3, 3, c, c).transpose(0, 1, 3, 2)),
                              (gather, stacked_ref), (left, stacked_ref)]:
            sess = session(nodes, list(feed), ["dw", "bigo"], consts)
            err = np.abs(to_ref(sess.run(None, feed)[0]) - ref).max() / np.abs(ref).max()
            assert err < 1e-4, err
            row += f" | {median_ms(lambda: sess.run(None, feed)) - t_flush:.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    convolutions(block_size())
    batch_norm_sum()
    weight_gradients(block_size())
    column_shift()
    reductions()
    elementwise()
    stacked_rows()
