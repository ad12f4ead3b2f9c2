//! Prometheus metrics: requests by route and status, latency, requests per
//! tenant, security events.
//!
//! Tenants are labelled by their UUID, not their slug: `/metrics` must not
//! list the organisations that use this deployment.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder's handle (installed on first use).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("campus_http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// A method as a label: the standard ones by name, any other as `other`,
/// so that clients cannot add series (or kilobytes of label) at will.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `route` is the matched route (`/api/v1/courses/{cid}`) or `unmatched`,
/// never the raw path.
pub fn request(method: &axum::http::Method, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method_label(method).to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("campus_http_requests_total", &labels).increment(1);
    metrics::histogram!("campus_http_request_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
}

pub fn tenant_request(tenant: &tenancy::TenantId) {
    metrics::counter!("campus_tenant_requests_total", "tenant" => tenant.to_string()).increment(1);
}

/// A request refused by a limit: `tenant` (the organisation's) or `user`.
pub fn rate_limited(tenant: &tenancy::TenantId, limit: &'static str) {
    metrics::counter!("campus_rate_limited_total", "tenant" => tenant.to_string(), "limit" => limit)
        .increment(1);
}

pub fn security_event(kind: &'static str) {
    metrics::counter!("campus_security_events_total", "kind" => kind).increment(1);
}

/// A real token of `issuer` presented under another tenant (made-up tokens
/// are `security_event("forged_token")`, never labelled: their "issuer" is
/// whatever the client wrote).
pub fn cross_tenant_token(issuer: &tenancy::TenantId) {
    metrics::counter!("campus_cross_tenant_tokens_total", "issued_by" => issuer.to_string())
        .increment(1);
}
