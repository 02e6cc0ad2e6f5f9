//! Baseline for scripts/bench-serve.sh: in-process ONNX Runtime throughput with no server,
//! on the same model and with the same session layout as `caliper serve`.
//!
//! `cargo run --release --example bench_raw -- MODEL_DIR IMAGE BATCH SESSIONS INTRA SECONDS`
//! prints one JSON line: images/s of ONNX Runtime alone at batch size BATCH, images/s of
//! decode + preprocess + ONNX Runtime at that batch size (SESSIONS threads, each owning a
//! session, as the server does), and the single-image decode + run latency (p50, p99, ms).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use caliper::infer::{ImageLimits, preprocess};
use caliper::repository::ModelMetadata;
use caliper::runtime::ClassifierSession;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() == 6,
        "usage: MODEL_DIR IMAGE BATCH SESSIONS INTRA SECONDS"
    );
    let dir = PathBuf::from(&a[0]);
    let image = std::fs::read(&a[1])?;
    let (batch, sessions, intra): (usize, usize, usize) =
        (a[2].parse()?, a[3].parse()?, a[4].parse()?);
    let secs: f64 = a[5].parse()?;
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    let i = &meta.input;
    let shape = [i.channels, i.height, i.width];
    let limits = ImageLimits {
        max_pixels: 1 << 26,
    };
    let new_session = || {
        ClassifierSession::new(
            &dir.join("model.onnx"),
            &i.name,
            &meta.output.logits,
            shape,
            intra,
        )
    };

    // Runs `work` on SESSIONS threads for SECONDS and returns images per second.
    let throughput = |with_decode: bool| -> anyhow::Result<f64> {
        let per_thread = std::thread::scope(|s| {
            let handles: Vec<_> = (0..sessions)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<usize> {
                        let mut session = new_session()?;
                        let one = preprocess(&image, i, limits)?;
                        let input: Vec<f32> = one
                            .iter()
                            .copied()
                            .cycle()
                            .take(one.len() * batch)
                            .collect();
                        session.run(&input)?;
                        let (start, mut done) = (Instant::now(), 0);
                        while start.elapsed() < Duration::from_secs_f64(secs) {
                            if with_decode {
                                let mut fresh = Vec::with_capacity(input.len());
                                for _ in 0..batch {
                                    fresh.extend(preprocess(&image, i, limits)?);
                                }
                                session.run(&fresh)?;
                            } else {
                                session.run(&input)?;
                            }
                            done += batch;
                        }
                        Ok(done)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect::<Vec<_>>()
        });
        let total: usize = per_thread.into_iter().sum::<anyhow::Result<usize>>()?;
        Ok(total as f64 / secs)
    };
    let ort_only = throughput(false)?;
    let with_decode = throughput(true)?;

    // Single image, one thread: decode + preprocess + run, as one request would.
    let mut session = new_session()?;
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(secs.min(5.0)) {
        let t = Instant::now();
        let x = preprocess(&image, i, limits)?;
        session.run(&x)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "batch_size": batch, "sessions": sessions, "intra_op_threads": intra,
            "raw_ort_images_per_s": ort_only, "raw_decode_ort_images_per_s": with_decode,
            "raw_single_p50_ms": q(0.5), "raw_single_p99_ms": q(0.99), "raw_single_samples": lat.len(),
        })
    );
    Ok(())
}
