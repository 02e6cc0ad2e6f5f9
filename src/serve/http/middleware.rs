//! Cross-cutting request handling: admission control (429), bearer-token checks, request ids,
//! and the request metrics (by matched route template, never by raw path), plus the `/metrics`
//! page.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::request_id::RequestId;

use super::{ApiError, AppState, ErrorCode};

/// Takes an admission permit for the duration of the request, or answers 429 at once.
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match std::sync::Arc::clone(&state.admission).try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::Overloaded.into_response(),
    }
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
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same_token(t.trim().as_bytes(), expected.as_bytes()))
}

/// `--api-key`: every endpoint except health and metrics.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match &state.config.api_key {
        Some(key) if !bearer_matches(req.headers(), key) => ApiError::Unauthorized.into_response(),
        _ => next.run(req).await,
    }
}

/// The repository endpoint: `--admin-token` when set, else the API key when set.
pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let c = &state.config;
    match c.admin_token.as_ref().or(c.api_key.as_ref()) {
        Some(token) if !bearer_matches(req.headers(), token) => {
            ApiError::Unauthorized.into_response()
        }
        _ => next.run(req).await,
    }
}

/// Decrements the in-flight gauge even if the request future is dropped.
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records `caliper_request_duration_seconds`, `caliper_in_flight_requests` and
/// `caliper_rejected_total` (by the error code the response carries).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Both clones are cheap (a shared string, an enum): no per-request formatting.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let m = &state.metrics;
    m.in_flight.inc();
    let _guard = InFlight(m.in_flight.clone());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    m.request_duration
        .with_label_values(&[
            route.as_ref().map_or("unmatched", MatchedPath::as_str),
            method.as_str(),
            resp.status().as_str(),
        ])
        .observe(start.elapsed().as_secs_f64());
    if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>() {
        m.rejected.with_label_values(&[code]).inc();
    }
    resp
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

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
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
