//! Cross-cutting request handling: admission control (429), bearer-token checks, and the
//! request metrics (by matched route template, never by raw path), plus the `/metrics` page.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

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
}
