//! Baseline for scripts/bench-serve.sh: in-process ONNX Runtime throughput with no server,
//! on the same model and with the same session layout as `caliper serve`.
//!
//! `cargo run --release --example bench_raw --`
//! `MODEL_DIR IMAGE BATCH SESSIONS INTRA SECONDS [CALIB]`
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
//!
//! `SINGLE_GAP_US=N` sleeps N microseconds before each single-image run, as a server waits for
//! its one client's next request: the latency of a run that starts on a core that was idle (its
//! caches partly gone), against the back-to-back default.
//!
//! With a 7th argument CALIB (the model's calibration file, or `-` for none) it also measures
//! the whole answer without a server (`raw_pipeline_*`): decode + ONNX Runtime + what the server
//! computes for every image before it is sent, through the same library calls (calibration, the
//! top-k, every OOD score, abstention and the conformal set in `build_prediction`, the signed
//! prediction id, the JSON bytes). The server's cost beyond it is what serving adds: HTTP,
//! queueing, thread hand-offs, metrics. `raw_answer_cpu_us` is the answers' own CPU time per
//! image in that run, timed around them alone (the thread's CPU clock): unlike pipeline - decode
//! + ONNX Runtime, two loops minutes apart, it does not move with the machine's drift.
//!
//! `RAW_ONLY=pipeline` runs the whole-answer loop alone (CALIB required), for SECONDS: the
//! co-run section of scripts/bench-serve.sh runs it beside an HTTP server under load, to measure
//! what the same work costs on cores it shares with serving. `RAW_ONLY=single` measures only the
//! single-image latencies: decode + run back to back (`raw_single_p50_ms`) and the whole answer
//! after each SINGLE_GAP_US idle gap (`raw_pipeline_single_gap_p50_ms`): a server's one client
//! sends its next request a round trip after the last answer, so its run starts on a core that
//! idled that long.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use caliper::repository::{CalibrationFile, ModelMetadata};
use caliper::runtime::{BatchOutput, ClassifierSession};
use caliper::serve::infer::prediction::PredictionContext;
use caliper::serve::infer::{ImageLimits, RequestOptions, build_prediction, preprocess};
use caliper::serve::monitor::token::TokenSigner;
use caliper::trust::calibration::Calibrator;

fn main() -> anyhow::Result<()> {
    // As the server does, so that both run the same ONNX Runtime threads.
    // SAFETY: first statement of `main`, so the process has one thread.
    #[allow(unsafe_code)]
    unsafe {
        caliper::runtime::opt_out_of_telemetry()
    };
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() == 6 || a.len() == 7,
        "usage: MODEL_DIR IMAGE BATCH SESSIONS INTRA SECONDS [CALIB|-]"
    );
    let dir = PathBuf::from(&a[0]);
    let image = std::fs::read(&a[1])?;
    let (batch, sessions, intra): (usize, usize, usize) =
        (a[2].parse()?, a[3].parse()?, a[4].parse()?);
    let secs: f64 = a[5].parse()?;
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    // None: no pipeline run; Some(None): a pipeline run without a calibration file (identity
    // calibrator, no OOD scores), as the server answers for an uncalibrated model.
    let calibration = match a.get(6).map(String::as_str) {
        None => None,
        Some("-") => Some(None),
        Some(path) => Some(Some(CalibrationFile::load(&PathBuf::from(path))?)),
    };
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

    // Runs `stage` on SESSIONS threads for SECONDS; returns images per second, CPU us per
    // image, and (Pipeline) the CPU us per image of the answers alone.
    let throughput = |stage: Stage| -> anyhow::Result<(f64, f64, f64)> {
        let per_thread = std::thread::scope(|s| {
            let handles: Vec<_> = (0..sessions)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<(usize, f64, f64)> {
                        let mut session = new_session()?;
                        let mut answers = Answers::new(&meta, calibration.as_ref())?;
                        let one = preprocess(&image, i, limits)?;
                        let input: Vec<f32> = one
                            .iter()
                            .copied()
                            .cycle()
                            .take(one.len() * batch)
                            .collect();
                        session.run_outputs(&input)?;
                        let (start, cpu0, mut done) = (Instant::now(), thread_cpu_us()?, 0);
                        let mut answer_us = 0.0;
                        while start.elapsed() < Duration::from_secs_f64(secs) {
                            if stage == Stage::Ort {
                                session.run_outputs(&input)?;
                            } else {
                                let mut fresh = Vec::with_capacity(input.len());
                                for _ in 0..batch {
                                    fresh.extend(preprocess(&image, i, limits)?);
                                }
                                let out = session.run_outputs(&fresh)?;
                                if stage == Stage::Pipeline {
                                    let t = thread_cpu_now_us();
                                    answers.write(&out)?;
                                    answer_us += thread_cpu_now_us() - t;
                                }
                            }
                            done += batch;
                        }
                        Ok((done, thread_cpu_us()? - cpu0, answer_us))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect::<Vec<_>>()
        });
        let (mut images, mut cpu_us, mut answer_us) = (0, 0.0, 0.0);
        for r in per_thread {
            let (n, us, answer) = r?;
            images += n;
            cpu_us += us;
            answer_us += answer;
        }
        let n = images as f64;
        Ok((n / secs, cpu_us / n, answer_us / n))
    };
    let gap = Duration::from_micros(match std::env::var("SINGLE_GAP_US") {
        Ok(g) => g.parse()?,
        Err(_) => 0,
    });
    // Single image, one thread: decode + preprocess + run, as one request would; `gap` idle
    // before each.
    let single = |stage: Stage, gap: Duration| -> anyhow::Result<Vec<f64>> {
        let mut session = new_session()?;
        let mut answers = Answers::new(&meta, calibration.as_ref())?;
        let mut lat = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs_f64(secs.min(5.0)) {
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
            let t = Instant::now();
            let x = preprocess(&image, i, limits)?;
            let out = session.run_outputs(&x)?;
            if stage == Stage::Pipeline {
                answers.write(&out)?;
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lat.sort_by(f64::total_cmp);
        Ok(lat)
    };
    let q = |lat: &[f64], p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    match std::env::var("RAW_ONLY").as_deref() {
        Ok("pipeline") => {
            anyhow::ensure!(calibration.is_some(), "RAW_ONLY=pipeline needs CALIB");
            let (images_per_s, cpu_us, answer_us) = throughput(Stage::Pipeline)?;
            let figures = serde_json::json!({
                "raw_pipeline_images_per_s": images_per_s, "raw_pipeline_cpu_us": cpu_us,
                "raw_answer_cpu_us": answer_us,
            });
            println!("{figures}");
            return Ok(());
        }
        Ok("single") => {
            anyhow::ensure!(calibration.is_some(), "RAW_ONLY=single needs CALIB");
            let raw = single(Stage::DecodeOrt, Duration::ZERO)?;
            let pipeline = single(Stage::Pipeline, gap)?;
            let figures = serde_json::json!({
                "raw_single_p50_ms": q(&raw, 0.5),
                "raw_pipeline_single_gap_p50_ms": q(&pipeline, 0.5),
                "raw_single_gap_us": gap.as_micros() as u64,
            });
            println!("{figures}");
            return Ok(());
        }
        Ok(other) => anyhow::bail!("RAW_ONLY is pipeline or single, not {other:?}"),
        Err(_) => {}
    }
    let (ort_only, ort_cpu_us, _) = throughput(Stage::Ort)?;
    let (with_decode, decode_ort_cpu_us, _) = throughput(Stage::DecodeOrt)?;
    let lat = single(Stage::DecodeOrt, gap)?;
    let mut figures = serde_json::json!({
        "batch_size": batch, "sessions": sessions, "intra_op_threads": intra,
        "raw_ort_images_per_s": ort_only, "raw_decode_ort_images_per_s": with_decode,
        "raw_ort_cpu_us": ort_cpu_us, "raw_decode_ort_cpu_us": decode_ort_cpu_us,
        "raw_single_p50_ms": q(&lat, 0.5), "raw_single_p99_ms": q(&lat, 0.99),
        "raw_single_samples": lat.len(),
    });
    if calibration.is_some() {
        let (images_per_s, cpu_us, answer_us) = throughput(Stage::Pipeline)?;
        let lat = single(Stage::Pipeline, gap)?;
        let more = serde_json::json!({
            "raw_pipeline_images_per_s": images_per_s, "raw_pipeline_cpu_us": cpu_us,
            "raw_answer_cpu_us": answer_us,
            "raw_pipeline_single_p50_ms": q(&lat, 0.5),
        });
        figures
            .as_object_mut()
            .expect("an object")
            .extend(more.as_object().expect("an object").clone());
    }
    if !gap.is_zero() {
        figures["raw_single_gap_us"] = (gap.as_micros() as u64).into();
    }
    println!("{figures}");
    Ok(())
}

/// How far each image goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// ONNX Runtime alone on a preprocessed batch.
    Ort,
    /// PNG decode + preprocessing + ONNX Runtime.
    DecodeOrt,
    /// That plus the answer: prediction, signed id, JSON.
    Pipeline,
}

/// Turns a batch's outputs into the bytes the server would send for each image (single-image
/// answers, default options, a prediction id as the monitor issues it).
struct Answers<'a> {
    meta: &'a ModelMetadata,
    calibrator: Calibrator,
    calibration: Option<&'a CalibrationFile>,
    signer: TokenSigner,
    json: Vec<u8>,
}

impl<'a> Answers<'a> {
    fn new(
        meta: &'a ModelMetadata,
        calibration: Option<&'a Option<CalibrationFile>>,
    ) -> anyhow::Result<Self> {
        let calibration = calibration.and_then(Option::as_ref);
        Ok(Answers {
            meta,
            calibrator: calibration.map_or(Calibrator::Identity, |c| c.calibrator.clone()),
            calibration,
            signer: TokenSigner::random(),
            json: Vec::new(),
        })
    }

    fn write(&mut self, out: &BatchOutput) -> anyhow::Result<()> {
        let ctx = PredictionContext {
            model: "bench",
            version: &self.meta.version,
            labels: &self.meta.labels,
            calibrator: &self.calibrator,
            calibrated: self.calibration.is_some(),
            calibration: self.calibration,
        };
        let options = RequestOptions::default();
        for (r, logits) in out.logits.chunks_exact(out.classes).enumerate() {
            let features = out.features.as_ref().map(|(f, d)| &f[r * d..(r + 1) * d]);
            let mut p = build_prediction(&ctx, logits, features, &options)?;
            p.prediction_id = self.signer.issue(
                ctx.model,
                ctx.version,
                p.class_index,
                p.confidence,
                &p.probabilities,
                None,
            );
            self.json.clear();
            serde_json::to_writer(&mut self.json, &p)?;
            std::hint::black_box(&self.json);
        }
        Ok(())
    }
}

/// The calling thread's CPU time in microseconds, from the clock (a system call, well under a
/// microsecond): cheap enough to time each batch's answers, which `thread_cpu_us`'s file read
/// is not.
fn thread_cpu_now_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid `timespec` for the call to write.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(
        rc, 0,
        "CLOCK_THREAD_CPUTIME_ID is always available on Linux"
    );
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
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
