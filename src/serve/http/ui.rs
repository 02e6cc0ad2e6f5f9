//! The dashboard (issue 21): `GET /ui` serves one HTML page, one script and one stylesheet,
//! embedded in the binary so that a user needs no build step and the page needs no CDN. The page
//! holds no data of its own: its script polls the JSON endpoints (`/v1/models`,
//! `/v1/models/{model}/monitor`) and `/metrics`, and keeps its time series client-side.
//! `GET /` redirects here. Described in `docs/MONITORING.md`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Only this origin's scripts, styles and data; uploaded previews are `blob:` URLs. This also
/// proves the "no CDN" promise: a page that tried to fetch one would be refused by the browser.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
                   script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small files, and a new binary may change them: revalidate each time.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`: the page's script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/style.css`: the page's stylesheet.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /`: to the dashboard.
pub async fn root() -> Redirect {
    Redirect::temporary("/ui")
}
