//! `caliper serve`: validate the arguments, set the threads' CPU scheduling policy, raise the
//! descriptor limit, load ONNX Runtime, check the `--device`, load every model (warm-up
//! included), bind, and serve until SIGTERM or Ctrl-C, then drain within `--shutdown-timeout-ms`
//! and exit, whatever work is still running.

use std::time::Duration;

use anyhow::Context;

use crate::serve::config::Config;
pub use crate::serve::config::ServeArgs;
use crate::serve::http::AppState;
use crate::serve::telemetry;

/// Runs `caliper serve`: installs the tracing subscriber (with OTLP export when an endpoint is
/// configured; `log_json` as for every command), then serves.
pub fn run(args: ServeArgs, log_json: bool) -> anyhow::Result<()> {
    let mut config = Config::try_from(args)?;
    // Before any thread starts, so that every one the server creates inherits it.
    let scheduling = crate::serve::scheduling::apply(config.cpu_scheduling);
    if config.otlp_endpoint.is_none() {
        config.otlp_endpoint = telemetry::traces_endpoint(None, |k| std::env::var(k).ok())
            .map_err(anyhow::Error::msg)?;
    }
    // Declared before the runtime, so dropped after it: the last spans are flushed at exit.
    let _telemetry = match &config.otlp_endpoint {
        Some(url) => Some(telemetry::install(url, log_json).context("cannot start trace export")?),
        None => {
            crate::logging::init_tracing(log_json);
            None
        }
    };
    tracing::info!(?config, "starting");
    if let Err(e) = scheduling {
        tracing::warn!(policy = ?config.cpu_scheduling, "{e}");
    }
    raise_descriptor_limit(config.max_connections);
    let lib = crate::runtime::init_onnxruntime()?;
    tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
    // A GPU that cannot be used stops the server here, in one line, before any model loads
    // (ONNX Runtime would otherwise run every model on the CPU without a word).
    crate::runtime::probe(config.device).map_err(|e| anyhow::anyhow!("--device {e}"))?;
    if config.device.is_cuda() {
        tracing::info!(device = %config.device, "CUDA device ready");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("caliper-http")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config));
    // Dropping the runtime would wait for every blocking task (a long decode) to finish; past the
    // drain deadline nothing is worth waiting for, so they are abandoned and the process exits.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Descriptors the server needs besides its connections (models, logs, runtime, listener).
const RESERVED_DESCRIPTORS: u64 = 128;

/// Raises the soft RLIMIT_NOFILE to the hard limit (allowed without privileges) and logs what
/// it is, warning when `--max-connections` cannot fit under it.
#[cfg(unix)]
fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    if before.current != before.maximum
        && let Err(e) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    tracing::info!(
        soft = ?now.current,
        hard = ?now.maximum,
        was = ?before.current,
        "open-file limit (RLIMIT_NOFILE)"
    );
    if (max_connections as u64).saturating_add(RESERVED_DESCRIPTORS) > soft {
        tracing::warn!(
            max_connections,
            open_file_limit = soft,
            "--max-connections does not fit under the open-file limit: accepts may fail with \
             'Too many open files'; lower --max-connections or raise the limit (ulimit -n)"
        );
    }
}

#[cfg(not(unix))]
fn raise_descriptor_limit(_max_connections: usize) {}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.addr;
    let drain = config.shutdown_timeout;
    let state = AppState::new(config).context("cannot create the server state")?;
    let registry = std::sync::Arc::clone(&state.registry);
    // Models load (and warm up) before the port opens, so a listening server has them.
    let loaded = tokio::task::spawn_blocking(move || registry.load_all())
        .await
        .context("model loading panicked")??;
    let failures = state.registry.failures();
    if loaded == 0 && failures.is_empty() {
        tracing::warn!(
            models = %state.config.models_dir.display(),
            "no model loaded: the repository is empty; serving anyway (not ready). \
             Train one with caliper-train or copy a model folder there, then POST \
             /v2/repository/models/NAME/load"
        );
    } else {
        tracing::info!(loaded, failed = failures.len(), models = ?state.registry.names(), "models ready");
    }
    // The signal handlers go in before the port opens. Until they exist SIGTERM has its default
    // action and kills the process, dropping requests already accepted: tokio's `ctrl_c()` and
    // an un-polled `signal()` future register lazily, and under CPU load the accept loop (on a
    // worker) could answer requests before this task first polled the shutdown future (the
    // drain test in tests/serve/socket.rs then saw exit by signal 15 in ~10% of runs).
    let shutdown = shutdown_signal()?;
    // gRPC binds first, so that its address is logged before the "listening on" line that
    // tells tests and scripts the server is up.
    let grpc = match state.config.grpc_addr {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (--grpc-addr)"))?;
            tracing::info!("gRPC listening on {}", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    // Tests and scripts read this line to find the port when --addr ends in :0.
    tracing::info!("listening on {}", listener.local_addr()?);
    let kept = state.clone();
    // One signal stops both servers; each drains within the same bound.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http = crate::serve::http::serve(listener, state.clone(), stopped(stop_rx.clone()), drain);
    let grpc = async {
        match grpc {
            Some(l) => crate::serve::grpc::serve(l, state, stopped(stop_rx), drain)
                .await
                .map(Some)
                .context("gRPC server failed"),
            None => Ok(None),
        }
    };
    let http = async { http.await.context("HTTP server failed") };
    let (clean, grpc_clean) = tokio::try_join!(http, grpc)?;
    // What the payload log's writer still holds reaches the disk before the process exits.
    if let Some(log) = &kept.payload_log
        && !log.flush(Duration::from_secs(5))
    {
        tracing::warn!("payload log: queued records were not all written before exit");
    }
    tracing::info!(clean, ?grpc_clean, "stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers now and returns a future that resolves on
/// either. A signal that arrives before the future is first polled is kept, not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        // Registers on first poll only, so the early-registration guarantee is unix-only.
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
