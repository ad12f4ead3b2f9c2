//! The server's shared state, built once at start-up.

use std::sync::Arc;

use std::time::Duration;

use lms::auth::Sessions;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tenancy::Kernel;

/// How the edge behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// With `example.com`, `acme.example.com` names the tenant `acme`.
    pub base_domain: Option<String>,
    /// SHA-256 of the operator token.
    pub operator_token_sha256: [u8; 32],
    /// Largest accepted JSON body, in bytes.
    pub json_limit: usize,
    /// How long a session token lives.
    pub session_ttl: Duration,
    /// Largest accepted lesson content file, in bytes.
    pub upload_limit: u64,
    /// Requests per second (and burst) each tenant may send, by plan.
    pub rates: crate::edge::limits::PlanRates,
    /// Requests per second (and burst) each user or API key may send
    /// inside its tenant's allowance, by plan.
    pub user_rates: crate::edge::limits::PlanRates,
    /// Connections: cap, header/body/idle timeouts, shutdown grace.
    pub connections: crate::connection::ConnectionLimits,
    /// Requests per second (and burst) of unauthenticated requests (logins,
    /// signed links, missing or bad tokens) to each tenant, by plan.
    pub anonymous_rates: crate::edge::limits::PlanRates,
    /// Requests per second (and burst) of unauthenticated requests from one
    /// client address, over every tenant.
    pub address_rate: crate::edge::limits::Rate,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: crate::edge::client::TrustedProxies,
    /// The login throttle's budgets.
    pub login_throttle: lms::throttle::ThrottleConfig,
    /// How much password hashing may run at once.
    pub hashing: lms::hashing::HashingConfig,
    /// Whether the control plane and `/metrics` are served on a listener
    /// of their own (`--admin-listen`); then the public one lacks them.
    pub separate_admin: bool,
    /// Origins whose browser pages may call the API (CORS); empty: none.
    /// `*` allows any origin (never with credentials: the API takes bearer
    /// tokens, not cookies).
    pub cors_origins: Vec<String>,
    /// How long an operator's console session lives unused.
    pub console_idle: Duration,
}

impl ServerConfig {
    pub fn new(operator_token: &str) -> Self {
        Self {
            base_domain: None,
            operator_token_sha256: Sha256::digest(operator_token.as_bytes()).into(),
            json_limit: 1024 * 1024,
            session_ttl: lms::auth::SESSION_TTL,
            upload_limit: 2 * 1024 * 1024 * 1024,
            rates: crate::edge::limits::default_rates(),
            user_rates: crate::edge::limits::default_user_rates(),
            connections: crate::connection::ConnectionLimits::default(),
            anonymous_rates: crate::edge::limits::default_anonymous_rates(),
            address_rate: crate::edge::limits::default_address_rate(),
            trusted_proxies: Default::default(),
            login_throttle: Default::default(),
            hashing: Default::default(),
            separate_admin: false,
            cors_origins: Vec::new(),
            console_idle: crate::console::session::IDLE,
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub kernel: Kernel,
    pub config: ServerConfig,
    pub sessions: Sessions,
    pub metrics: PrometheusHandle,
    /// The fleet's figures for `/metrics` (schema drift, storage, the
    /// isolation audit), refreshed by the upkeep.
    pub fleet: crate::edge::metrics::Fleet,
    /// The whole OpenAPI document, built once for every listener.
    pub document: std::sync::OnceLock<Arc<serde_json::Value>>,
    pub limits: crate::edge::limits::Limits,
    /// The console's activity figures and jobs (this node's).
    pub console: crate::console::ConsoleState,
    /// Set when shutdown begins: `/readyz` answers 503 from then on, so
    /// that load balancers stop sending requests while the rest drain.
    pub stopping: std::sync::atomic::AtomicBool,
    /// The last readiness check and when it ran: `/readyz` answers from it
    /// for a second, and concurrent calls wait for one check (a flood of
    /// `/readyz` costs the dependencies one probe a second).
    pub readiness:
        tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<tenancy::kernel::Dependency>>)>>,
}

impl AppState {
    pub fn new(kernel: Kernel, config: ServerConfig) -> Self {
        let sessions = Sessions::new(
            config.session_ttl,
            lms::throttle::LoginThrottle::new(config.login_throttle),
            lms::hashing::Hasher::new(config.hashing),
        );
        let limits = crate::edge::limits::Limits::with_anonymous(
            config.rates,
            config.user_rates,
            config.anonymous_rates,
            config.address_rate,
        );
        let state = Self(Arc::new(Inner {
            kernel,
            config,
            sessions,
            metrics: crate::edge::metrics::handle(),
            fleet: Default::default(),
            document: std::sync::OnceLock::new(),
            limits,
            console: Default::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            readiness: tokio::sync::Mutex::new(None),
        }));
        // Idle tenants' limiter states are dropped once a minute; the task
        // ends with the last handle on the state.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&state.0);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(inner) => {
                            inner.limits.forget_idle();
                            inner.sessions.forget_idle();
                        }
                        None => break,
                    }
                }
            });
        }
        state
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
