//! A closed-loop HTTP load generator for machines without `wrk` (the GPU machine of
//! `scripts/repro/gpu-check.sh`): CLIENTS tasks each post IMAGE to URL, one request at a time,
//! for SECONDS, over kept-alive connections.
//!
//! `cargo run --release --example bench_load -- URL IMAGE CLIENTS SECONDS` prints one JSON line:
//! requests/s, p50 and p99 latency in ms, and the count of non-200 answers. Latencies are
//! measured per request, from send to the last byte of the answer.

use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(a.len() == 4, "usage: URL IMAGE CLIENTS SECONDS");
    let url = a[0].clone();
    let image = bytes::Bytes::from(std::fs::read(&a[1])?);
    let clients: usize = a[2].parse()?;
    let secs: f64 = a[3].parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (latencies, errors) = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()?;
        // One warm-up request per client opens its connection outside the measured window.
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (client, url, image) = (client.clone(), url.clone(), image.clone());
                tokio::spawn(async move {
                    let post = || {
                        client
                            .post(&url)
                            .header("content-type", "image/png")
                            .body(image.clone())
                            .send()
                    };
                    let _ = post().await.map(|r| r.bytes());
                    let (mut lat, mut errors) = (Vec::new(), 0usize);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match post().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                                lat.push(t.elapsed());
                            }
                            _ => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (lat, e) = t.await?;
            all.extend(lat);
            errors += e;
        }
        anyhow::Ok((all, errors))
    })?;
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)));
    println!(
        "{}",
        serde_json::json!({
            "clients": clients,
            "seconds": secs,
            "requests": ms.len(),
            "rps": ms.len() as f64 / secs,
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "errors": errors,
        })
    );
    Ok(())
}
