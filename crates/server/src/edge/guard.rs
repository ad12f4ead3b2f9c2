//! What is refused before a handler runs, and what a slow body becomes:
//!
//! * a method that is not one of RFC 9110's (`CONNECT` aside, which no
//!   route takes, and the `QUERY` of the HTTP working group's draft) →
//!   501 `not_implemented`; `TRACE` and `QUERY`, methods this server knows
//!   and no route allows, are 405 like any other unrouted method
//!   (RFC 9110 §15.6.2: the answer for a method the server does not
//!   recognise), so that no handler, label or log line sees it;
//! * a declared `Content-Length` over the route's limit → 413
//!   `payload_too_large`, before a byte of the body is read;
//! * a body cut off for being too slow ([`super::body`]) → 408
//!   `request_timeout`, whatever the handler made of the error.
//!
//! Answers given while a body may still be unread close the connection
//! (`Connection: close`): what is left of the body is never read.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::body::TimedOut;
use crate::problem::ApiError;
use crate::state::AppState;

/// The methods this server knows; any other is answered 501.
pub fn is_standard(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
    ) || m.as_str() == "QUERY"
}

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !is_standard(req.method()) {
        return closing(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "this server does not implement that method",
        ));
    }
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let limit = route
        .and_then(|r| {
            crate::v1::files::body_limit(r, &state.config)
                .or_else(|| crate::admin::body_limit(r))
                .or_else(|| crate::console::body_limit(r))
        })
        .unwrap_or(state.config.json_limit as u64);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this server accepts",
        ));
    }
    let timed_out = req.extensions().get::<TimedOut>().cloned();
    let res = next.run(req).await;
    if timed_out.is_some_and(|t| t.get()) {
        return closing(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        ));
    }
    res
}

/// `err` as an answer after which the connection closes.
fn closing(err: ApiError) -> Response {
    let mut res = err.into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}
