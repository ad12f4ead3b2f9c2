//! Request id, trace span, access log and request metrics, for every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::problem::{ApiError, render};

/// The id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub const HEADER: &str = "x-request-id";

/// An incoming id is echoed when it is well formed: 1 to 64 of `A-Za-z0-9._-`.
fn well_formed(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| well_formed(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));

    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = super::metrics::method_label(&method),
        path = %req.uri().path(),
        tenant = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();

    // Problems carry their request id in the body too.
    if let Some(err) = res.extensions_mut().remove::<ApiError>() {
        let status = res.status();
        let extra = std::mem::take(res.headers_mut());
        res = render(&err.problem(Some(id.clone())), err.retry_after_s);
        *res.status_mut() = status;
        for (name, value) in extra.iter() {
            if name != axum::http::header::CONTENT_LENGTH {
                res.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, v);
    }
    // No response is to be sniffed into something else (a JSON body read as
    // HTML by an old browser).
    res.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );

    let status = res.status().as_u16();
    super::metrics::request(&method, &route, status, elapsed);
    span.in_scope(|| {
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        if status == 429 {
            // Refusals are summed per tenant instead (edge::limits): one
            // line each would let a flood write the logs.
            tracing::debug!(status, elapsed_ms, "request finished");
        } else {
            tracing::info!(status, elapsed_ms, "request finished");
        }
    });
    res
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn request_ids() {
        assert!(well_formed("abc-123_x.y"));
        assert!(!well_formed(""));
        assert!(!well_formed("a b"));
        assert!(!well_formed(&"a".repeat(65)));
        assert!(!well_formed("a\nb"));
    }
}
