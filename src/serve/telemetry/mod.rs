//! OpenTelemetry trace export: with `--otlp-endpoint` (or the standard `OTEL_EXPORTER_OTLP_*`
//! variables) every inference request becomes a trace of `tracing` spans (the HTTP request,
//! `decode`, `queue_wait`, `inference`, `calibration`, `scoring`) sent over OTLP/HTTP protobuf
//! by a batch processor on its own thread, so the request path never waits on the collector.
//!
//! Off by default, and then free: the request path asks [`enabled`] (one relaxed atomic load)
//! before building any span and uses `Span::none()` otherwise, the subscriber is the plain log
//! one, and no exporter exists. The span names and attributes are listed in docs/API.md
//! ("Tracing").

mod client;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use client::PlainHttpClient;

/// Set once the exporting subscriber is installed; never cleared.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. Callers build their spans only when this is true, and record
/// counts as `i64`: tracing-opentelemetry exports `u64` and `usize` fields as strings.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span `make` builds when spans are exported, else `Span::none()` (which costs nothing to
/// create, enter or drop).
#[inline]
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// The OTLP path of traces under a collector's base URL.
const TRACES_PATH: &str = "/v1/traces";

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global tracing subscriber was installed already.
    #[error("a tracing subscriber is installed already")]
    SubscriberSet,
}

/// Resolves the URL traces are posted to, or `None` when export is off. In order:
/// `--otlp-endpoint` (a base URL such as `http://collector:4318` gets `/v1/traces` appended; a
/// URL with a path is used as given), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as given), then
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base: `/v1/traces` appended, as the OTLP exporter
/// specification says). Only `http://` is accepted: the exporter has no TLS stack (send to a
/// local collector or agent, which forwards over TLS if needed). `env` reads a variable.
pub fn traces_endpoint(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let (url, source) = if let Some(f) = flag.map(str::trim) {
        let base = f.trim_end_matches('/');
        let has_path = base
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        let url = if has_path {
            f.to_string()
        } else {
            format!("{base}{TRACES_PATH}")
        };
        (url, "--otlp-endpoint")
    } else if let Some(v) = nonempty(env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        (v.trim().to_string(), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    } else if let Some(v) = nonempty(env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        let base = v.trim().trim_end_matches('/').to_string();
        (
            format!("{base}{TRACES_PATH}"),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    } else {
        return Ok(None);
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{source}: {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{source}: {url:?}: https is not supported (the exporter has no TLS stack); \
                 export to a local collector over http://"
            ));
        }
        _ => return Err(format!("{source}: {url:?} must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{source}: {url:?} has no host"));
    }
    Ok(Some(url))
}

/// How long the exit may wait for the last spans to be posted: past it the process exits and
/// they are lost (the shutdown bound of `--shutdown-timeout-ms` stays nearly true).
const FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps the exporter alive; dropping it flushes the spans still queued (for at most
/// [`FLUSH_AT_EXIT`]) and stops the export thread.
#[must_use = "dropping it stops the export"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_AT_EXIT) {
            tracing::warn!(error = %e, "OTLP export: final flush failed");
        }
    }
}

/// Installs the global subscriber (logs as [`crate::logging::init_tracing`] does, plus the
/// OpenTelemetry bridge) with a batch exporter posting to `endpoint`, and turns [`enabled`] on.
/// The sampler follows `OTEL_TRACES_SAMPLER` (default: parent-based, always on, so a caller's
/// `traceparent` with the sampled flag off is honoured); the service name is `caliper` unless
/// `OTEL_SERVICE_NAME` says otherwise; the batch processor reads the `OTEL_BSP_*` variables.
pub fn install(endpoint: &str, log_json: bool) -> Result<Telemetry, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(client::TIMEOUT)
        .with_http_client(PlainHttpClient::new(client::TIMEOUT))
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "caliper".to_string());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("caliper"))
        // Source locations, thread ids, busy/idle times and module paths: per-span work and
        // attributes nobody reads here.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false);
    let telemetry = Telemetry { provider };
    if !crate::logging::init_tracing_with(log_json, Some(layer)) {
        return Err(TelemetryError::SubscriberSet);
    }
    ENABLED.store(true, Ordering::Relaxed);
    Ok(telemetry)
}

/// The W3C trace context (`traceparent`, `tracestate`) of incoming request headers, or `None`
/// when there is none or it is malformed (the request then starts a new trace).
pub fn remote_parent(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    let traceparent = headers.get("traceparent")?.to_str().ok()?;
    if !well_formed(traceparent) {
        return None;
    }
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The W3C `traceparent` layout: `version-traceid-parentid-flags`, lower-case hex of 2, 32, 16
/// and 2 digits (version 00 has exactly these four fields; later versions may append more). The
/// SDK's parser alone takes shorter ids (it parses them as numbers), which the spec says to
/// ignore.
fn well_formed(traceparent: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = traceparent.trim().split('-');
    let (Some(v), Some(t), Some(p), Some(f)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    hex(v, 2)
        && v != "ff"
        && hex(t, 32)
        && hex(p, 16)
        && hex(f, 2)
        && (v != "00" || parts.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<Option<String>, String> {
        traces_endpoint(flag, |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn endpoint_resolution_follows_the_flag_then_the_otlp_variables() {
        assert_eq!(resolve(None, &[]), Ok(None));
        assert_eq!(
            resolve(Some("http://c:4318"), &[]).unwrap().as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            resolve(Some("http://c:4318/"), &[]).unwrap().as_deref(),
            Some("http://c:4318/v1/traces")
        );
        // A path is the caller's choice.
        assert_eq!(
            resolve(Some("http://c:4318/otlp/v1/traces"), &[])
                .unwrap()
                .as_deref(),
            Some("http://c:4318/otlp/v1/traces")
        );
        // The flag wins over the variables.
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/otlp"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/x"),
        ];
        assert_eq!(
            resolve(Some("http://flag:1"), &vars).unwrap().as_deref(),
            Some("http://flag:1/v1/traces")
        );
        // The per-signal variable is used as given, the base one gets the signal path.
        assert_eq!(
            resolve(None, &vars).unwrap().as_deref(),
            Some("http://traces:4318/x")
        );
        assert_eq!(
            resolve(None, &vars[..1]).unwrap().as_deref(),
            Some("http://base:4318/otlp/v1/traces")
        );
        // An empty variable does not enable export.
        assert_eq!(
            resolve(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]),
            Ok(None)
        );
    }

    #[test]
    fn endpoints_without_a_plain_http_collector_are_refused() {
        for bad in [
            "https://c:4318",
            "c:4318",
            "grpc://c:4317",
            "http://",
            "not a url",
        ] {
            let e = resolve(Some(bad), &[]).unwrap_err();
            assert!(e.starts_with("--otlp-endpoint"), "{bad}: {e}");
        }
        assert!(
            resolve(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")])
                .unwrap_err()
                .contains("https is not supported")
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn a_valid_traceparent_is_the_remote_parent_and_a_malformed_one_is_ignored() {
        use opentelemetry::trace::TraceContextExt;
        let cx = remote_parent(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=opaque"),
        ]))
        .expect("valid traceparent");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().get("vendor"), Some("opaque"));
        for bad in [
            "garbage",
            // All-zero trace id and span id are invalid by the W3C spec.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff is forbidden; upper-case hex is not allowed.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(
                remote_parent(&headers(&[("traceparent", bad)])).is_none(),
                "{bad} accepted"
            );
        }
        assert!(remote_parent(&headers(&[("tracestate", "a=b")])).is_none());
    }
}
