//! Tracing set-up shared by both binaries: an env filter (`RUST_LOG`, default `info`) and
//! optional JSON lines on stderr.

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (e.g. from tests) keeps the first subscriber; that is fine.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
