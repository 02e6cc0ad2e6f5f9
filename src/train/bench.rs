//! `caliper-train bench`: the median time of a training step (forward, loss, backward, update)
//! on random data of a given shape, for comparison with other frameworks at the same batch,
//! architecture, loss and thread count. Data loading is excluded on purpose: the PyTorch
//! baseline (`scripts/bench_train_torch.py`) times the same thing.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::config::BenchArgs;
use super::runner::{Backend, Trainer};
use super::step::training_step;

/// One benchmark result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Architecture.
    pub arch: String,
    /// Loss.
    pub loss: String,
    /// Batch size.
    pub batch_size: usize,
    /// Intra-op threads.
    pub threads: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median milliseconds per step.
    pub median_ms: f64,
    /// Images per second at the median step time.
    pub images_per_s: f64,
}

/// Runs the benchmark.
pub fn run(b: &BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        b.batch_size >= 2 && b.steps >= 1 && b.threads >= 1,
        "--batch-size >= 2, --steps >= 1 and --threads >= 1 are required"
    );
    let loss = b.net.model.loss()?;
    let opt = b.net.model.optimizer(super::config::DEFAULT_MOMENTUM)?;
    let net = b.net.net()?;
    let graph = training_step(&net, loss, &opt, false);
    let device = b.device.parse().map_err(anyhow::Error::msg)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let backend = Backend {
        device,
        threads: b.threads,
        cuda_graph: b.cuda_graph,
    };
    let mut trainer = Trainer::new(&graph, backend, &mut rng)?;
    let per: usize = b.net.input_shape.iter().product::<i64>() as usize;
    let shape: Vec<i64> = std::iter::once(b.batch_size as i64)
        .chain(b.net.input_shape.iter().copied())
        .collect();
    let mut times = Vec::with_capacity(b.steps);
    for i in 0..b.warmup + b.steps {
        let x: Vec<f32> = (0..b.batch_size * per)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let y: Vec<i64> = (0..b.batch_size)
            .map(|_| rng.random_range(0..b.net.classes))
            .collect();
        let t = Instant::now();
        trainer.step(x, &shape, y, 0.01)?;
        if i >= b.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(BenchReport {
        arch: b.net.model.arch.clone(),
        loss: loss.name().into(),
        batch_size: b.batch_size,
        threads: b.threads,
        steps: b.steps,
        median_ms: median * 1e3,
        images_per_s: b.batch_size as f64 / median,
    })
}
