//! Per-request cost of each OOD score (docs/BENCHMARKS.md, "OOD scores per request"): the
//! model runs once on IMAGE for its logits and penultimate features, then each score the
//! calibration file serves is computed from them over and over on one thread, side by
//! side in one run, and printed as CPU microseconds per image and as a share of
//! SERVER_CPU_US, the server's whole CPU per request on that model (from the inference server
//! benchmark in docs/BENCHMARKS.md).
//!
//! `cargo run --release --example bench_ood -- MODEL_DIR CALIB IMAGE SERVER_CPU_US`
//!
//! The server computes every score on every request (`policy::decide`: the default decides
//! `is_ood`, the others are reported beside it), so the row `all (served)` is what a request
//! pays; the single rows say which detector that cost comes from.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use caliper::repository::{CalibrationFile, ModelMetadata};
use caliper::runtime::ClassifierSession;
use caliper::serve::infer::{ImageLimits, preprocess};
use caliper::trust::ood::artifacts::named_scores;

/// Repeats of each timing; the median is reported.
const REPEATS: usize = 7;
/// Shortest repeat, in seconds of wall time.
const MIN_REPEAT_S: f64 = 0.2;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(a.len() == 4, "usage: MODEL_DIR CALIB IMAGE SERVER_CPU_US");
    let dir = PathBuf::from(&a[0]);
    let file = CalibrationFile::load(&PathBuf::from(&a[1]))?;
    let server_us: f64 = a[3].parse()?;
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    let i = &meta.input;
    let features_name = meta
        .output
        .features
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("{}: model.toml names no features", dir.display()))?;
    let mut session = ClassifierSession::new(
        &dir.join("model.onnx"),
        &i.name,
        &meta.output.logits,
        [i.channels, i.height, i.width],
        1,
    )?
    .with_features(features_name)?;
    let x = preprocess(
        &std::fs::read(&a[2])?,
        i,
        ImageLimits {
            max_pixels: 1 << 26,
        },
    )?;
    let out = session.run_outputs(&x)?;
    let logits: Vec<f64> = out.logits.iter().map(|&v| f64::from(v)).collect();
    let (f, d) = out.features.ok_or_else(|| anyhow::anyhow!("no features"))?;
    let features: Vec<f64> = f[..d].iter().map(|&v| f64::from(v)).collect();
    let calibrated = file.calibrator.probabilities(&logits)?;
    let ood = file
        .ood
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the calibration file has no ood section"))?;
    let det = &ood.detectors;

    // Median over REPEATS of the mean CPU time of one call, in microseconds. Each repeat runs
    // for at least MIN_REPEAT_S (the call count doubles until it does), so the thread's CPU
    // clock, which advances in scheduler ticks, resolves even a 0.1 us call.
    let time = |f: &dyn Fn() -> f64| -> f64 {
        let mut n = 16usize;
        loop {
            let t = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            if t.elapsed().as_secs_f64() >= MIN_REPEAT_S {
                break;
            }
            n *= 2;
        }
        let mut per: Vec<f64> = (0..REPEATS)
            .map(|_| {
                let t = thread_cpu_ns();
                for _ in 0..n {
                    black_box(f());
                }
                (thread_cpu_ns() - t) / n as f64 / 1e3
            })
            .collect();
        per.sort_by(f64::total_cmp);
        per[REPEATS / 2]
    };
    let mut rows: Vec<(&str, f64)> = vec![
        (
            "calibrator (ATS probabilities, reference)",
            time(&|| {
                file.calibrator
                    .probabilities(black_box(&logits))
                    .map_or(0.0, |p| p[0])
            }),
        ),
        (
            "logit scores (msp, max_logit, energy, entropy)",
            time(&|| named_scores(black_box(&logits), &calibrated)["energy"]),
        ),
    ];
    if let Some(m) = &det.mahalanobis {
        rows.push((
            "mahalanobis",
            time(&|| m.score(black_box(&features)).unwrap_or(f64::NAN)),
        ));
        if let Some(bg) = &det.rmds_background {
            rows.push((
                "rmds (mahalanobis + background)",
                time(&|| {
                    m.score(black_box(&features)).unwrap_or(f64::NAN)
                        - bg.score(&features).unwrap_or(f64::NAN)
                }),
            ));
        }
    }
    if let Some(k) = &det.knn {
        rows.push((
            "knn",
            time(&|| k.score(black_box(&features)).unwrap_or(f64::NAN)),
        ));
    }
    if let Some(v) = &det.vim {
        rows.push((
            "vim",
            time(&|| v.score(black_box(&features), &logits).unwrap_or(f64::NAN)),
        ));
    }
    rows.push((
        "all (served)",
        time(&|| {
            ood.scores(black_box(&logits), &calibrated, Some(&features))
                .len() as f64
        }),
    ));
    let knn = det.knn.as_ref().map(|k| (k.rows(), k.k()));
    let vim_dim = det.vim.as_ref().map(|v| v.dim());
    println!(
        "{}",
        serde_json::json!({
            "model": dir.display().to_string(), "features": d, "classes": file.num_classes,
            "knn_rows_k": knn, "vim_dim": vim_dim, "min_repeat_s": MIN_REPEAT_S, "repeats": REPEATS,
            "server_cpu_us_per_request": server_us,
            "scores": rows.iter().map(|(name, us)| serde_json::json!({
                "score": name, "cpu_us": us, "share_of_request": us / server_us,
            })).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// CPU time this thread has run, in nanoseconds (the first field of its schedstat).
fn thread_cpu_ns() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
