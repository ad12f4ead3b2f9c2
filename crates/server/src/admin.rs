//! The control plane API, `/admin/api/v1`: operators only, no tenant header.
//! Every handler calls the same `lms::ops` service as the CLI.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lms::ops::{
    Deleted, ImportRequest, Imported, MigrationStatus, MoveRequest, Moved, NewTenant, Provisioned,
    TenantPatch, TenantView,
};
use lms::page::Page;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::Operator;
use crate::edge::extract::{Body, Query, QueryOf, paged};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Writes the outcome of a control-plane call to the operator audit log
/// (the console shows it), as the console does for its own actions.
async fn noted<T>(
    state: &AppState,
    op: &Operator,
    action: &str,
    tenant: Option<&str>,
    r: &Result<T, ApiError>,
) {
    use crate::console::Outcome;
    let outcome = match r {
        Ok(_) => Outcome::Ok(String::new()),
        Err(e) => Outcome::of_status(e.status, format!("{}: {}", e.code, e.detail)),
    };
    crate::console::record(
        state,
        crate::console::session::OPERATOR,
        action,
        tenant,
        outcome,
        &op.0,
        "api",
    )
    .await
}

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
        .routes(routes!(export_tenant))
        .routes(routes!(import_tenant))
        .routes(routes!(export_tenant_as_api_md))
        .routes(routes!(import_tenant_as_api_md))
        .routes(routes!(move_tenant))
}

/// The same as `POST /admin/api/v1/tenants/{slug}/export`, under the name
/// the HTTP contract (API.md) gives it.
#[utoipa::path(post, path = "/admin/api/v1/tenants/{slug}/exports", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path),
        ("Campus-Archive-Passphrase" = Option<String>, Header, description = "as for `/export`"),
        ("Campus-Archive-Key" = Option<String>, Header, description = "as for `/export`")),
    responses((status = 200, description = "The archive (a tar), streamed", content_type = "application/x-tar"),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn export_tenant_as_api_md(
    op: Operator,
    state: State<AppState>,
    slug: Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    export_tenant(op, state, slug, headers).await
}

/// The same as `POST /admin/api/v1/tenants/import`, under the name the
/// HTTP contract (API.md) gives it.
#[utoipa::path(post, path = "/admin/api/v1/tenants/imports", tag = "control-plane", security(("operator" = [])),
    params(ImportRequest,
        ("Campus-Archive-Passphrase" = Option<String>, Header, description = "as for `/import`"),
        ("Campus-Archive-Key" = Option<String>, Header, description = "as for `/import`")),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "The archive"),
    responses((status = 201, body = Imported),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 409, description = "`conflict`", body = Problem),
        (status = 422, description = "`invalid_archive`; `validation_failed`", body = Problem)))]
async fn import_tenant_as_api_md(
    op: Operator,
    state: State<AppState>,
    query: QueryOf<ImportRequest>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    import_tenant(op, state, query, headers, body).await
}

/// Move a tenant online to another isolation mode or placement: built while
/// it serves, then a short write freeze (writes answer 503
/// `tenant_maintenance`, reads go on) while its rows are copied and checked,
/// then the switch. Files do not move. Answers when the move is over.
#[utoipa::path(post, path = "/admin/api/v1/tenants/{slug}/move", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path)),
    request_body = MoveRequest,
    responses((status = 200, body = Moved),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: not movable now (deleted, provisioning)", body = Problem),
        (status = 422, description = "`validation_failed`: no destination, the same place, an unknown placement, or a mode this deployment lacks", body = Problem),
        (status = 503, description = "`overloaded`: writes kept reaching the tenant during the freeze; the move was rolled back (`Retry-After`)", body = Problem)))]
async fn move_tenant(
    op: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Body(req): Body<MoveRequest>,
) -> Result<Json<Moved>, ApiError> {
    let kernel = state.kernel.clone();
    let (state2, name) = (state.clone(), slug.clone());
    // On a task of its own: a client gone half-way does not stop a move
    // between its steps (a re-run would finish it, but need not); nor
    // the line of the audit log that says how it ended.
    let done = tokio::spawn(async move {
        let r = lms::ops::move_tenant(&kernel, &slug, req, MOVE_FREEZE_WAIT, &|_, _, _| {})
            .await
            .map_err(ApiError::from);
        noted(&state2, &op, "tenant.move", Some(&name), &r).await;
        r
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(done))
}

/// How long a move waits for every node to see a registry change: four of
/// their polls (250 ms each).
pub(crate) const MOVE_FREEZE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The import route takes an archive of any size (the tenant's plan
/// bounds its files; the slow-body rules still apply).
pub fn body_limit(route: &str) -> Option<u64> {
    matches!(
        route,
        "/admin/api/v1/tenants/import" | "/admin/api/v1/tenants/imports"
    )
    .then_some(u64::MAX)
}

/// The key of an archive: `Campus-Archive-Passphrase`, or
/// `Campus-Archive-Key` (32 bytes, base64); neither: this deployment's
/// master key.
fn archive_key(headers: &HeaderMap) -> Result<tenancy::archive::ArchiveKey, ApiError> {
    use tenancy::archive::ArchiveKey;
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "validation_failed",
                        format!("{name} must be visible ASCII"),
                    )
                })
            })
            .transpose()
    };
    let invalid = |e: tenancy::Error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            e.to_string(),
        )
    };
    match (
        text("campus-archive-passphrase")?,
        text("campus-archive-key")?,
    ) {
        (Some(_), Some(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "give Campus-Archive-Passphrase or Campus-Archive-Key, not both",
        )),
        (Some(p), None) => ArchiveKey::from_passphrase(&p).map_err(invalid),
        (None, Some(k)) => ArchiveKey::from_key_file(&k).map_err(invalid),
        (None, None) => Ok(ArchiveKey::Deployment),
    }
}

/// Export a tenant as one archive (streamed): its rows as of one snapshot
/// and its files, still encrypted, with its data key wrapped by the
/// archive's key. The tenant keeps serving meanwhile.
#[utoipa::path(post, path = "/admin/api/v1/tenants/{slug}/export", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path),
        ("Campus-Archive-Passphrase" = Option<String>, Header, description = "wrap the data key with this passphrase (Argon2id), at least 12 characters"),
        ("Campus-Archive-Key" = Option<String>, Header, description = "wrap the data key with this key: 32 bytes, base64; neither header: this deployment's master key")),
    responses((status = 200, description = "The archive (a tar), streamed", content_type = "application/x-tar"),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: not exportable (provisioning, purged)", body = Problem),
        (status = 422, description = "`validation_failed`: a bad key, or the tenant needs `migrate` first", body = Problem)))]
async fn export_tenant(
    op: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // What would fail at once fails as a problem, before the answer starts.
    let checked = match archive_key(&headers) {
        Ok(key) => lms::ops::exportable(&state.kernel, &slug)
            .await
            .map(|t| (t, key))
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = &checked {
        noted(
            &state,
            &op,
            "tenant.export",
            Some(&slug),
            &Err::<(), _>(e.clone()),
        )
        .await;
    }
    let (tenant, key) = checked?;
    // The line of the audit log once the archive is out (or failed).
    let state2 = state.clone();
    Ok(export_response(&state, tenant, key, move |r| async move {
        let r = r.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e));
        noted(&state2, &op, "tenant.export", Some(&slug), &r).await;
    }))
}

/// A tenant's archive as a streamed download, made by a task as it is
/// sent. Should the export fail part-way, the body ends with an error (the
/// connection is cut), so that no client takes a truncated archive for a
/// whole one; `after` hears how it ended.
pub(crate) fn export_response<F, Fut>(
    state: &AppState,
    tenant: tenancy::Tenant,
    key: tenancy::archive::ArchiveKey,
    after: F,
) -> Response
where
    F: FnOnce(Result<(), String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use futures_util::StreamExt;
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let kernel = state.kernel.clone();
    let slug = tenant.slug.to_string();
    let disposition = format!("attachment; filename=\"{slug}.campus\"");
    tokio::spawn(async move {
        let r = lms::ops::export_tenant(&kernel, &slug, &key, writer, &|_, _, _| {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Err(e) = &r {
            tracing::error!(tenant = %tenant.id, error = %e, "export failed while streaming");
        }
        let _ = tx.send(r.clone());
        after(r).await;
    });
    let tail = futures_util::stream::once(async move {
        match rx.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e))),
            Err(_) => Some(Err(std::io::Error::other("the export stopped"))),
        }
    })
    .filter_map(std::future::ready);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(reader).chain(tail));
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_owned(),
            ),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// Import a tenant archive (the request body, of any size): a restore under
/// its own slug and id, or with `?slug=` a copy. All or nothing: the tenant
/// appears only when every row and file is in and every checksum matches.
#[utoipa::path(post, path = "/admin/api/v1/tenants/import", tag = "control-plane", security(("operator" = [])),
    params(ImportRequest,
        ("Campus-Archive-Passphrase" = Option<String>, Header, description = "the passphrase it was exported with"),
        ("Campus-Archive-Key" = Option<String>, Header, description = "the key it was exported with (base64); neither header: this deployment's master key")),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "The archive"),
    responses((status = 201, body = Imported),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 409, description = "`conflict`: the slug is taken", body = Problem),
        (status = 422, description = "`invalid_archive`: damaged, forged, too new, or the wrong key; `validation_failed`", body = Problem)))]
async fn import_tenant(
    op: Operator,
    State(state): State<AppState>,
    QueryOf(req): QueryOf<ImportRequest>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use futures_util::TryStreamExt;
    let key = archive_key(&headers);
    if let Err(e) = &key {
        noted(
            &state,
            &op,
            "tenant.import",
            req.slug.as_deref(),
            &Err::<(), _>(e.clone()),
        )
        .await;
    }
    let key = key?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let kernel = state.kernel.clone();
    // On a task of its own: a client gone half-way ends the body, and the
    // import removes what it made instead of stopping mid-step.
    let state2 = state.clone();
    let done = tokio::spawn(async move {
        let asked = req.slug.clone();
        let r = lms::ops::import_tenant(&kernel, reader, req, &key, &|_, _, _| {})
            .await
            .map_err(ApiError::from);
        let slug = r.as_ref().ok().map(|d| d.tenant.slug.clone()).or(asked);
        noted(&state2, &op, "tenant.import", slug.as_deref(), &r).await;
        r
    })
    .await
    .map_err(ApiError::internal)??;
    let tenant = with_limits(&state, done.tenant.clone());
    Ok((StatusCode::CREATED, Json(Imported { tenant, ..done })).into_response())
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
    op: Operator,
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
    let slug = req.slug.clone();
    let r = lms::ops::create_tenant_idempotent(&state.kernel, &state.sessions.hasher, key, req)
        .await
        .map_err(ApiError::from);
    let named = tenancy::Slug::parse(&slug).ok().map(|s| s.to_string());
    noted(&state, &op, "tenant.create", named.as_deref(), &r).await;
    let mut done = r?;
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
    op: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Body(patch): Body<TenantPatch>,
) -> Result<Json<TenantView>, ApiError> {
    let action = match (&patch.name, &patch.plan) {
        (None, Some(_)) => "tenant.plan",
        (Some(_), None) => "tenant.rename",
        _ => "tenant.update",
    };
    let r = lms::ops::update_tenant(&state.kernel, &slug, patch)
        .await
        .map_err(ApiError::from);
    noted(&state, &op, action, Some(&slug), &r).await;
    Ok(Json(with_limits(&state, r?)))
}

/// `DELETE /admin/api/v1/tenants/{slug}`'s one parameter.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    purge: Option<bool>,
}

/// Delete a tenant (its API answers `invalid_tenant` at once); `?purge=true`
/// destroys its data too, then checks that nothing of it remains (`purge`).
#[utoipa::path(delete, path = "/admin/api/v1/tenants/{slug}", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path), ("purge" = Option<bool>, Query)),
    responses((status = 200, body = Deleted),
        (status = 400, description = "`invalid_query`", body = Problem),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 500, description = "`purge_incomplete`: the purge ran, but something of the tenant remains (named in `detail`); run it again", body = Problem)))]
async fn delete_tenant(
    op: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    QueryOf(q): QueryOf<DeleteParams>,
) -> Result<Json<Deleted>, ApiError> {
    let purge = q.purge.unwrap_or(false);
    let r = lms::ops::delete_tenant(&state.kernel, &slug, purge)
        .await
        .map_err(ApiError::from);
    let action = if purge {
        "tenant.purge"
    } else {
        "tenant.delete"
    };
    let r = r.and_then(|done| match done.purge.as_ref().filter(|r| !r.clean()) {
        Some(report) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "purge_incomplete",
            format!(
                "the purge ran, but these remain: {}; run it again",
                report.remaining().join("; ")
            ),
        )),
        None => Ok(done),
    });
    noted(&state, &op, action, Some(&slug), &r).await;
    let done = r?;
    let tenant = with_limits(&state, done.tenant);
    Ok(Json(Deleted { tenant, ..done }))
}

/// Suspend a tenant: its API answers 403 `tenant_suspended`.
#[utoipa::path(post, path = "/admin/api/v1/tenants/{slug}/suspend", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: not active", body = Problem)))]
async fn suspend_tenant(
    op: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let r = lms::ops::suspend_tenant(&state.kernel, &slug)
        .await
        .map_err(ApiError::from);
    noted(&state, &op, "tenant.suspend", Some(&slug), &r).await;
    Ok(Json(with_limits(&state, r?)))
}

/// Resume a suspended tenant.
#[utoipa::path(post, path = "/admin/api/v1/tenants/{slug}/resume", tag = "control-plane", security(("operator" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView),
        (status = 401, description = "`unauthorized`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: not suspended", body = Problem)))]
async fn resume_tenant(
    op: Operator,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let r = lms::ops::resume_tenant(&state.kernel, &slug)
        .await
        .map_err(ApiError::from);
    noted(&state, &op, "tenant.resume", Some(&slug), &r).await;
    Ok(Json(with_limits(&state, r?)))
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
