//! Reference for scripts/bench-serve.sh: what HTTP alone costs on this machine, on the stack
//! `caliper serve` is built on (tokio's multi-threaded runtime, hyper's HTTP/1.1, an axum
//! router), with no model, no decode, no calibration and no monitoring.
//!
//! `cargo run --release --example bench_http_floor -- RESPONSE_FILE` serves on 127.0.0.1 (a free
//! port, printed as `listening on ADDR` on stderr); `POST /predict` reads the whole body and
//! answers the bytes of RESPONSE_FILE as `application/json` (the benchmark passes a response of
//! the real server, so both send the same bytes back). The server's CPU time per request under
//! the same load is the floor the issue-19 overhead is measured against: the kernel's TCP work,
//! the syscalls, hyper's parsing and the runtime's wake-ups, which any HTTP server pays.
//!
//! `FLOOR_DELAY_US=N` holds each answer N microseconds (a timer, no CPU) before sending it, so
//! that C clients ask at most C / N requests per microsecond: the floor at a model's own request
//! rate, where every answer wakes a parked worker as a model's results do, instead of at the
//! 150k requests/s where one wake-up serves many (scripts/bench-serve.sh's co-run section).

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: RESPONSE_FILE"))?;
    let response = Bytes::from(std::fs::read(&path)?);
    let delay = match std::env::var("FLOOR_DELAY_US") {
        Ok(us) => Some(std::time::Duration::from_micros(us.parse()?)),
        Err(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new().route(
            "/predict",
            post(move |body: Bytes| {
                let response = response.clone();
                async move {
                    // The body is read (as the server reads an upload) and dropped.
                    drop(body);
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    ([(header::CONTENT_TYPE, "application/json")], response)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        eprintln!("listening on {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}
