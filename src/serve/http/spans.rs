//! The span of each HTTP request when traces are exported (`serve::telemetry`): named after the
//! method and the matched route, a child of the caller's W3C `traceparent` when it is valid
//! (else the root of a new trace), carrying the request id, the model and the response status.
//! tower-http's `TraceLayer` opens it and keeps it open until the response body is sent. Without
//! export, tower-http's defaults stay (a DEBUG span that the default filter leaves disabled).

use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, MakeSpan, OnResponse};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::serve::infer::LoadedModel;
use crate::serve::telemetry;

/// `TraceLayer::make_span_with`: [`request_span`] when exporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        if telemetry::enabled() {
            request_span(req)
        } else {
            DefaultMakeSpan::new().make_span(req)
        }
    }
}

/// The exported span of one request (OpenTelemetry HTTP server conventions for the names).
pub fn request_span<B>(req: &Request<B>) -> Span {
    let method = req.method().as_str();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let name = match route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = Empty,
        caliper.request_id = request_id,
        caliper.model = Empty,
        caliper.model_version = Empty,
    );
    if let Some(cx) = telemetry::remote_parent(req.headers()) {
        // Cannot fail here: the span is new and was never entered.
        let _ = span.set_parent(cx);
    }
    span
}

/// `TraceLayer::on_response`: records the status on the request span (5xx marks it an error),
/// then does what tower-http does by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        if telemetry::enabled() {
            let status = response.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        DefaultOnResponse::default().on_response(response, latency, span);
    }
}

/// Names the model a request is served by on its span (called where handlers resolve it).
pub fn record_model(model: &LoadedModel) {
    if telemetry::enabled() {
        let span = Span::current();
        span.record("caliper.model", model.files.name.as_str());
        span.record(
            "caliper.model_version",
            model.files.metadata.version.as_str(),
        );
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The trace id of the span made for a request with `traceparent`.
    fn trace_of(traceparent: Option<&str>) -> TraceId {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let mut req = Request::builder()
            .method("POST")
            .uri("/v1/models/m/predict");
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let req = req.body(()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let cx = request_span(&req).context();
            let span = cx.span();
            let sc = span.span_context();
            assert!(sc.is_valid());
            sc.trace_id()
        })
    }

    #[test]
    fn a_valid_traceparent_continues_its_trace_and_a_malformed_one_starts_a_new_one() {
        let given = "4bf92f3577b34da6a3ce929d0e0e4736";
        let id = trace_of(Some(&format!("00-{given}-00f067aa0ba902b7-01")));
        assert_eq!(id.to_string(), given);
        // Malformed (short trace id, upper case, garbage): ignored, a fresh trace id each time.
        let mut seen = std::collections::HashSet::new();
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "not a traceparent",
        ] {
            let id = trace_of(Some(bad));
            assert_ne!(id.to_string(), given, "{bad}");
            assert!(!id.to_string().starts_with("04bf92f3577b34da"), "{bad}");
            assert!(seen.insert(id), "{bad}: trace id reused");
        }
        let id = trace_of(None);
        assert!(seen.insert(id));
    }
}
