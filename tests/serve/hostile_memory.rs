//! Issue 23, rows 1 and 2, against a real `caliper serve` process over real sockets: images whose
//! decode or resize used to cost memory in proportion to their size (a 16,777,216 x 1 PNG: 7.5 GB;
//! a 4096 x 4096 PNG on a colour model: ~215 MB per request), a request timeout that did not stop
//! the decoding it started, and a 16 MB V2 body parsed into a `Value` tree (~360 MB). Each test
//! asserts the statuses, that `/v2/health/ready` answers within a second throughout, and the
//! server's peak RSS (VmHWM) under a bound stated next to it (docs/RELIABILITY.md derives them).

use crate::common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::Server;
use common::{MODEL, digit};
use serde_json::Value;

use super::hostile::{ReadyWatch, copies_form, predict_url, proc_status_kb, server};

/// A grey 8-bit PNG of zeros, written row by row through flate2 so that neither the test nor
/// the file holds the pixels: a 16,777,216 x 1 one is about 16 KB.
fn grey_png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(body);
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 16];
    for _ in 0..height {
        z.write_all(&[0]).unwrap(); // filter type: none
        let mut left = width as usize;
        while left > 0 {
            let n = left.min(zeros.len());
            z.write_all(&zeros[..n]).unwrap();
            left -= n;
        }
    }
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter set, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn peak_rss_kb(server: &Server) -> u64 {
    proc_status_kb(server.child.id(), "VmHWM:")
}

fn assert_peak_rss_under(server: &Server, bound_mib: u64) {
    let hwm = peak_rss_kb(server);
    eprintln!("peak RSS {} MiB (bound {bound_mib} MiB)", hwm / 1024);
    assert!(
        hwm < bound_mib * 1024,
        "peak RSS {hwm} kB over the bound of {bound_mib} MiB"
    );
}

/// POSTs `body` as one image to `url`; status, JSON body and whether Retry-After came back.
async fn post_image(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value, bool) {
    let r = client
        .post(url)
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

/// Row 1: eight 16,777,216 x 1 PNGs at once (16 KB each, exactly at the default pixel limit) are
/// refused 413 from their header, naming the aspect-ratio limit, without decoding; 64,000 x 64
/// strips, at the limit, are served (the resize works in memory of the model's input, not of the
/// image's width). Peak RSS stays under 160 MiB (was 7.5 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16m_by_1_png_is_refused_from_its_header_and_long_strips_stay_bounded() {
    let server = server(&[]);
    let strip = grey_png(16_777_216, 1);
    assert!(strip.len() < 64 * 1024, "{} bytes", strip.len());
    let long = grey_png(64_000, 64);
    let url = predict_url(&server);
    let client = reqwest::Client::new();
    let watch = ReadyWatch::start(&server);
    let t = Instant::now();
    let mut served = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        let refused: Vec<_> = (0..8)
            .map(|_| tokio::spawn(post_image_owned(client.clone(), url.clone(), strip.clone())))
            .collect();
        for r in refused {
            let (status, body, _) = r.await.unwrap();
            assert_eq!(status, 413, "{body}");
            assert_eq!(body["code"], "image_too_large", "{body}");
            let msg = body["error"].as_str().unwrap();
            assert!(
                msg.contains("16777216x1") && msg.contains("aspect-ratio limit of 1000:1"),
                "{msg}"
            );
        }
        let ok: Vec<_> = (0..4)
            .map(|_| tokio::spawn(post_image_owned(client.clone(), url.clone(), long.clone())))
            .collect();
        for r in ok {
            let (status, body, _) = r.await.unwrap();
            assert_eq!(status, 200, "{body}");
            served += 1;
        }
    }
    watch.finish().await;
    eprintln!("{served} long strips served");
    assert_peak_rss_under(&server, 160);
}

async fn post_image_owned(
    client: reqwest::Client,
    url: String,
    body: Vec<u8>,
) -> (u16, Value, bool) {
    post_image(&client, &url, body).await
}

/// A repository holding the bundled `cifar10` model (3 x 32 x 32 input) alone.
fn cifar10_repo() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("models/cifar10");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(dir.path().join("calib")).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(root.join("models/cifar10").join(f), m.join(f)).unwrap();
    }
    std::fs::copy(
        root.join("calib/cifar10.json"),
        dir.path().join("calib/cifar10.json"),
    )
    .unwrap();
    dir
}

fn cifar10_server(repo: &tempfile::TempDir, flags: &[&str]) -> Server {
    Server::with_repository(
        &repo.path().join("models"),
        &repo.path().join("calib"),
        flags,
    )
}

/// Row 2: 4096 x 4096 grey PNGs (16 KB each) on the colour model cifar10, eight single-image
/// requests and one multipart of eight at once: all 200, and each decode costs its 16 MiB of
/// grey pixels, not the ~200 MB of an RGB f32 copy. Peak RSS under 400 MiB (was ~2 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_4096_pngs_on_a_colour_model_cost_their_pixels_only() {
    let repo = cifar10_repo();
    let server = cifar10_server(&repo, &[]);
    let png = grey_png(4096, 4096);
    assert!(png.len() < 64 * 1024);
    let url = server.url("/v1/models/cifar10/predict");
    let client = reqwest::Client::new();
    let watch = ReadyWatch::start(&server);
    let singles: Vec<_> = (0..8)
        .map(|_| tokio::spawn(post_image_owned(client.clone(), url.clone(), png.clone())))
        .collect();
    let form = copies_form(&png, 8);
    let multi = client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(multi.status(), 200);
    let v: Value = multi.json().await.unwrap();
    assert_eq!(v["predictions"].as_array().unwrap().len(), 8);
    for s in singles {
        let (status, body, _) = s.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    watch.finish().await;
    assert_peak_rss_under(&server, 400);
}

/// Row 2 with a 16 MiB decode budget: a 4096 x 4096 image alone needs more (413
/// `over_memory_budget`, naming the flag); twelve 2048 x 2048 images at once share the budget
/// (each 200, or 503 `decode_busy` with Retry-After when it stayed full for a second). Peak RSS
/// under 160 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decode_budget_refuses_what_never_fits_and_queues_the_rest() {
    let repo = cifar10_repo();
    let server = cifar10_server(&repo, &["--max-decode-memory-mib", "16"]);
    let url = server.url("/v1/models/cifar10/predict");
    let client = reqwest::Client::new();
    let watch = ReadyWatch::start(&server);
    let (status, body, retry) = post_image(&client, &url, grey_png(4096, 4096)).await;
    assert_eq!(status, 413, "{body}");
    assert!(!retry);
    assert_eq!(body["code"], "over_memory_budget", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-decode-memory-mib"),
        "{body}"
    );
    let medium = grey_png(2048, 2048);
    let t = Instant::now();
    let mut statuses = Vec::new();
    while t.elapsed() < Duration::from_millis(1000) || statuses.is_empty() {
        let all: Vec<_> = (0..12)
            .map(|_| {
                tokio::spawn(post_image_owned(
                    client.clone(),
                    url.clone(),
                    medium.clone(),
                ))
            })
            .collect();
        for r in all {
            let (status, body, retry) = r.await.unwrap();
            match status {
                200 => {}
                503 => {
                    assert_eq!(body["code"], "decode_busy", "{body}");
                    assert!(retry, "503 without Retry-After");
                }
                other => panic!("status {other}: {body}"),
            }
            statuses.push(status);
        }
    }
    watch.finish().await;
    eprintln!(
        "{} requests: {} served, {} busy",
        statuses.len(),
        statuses.iter().filter(|&&s| s == 200).count(),
        statuses.iter().filter(|&&s| s == 503).count()
    );
    assert!(statuses.contains(&200));
    assert_peak_rss_under(&server, 160);
}

/// User plus system CPU time of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Row 2's timeout: a multipart of 64 images of 4096 x 4096 with a 1 s budget and one admission
/// slot. While it runs, the slot is taken (another request gets 429); at 1 s it gets 504, the
/// decoding stops (a request is admitted again within a second, and the server's CPU time then
/// stays flat: it was decoding for a minute after the 504 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_stops_its_work_and_holds_its_slot_until_then() {
    let server = server(&[
        "--request-timeout-ms",
        "1000",
        "--max-concurrent-requests",
        "1",
    ]);
    let pid = server.child.id();
    let png = grey_png(4096, 4096);
    let form = copies_form(&png, 64);
    let client = reqwest::Client::new();
    let url = predict_url(&server);
    let pending = tokio::spawn(client.post(&url).multipart(form).send());
    // Wait until it holds the slot: a small request is then refused.
    let t = Instant::now();
    loop {
        let (status, body, retry) = post_image(&client, &url, digit("7.png")).await;
        if status == 429 {
            assert!(retry);
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the big request never took the slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watch = ReadyWatch::start(&server);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 504);
    let answered = Instant::now();
    // The slot comes back once the decode has seen the cancellation, within a second.
    loop {
        let (status, body, _) = post_image(&client, &url, digit("7.png")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            answered.elapsed() < Duration::from_secs(1),
            "no request admitted {:?} after the 504",
            answered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("slot free {:?} after the 504", answered.elapsed());
    // Then the server is idle: under 0.25 s of CPU in the next 1.5 s (decoding 64 images would
    // keep a core busy).
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = cpu_ticks(pid) - before;
    watch.finish().await;
    eprintln!("CPU after the 504: {used} ticks in 1.5 s");
    assert!(
        used < 25,
        "the server kept working after the 504: {used} ticks in 1.5 s"
    );
    assert_peak_rss_under(&server, 160);
}

/// Row 2's V2 body: four ~16 MB FP32 requests at once (5000 x 1 x 28 x 28 values of `0.5`), each
/// parsed straight into f32 (4 bytes per 4-byte number) instead of a `Value` tree: all 200,
/// peak RSS under 400 MiB (was ~1.4 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mb_v2_bodies_cost_a_small_multiple_of_their_size() {
    // The default queue holds 512 x 32 = 16,384 images, fewer than these four bodies' 20,000:
    // whether the fourth is queued or refused (429, as a full queue should be) would depend on
    // how fast the first ones drain. Room for all four keeps this test about memory; the full
    // queue's refusal is tested in `serve::infer::batcher`.
    let server = server(&["--max-concurrent-requests", "1024"]);
    let n = 5000;
    let mut body = format!(
        r#"{{"inputs": [{{"name": "input", "shape": [{n}, 1, 28, 28], "datatype": "FP32", "data": ["#
    );
    body.push_str(&vec!["0.5"; n * 784].join(","));
    body.push_str("]}]}");
    assert!(
        body.len() > 15_000_000 && body.len() < 16 << 20,
        "{}",
        body.len()
    );
    let url = server.url(&format!("/v2/models/{MODEL}/infer"));
    let client = reqwest::Client::new();
    let watch = ReadyWatch::start(&server);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1000) {
        let all: Vec<_> = (0..4)
            .map(|_| {
                let (client, url, body) = (client.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap();
                    (status, v)
                })
            })
            .collect();
        for r in all {
            let (status, v) = r.await.unwrap();
            assert_eq!(status, 200, "{}", v["error"]);
            assert_eq!(v["outputs"][0]["shape"][0], n);
        }
    }
    watch.finish().await;
    assert_peak_rss_under(&server, 400);
}
