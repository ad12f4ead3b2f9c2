//! The Campus HTTP server.
//!
//! * [`edge`] — what every request passes: request id and span, tenant
//!   resolution and gate ([`edge::tenant`]), authentication ([`edge::auth`]).
//! * [`v1`] — the tenant API, one router per resource.
//! * [`admin`] — the control-plane API for operators.
//! * [`problem`] — RFC 9457 errors with stable codes.

pub mod admin;
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

/// The whole application.
pub fn router(state: AppState) -> Router {
    let tenant_api = v1::routes().layer(middleware::from_fn_with_state(
        state.clone(),
        edge::tenant::layer,
    ));
    let (api, mut doc) = OpenApiRouter::with_openapi(openapi::base())
        .merge(tenant_api)
        .merge(admin::routes())
        .split_for_parts();
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
    let doc = Arc::new(doc);

    let json_limit = state.config.json_limit;
    api.route(
        "/api/v1/openapi.json",
        get(move || async move { Json(doc.as_ref().clone()) }),
    )
    .route("/healthz", get(healthz))
    .route("/readyz", get(readyz))
    .route("/metrics", get(metrics))
    .fallback(|| async { ApiError::not_found() })
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    })
    .layer(DefaultBodyLimit::max(json_limit))
    .layer(middleware::from_fn(edge::request::layer))
    .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.kernel.registry().ping().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: registry unreachable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the control plane is unreachable",
            )
            .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, with the
/// registry watched so that changes made elsewhere are seen within a second.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let watcher = state.kernel.watch(std::time::Duration::from_millis(250));
    let upkeep = {
        let handle = state.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    // The peer's address reaches handlers as `ConnectInfo` (edge::client).
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    watcher.abort();
    upkeep.abort();
    res
}
