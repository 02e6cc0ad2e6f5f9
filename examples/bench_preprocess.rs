//! Decode + preprocessing per image (docs/BENCHMARKS.md, "Preprocessing per image"): the one
//! preprocessing path of caliper (`serve::infer::preprocess`: sniff, decode, convert, resize,
//! crop, normalise) run over and over on one thread for one model's input spec, on each IMAGE
//! given. Prints one JSON line: the median of a few repeats, in microseconds per image, per file.
//! Pass two builds' binaries in alternation to compare them (the machines here are noisy).
//!
//! `cargo run --release --example bench_preprocess -- MODEL_DIR IMAGE...`

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use caliper::repository::ModelMetadata;
use caliper::serve::infer::{ImageLimits, preprocess};

/// Repeats per image; the median is reported.
const REPEATS: usize = 7;
/// Shortest repeat, in seconds.
const MIN_REPEAT_S: f64 = 0.2;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(a.len() >= 2, "usage: MODEL_DIR IMAGE...");
    let dir = PathBuf::from(&a[0]);
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    let limits = ImageLimits {
        max_pixels: 1 << 26,
    };
    let mut rows = Vec::new();
    for path in &a[1..] {
        let bytes = std::fs::read(path)?;
        // Errors are the caller's to see once, not timed.
        preprocess(&bytes, &meta.input, limits)?;
        let mut n = 1usize;
        let mut medians = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            loop {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(preprocess(black_box(&bytes), &meta.input, limits)?);
                }
                let s = start.elapsed().as_secs_f64();
                if s >= MIN_REPEAT_S {
                    medians.push(s * 1e6 / n as f64);
                    break;
                }
                n = (n * 2).max((n as f64 * MIN_REPEAT_S / s.max(1e-9)) as usize + 1);
            }
        }
        medians.sort_by(f64::total_cmp);
        rows.push(serde_json::json!({
            "image": path,
            "us_per_image": medians[REPEATS / 2],
            "min_us": medians[0],
            "max_us": medians[REPEATS - 1],
        }));
    }
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "preprocess",
            "model": a[0],
            "input": [meta.input.channels, meta.input.height, meta.input.width],
            "resize": format!("{:?}", meta.input.resize),
            "images": rows,
        })
    );
    Ok(())
}
