//! Residual blocks and the chain helpers that run a list of layers forward and backward.

use super::{Bwd, Fwd, Layer, Mode, ParamSpec, mask_mul};
use crate::train::graph::Graph;

/// A residual block `relu(body(x) + shortcut(x))` (He et al. 2016); `shortcut` empty means
/// the identity.
#[derive(Debug)]
pub struct Residual {
    /// The main branch.
    pub body: Vec<Box<dyn Layer>>,
    /// The projection branch (1x1 conv + BN when the shape changes), or empty.
    pub shortcut: Vec<Box<dyn Layer>>,
}

/// Runs a chain of layers forward, returning the records and the input shape of each.
pub fn chain_forward(
    layers: &[Box<dyn Layer>],
    g: &mut Graph,
    x: &str,
    s: &[i64],
    mode: Mode,
) -> (Vec<Fwd>, Vec<Vec<i64>>) {
    let mut fwds = Vec::with_capacity(layers.len());
    let mut shapes = Vec::with_capacity(layers.len());
    let (mut cur, mut shape) = (x.to_string(), s.to_vec());
    for l in layers {
        let f = l.forward(g, &cur, &shape, mode);
        shapes.push(shape.clone());
        shape = l.out_shape(&shape);
        cur = f.y.clone();
        fwds.push(f);
    }
    (fwds, shapes)
}

/// Runs a chain backward; returns the input gradient (when `need_dx`) and the parameter grads.
pub fn chain_backward(
    layers: &[Box<dyn Layer>],
    g: &mut Graph,
    fwds: &[Fwd],
    shapes: &[Vec<i64>],
    dy: &str,
    need_dx: bool,
) -> Bwd {
    let mut grads = Vec::new();
    let mut d = dy.to_string();
    for i in (0..layers.len()).rev() {
        let want = need_dx || i > 0;
        let b = layers[i].backward(g, &fwds[i], &shapes[i], &d, want);
        grads.extend(b.grads);
        match b.dx {
            Some(dx) => d = dx,
            None => {
                return Bwd { dx: None, grads };
            }
        }
    }
    Bwd {
        dx: need_dx.then_some(d),
        grads,
    }
}

fn chain_params(layers: &[Box<dyn Layer>], buffers: bool) -> Vec<ParamSpec> {
    layers
        .iter()
        .flat_map(|l| if buffers { l.buffers() } else { l.params() })
        .collect()
}

fn chain_out_shape(layers: &[Box<dyn Layer>], s: &[i64]) -> Vec<i64> {
    layers.iter().fold(s.to_vec(), |sh, l| l.out_shape(&sh))
}

impl Layer for Residual {
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = chain_params(&self.body, false);
        p.extend(chain_params(&self.shortcut, false));
        p
    }
    fn buffers(&self) -> Vec<ParamSpec> {
        let mut p = chain_params(&self.body, true);
        p.extend(chain_params(&self.shortcut, true));
        p
    }
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        chain_out_shape(&self.body, s)
    }
    fn forward(&self, g: &mut Graph, x: &str, s: &[i64], mode: Mode) -> Fwd {
        let (bf, _) = chain_forward(&self.body, g, x, s, mode);
        let (sf, _) = chain_forward(&self.shortcut, g, x, s, mode);
        let by = bf.last().map_or(x.to_string(), |f| f.y.clone());
        let sy = sf.last().map_or(x.to_string(), |f| f.y.clone());
        let sum = g.add(&by, &sy);
        let y = g.op("Relu", &[&sum], vec![]);
        let mut updates = Vec::new();
        for f in bf.iter().chain(&sf) {
            updates.extend(f.buffer_updates.iter().cloned());
        }
        Fwd {
            y: y.clone(),
            saved: vec![y],
            children: vec![
                Fwd {
                    children: bf,
                    ..Default::default()
                },
                Fwd {
                    children: sf,
                    ..Default::default()
                },
            ],
            buffer_updates: updates,
        }
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        let zero = g.scalar(0.0);
        let mask = g.op("Greater", &[&f.saved[0], &zero], vec![]);
        let dsum = mask_mul(g, dy, &mask);
        // Both branches see the gradient of the sum; an empty branch (identity shortcut) passes
        // it through unchanged.
        let branch = |g: &mut Graph, layers: &[Box<dyn Layer>], fwd: &Fwd| {
            let b = chain_backward(layers, g, &fwd.children, &shapes_of(layers, s), &dsum, true);
            (b.grads, b.dx.unwrap_or_else(|| dsum.clone()))
        };
        let (mut grads, db) = branch(g, &self.body, &f.children[0]);
        let (shortcut_grads, ds) = branch(g, &self.shortcut, &f.children[1]);
        grads.extend(shortcut_grads);
        Bwd {
            dx: Some(g.add(&db, &ds)),
            grads,
        }
    }
}

/// Input shape of every layer of a chain.
fn shapes_of(layers: &[Box<dyn Layer>], s: &[i64]) -> Vec<Vec<i64>> {
    let mut out = Vec::with_capacity(layers.len());
    let mut cur = s.to_vec();
    for l in layers {
        out.push(cur.clone());
        cur = l.out_shape(&cur);
    }
    out
}
