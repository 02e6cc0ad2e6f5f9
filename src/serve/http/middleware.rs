//! Cross-cutting request handling: the body transfer-rate limit (408), admission control (429),
//! bearer-token checks, request ids, and the request metrics (by matched route template, never
//! by raw path), plus the `/metrics` page.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tower_http::request_id::RequestId;

use super::{ApiError, AppState, ErrorCode};
use crate::serve::prometheus::ServerMetrics;

/// The body arrived too slowly (see [`limit_body_rate`]).
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
struct BodyTooSlow;

/// The pace a body must keep (see [`limit_body_rate`]): after `--body-read-grace-ms`, each byte
/// buys `1 / --body-min-bytes-per-s` seconds.
#[derive(Debug, Clone, Copy)]
struct BodyPace {
    start: tokio::time::Instant,
    grace: Duration,
    rate: f64,
}

impl BodyPace {
    /// The pace of a body starting now.
    fn starting_now(state: &AppState) -> Self {
        BodyPace {
            start: tokio::time::Instant::now(),
            grace: state.config.body_read_grace,
            rate: state.config.body_min_bytes_per_s as f64,
        }
    }

    /// When the next chunk must have arrived, `received` bytes in.
    fn deadline(&self, received: u64) -> tokio::time::Instant {
        self.start + self.grace + Duration::from_secs_f64(received as f64 / self.rate)
    }
}

/// The answer to a body that fell behind its pace: 408, and the connection closed (the rest of
/// the body may still be on its way).
fn body_too_slow() -> Response {
    let mut resp = ApiError::BodyTimeout.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Bounds the time a client may take to send its body: after `--body-read-grace-ms`, each byte
/// buys `1 / --body-min-bytes-per-s` seconds, so a body must have fully arrived within
/// `grace + len / rate`. A body that falls behind fails its read and the request is answered 408,
/// whatever the handler made of the read error. (Inference routes read their body in [`admit`],
/// which keeps the same pace itself.)
pub async fn limit_body_rate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Requests that announce no body (health probes, GETs) pay nothing.
    let h = req.headers();
    let no_body = !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if no_body {
        return next.run(req).await;
    }
    let pace = BodyPace::starting_now(&state);
    let slow = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let flag = Arc::clone(&slow);
    let chunks = futures::stream::unfold(
        (body.into_data_stream(), 0u64, false),
        move |(mut inner, received, done)| {
            let flag = Arc::clone(&flag);
            async move {
                if done {
                    return None;
                }
                match tokio::time::timeout_at(pace.deadline(received), inner.next()).await {
                    Ok(Some(Ok(chunk))) => {
                        let n = received + chunk.len() as u64;
                        Some((Ok(chunk), (inner, n, false)))
                    }
                    Ok(Some(Err(e))) => {
                        Some((Err(axum::BoxError::from(e)), (inner, received, true)))
                    }
                    Ok(None) => None,
                    Err(_) => {
                        flag.store(true, Ordering::Release);
                        Some((
                            Err(axum::BoxError::from(BodyTooSlow)),
                            (inner, received, true),
                        ))
                    }
                }
            }
        },
    );
    let resp = next
        .run(Request::from_parts(parts, Body::from_stream(chunks)))
        .await;
    if slow.load(Ordering::Acquire) {
        return body_too_slow();
    }
    resp
}

/// The admission permit of an inference request, in its extensions: the handler hands a clone
/// to the work it starts on the blocking pool, so the slot stays taken until that work stops,
/// even when the request was answered (504) before.
#[derive(Clone)]
pub struct Admission(pub Arc<tokio::sync::OwnedSemaphorePermit>);

/// Reads the whole body (at most `--max-body-bytes`, at the pace of [`limit_body_rate`], which
/// these routes do not go through: wrapping the body in a paced stream cost a request more than
/// reading it here), then takes an admission permit for the rest of the request or answers 429
/// at once. Reading first means a slow client holds a connection for a bounded time but never
/// an admission slot.
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
    let pace = BodyPace::starting_now(&state);
    let (parts, body) = req.into_parts();
    let hint = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if hint.is_some_and(|n| n > limit) {
        return ApiError::PayloadTooLarge(limit).into_response();
    }
    let body = match read_body(body, limit, hint.unwrap_or(0), &pace).await {
        Ok(b) => b,
        Err(ApiError::BodyTimeout) => return body_too_slow(),
        Err(e) => return e.into_response(),
    };
    match Arc::clone(&state.admission).try_acquire_owned() {
        Ok(permit) => {
            let permit = Arc::new(permit);
            let mut req = Request::from_parts(parts, Body::from(body));
            req.extensions_mut().insert(Admission(Arc::clone(&permit)));
            let resp = next.run(req).await;
            // Released here unless work the request started still runs (and holds a clone).
            drop(permit);
            resp
        }
        Err(_) => ApiError::Overloaded.into_response(),
    }
}

/// Collects a body of at most `limit` bytes (413 above) that keeps `pace` (408 otherwise).
async fn read_body(
    body: Body,
    limit: usize,
    hint: usize,
    pace: &BodyPace,
) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(hint.min(limit));
    loop {
        let next = tokio::time::timeout_at(pace.deadline(buf.len() as u64), stream.next());
        let Some(chunk) = next.await.map_err(|_| ApiError::BodyTimeout)? else {
            break;
        };
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Constant-time comparison so that response timing does not leak how much of a token matched.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    authorization_matches(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        expected,
    )
}

/// Whether an `Authorization` value (an HTTP header, gRPC metadata) is `Bearer <expected>`.
pub fn authorization_matches(value: Option<&[u8]>, expected: &str) -> bool {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same_token(t.trim().as_bytes(), expected.as_bytes()))
}

/// `--api-key`: every endpoint except health and metrics. The 401, or None to go on.
fn check_api_key(state: &AppState, req: &Request) -> Option<Response> {
    match &state.config.api_key {
        Some(key) if !bearer_matches(req.headers(), key) => {
            Some(ApiError::Unauthorized.into_response())
        }
        _ => None,
    }
}

/// The repository endpoint: `--admin-token` when set, else the API key when set.
fn check_admin(state: &AppState, req: &Request) -> Option<Response> {
    let c = &state.config;
    match c.admin_token.as_ref().or(c.api_key.as_ref()) {
        Some(token) if !bearer_matches(req.headers(), token) => {
            Some(ApiError::Unauthorized.into_response())
        }
        _ => None,
    }
}

// The route layers below are one `from_fn` each, a check and then the body's handling: every
// `from_fn` layer clones and boxes its inner service and boxes its own future on each request.

/// Inference routes: the API key, then [`admit`].
pub async fn guard_inference(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_api_key(&state, &req) {
        Some(refused) => refused,
        None => admit(State(state), req, next).await,
    }
}

/// Every other route behind the API key: the key, then [`limit_body_rate`].
pub async fn guard_protected(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_api_key(&state, &req) {
        Some(refused) => refused,
        None => limit_body_rate(State(state), req, next).await,
    }
}

/// The repository routes: the admin token, then [`limit_body_rate`].
pub async fn guard_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_admin(&state, &req) {
        Some(refused) => refused,
        None => limit_body_rate(State(state), req, next).await,
    }
}

/// Records `caliper_request_duration_seconds`, `caliper_in_flight_requests` and
/// `caliper_rejected_total` (by the error code the response carries) for every route. A layer
/// of its own rather than a `from_fn`, which would clone and box the route's service and box a
/// future on every request.
#[derive(Clone)]
pub struct TrackLayer(pub Arc<ServerMetrics>);

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// The service of [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Arc<ServerMetrics>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Track<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        // Both clones are cheap (a shared string, an enum): no per-request formatting.
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        self.metrics.in_flight.inc();
        let record = Record {
            metrics: Arc::clone(&self.metrics),
            route,
            method,
            start: std::time::Instant::now(),
        };
        Tracked {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Track`].
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(record)) = (&out, this.record.take()) {
            record.answered(resp);
        }
        Poll::Ready(out)
    }
}

/// One request's metrics in progress; dropping it (answered, or its future dropped) leaves the
/// in-flight gauge.
struct Record {
    metrics: Arc<ServerMetrics>,
    route: Option<MatchedPath>,
    method: axum::http::Method,
    start: std::time::Instant,
}

impl Record {
    fn answered(self, resp: &Response) {
        let m = &self.metrics;
        m.request_duration
            .with_label_values(&[
                self.route.as_ref().map_or("unmatched", MatchedPath::as_str),
                self.method.as_str(),
                resp.status().as_str(),
            ])
            .observe(self.start.elapsed().as_secs_f64());
        if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>() {
            m.rejected.with_label_values(&[code]).inc();
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// Makes the `x-request-id` of requests that come without one: a UUID v4 from the thread's
/// RNG (`rand::rng()`: ChaCha12 seeded from the OS and reseeded from it every 64 KiB of output).
/// tower-http's `MakeRequestUuid` asks the OS for every id (`Uuid::new_v4`, a `getrandom`
/// syscall per request), which showed in the server's profile.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestId;

impl tower_http::request_id::MakeRequestId for MakeRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_bytes(&uuid_v4(rand::random()))
            .ok()
            .map(RequestId::new)
    }
}

/// 128 random bits as a version-4 UUID in its hyphenated lower-case text form (RFC 9562: the
/// version nibble set to 4 and the variant bits to `10`, the other 122 bits kept).
fn uuid_v4(bits: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (bits & !(0xF << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, c) in out.iter_mut().enumerate() {
        if !matches!(i, 8 | 13 | 18 | 23) {
            *c = HEX[((bits >> (124 - 4 * nibble)) & 0xF) as usize];
            nibble += 1;
        }
    }
    out
}

/// `GET /metrics`: Prometheus text format. The live trust gauges (issue 22) are refreshed
/// first, off the async executor (it may run the label-shift EM).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let s = state.clone();
    let refreshed = tokio::task::spawn_blocking(move || {
        for name in s.registry.names() {
            if let Some(model) = s.registry.get(&name) {
                crate::serve::infer::live::publish(&s.monitor, &s.metrics, &model);
            }
        }
    })
    .await;
    if let Err(e) = refreshed {
        tracing::warn!(error = %e, "refreshing the trust gauges failed");
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(bearer_matches(&h, "s3cret"));
        assert!(!bearer_matches(&h, "s3cre"));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!bearer_matches(&h, "s3cret"));
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        assert_eq!(&uuid_v4(0), b"00000000-0000-4000-8000-000000000000");
        assert_eq!(&uuid_v4(u128::MAX), b"ffffffff-ffff-4fff-bfff-ffffffffffff");
        for bits in [0x0123_4567_89ab_cdef_0123_4567_89ab_cdef, rand::random()] {
            let reference = uuid::Builder::from_random_bytes(u128::to_be_bytes(bits)).into_uuid();
            assert_eq!(
                std::str::from_utf8(&uuid_v4(bits)).unwrap(),
                reference.hyphenated().to_string()
            );
        }
        let mut make = MakeRequestId;
        let req = axum::http::Request::new(());
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| {
                use tower_http::request_id::MakeRequestId as _;
                let id = make.make_request_id(&req).unwrap();
                id.header_value().to_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1000, "ids repeat");
        assert!(
            ids.iter()
                .all(|id| uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4))
        );
    }
}
