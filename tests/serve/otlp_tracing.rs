//! OpenTelemetry export against an OTLP/HTTP receiver: a minimal collector in the test (axum on
//! 127.0.0.1:0 accepting `POST /v1/traces`, decoding each protobuf `ExportTraceServiceRequest`
//! with the `opentelemetry-proto` messages) and a real `caliper serve --otlp-endpoint` process.
//! A predict request with a `traceparent` must come back as one trace under that parent: the
//! HTTP request span and its `decode`, `queue_wait`, `inference` (made on the session thread),
//! `calibration` and `scoring` children, each within the request's time span; a malformed
//! `traceparent` starts a new trace.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::sync::mpsc;

use crate::common::process::Server;
use crate::common::{MODEL, data};

/// One received span and the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// Starts the collector; returns its base URL and the spans it receives.
async fn collector() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |State(tx): State<mpsc::UnboundedSender<Received>>, body: Bytes| async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .as_ref()
                            .and_then(|r| string_attr(&r.attributes, "service.name"))
                            .unwrap_or_default();
                        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                            let _ = tx.send(Received {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                    // An empty ExportTraceServiceResponse: full success.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Any::IntValue(i) => Some(*i),
        _ => None,
    }
}

async fn predict(server: &Server, headers: &[(&str, &str)]) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(server.url(&format!("/v1/models/{MODEL}/predict")))
        .header("content-type", "image/png")
        .body(std::fs::read(data().join("digits/7.png")).unwrap());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

const STAGES: [&str; 5] = [
    "decode",
    "queue_wait",
    "inference",
    "calibration",
    "scoring",
];

/// The request span of `trace` and its stage children, checked for nesting and timing.
fn check_trace<'a>(trace: &'a [&'a Span], request_id: &str) -> &'a Span {
    let name = "POST /v1/models/{model}/predict";
    let roots: Vec<_> = trace.iter().filter(|s| s.name == name).collect();
    assert_eq!(roots.len(), 1, "one request span: {trace:#?}");
    let root = *roots[0];
    assert_eq!(root.kind, SpanKind::Server as i32);
    let a = &root.attributes;
    assert_eq!(
        string_attr(a, "caliper.request_id").as_deref(),
        Some(request_id)
    );
    assert_eq!(
        int_attr(a, "http.response.status_code"),
        Some(200),
        "{a:#?}"
    );
    assert_eq!(
        string_attr(a, "http.route").as_deref(),
        Some("/v1/models/{model}/predict")
    );
    assert_eq!(string_attr(a, "caliper.model").as_deref(), Some(MODEL));
    assert!(string_attr(a, "caliper.model_version").is_some_and(|v| !v.is_empty()));
    assert!(root.end_time_unix_nano >= root.start_time_unix_nano);
    for stage in STAGES {
        let found: Vec<_> = trace.iter().filter(|s| s.name == stage).collect();
        assert_eq!(found.len(), 1, "{stage}: {trace:#?}");
        let s = found[0];
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{stage} is not a child of the request"
        );
        assert_eq!(
            string_attr(&s.attributes, "caliper.model").as_deref(),
            Some(MODEL)
        );
        assert!(
            s.end_time_unix_nano >= s.start_time_unix_nano,
            "{stage}: negative duration"
        );
        assert!(
            s.start_time_unix_nano >= root.start_time_unix_nano
                && s.end_time_unix_nano <= root.end_time_unix_nano,
            "{stage} lies outside the request span"
        );
        assert_eq!(
            int_attr(&s.attributes, "caliper.images"),
            Some(1),
            "{stage}"
        );
    }
    let by_name = |n: &str| trace.iter().find(|s| s.name == n).unwrap();
    let inference = by_name("inference");
    assert!(int_attr(&inference.attributes, "caliper.batch_size").is_some_and(|b| b >= 1));
    // The stages run one after the other.
    for pair in STAGES.windows(2) {
        assert!(
            by_name(pair[0]).end_time_unix_nano <= by_name(pair[1]).start_time_unix_nano,
            "{} ends after {} starts",
            pair[0],
            pair[1]
        );
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_spans_reach_an_otlp_collector_under_the_callers_traceparent() {
    let (url, mut spans) = collector().await;
    let server = Server::with_repository(
        &data().join("models"),
        &data().join("calib"),
        &["--otlp-endpoint", &url],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    predict(
        &server,
        &[
            ("traceparent", &format!("00-{trace_id}-{parent}-01")),
            ("tracestate", "caller=1"),
            ("x-request-id", "traced-1"),
        ],
    )
    .await;
    // Malformed (a trace id one digit short): ignored, a new trace.
    let short = "4bf92f3577b34da6a3ce929d0e0e473";
    predict(
        &server,
        &[
            ("traceparent", &format!("00-{short}-{parent}-01")),
            ("x-request-id", "untraced-2"),
        ],
    )
    .await;
    // Exit flushes the batch processor: every span has been posted once the process is gone.
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut received = Vec::new();
    while let Ok(r) = spans.try_recv() {
        received.push(r);
    }
    assert!(!received.is_empty(), "no span reached the collector");
    assert!(received.iter().all(|r| r.service == "caliper"));

    let mut traces: HashMap<Vec<u8>, Vec<&Span>> = HashMap::new();
    for r in &received {
        traces
            .entry(r.span.trace_id.clone())
            .or_default()
            .push(&r.span);
    }
    let given = hex::decode(trace_id).unwrap();
    let traced = traces.get(&given).expect("no span in the caller's trace");
    let root = check_trace(traced, "traced-1");
    assert_eq!(root.parent_span_id, hex::decode(parent).unwrap());

    // The second request: its own trace, rooted at the request span.
    let (other, trace) = traces
        .iter()
        .find(|(_, t)| {
            t.iter().any(|s| {
                string_attr(&s.attributes, "caliper.request_id").as_deref() == Some("untraced-2")
            })
        })
        .expect("no trace for the second request");
    assert_ne!(other, &given);
    assert_eq!(other.len(), 16);
    let root = check_trace(trace, "untraced-2");
    assert!(
        root.parent_span_id.is_empty(),
        "a malformed traceparent became a parent"
    );
}
