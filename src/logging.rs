//! Tracing set-up shared by both binaries: an env filter (`RUST_LOG`, default `info`) and
//! optional JSON lines on stderr, plus an optional extra layer (the server's OpenTelemetry
//! export).

use tracing_subscriber::EnvFilter;

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init_tracing(json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr);
    // A second call (e.g. from tests) keeps the first subscriber; that is fine.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global subscriber of [`init_tracing`] with `extra` beside the log output. The
/// env filter stays global, so `extra` sees exactly the spans the logs see (a span that one layer
/// saw and the other did not would break parent links). Returns false when a subscriber was
/// installed already.
pub fn init_tracing_with<L>(json: bool, extra: Option<L>) -> bool
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(extra)
        .with(fmt)
        .with(env_filter())
        .try_init()
        .is_ok()
}
