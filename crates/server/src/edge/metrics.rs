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
            describe();
            handle
        })
        .clone()
}

/// What a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric Campus exports: its name, kind, unit and help (the
/// `# HELP` line). Labels never carry slugs or user data: tenants are
/// their UUID, routes their pattern.
pub const DESCRIBED: &[(&str, Kind, Option<metrics::Unit>, &str)] = &[
    (
        "campus_build_info",
        Kind::Gauge,
        None,
        "1, labelled with the running build's version",
    ),
    (
        "campus_http_requests_total",
        Kind::Counter,
        None,
        "HTTP requests answered, by method, route pattern and status",
    ),
    (
        "campus_http_request_duration_seconds",
        Kind::Histogram,
        Some(metrics::Unit::Seconds),
        "Time to answer a request (to its response head), by method, route pattern and status",
    ),
    (
        "campus_tenant_requests_total",
        Kind::Counter,
        None,
        "Requests that reached a tenant, by tenant id",
    ),
    (
        "campus_rate_limited_total",
        Kind::Counter,
        None,
        "Requests refused by a rate limit, by tenant id and limit (tenant, user, anonymous, link)",
    ),
    (
        "campus_security_events_total",
        Kind::Counter,
        None,
        "Security events (a token shown to another tenant, a forged token…), by kind",
    ),
    (
        "campus_cross_tenant_tokens_total",
        Kind::Counter,
        None,
        "Real tokens presented under another tenant, by the issuing tenant's id",
    ),
    (
        "campus_tenant_lookups_total",
        Kind::Counter,
        None,
        "Tenant-name lookups, by result (registry, unknown_cached, refused, stale)",
    ),
    (
        "campus_cache_lookups_total",
        Kind::Counter,
        None,
        "Tenant cache lookups, by tenant id and result",
    ),
    (
        "campus_login_throttled_total",
        Kind::Counter,
        None,
        "Sign-ins refused by the login throttle",
    ),
    (
        "campus_password_hashing_refused_total",
        Kind::Counter,
        None,
        "Sign-ins refused because password hashing stayed at its limit",
    ),
    (
        "campus_db_conflicts_total",
        Kind::Counter,
        None,
        "Transactions that lost a race with concurrent work (answered 503, retried by clients)",
    ),
    (
        "campus_db_unavailable_total",
        Kind::Counter,
        None,
        "Requests answered 503 because a database could not be reached",
    ),
    (
        "campus_db_begin_retries_total",
        Kind::Counter,
        None,
        "Transactions begun again on a fresh connection after a lost one, by placement",
    ),
    (
        "campus_db_connections_discarded_total",
        Kind::Counter,
        None,
        "Connections closed instead of reused because they came back inside a transaction",
    ),
    (
        "campus_database_up",
        Kind::Gauge,
        None,
        "Whether a placement's database answered when last tried (1) or not (0), by placement",
    ),
    (
        "campus_database_outages_total",
        Kind::Counter,
        None,
        "Times a placement's database was found down, by placement",
    ),
    (
        "campus_redis_unavailable_total",
        Kind::Counter,
        None,
        "Redis calls that failed or were skipped during an outage, by operation",
    ),
    (
        "campus_connections_open",
        Kind::Gauge,
        None,
        "Connections open on the public listener",
    ),
    (
        "campus_connections_pressure",
        Kind::Gauge,
        None,
        "1 while connection slots run short (shorter timeouts apply), else 0",
    ),
    (
        "campus_connections_refused_total",
        Kind::Counter,
        None,
        "Connections refused at the connection cap",
    ),
    (
        "campus_connection_timeouts_total",
        Kind::Counter,
        None,
        "Connections closed for a slow client, by what timed out",
    ),
    (
        "campus_accept_errors_total",
        Kind::Counter,
        None,
        "Errors accepting connections (such as running out of file descriptors)",
    ),
    (
        "campus_process_resident_memory_bytes",
        Kind::Gauge,
        Some(metrics::Unit::Bytes),
        "The process's resident memory (VmRSS)",
    ),
    (
        "campus_db_pool_connections",
        Kind::Gauge,
        None,
        "Connections of each placement's serving pool, by placement and state (in_use, idle)",
    ),
    (
        "campus_tenant_databases_open",
        Kind::Gauge,
        None,
        "Tenant databases with a pool open now (SQLite files, or database-mode tenants), and their connections (kind)",
    ),
    (
        "campus_bulkhead_tenants",
        Kind::Gauge,
        None,
        "Tenants the per-tenant bulkheads track now (idle ones are forgotten)",
    ),
    (
        "campus_password_hashing_busy",
        Kind::Gauge,
        None,
        "Password hashes running or holding a turn now",
    ),
];

/// Gives every metric its `# HELP` and unit, and sets the build's info.
fn describe() {
    for &(name, kind, unit, help) in DESCRIBED {
        match (kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
    metrics::gauge!("campus_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The server's own figures for `/metrics`, refreshed by its upkeep:
/// pools, bulkheads, password hashing, the process.
pub fn upkeep(state: &crate::state::AppState) {
    let data = state.kernel.data_plane();
    for (placement, open, idle) in data.pool_stats() {
        let idle = idle as f64;
        metrics::gauge!("campus_db_pool_connections", "placement" => placement.clone(), "state" => "idle")
            .set(idle);
        metrics::gauge!("campus_db_pool_connections", "placement" => placement, "state" => "in_use")
            .set((f64::from(open) - idle).max(0.0));
    }
    let (pools, conns) = data.open_stats();
    metrics::gauge!("campus_tenant_databases_open", "kind" => "pools").set(pools as f64);
    metrics::gauge!("campus_tenant_databases_open", "kind" => "connections").set(f64::from(conns));
    metrics::gauge!("campus_bulkhead_tenants").set(state.kernel.bulkhead_tenants() as f64);
    metrics::gauge!("campus_password_hashing_busy").set(state.sessions.hasher.busy() as f64);
    process_upkeep();
}

/// Process figures for `/metrics`.
pub fn process_upkeep() {
    #[cfg(target_os = "linux")]
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
    {
        metrics::gauge!("campus_process_resident_memory_bytes").set(kib * 1024.0);
    }
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
