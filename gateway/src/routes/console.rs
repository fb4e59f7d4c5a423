//! The web console (issue 18): plain HTML, CSS and a JavaScript module, embedded in the
//! binary and served at `/`. It uses the public API and WebSocket only. Its one library is
//! uPlot (charts of time series, MIT), vendored from npm in `console/vendor/`: the copy is
//! the package `chronicle/tests/console/package-lock.json` pins, byte for byte (the console
//! test checks), so the binary needs no build step and no network.

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};

use crate::state::AppState;

const INDEX: &str = include_str!("../../console/index.html");
const APP: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/style.css");
const UPLOT: &str = include_str!("../../console/vendor/uPlot.esm.js");
const UPLOT_STYLE: &str = include_str!("../../console/vendor/uPlot.min.css");

/// Scripts and styles from the gateway only, no inline script, no framing: a post's HTML is
/// sanitized by the server, and this is the second line.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self' ws: wss:; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// This module's routes (each written out: the OpenAPI test reads the `.route` calls).
pub(super) fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(|| async { asset(INDEX, HTML) }))
        .route("/console/app.js", get(|| async { asset(APP, JS) }))
        .route("/console/style.css", get(|| async { asset(STYLE, CSS) }))
        .route(
            "/console/vendor/uPlot.esm.js",
            get(|| async { asset(UPLOT, JS) }),
        )
        .route(
            "/console/vendor/uPlot.min.css",
            get(|| async { asset(UPLOT_STYLE, CSS) }),
        )
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
