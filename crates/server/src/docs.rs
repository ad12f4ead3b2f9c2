//! The API reference for people: Redoc, vendored (`assets/redoc`), renders
//! the OpenAPI document at `/api/v1/docs`. Nothing is fetched from a CDN;
//! the page's Content-Security-Policy lets it load only from this server.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// The bundle's version: part of its path, so a new one is fetched anew.
pub const REDOC_VERSION: &str = "2.5.4";

const REDOC: &[u8] = include_bytes!("../assets/redoc/redoc.standalone.js");

/// Paths are relative, so the page works behind a proxy that mounts the API
/// under a prefix. No inline script: the CSP allows none.
const PAGE: &str = concat!(
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>Campus API</title>\n</head>\n<body>\n",
    "<redoc spec-url=\"openapi.json\" hide-hostname=\"true\"></redoc>\n",
    "<script src=\"docs/redoc-2.5.4.js\"></script>\n",
    "</body>\n</html>\n",
);

/// Redoc draws with inline styles and searches in a worker made from a
/// blob; nothing else beyond this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/api/v1/docs` and its script.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/docs", get(page)).route(
        &format!("/api/v1/docs/redoc-{REDOC_VERSION}.js"),
        get(script),
    )
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            // Versioned path: the same bytes forever.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        REDOC,
    )
        .into_response()
}
