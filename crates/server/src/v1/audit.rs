//! The tenant's audit log.

use axum::response::Response;
use lms::audit::AuditEvent;
use lms::page::Page;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::Caller;
use crate::edge::extract::{Query, paged};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_events))
}

/// The tenant's audit log, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit-events", tag = "audit", security(("bearer" = [])),
    params(super::PageParams),
    responses((status = 200, body = Page<AuditEvent>),
        (status = 403, description = "`forbidden`", body = Problem)))]
async fn list_audit_events(Caller(cx): Caller, q: Query) -> Result<Response, ApiError> {
    Ok(paged(&q, lms::audit::list(&cx, &q.page).await?))
}
