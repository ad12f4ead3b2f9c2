//! The Campus HTTP server.
//!
//! * [`edge`] — what every request passes: request id and span, tenant
//!   resolution and gate ([`edge::tenant`]), authentication ([`edge::auth`]).
//! * [`v1`] — the tenant API, one router per resource.
//! * [`admin`] — the control-plane API for operators.
//! * [`console`] — the operator console, web pages over the same services.
//! * [`problem`] — RFC 9457 errors with stable codes.

pub mod admin;
pub mod connection;
pub mod console;
pub mod docs;
pub mod edge;
pub mod openapi;
pub mod problem;
pub mod state;
pub mod v1;

use std::sync::Arc;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use utoipa_axum::router::OpenApiRouter;

pub use state::{AppState, ServerConfig};

use crate::problem::ApiError;

/// The public application: the tenant API, its OpenAPI document, health
/// and readiness; and, unless the control plane has a listener of its own
/// (`ServerConfig::separate_admin`), the control plane and `/metrics`.
pub fn router(state: AppState) -> Router {
    let tenant_api = v1::routes().layer(middleware::from_fn_with_state(
        state.clone(),
        edge::tenant::layer,
    ));
    let (tenant_router, _) = OpenApiRouter::with_openapi(openapi::base())
        .merge(tenant_api)
        .split_for_parts();
    let (admin_router, _) = OpenApiRouter::new()
        .merge(admin::routes())
        .split_for_parts();
    // The public listener's document describes what it serves: with an
    // admin listener, not the control plane (nor the placements' names).
    let full = document(&state);
    let doc = match state.config.separate_admin {
        false => full,
        true => Arc::new(openapi::without_control_plane(&full)),
    };
    let mut api = tenant_router
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .merge(docs::routes());
    if !state.config.separate_admin {
        api = api
            .merge(admin_router)
            .merge(console::routes())
            .route("/metrics", get(metrics));
    }
    let cors = cors(&state.config.cors_origins);
    // Readiness details (errors naming hosts, roles, buckets) stay off a
    // public listener when the admin listener exists to show them.
    let detailed = !state.config.separate_admin;
    let app = finish(api, state, detailed);
    match cors {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

/// The whole OpenAPI document (tenant API and control plane), as served:
/// built on first use, then shared by every listener.
fn document(state: &AppState) -> Arc<serde_json::Value> {
    state.document.get_or_init(|| build_document(state)).clone()
}

fn build_document(state: &AppState) -> Arc<serde_json::Value> {
    let (_, mut doc) = OpenApiRouter::with_openapi(openapi::base())
        .merge(v1::routes())
        .split_for_parts();
    let (_, admin_doc) = OpenApiRouter::new()
        .merge(admin::routes())
        .split_for_parts();
    doc.merge(admin_doc);
    doc.paths.paths.insert(
        "/api/v1/openapi.json".into(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .response(
                    "200",
                    utoipa::openapi::ResponseBuilder::new()
                        .description("The OpenAPI 3.1 document")
                        .build(),
                )
                .build(),
        ),
    );
    openapi::add_edge_errors(&mut doc);
    Arc::new(openapi::polish(&doc, &openapi::Offer::of(&state.kernel)))
}

/// The control plane's own application (`--admin-listen`): the control
/// plane, the whole OpenAPI document (`/api/v1/openapi.json`), `/metrics`,
/// health and readiness. Never reachable with a tenant's token: every
/// control-plane route takes the operator token only.
pub fn admin_router(state: AppState) -> Router {
    let (admin_router, _) = OpenApiRouter::new()
        .merge(admin::routes())
        .split_for_parts();
    let doc = document(&state);
    let app = admin_router
        .merge(console::routes())
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        );
    finish(app, state, true)
}

/// What every listener's application shares: health, readiness, the
/// fallbacks, and the edge's outer layers.
fn finish(api: Router<AppState>, state: AppState, detailed: bool) -> Router {
    let json_limit = state.config.json_limit;
    let readyz = move |State(state): State<AppState>| readyz(state, detailed);
    api.route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            edge::guard::layer,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            edge::request::layer,
        ))
        .with_state(state)
}

/// CORS for the configured origins (none: no CORS headers, and a
/// preflight is an `OPTIONS` like any other). Bearer tokens, not cookies:
/// credentials are never allowed, so `*` is safe to give.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    let h = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
                header::RANGE,
                h("x-tenant"),
                h("idempotency-key"),
            ])
            .expose_headers([
                header::ETAG,
                header::LINK,
                header::RETRY_AFTER,
                header::CONTENT_RANGE,
                header::CONTENT_DISPOSITION,
                h("ratelimit-limit"),
                h("ratelimit-remaining"),
                h("ratelimit-reset"),
                h("x-request-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long one readiness check answers `/readyz`.
const READINESS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The dependencies' state, checked at most once a second: concurrent
/// callers wait for the one check under way. Changes are logged once.
pub(crate) async fn readiness(state: &AppState) -> Arc<Vec<tenancy::kernel::Dependency>> {
    use tenancy::kernel::Health;
    let mut last = state.readiness.lock().await;
    // Fresh, and no placement changed state since (what this node itself
    // found, with no I/O): a database seen down is never answered ready.
    let placements = state.kernel.data_plane().placements_reachable();
    if let Some((at, checks)) = last.as_ref()
        && at.elapsed() < READINESS_TTL
        && placements.iter().all(|(name, up)| {
            checks
                .iter()
                .find(|c| c.name == format!("placement:{name}"))
                .is_some_and(|c| matches!(c.health, Health::Up) == *up)
        })
    {
        return checks.clone();
    }
    // Within a second, whatever a dependency does: a load balancer asks
    // because it needs an answer now.
    let checks = Arc::new(
        state
            .kernel
            .readiness(std::time::Duration::from_millis(900))
            .await,
    );
    let was = last.as_ref().map(|(_, c)| c.clone());
    for c in checks.iter() {
        let before = was
            .as_ref()
            .and_then(|w| w.iter().find(|b| b.name == c.name))
            .map(|b| std::mem::discriminant(&b.health));
        if before != Some(std::mem::discriminant(&c.health)) {
            match &c.health {
                Health::Up if before.is_some() => {
                    tracing::info!(dependency = %c.name, "ready again: it answers")
                }
                Health::Up => {}
                Health::Degraded(why) => {
                    tracing::warn!(dependency = %c.name, reason = %why, "degraded")
                }
                Health::Down(why) => {
                    tracing::warn!(dependency = %c.name, reason = %why, "not ready: a dependency is down")
                }
            }
        }
    }
    *last = Some((std::time::Instant::now(), checks.clone()));
    checks
}

/// Ready: every dependency answers (Redis gone after answering is
/// `degraded`, still ready: nodes go on without it), and the node is not
/// stopping. Each dependency is listed either way; `detailed` adds what
/// failed (on the admin listener, or when there is none: the public one
/// then names dependencies and states only).
async fn readyz(state: AppState, detailed: bool) -> Response {
    use std::sync::atomic::Ordering;
    use tenancy::kernel::Health;
    if state.stopping.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "2")],
            Json(serde_json::json!({
                "status": "stopping",
                "detail": "this node is shutting down and finishing the requests it has",
            })),
        )
            .into_response();
    }
    let checks = readiness(&state).await;
    let down: Vec<&str> = checks
        .iter()
        .filter(|c| matches!(c.health, Health::Down(_)))
        .map(|c| c.name.as_str())
        .collect();
    let degraded = checks
        .iter()
        .any(|c| matches!(c.health, Health::Degraded(_)));
    let listed: serde_json::Value = if detailed {
        serde_json::to_value(checks.as_ref()).unwrap_or_default()
    } else {
        checks
            .iter()
            .map(|c| {
                let status = match c.health {
                    Health::Up => "up",
                    Health::Degraded(_) => "degraded",
                    Health::Down(_) => "down",
                };
                serde_json::json!({ "name": c.name, "status": status })
            })
            .collect()
    };
    if !down.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "2")],
            Json(serde_json::json!({
                "status": "not_ready",
                "code": "not_ready",
                "detail": format!("unreachable: {}", down.join(", ")),
                "checks": listed,
            })),
        )
            .into_response();
    }
    Json(serde_json::json!({
        "status": if degraded { "degraded" } else { "ready" },
        "checks": listed,
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    text.push_str(&state.fleet.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Serves `router(state)` on `listener` until `shutdown` resolves (then for
/// at most the shutdown grace period), under the connection limits of
/// [`connection`], with the registry watched so that changes made elsewhere
/// are seen within a second.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_admin(listener, None, state, shutdown).await
}

/// [`serve`], and the control plane on `admin` when given (its own
/// listener: `--admin-listen`; then the public one does not serve it).
pub async fn serve_with_admin(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let watcher = state.kernel.watch(std::time::Duration::from_millis(250));
    let upkeep = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                edge::metrics::upkeep(&state);
                state.metrics.run_upkeep();
                state.console.activity.sweep();
            }
        })
    };
    // The fleet's figures at once, then every minute; the isolation audit
    // at once, then every five. A task of its own, each round bounded: a
    // slow registry never holds up the upkeep above.
    let fleet = {
        let state = state.clone();
        tokio::spawn(async move {
            const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
            const BOUND: std::time::Duration = std::time::Duration::from_secs(30);
            let audit_every = (edge::metrics::AUDIT_EVERY.as_secs() / EVERY.as_secs()).max(1);
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let audit = n.is_multiple_of(audit_every);
                let round = async {
                    state.fleet.refresh(&state.kernel, audit).await;
                    // Every tenant's stored bytes, for the console's charts.
                    match state.kernel.registry().storage_figures(i64::MAX).await {
                        Ok((all, _)) => state.console.activity.sample_storage(&all),
                        Err(e) => tracing::warn!(error = %e, "console: storage not sampled"),
                    }
                };
                if tokio::time::timeout(BOUND, round).await.is_err() {
                    tracing::warn!(
                        bound_s = BOUND.as_secs(),
                        "fleet figures not refreshed in time; the last ones stand"
                    );
                }
                n = n.wrapping_add(1);
            }
        })
    };
    // One shutdown for every listener; `/readyz` turns 503 at once.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    {
        let state = state.clone();
        let delay = state.config.connections.shutdown_delay;
        tokio::spawn(async move {
            shutdown.await;
            state
                .stopping
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if !delay.is_zero() {
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "stopping: /readyz answers 503 while requests are still taken"
                );
                tokio::time::sleep(delay).await;
            }
            let _ = stop.send(true);
        });
    }
    let on_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let limits = state.config.connections;
    // The admin listener under the same connection rules (timeouts, slow
    // clients), with a small cap of its own: a flood of it never takes the
    // public listener's slots, nor the public's the operators'.
    let admin_task = admin.map(|listener| {
        let app = admin_router(state.clone());
        let stopping = on_stop(stopped.clone());
        tokio::spawn(connection::run(listener, app, limits.for_admin(), stopping))
    });
    let res = connection::run(listener, router(state), limits, on_stop(stopped)).await;
    if let Some(mut task) = admin_task {
        // The control plane's long work (an export, a move) gets the same
        // grace as requests, and no more: the stop is bounded.
        match tokio::time::timeout(limits.shutdown_grace, &mut task).await {
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "the admin listener stopped with an error")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "the admin listener's task failed"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!(
                    grace_ms = limits.shutdown_grace.as_millis() as u64,
                    "control-plane requests still running after the grace period; cut off (a re-run settles an interrupted import or move)"
                );
                task.abort();
            }
        }
    }
    watcher.abort();
    upkeep.abort();
    fleet.abort();
    res
}
