//! Convolution and pooling: Conv2d (weight gradient by batched MatMuls of shifted copies of the
//! input and dY, one per kernel tap or, on large planes, one per kernel column with the input's
//! row copies stacked; input gradient by ConvTranspose; on the CPU
//! both convolutions later run on NCHWc kernels, see `train::nchwc`), MaxPool2d and global
//! average pooling. MaxPool2d with
//! windows that tile the input (k == stride, H and W multiples of k: LeNet's pools) runs the
//! fast single-output MaxPool forward and a backward of strided Slices, first-maximum masks
//! and two interleaving Concats; overlapping windows keep Indices + ScatterElements.

use super::{Bwd, Fwd, Init, Layer, Mode, ParamSpec, mask_mul};
use crate::train::graph::{Graph, attr_i, attr_ints, attr_s, attr_t, tensor_f32};

/// Pad amounts `(before, after)` on one axis; negative amounts crop.
type Shift = (i64, i64);

/// 2-D convolution with square kernel, stride and zero padding; optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Parameter name prefix.
    pub name: String,
    /// Input channels.
    pub cin: i64,
    /// Output channels.
    pub cout: i64,
    /// Kernel size.
    pub k: i64,
    /// Stride.
    pub stride: i64,
    /// Zero padding on each side.
    pub pad: i64,
    /// Whether the layer has a bias (convolutions followed by BatchNorm do not).
    pub bias: bool,
}

impl Conv2d {
    fn w(&self) -> String {
        format!("{}.weight", self.name)
    }
    fn b(&self) -> String {
        format!("{}.bias", self.name)
    }
    fn out_hw(&self, h: i64) -> i64 {
        (h + 2 * self.pad - self.k) / self.stride + 1
    }
    fn attrs(&self) -> Vec<crate::runtime::onnx_proto::AttributeProto> {
        vec![
            attr_ints("kernel_shape", &[self.k, self.k]),
            attr_ints("strides", &[self.stride, self.stride]),
            attr_ints("pads", &[self.pad; 4]),
        ]
    }
    /// Weight gradient tap by tap, without a column matrix: per kernel tap one strided Slice of
    /// the padded input (`[N, C, P]`, P = OH*OW) times dY transposed once (`[N, P, O]`) in a
    /// batched MatMul (`[N, C, O]`); the k*k results are stacked and summed over the batch.
    /// Against the im2col column matrix (Pad + k*k Slices + Concat, then one Gemm) this drops
    /// the Concat of the 9x-sized columns, a large share of the step (docs/BENCHMARKS.md). An
    /// identity-kernel Conv building the columns was slower still (ONNX Runtime reorders it to
    /// NCHWc and back).
    fn weight_grad(&self, g: &mut Graph, x: &str, dy: &str, s: &[i64]) -> String {
        let (c, h, w) = (s[0], s[1], s[2]);
        let (oh, ow) = (self.out_hw(h), self.out_hw(w));
        let (k, st, p) = (self.k, self.stride, self.pad);
        if st == 1 && k > 1 && p < k && self.split_is_cheaper(c, h, w) {
            return self.weight_grad_split(g, x, dy, s);
        }
        if st > 1 && h % st == 0 && w % st == 0 && oh == h / st && ow == w / st {
            return self.weight_grad_strided(g, x, dy, s);
        }
        let xp = if p > 0 {
            let pads = g.const_i64(&[0, 0, p, p, 0, 0, p, p]);
            g.op("Pad", &[x, &pads], vec![])
        } else {
            x.to_string()
        };
        let dyr = g.reshape(dy, &[-1, self.cout, oh * ow]);
        let dyt = g.transpose(&dyr, &[0, 2, 1]);
        let axes = g.const_i64(&[2, 3]);
        let steps = g.const_i64(&[st, st]);
        let mut taps = Vec::with_capacity((k * k) as usize);
        for ki in 0..k {
            for kj in 0..k {
                let starts = g.const_i64(&[ki, kj]);
                let ends = g.const_i64(&[ki + st * (oh - 1) + 1, kj + st * (ow - 1) + 1]);
                let sl = g.op("Slice", &[&xp, &starts, &ends, &axes, &steps], vec![]);
                let sl = g.reshape(&sl, &[-1, c, oh * ow]);
                let mm = g.op("MatMul", &[&sl, &dyt], vec![]);
                taps.push(mm);
            }
        }
        self.stack_taps(g, &taps, c)
    }

    /// The strided weight gradient without strided Slices (which ONNX Runtime copies element
    /// by element, docs/BENCHMARKS.md). Viewing x as
    /// `[N, C, H/s, s*W]` puts rows `s*i .. s*i + s` side by side, so one MatMul with a 0/1
    /// matrix picks, for a row phase r and kernel column b, rows `s*i + r` and columns
    /// `s*j + b - p` (zero outside x) at once: `T[r][b]`, `[N, C, OH*OW]`. Kernel row a reads
    /// rows `s*i + a - p = s*(i + q) + r`, i.e. `T[r][b]` moved by q rows (a Pad of the flat
    /// planes by q*OW, zeros shifted in). For 3x3, stride 2, padding 1: 6 picks and 3 shifts
    /// instead of a Pad and 9 strided Slices. Needs OH = H/s and OW = W/s (ResNet-20's layers).
    fn weight_grad_strided(&self, g: &mut Graph, x: &str, dy: &str, s: &[i64]) -> String {
        let (c, h, w) = (s[0], s[1], s[2]);
        let (k, st, p) = (self.k, self.stride, self.pad);
        let (oh, ow) = (h / st, w / st);
        let rows = g.reshape(x, &[-1, c, oh, st * w]);
        let dyr = g.reshape(dy, &[-1, self.cout, oh * ow]);
        let dyt = g.transpose(&dyr, &[0, 2, 1]);
        let mut picked: std::collections::HashMap<(i64, i64), String> = Default::default();
        let mut taps = Vec::with_capacity((k * k) as usize);
        for a in 0..k {
            let (q, r) = ((a - p).div_euclid(st), (a - p).rem_euclid(st));
            for b in 0..k {
                let t = match picked.get(&(r, b)) {
                    Some(t) => t.clone(),
                    None => {
                        let src = |j: i64| {
                            let col = st * j + b - p;
                            if (0..w).contains(&col) {
                                r * w + col
                            } else {
                                -1
                            }
                        };
                        let t = pick_cols(g, &rows, st * w, ow, src);
                        let t = g.reshape(&t, &[-1, c, oh * ow]);
                        picked.insert((r, b), t.clone());
                        t
                    }
                };
                let t = if q == 0 {
                    t
                } else {
                    let pads = g.const_i64(&[0, 0, -q * ow, 0, 0, q * ow]);
                    g.op("Pad", &[&t, &pads], vec![])
                };
                taps.push(g.op("MatMul", &[&t, &dyt], vec![]));
            }
        }
        self.stack_taps(g, &taps, c)
    }

    /// Row shifts of the input (`i - p`, tap row i) and column shifts of dY (`j - p`, tap
    /// column j) for the split weight gradient, as `(before, after)` Pad amounts on that axis;
    /// negative amounts crop. `(0, 0)` is no copy at all.
    fn split_shifts(&self, h: i64, w: i64) -> (Vec<Shift>, Vec<Shift>) {
        let (k, p) = (self.k, self.pad);
        let (oh, ow) = (self.out_hw(h), self.out_hw(w));
        // Input rows for tap row i: X[h' + i - p] for h' < OH, zero outside X.
        let rows = (0..k).map(|i| (p - i, oh - h + i - p)).collect();
        // dY columns for tap column j: dY[w' - j + p] for w' < W, zero outside dY.
        let cols = (0..k).map(|j| (j - p, w - ow - j + p)).collect();
        (rows, cols)
    }

    /// Whether the split weight gradient copies less than the tap form (in input-sized units,
    /// dY counting cout/cin of one): with "same" padding it copies 2(k - 1) tensors (the
    /// middle row and column need none), the tap form k*k + 1 input-sized ones. It pays only
    /// where dY is no wider than the input: ResNet-20's layers (as many outputs as inputs)
    /// gain, LeNet's 32 -> 64 layer loses (its 1 -> 32 one copies more; docs/BENCHMARKS.md).
    fn split_is_cheaper(&self, c: i64, h: i64, w: i64) -> bool {
        let (rows, cols) = self.split_shifts(h, w);
        let copies = |v: &[Shift]| v.iter().filter(|&&s| s != (0, 0)).count() as i64;
        self.cout <= c && copies(&rows) * c + copies(&cols) * self.cout < (self.k * self.k + 1) * c
    }

    /// The stride-1 weight gradient with the tap shift split between the two operands: one
    /// row-shifted copy of the input per kernel row and one column-shifted copy of dY per
    /// kernel column (a Pad of the flattened planes; a MatMul with a shift matrix, see
    /// `shift_cols`), each cropping on one side what it shifts in on the other; tap
    /// (i, j) multiplies row copy i by column copy j. Summing over the input column
    /// `w' = w + j - p` instead of the output column `w` is what moves the column shift onto
    /// dY: `Xp[h+i, w+j] dY[h, w] = X[h+i-p, w'] dY[h, w'-j+p]`, zero outside either tensor.
    /// The tap form makes k*k strided Slices of a padded input; this one 2(k - 1) copies for
    /// "same" padding (the copies are a large part of the ResNet-20 step, docs/BENCHMARKS.md).
    fn weight_grad_split(&self, g: &mut Graph, x: &str, dy: &str, s: &[i64]) -> String {
        let (c, h, w) = (s[0], s[1], s[2]);
        let (oh, ow) = (self.out_hw(h), self.out_hw(w));
        let o = self.cout;
        let (rows, cols) = self.split_shifts(h, w);
        let dcols: Vec<String> = cols
            .into_iter()
            .map(|(before, after)| {
                let t = if (before, after) == (0, 0) {
                    dy.to_string()
                } else {
                    shift_cols(g, dy, ow, before, after)
                };
                let t = g.reshape(&t, &[-1, o, oh * w]);
                g.transpose(&t, &[0, 2, 1])
            })
            .collect();
        if h * w >= STACKED_ROWS_MIN_PLANE {
            return self.weight_grad_stacked_rows(g, x, &dcols, s, &rows);
        }
        // A row shift moves whole rows, so it is a shift of each flattened `H*W` plane by a
        // multiple of W: one Pad over N*C long runs instead of N*C*H rows of W floats, which
        // ONNX Runtime copies row by row.
        let planes = g.reshape(x, &[-1, c, h * w]);
        let xrows: Vec<String> = rows
            .into_iter()
            .map(|(before, after)| {
                if (before, after) == (0, 0) {
                    return planes.clone();
                }
                let pads = g.const_i64(&[0, 0, before * w, 0, 0, after * w]);
                g.op("Pad", &[&planes, &pads], vec![])
            })
            .collect();
        let mut taps = Vec::with_capacity((self.k * self.k) as usize);
        for xr in &xrows {
            for dc in &dcols {
                let mm = g.op("MatMul", &[xr, dc], vec![]);
                taps.push(mm);
            }
        }
        self.stack_taps(g, &taps, c)
    }

    /// The split weight gradient with the k row copies of the input stacked by one Gather:
    /// the planes padded with zero rows (one flat Pad), then Gather on the row axis with the
    /// k*OH source rows (copy i, row r: input row `r + i - p`) makes `[N, C, k*OH, W]`, i.e.
    /// `[N, C*k, OH*W]` with rows `(c, i)`. So each of the k column copies of dY meets all row
    /// copies in one MatMul (`[N, C*k, O]`): k products instead of k*k, each reading the
    /// input part once instead of k times. Used for planes of at least 32x32 (ResNet-20's
    /// stage 1), where the step gains; alone it also wins at 16x16 but not in the step, and at
    /// 8x8 it loses even alone (`scripts/bench_ort_kernels.py` section 7, docs/BENCHMARKS.md).
    /// A MatMul with a 0/1 matrix from the left stacked the rows too, but at 1/H density most
    /// of its multiplications are wasted.
    fn weight_grad_stacked_rows(
        &self,
        g: &mut Graph,
        x: &str,
        dcols: &[String],
        s: &[i64],
        rows: &[Shift],
    ) -> String {
        let (c, h, w) = (s[0], s[1], s[2]);
        let (k, o, oh) = (self.k, self.cout, self.out_hw(h));
        // Output row r of copy i is input row r - before (the Pad amounts' meaning); pad the
        // planes so that every such row exists, zero where it is outside the input.
        let top = rows
            .iter()
            .map(|&(before, _)| before)
            .max()
            .unwrap_or(0)
            .max(0);
        let bottom = rows
            .iter()
            .map(|&(before, _)| oh - 1 - before - (h - 1))
            .max()
            .unwrap_or(0)
            .max(0);
        let planes = g.reshape(x, &[-1, c, h * w]);
        let pads = g.const_i64(&[0, 0, top * w, 0, 0, bottom * w]);
        let padded = g.op("Pad", &[&planes, &pads], vec![]);
        let padded = g.reshape(&padded, &[-1, c, h + top + bottom, w]);
        let src: Vec<i64> = rows
            .iter()
            .flat_map(|&(before, _)| (0..oh).map(move |r| r - before + top))
            .collect();
        let src = g.const_i64(&src);
        let stacked = g.op("Gather", &[&padded, &src], vec![attr_i("axis", 2)]);
        let stacked = g.reshape(&stacked, &[-1, c * k, oh * w]);
        let products: Vec<String> = dcols
            .iter()
            .map(|dc| g.op("MatMul", &[&stacked, dc], vec![]))
            .collect();
        // One `[1, C*k*O]` row per dY column copy j, index (c, i, o): `[j, C, i, O]`.
        let sums = self.batch_sums(g, &products, c * k * o);
        let sums = g.reshape(&sums, &[k, c, k, o]);
        g.transpose(&sums, &[3, 1, 2, 0])
    }

    /// The k*k per-tap `[N, C, O]` products (row-major tap order), summed over the batch, as
    /// the `[O, C, k, k]` weight gradient.
    fn stack_taps(&self, g: &mut Graph, taps: &[String], c: i64) -> String {
        let (k, o) = (self.k, self.cout);
        let stacked = self.batch_sums(g, taps, c * o);
        let stacked = g.reshape(&stacked, &[k * k, c, o]);
        let dw = g.transpose(&stacked, &[2, 1, 0]);
        g.reshape(&dw, &[self.cout, c, k, k])
    }

    /// Each product (`[N, ..]`, `len` values per sample) summed over the batch, stacked as
    /// `[products, len]`. Each is summed before the stacking, so the Concat moves `[len]` rows
    /// instead of `[N, len]` tensors in short runs. The
    /// sums are stacked as they come and reshaped once by the caller: on CUDA every node is a
    /// dispatch on the host.
    fn batch_sums(&self, g: &mut Graph, products: &[String], len: i64) -> String {
        let sums: Vec<String> = products
            .iter()
            .map(|t| {
                // The batch sum as `[1, N] x [N, len]`: cheaper than ReduceSum over the
                // leading axis (docs/BENCHMARKS.md).
                let ones = g.batch_ones(t, 3);
                let flat = g.reshape(t, &[-1, len]);
                g.op("MatMul", &[&ones, &flat], vec![])
            })
            .collect();
        let refs: Vec<&str> = sums.iter().map(String::as_str).collect();
        g.op("Concat", &refs, vec![attr_i("axis", 0)])
    }
}

/// The smallest input plane (H*W) whose split weight gradient stacks the row copies
/// (`Conv2d::weight_grad_stacked_rows`); measured boundary, see there.
const STACKED_ROWS_MIN_PLANE: i64 = 32 * 32;

/// `t` (`[.., W_in]`) shifted along its last axis as Pad would with `(before, after)` (zeros
/// shifted in, negative amounts crop), by a MatMul with a constant 0/1 matrix `[W_in, W_out]`.
/// Exact (each output is one input times 1 plus zeros), and one pass at memory speed: ONNX
/// Runtime's CPU Pad copies row by row, which for short rows costs a multiple of a plain copy
/// (docs/BENCHMARKS.md).
fn shift_cols(g: &mut Graph, t: &str, w_in: i64, before: i64, after: i64) -> String {
    pick_cols(g, t, w_in, w_in + before + after, |j| j - before)
}

/// Output column j of `t` (`[.., w_in]`) is input column `src(j)`, or zero where that is
/// outside `0..w_in`: a MatMul with a constant 0/1 matrix `[w_in, w_out]`, exact.
fn pick_cols(g: &mut Graph, t: &str, w_in: i64, w_out: i64, src: impl Fn(i64) -> i64) -> String {
    let mut m = vec![0.0f32; (w_in * w_out) as usize];
    for j in 0..w_out {
        let i = src(j);
        if (0..w_in).contains(&i) {
            m[(i * w_out + j) as usize] = 1.0;
        }
    }
    let pick = g.const_f32(&[w_in, w_out], &m);
    g.op("MatMul", &[t, &pick], vec![])
}

impl Layer for Conv2d {
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = vec![ParamSpec::new(
            self.w(),
            vec![self.cout, self.cin, self.k, self.k],
            Init::HeUniform {
                fan_in: self.cin * self.k * self.k,
            },
        )];
        if self.bias {
            p.push(ParamSpec::new(self.b(), vec![self.cout], Init::Zeros));
        }
        p
    }
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        vec![self.cout, self.out_hw(s[1]), self.out_hw(s[2])]
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], _mode: Mode) -> Fwd {
        let w = self.w();
        let b = self.b();
        let mut inputs = vec![x, w.as_str()];
        if self.bias {
            inputs.push(&b);
        }
        let y = g.op("Conv", &inputs, self.attrs());
        Fwd::simple(y, vec![x.to_string()])
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, s: &[i64], dy: &str, need_dx: bool) -> Bwd {
        let x = &f.saved[0];
        let (h, w) = (s[1], s[2]);
        let (oh, ow) = (self.out_hw(h), self.out_hw(w));
        let (k, st, p) = (self.k, self.stride, self.pad);
        let dw = self.weight_grad(g, x, dy, s);
        let mut grads = vec![(self.w(), dw)];
        if self.bias {
            grads.push((self.b(), g.channel_sum(dy)));
        }
        let dx = need_dx.then(|| {
            let wname = self.w();
            let mut attrs = self.attrs();
            let op = h + 2 * p - k - st * (oh - 1);
            let opw = w + 2 * p - k - st * (ow - 1);
            attrs.push(attr_ints("output_padding", &[op, opw]));
            g.op("ConvTranspose", &[dy, &wname], attrs)
        });
        Bwd { dx, grads }
    }
}

/// Max pooling with a square window, no padding; the backward pass routes each window's
/// gradient to its first maximum in row-major order (as PyTorch does).
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    /// Window size.
    pub k: i64,
    /// Stride.
    pub stride: i64,
}

impl MaxPool2d {
    /// Whether the windows tile the input exactly (no overlap, nothing left over).
    fn tiles(&self, s: &[i64]) -> bool {
        self.k == self.stride && s[1] % self.k == 0 && s[2] % self.k == 0
    }

    /// The backward pass when the windows tile the input, without Indices: for each window
    /// position `t` in row-major order, a strided Slice of x equal to y marks where the maximum
    /// sits, and a running "already taken" mask keeps only the first such position of each
    /// window (PyTorch's choice on ties, which are common: flat image backgrounds give equal
    /// conv outputs); the last position needs no comparison (it holds the maximum exactly when
    /// no earlier one does). dY times each mask gives k*k quarter-size pieces, interleaved back
    /// to full size by two Concats. Every node is a plain elementwise op or copy, and no value
    /// comes from `Shape` (CUDA graph capture).
    fn tiled_backward(&self, g: &mut Graph, x: &str, y: &str, s: &[i64], dy: &str) -> String {
        let (c, k) = (s[0], self.k);
        let (h, w, oh, ow) = (s[1], s[2], s[1] / k, s[2] / k);
        let axes = g.const_i64(&[2, 3]);
        let steps = g.const_i64(&[k, k]);
        let ends = g.const_i64(&[h, w]);
        let mut taken: Option<String> = None;
        let mut rows = Vec::with_capacity(k as usize);
        for a in 0..k {
            let mut cols = Vec::with_capacity(k as usize);
            for b in 0..k {
                let last = a + 1 == k && b + 1 == k;
                let first = match (&taken, last) {
                    (Some(t), true) => g.op("Not", &[t], vec![]),
                    _ => {
                        let starts = g.const_i64(&[a, b]);
                        let xt = g.op("Slice", &[x, &starts, &ends, &axes, &steps], vec![]);
                        let at_max = g.op("Equal", &[&xt, y], vec![]);
                        let first = match &taken {
                            None => at_max.clone(),
                            Some(t) => {
                                let free = g.op("Not", &[t], vec![]);
                                g.op("And", &[&at_max, &free], vec![])
                            }
                        };
                        if !last {
                            taken = Some(match &taken {
                                None => at_max,
                                Some(t) => g.op("Or", &[t, &at_max], vec![]),
                            });
                        }
                        first
                    }
                };
                let d = mask_mul(g, dy, &first);
                cols.push(g.reshape(&d, &[-1, c, oh, ow, 1]));
            }
            let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
            let row = g.op("Concat", &refs, vec![attr_i("axis", 4)]);
            rows.push(g.reshape(&row, &[-1, c, oh, 1, w]));
        }
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        let dx = g.op("Concat", &refs, vec![attr_i("axis", 3)]);
        g.reshape(&dx, &[-1, c, h, w])
    }
}

impl Layer for MaxPool2d {
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        let o = |h: i64| (h - self.k) / self.stride + 1;
        vec![s[0], o(s[1]), o(s[2])]
    }
    fn forward(&self, g: &mut Graph, x: &str, s: &[i64], mode: Mode) -> Fwd {
        let attrs = vec![
            attr_ints("kernel_shape", &[self.k, self.k]),
            attr_ints("strides", &[self.stride, self.stride]),
        ];
        if mode == Mode::Eval {
            return Fwd::simple(g.op("MaxPool", &[x], attrs), vec![]);
        }
        if self.tiles(s) {
            // The single-output MaxPool is ONNX Runtime's fast (MLAS) kernel; asking for
            // Indices falls back to a much slower generic loop (docs/BENCHMARKS.md).
            let y = g.op("MaxPool", &[x], attrs);
            return Fwd::simple(y.clone(), vec![x.to_string(), y]);
        }
        let mut outs = g.op_n("MaxPool", &[x], 2, attrs);
        let idx = outs.pop().unwrap_or_default();
        let y = outs.pop().unwrap_or_default();
        Fwd::simple(y, vec![x.to_string(), idx])
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        if self.tiles(s) {
            return Bwd {
                dx: Some(self.tiled_backward(g, &f.saved[0], &f.saved[1], s, dy)),
                grads: vec![],
            };
        }
        // Overlapping windows: Indices are offsets into the whole flattened input (row-major NCHW), so one
        // ScatterElements on the flat tensor routes every gradient to its argmax.
        let (x, idx) = (&f.saved[0], &f.saved[1]);
        let shape = g.op("Shape", &[x], vec![]);
        let numel = g.op("ReduceProd", &[&shape], vec![attr_i("keepdims", 1)]);
        let zeros = g.op(
            "ConstantOfShape",
            &[&numel],
            vec![attr_t("value", tensor_f32("", &[1], &[0.0]))],
        );
        let idxf = g.reshape(idx, &[-1]);
        let dyf = g.reshape(dy, &[-1]);
        let sc = g.op(
            "ScatterElements",
            &[&zeros, &idxf, &dyf],
            vec![attr_i("axis", 0), attr_s("reduction", "add")],
        );
        Bwd {
            dx: Some(g.op("Reshape", &[&sc, &shape], vec![])),
            grads: vec![],
        }
    }
}

/// Average of each channel over its spatial positions: `[C, H, W] -> [C]`.
#[derive(Debug, Clone)]
pub struct GlobalAvgPool;

impl Layer for GlobalAvgPool {
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        vec![s[0]]
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], _mode: Mode) -> Fwd {
        Fwd::simple(g.reduce_mean(x, &[2, 3], false), vec![])
    }
    fn backward(&self, g: &mut Graph, _f: &Fwd, s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        let scale = g.scalar(1.0 / (s[1] * s[2]) as f32);
        let d = g.mul(dy, &scale);
        let d = g.reshape(&d, &[-1, s[0], 1, 1]);
        let shape = g.const_i64(&[1, 1, s[1], s[2]]);
        Bwd {
            dx: Some(g.op("Expand", &[&d, &shape], vec![])),
            grads: vec![],
        }
    }
}
