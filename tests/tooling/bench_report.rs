//! `scripts/bench_report.py`, the arithmetic behind issue 19's `reachable` verdicts: fed the raw
//! outputs of one `bench-serve.sh` run (made up here, with round numbers, in a scratch folder so
//! that the repository's docs/BENCHMARKS.md is not touched), its ceiling must be built from the
//! parts the script measured: the HTTP floor at the server's own rate, the pipeline's cost on
//! shared cores, the single-image answer after a lone client's idle gap.

use std::path::Path;
use std::process::Command;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// wrk's report, as much of it as the script reads.
fn wrk(requests_per_s: f64, requests: u64, p50_us: u64) -> String {
    format!(
        "Running 8s test @ http://127.0.0.1:1/predict\n  Latency Distribution\n     50%  {p50_us}.00us\n     \
         99%  {}.00us\n  {requests} requests in 8.00s, 9.99MB read\nRequests/sec: {requests_per_s:.2}\n",
        p50_us * 2
    )
}

fn write(dir: &Path, name: &str, body: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), body).unwrap();
}

/// One run's outputs: the server answers 10,000 requests in the 64-client run with 6,000,000 us of
/// CPU (600 us each), the raw loop's decode + ORT costs 500 us per image and the answer 20.
fn one_run(out: &Path, paced_rounds: bool) {
    let raw = serde_json::json!({
        "batch_size": 8, "sessions": 2, "intra_op_threads": 1,
        "raw_ort_images_per_s": 4200.0, "raw_decode_ort_images_per_s": 4000.0,
        "raw_ort_cpu_us": 480.0, "raw_decode_ort_cpu_us": 500.0,
        "raw_single_p50_ms": 0.5, "raw_single_p99_ms": 0.6, "raw_single_samples": 1000,
        "raw_pipeline_images_per_s": 3800.0, "raw_pipeline_cpu_us": 525.0,
        "raw_answer_cpu_us": 20.0, "raw_pipeline_single_p50_ms": 0.53,
    });
    write(out, "raw.json", raw.to_string());
    write(out, "server-wrk-64.txt", wrk(3500.0, 10_000, 18_000));
    write(out, "server-wrk-1.txt", wrk(1300.0, 10_400, 760));
    write(out, "server-cpu-us.txt", "6000000\n");
    write(out, "server-loadgen-cpu-s.txt", "0.06 0.04\n");
    write(out, "server-metrics.txt", "");
    write(out, "server-rss-kb.txt", "51200\n");
    write(out, "server-hwm-kb.txt", "52224\n");
    write(out, "python-wrk-64.txt", wrk(1000.0, 8_000, 60_000));
    write(out, "python-wrk-1.txt", wrk(1500.0, 12_000, 660));
    write(out, "python-cpu-us.txt", "12000000\n");
    write(out, "python-rss-kb.txt", "78000\n");
    // The full-speed floor: 6 us per request, 70 us p50 at one client.
    write(out, "floor-wrk-64.txt", wrk(150_000.0, 1_000_000, 400));
    write(out, "floor-wrk-1.txt", wrk(14_000.0, 110_000, 70));
    write(out, "floor-cpu-us.txt", "6000000\n");
    if !paced_rounds {
        return;
    }
    // At the server's rate: 3 rounds of 10,000 requests, 540,000 us of CPU in all (18 us each);
    // the pipeline beside it costs 2% more than alone; after a 70 us gap the answer takes 0.56 ms.
    for (round, (alone, beside)) in [(520.0, 530.4), (530.0, 540.6), (510.0, 520.2)]
        .into_iter()
        .enumerate()
    {
        let n = round + 1;
        write(
            out,
            &format!("paced-wrk-64-{n}.txt"),
            wrk(3300.0, 10_000, 19_000),
        );
        write(out, &format!("paced-loadgen-cpu-s-{n}.txt"), "0.05 0.03\n");
        let pipeline = |cpu: f64| serde_json::json!({ "raw_pipeline_cpu_us": cpu }).to_string();
        write(out, &format!("corun-alone-{n}.json"), pipeline(alone));
        write(out, &format!("corun-raw-{n}.json"), pipeline(beside));
    }
    write(out, "paced-cpu-us.txt", "170000\n180000\n190000\n");
    let gap = serde_json::json!({
        "raw_single_p50_ms": 0.48, "raw_pipeline_single_gap_p50_ms": 0.56, "raw_single_gap_us": 70,
    });
    write(out, "gap-single.json", gap.to_string());
}

fn report(paced_rounds: bool) -> serde_json::Value {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("runs/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(scratch.path().join("docs")).unwrap();
    one_run(&out, paced_rounds);
    let run = Command::new("python3")
        .arg(root().join("scripts/bench_report.py"))
        .args([out.to_str().unwrap(), "64", "models/x", "x.png", "8"])
        .output()
        .expect("run python3 scripts/bench_report.py");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench_report.py failed:\n{stderr}");
    assert!(
        scratch.path().join("docs/BENCHMARKS.md").is_file(),
        "the report is written beside its runs/ folder"
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn close(v: &serde_json::Value, key: &str, want: f64) {
    let got = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"));
    assert!((got - want).abs() < 1e-6, "{key}: {got}, want {want}");
}

#[test]
fn the_ceiling_prices_http_at_the_server_rate_shared_cores_and_the_idle_gap() {
    let v = report(true);
    close(&v, "http_floor_cpu_us_per_request", 6.0);
    close(&v, "http_floor_at_server_rate_cpu_us_per_request", 18.0);
    close(&v, "load_generator_at_server_rate_cpu_us_per_request", 8.0);
    close(&v, "corun_pipeline_vs_alone_ratio", 1.02);
    assert_eq!(
        v["corun_pipeline_vs_alone_rounds"],
        serde_json::json!([1.02, 1.02, 1.02])
    );
    // (500 + 20) x 1.02 + 18 = 548.4 us per request.
    close(&v, "ceiling_cpu_us_per_request", 548.4);
    close(&v, "ceiling_cpu_overhead_us", 48.4);
    close(&v, "ceiling_vs_raw_cpu_ratio", 0.912);
    close(&v, "server_cpu_beyond_ceiling_us", 51.6);
    // The script counts the machine's cores itself: whatever their number, the ceiling's rate is
    // the raw loop's or what they serve at (548.4 + wrk's 10) us per request.
    let images = v["ceiling_images_per_s"]
        .as_f64()
        .expect("ceiling_images_per_s");
    let cores = images * 558.4 / 1e6;
    assert!(
        images == 4000.0 || (cores - cores.round()).abs() < 1e-3,
        "ceiling_images_per_s {images}"
    );
    // The answer after the gap minus the back-to-back raw p50 of that process, plus the floor's.
    close(&v, "ceiling_p50_minus_raw_ms", 0.15);
}

#[test]
fn runs_from_before_the_paced_floor_keep_the_full_speed_ceiling() {
    let v = report(false);
    assert!(
        v.get("http_floor_at_server_rate_cpu_us_per_request")
            .is_none(),
        "{v}"
    );
    close(&v, "ceiling_shared_cores_factor", 1.0);
    // 500 + 20 + 6; the p50 from the pipeline back to back: 0.53 - 0.5 + 0.07.
    close(&v, "ceiling_cpu_us_per_request", 526.0);
    close(&v, "ceiling_p50_minus_raw_ms", 0.1);
}
