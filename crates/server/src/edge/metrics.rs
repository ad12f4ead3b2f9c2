//! Prometheus metrics: requests by route and status, latency, requests per
//! tenant, security events.
//!
//! Tenants are labelled by their UUID, not their slug: `/metrics` must not
//! list the organisations that use this deployment.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// How long a counter or histogram series stays in `/metrics` untouched.
pub const IDLE_SERIES: Duration = Duration::from_secs(15 * 60);

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
                .and_then(|b| {
                    // Few buckets: one histogram per active tenant.
                    b.set_buckets_for_metric(
                        Matcher::Full("campus_tenant_request_duration_seconds".into()),
                        &[0.005, 0.025, 0.1, 0.5, 2.5],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new())
                // Per-tenant series are bounded by activity: a counter or
                // histogram not touched for 15 minutes leaves the output
                // (when it comes back, its first new value is not seen by
                // rate(); the counters alerts need are kept: `KEPT`).
                // Gauges stay: some are set only when they change.
                .idle_timeout(
                    MetricKindMask::COUNTER | MetricKindMask::HISTOGRAM,
                    Some(IDLE_SERIES),
                );
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
        "Requests a tenant was answered (refusals included), by tenant id and status class (2xx, 4xx, 5xx…); a tenant idle for 15 minutes drops out until its next request",
    ),
    (
        "campus_tenant_request_duration_seconds",
        Kind::Histogram,
        Some(metrics::Unit::Seconds),
        "Time to answer a tenant's request, by tenant id; a tenant idle for 15 minutes drops out until its next request",
    ),
    (
        "campus_tenants_by_schema",
        Kind::Gauge,
        None,
        "Served tenants by where their schema stands against this build: behind (not served until `campus migrate`), current, ahead",
    ),
    (
        "campus_storage_bytes",
        Kind::Gauge,
        Some(metrics::Unit::Bytes),
        "Bytes every tenant's files take together",
    ),
    (
        "campus_tenant_storage_bytes",
        Kind::Gauge,
        Some(metrics::Unit::Bytes),
        "Bytes a tenant's files take, for the 20 largest tenants only (by tenant id)",
    ),
    (
        "campus_isolation_audit_findings",
        Kind::Gauge,
        None,
        "Problems the isolation audit found at its last run while serving (every 5 minutes; each is logged under campus::security)",
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
        "campus_db_waiting",
        Kind::Gauge,
        None,
        "Transactions waiting now, by what for: connection (a serving pool's), tenant_share (the tenant's bulkhead), database_slot (the database-mode budget)",
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

/// Counters an alert reads with `increase()` for a single event: they exist
/// from the start at 0 (a series born at 1 shows no increase), and the
/// upkeep touches them so that the idle timeout never drops them.
const KEPT: &[(&str, &[(&str, &str)])] = &[
    (
        "campus_security_events_total",
        &[("kind", "cross_tenant_token")],
    ),
    ("campus_security_events_total", &[("kind", "forged_token")]),
    ("campus_db_conflicts_total", &[]),
    ("campus_db_unavailable_total", &[]),
    ("campus_redis_unavailable_total", &[]),
    ("campus_connections_refused_total", &[]),
    ("campus_password_hashing_refused_total", &[]),
];

/// Creates (at 0) or touches each of [`KEPT`].
pub fn keep_alive() {
    for (name, labels) in KEPT {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        metrics::counter!(*name, &labels).increment(0);
    }
}

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
    keep_alive();
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
    keep_alive();
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

/// A tenant's request answered: counted by status class, timed.
pub fn tenant_response(tenant: &tenancy::TenantId, status: u16, elapsed: Duration) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let id = tenant.to_string();
    metrics::counter!("campus_tenant_requests_total", "tenant" => id.clone(), "class" => class)
        .increment(1);
    metrics::histogram!("campus_tenant_request_duration_seconds", "tenant" => id)
        .record(elapsed.as_secs_f64());
}

/// How many tenants get a series of their own in
/// `campus_tenant_storage_bytes`: the largest ones.
pub const TOP_STORAGE_TENANTS: i64 = 20;

/// How often the isolation audit runs again while serving (it runs in full
/// before serving starts).
pub const AUDIT_EVERY: Duration = Duration::from_secs(300);

/// Figures about the whole fleet, read from the registry by the upkeep (every
/// minute) and appended to `/metrics` as they stand, so that a tenant that
/// leaves the largest-by-storage list leaves the output too.
#[derive(Default)]
pub struct Fleet {
    text: std::sync::Mutex<String>,
    /// The isolation audit's findings at its last run (`None`: not run yet).
    findings: std::sync::Mutex<Option<usize>>,
}

impl Fleet {
    /// How many findings the serving audit's last run had (`None`: it has
    /// not run yet, or every run so far failed).
    pub fn audit_findings(&self) -> Option<usize> {
        self.findings.lock().ok().and_then(|f| *f)
    }

    /// The fleet's lines of `/metrics` (Prometheus text format).
    pub fn render(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Reads the registry again (and, when `audit`, runs the isolation
    /// audit) and replaces the fleet's lines. A figure that cannot be read
    /// now is left out (and logged), never reported as zero.
    pub async fn refresh(&self, kernel: &tenancy::Kernel, audit: bool) {
        use std::fmt::Write;
        let mut out = String::new();
        let registry = kernel.registry();
        match registry.schema_versions().await {
            Ok(rows) => {
                let latest = kernel.latest_version();
                let mut by = [0i64; 3];
                for (version, n) in rows {
                    by[usize::from(version >= latest) + usize::from(version > latest)] += n;
                }
                head(&mut out, "campus_tenants_by_schema");
                for (state, n) in ["behind", "current", "ahead"].iter().zip(by) {
                    let _ = writeln!(out, "campus_tenants_by_schema{{state=\"{state}\"}} {n}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet figures: schema versions not read"),
        }
        match registry.storage_figures(TOP_STORAGE_TENANTS).await {
            Ok((top, total)) => {
                head(&mut out, "campus_storage_bytes");
                let _ = writeln!(out, "campus_storage_bytes {total}");
                if !top.is_empty() {
                    head(&mut out, "campus_tenant_storage_bytes");
                    for (id, n) in top {
                        let _ = writeln!(out, "campus_tenant_storage_bytes{{tenant=\"{id}\"}} {n}");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet figures: storage not read"),
        }
        if audit {
            let found = match tenancy::audit::isolation(kernel).await {
                Ok(findings) => {
                    for f in &findings {
                        tracing::error!(
                            target: "campus::security",
                            event = "isolation_audit_finding",
                            placement = %f.placement,
                            problem = %f.problem,
                            "the isolation audit found a problem while serving"
                        );
                    }
                    Some(findings.len())
                }
                Err(e) => {
                    // The last verdict stands (an alert on it stays on).
                    tracing::warn!(error = %e, "the isolation audit could not run; its last figure stands");
                    None
                }
            };
            if let Some(found) = found
                && let Ok(mut last) = self.findings.lock()
            {
                *last = Some(found);
            }
        }
        if let Some(n) = self.findings.lock().ok().and_then(|f| *f) {
            head(&mut out, "campus_isolation_audit_findings");
            let _ = writeln!(out, "campus_isolation_audit_findings {n}");
        }
        if let Ok(mut text) = self.text.lock() {
            *text = out;
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a fleet metric, from [`DESCRIBED`].
fn head(out: &mut String, name: &str) {
    use std::fmt::Write;
    if let Some((_, kind, _, help)) = DESCRIBED.iter().find(|(n, ..)| *n == name) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
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
