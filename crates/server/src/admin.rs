//! The control plane API, `/admin/api/v1`: operators only, no tenant header.
//! Every handler calls the same `lms::ops` service as the CLI.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lms::ops::{MigrationStatus, NewTenant, Provisioned, TenantPatch, TenantView};
use lms::page::Page;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::Operator;
use crate::edge::extract::{Body, Query, paged};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// The view with the rate limits its plan gives it on this server.
fn with_limits(state: &AppState, mut view: TenantView) -> TenantView {
    if let Some(plan) = tenancy::Plan::parse(&view.plan) {
        let (t, u) = (
            state.limits.rates().get(plan),
            state.limits.user_rates().get(plan),
        );
        view.limits = Some(lms::ops::Limits {
            requests_per_second: t.requests_per_second.get(),
            burst: t.burst.get(),
            user_requests_per_second: u.requests_per_second.get(),
            user_burst: u.burst.get(),
        });
    }
    view
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(show_tenant, patch_tenant, delete_tenant))
        .routes(routes!(suspend_tenant))
        .routes(routes!(resume_tenant))
        .routes(routes!(migrations))
}

/// Provision a tenant and its first admin. Safe to retry with the same `Idempotency-Key`.
#[utoipa::path(post, path = "/admin/api/v1/tenants", tag = "control-plane", security(("operator" = [])),
    request_body = NewTenant,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Provisioned),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 409, description = "`conflict`: the slug is taken, or the key was used for another request", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn create_tenant(
    _: Operator,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<NewTenant>,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "bad Idempotency-Key",
            )
        })?),
        None => None,
    };
    let mut done =
        lms::ops::create_tenant_idempotent(&state.kernel, &state.sessions.hasher, key, req).await?;
    done.tenant = with_limits(&state, done.tenant);
    let mut res = (StatusCode::CREATED, Json(done)).into_response();
    // It may carry the generated first password.
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

/// Every tenant, with status, isolation, placement, schema version and usage.
#[utoipa::path(get, path = "/admin/api/v1/tenants", tag = "control-plane", security(("operator" = [])),
    params(crate::v1::PageParams),
    responses((status = 200, body = Page<TenantView>),
        (status = 401, description = "`unauthorized`", body = Problem)))]
async fn list_tenants(
    _: Operator,
    State(state): State<AppState>,
    q: Query,
) -> Result<Response, ApiError> {
    let all = state.kernel.list().await?;
    let mut rows: Vec<_> = all
        .into_iter()
        .filter(|t| q.page.after.as_ref().is_none_or(|a| t.id.to_string() > *a))
        .take(q.page.limit as usize + 1)
        .collect();
    let more = rows.len() > q.page.limit as usize;
    rows.truncate(q.page.limit as usize);
    let next_cursor = if more {
        rows.last().map(|t| t.id.to_string())
    } else {
        None
    };
    let mut items = Vec::with_capacity(rows.len());
    for t in rows {
        items.push(with_limits(&state, lms::ops::view(&state.kernel, t).await));
    }
    Ok(paged(&q, Page { items, next_cursor }))
}

/// One tenant.
#[utoipa::path(get, path = "/admin/api/v1/tenants/{slug}", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn show_tenant(
    _: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(with_limits(
        &state,
        lms::ops::show_tenant(&state.kernel, &slug).await?,
    )))
}

/// Rename a tenant or change its plan.
#[utoipa::path(patch, path = "/admin/api/v1/tenants/{slug}", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path)), request_body = TenantPatch,
    responses((status = 200, body = TenantView),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: the tenant is deleted", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn patch_tenant(
    _: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Body(patch): Body<TenantPatch>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(with_limits(
        &state,
        lms::ops::update_tenant(&state.kernel, &slug, patch).await?,
    )))
}

/// Delete a tenant (its API answers `invalid_tenant` at once); `?purge=true` destroys its data too.
#[utoipa::path(delete, path = "/admin/api/v1/tenants/{slug}", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path), ("purge" = Option<bool>, Query)),
    responses((status = 200, body = TenantView),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn delete_tenant(
    _: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    q: Query,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(with_limits(
        &state,
        lms::ops::delete_tenant(&state.kernel, &slug, q.purge).await?,
    )))
}

/// Suspend a tenant: its API answers 403 `tenant_suspended`.
#[utoipa::path(post, path = "/admin/api/v1/tenants/{slug}/suspend", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: not active", body = Problem)))]
async fn suspend_tenant(
    _: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(with_limits(
        &state,
        lms::ops::suspend_tenant(&state.kernel, &slug).await?,
    )))
}

/// Resume a suspended tenant.
#[utoipa::path(post, path = "/admin/api/v1/tenants/{slug}/resume", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: not suspended", body = Problem)))]
async fn resume_tenant(
    _: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(with_limits(
        &state,
        lms::ops::resume_tenant(&state.kernel, &slug).await?,
    )))
}

/// The schema version of every tenant, and which are behind.
#[utoipa::path(get, path = "/admin/api/v1/migrations", tag = "control-plane", security(("operator" = [])),
    responses((status = 200, body = MigrationStatus),
        (status = 401, description = "`unauthorized`", body = Problem)))]
async fn migrations(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<MigrationStatus>, ApiError> {
    Ok(Json(lms::ops::migration_status(&state.kernel).await?))
}
