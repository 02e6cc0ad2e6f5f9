//! Baseline for scripts/bench-serve.sh: in-process ONNX Runtime throughput with no server,
//! on the same model and with the same session layout as `caliper serve`.
//!
//! `cargo run --release --example bench_raw -- MODEL_DIR IMAGE BATCH SESSIONS INTRA SECONDS`
//! prints one JSON line: images/s of ONNX Runtime alone at batch size BATCH, images/s of
//! decode + preprocess + ONNX Runtime at that batch size (SESSIONS threads, each owning a
//! session, as the server does), and the single-image decode + run latency (p50, p99, ms).
//! Sessions also fetch the features output when model.toml names one, as the server's do.
//!
//! `DEVICE=cuda:0` runs the sessions on that device (as `caliper serve --device cuda:0` does,
//! without the server's padding of batches to warmed-up sizes: BATCH is the only size run).
//!
//! It also reports the CPU time per image of decode + ONNX Runtime (`raw_decode_ort_cpu_us`,
//! from the threads' own run time in /proc), which other processes on a shared machine do not
//! inflate: the server's CPU time per request is compared with it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use caliper::repository::ModelMetadata;
use caliper::runtime::ClassifierSession;
use caliper::serve::infer::{ImageLimits, preprocess};

fn main() -> anyhow::Result<()> {
    // As the server does, so that both run the same ONNX Runtime threads.
    // SAFETY: first statement of `main`, so the process has one thread.
    #[allow(unsafe_code)]
    unsafe {
        caliper::runtime::opt_out_of_telemetry()
    };
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
    let device: caliper::runtime::Device = std::env::var("DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    let new_session = || -> anyhow::Result<ClassifierSession> {
        let s = ClassifierSession::open(
            &dir.join("model.onnx"),
            &i.name,
            &meta.output.logits,
            shape,
            intra,
            device,
        )?;
        Ok(match &meta.output.features {
            Some(f) => s.with_features(f)?,
            None => s,
        })
    };

    // Runs `work` on SESSIONS threads for SECONDS; returns images per second and CPU us per image.
    let throughput = |with_decode: bool| -> anyhow::Result<(f64, f64)> {
        let per_thread = std::thread::scope(|s| {
            let handles: Vec<_> = (0..sessions)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<(usize, f64)> {
                        let mut session = new_session()?;
                        let one = preprocess(&image, i, limits)?;
                        let input: Vec<f32> = one
                            .iter()
                            .copied()
                            .cycle()
                            .take(one.len() * batch)
                            .collect();
                        session.run_outputs(&input)?;
                        let (start, cpu0, mut done) = (Instant::now(), thread_cpu_us()?, 0);
                        while start.elapsed() < Duration::from_secs_f64(secs) {
                            if with_decode {
                                let mut fresh = Vec::with_capacity(input.len());
                                for _ in 0..batch {
                                    fresh.extend(preprocess(&image, i, limits)?);
                                }
                                session.run_outputs(&fresh)?;
                            } else {
                                session.run_outputs(&input)?;
                            }
                            done += batch;
                        }
                        Ok((done, thread_cpu_us()? - cpu0))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect::<Vec<_>>()
        });
        let (mut images, mut cpu_us) = (0, 0.0);
        for r in per_thread {
            let (n, us) = r?;
            images += n;
            cpu_us += us;
        }
        Ok((images as f64 / secs, cpu_us / images as f64))
    };
    let (ort_only, ort_cpu_us) = throughput(false)?;
    let (with_decode, decode_ort_cpu_us) = throughput(true)?;

    // Single image, one thread: decode + preprocess + run, as one request would.
    let mut session = new_session()?;
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(secs.min(5.0)) {
        let t = Instant::now();
        let x = preprocess(&image, i, limits)?;
        session.run_outputs(&x)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "batch_size": batch, "sessions": sessions, "intra_op_threads": intra,
            "raw_ort_images_per_s": ort_only, "raw_decode_ort_images_per_s": with_decode,
            "raw_ort_cpu_us": ort_cpu_us, "raw_decode_ort_cpu_us": decode_ort_cpu_us,
            "raw_single_p50_ms": q(0.5), "raw_single_p99_ms": q(0.99), "raw_single_samples": lat.len(),
        })
    );
    Ok(())
}

/// CPU time this thread has run, in microseconds (the first field of its schedstat, in ns).
fn thread_cpu_us() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: f64 = text
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow::anyhow!("empty /proc/thread-self/schedstat"))?
        .parse()?;
    Ok(ns / 1e3)
}
