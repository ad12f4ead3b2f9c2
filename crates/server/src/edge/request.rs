//! Request id, trace span, access log and request metrics, for every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
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

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`): its trace id
/// and parent id, when well formed (lowercase hex, not all zeros; a later
/// version's extra fields are ignored, version `ff` is invalid).
pub fn traceparent(value: &str) -> Option<(&str, &str)> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let version_ok = version.len() == 2
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && version != "ff"
        && (version != "00" || parts.next().is_none());
    let flags_ok = flags.len() == 2 && flags.bytes().all(|b| b.is_ascii_hexdigit());
    (version_ok && flags_ok && hex(trace, 32) && hex(parent, 16)).then_some((trace, parent))
}

/// A header value fit for a log line: printable, at most 200 characters.
fn loggable(v: Option<&HeaderValue>) -> String {
    let s = v.and_then(|v| v.to_str().ok()).unwrap_or("-");
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()).take(200) {
        match c {
            // Escaped: a user agent cannot pass for other fields of a text
            // log line (`x status=200 tenant=acme`).
            '=' => out.push_str("%3D"),
            '"' => out.push_str("%22"),
            c => out.push(c),
        }
    }
    out
}

pub async fn layer(
    State(state): State<crate::state::AppState>,
    mut req: Request,
    next: Next,
) -> Response {
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
    let client = super::client::address(
        req.headers(),
        req.extensions(),
        &state.config.trusted_proxies,
    );
    // Computed once per request: the tenant layer and the handlers take it
    // from the extensions.
    req.extensions_mut().insert(client.clone());
    let user_agent = loggable(req.headers().get(axum::http::header::USER_AGENT));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = super::metrics::method_label(&method),
        path = %req.uri().path(),
        tenant = tracing::field::Empty,
        client = %client.as_str(),
        user_agent = %user_agent,
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    if let Some((trace, parent)) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(traceparent)
    {
        span.record("trace_id", trace);
        span.record("parent_span_id", parent);
    }
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
    use super::{traceparent, well_formed};
    use axum::http::HeaderValue;

    #[test]
    fn user_agents_cannot_forge_fields() {
        let v = HeaderValue::from_static("x status=200 tenant=\"acme\"");
        assert_eq!(
            super::loggable(Some(&v)),
            "x status%3D200 tenant%3D%22acme%22"
        );
        assert_eq!(super::loggable(None), "-");
    }

    #[test]
    fn traceparents() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent(t),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }

    #[test]
    fn request_ids() {
        assert!(well_formed("abc-123_x.y"));
        assert!(!well_formed(""));
        assert!(!well_formed("a b"));
        assert!(!well_formed(&"a".repeat(65)));
        assert!(!well_formed("a\nb"));
    }
}
