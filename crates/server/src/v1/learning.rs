//! Enrollments and progress.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lms::enrollments::{Enrollment, NewEnrollment};
use lms::page::Page;
use lms::progress::{CourseProgress, ProgressUpdate};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::Caller;
use crate::edge::extract::{Body, Query, QueryOf, id, paged};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_enrollments, enroll))
        .routes(routes!(unenroll))
        .routes(routes!(record_progress))
        .routes(routes!(course_progress))
}

/// Enroll a user (staff; a learner may enroll self in a published course).
#[utoipa::path(post, path = "/api/v1/courses/{id}/enrollments", tag = "enrollments", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = NewEnrollment,
    responses((status = 201, body = Enrollment),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`: no such course or user", body = Problem),
        (status = 409, description = "`conflict`: already enrolled", body = Problem)))]
async fn enroll(
    Caller(cx): Caller,
    Path(course): Path<String>,
    Body(mut req): Body<NewEnrollment>,
) -> Result<Response, ApiError> {
    req.user_id = id(&req.user_id)?;
    let e = lms::enrollments::enroll(&cx, &id(&course)?, req).await?;
    Ok((StatusCode::CREATED, Json(e)).into_response())
}

/// A course's enrollments (admin, instructor).
#[utoipa::path(get, path = "/api/v1/courses/{id}/enrollments", tag = "enrollments", security(("bearer" = [])),
    params(("id" = String, Path), super::PageParams),
    responses((status = 200, body = Page<Enrollment>),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn list_enrollments(
    Caller(cx): Caller,
    Path(course): Path<String>,
    q: Query,
) -> Result<Response, ApiError> {
    Ok(paged(
        &q,
        lms::enrollments::list(&cx, &id(&course)?, &q.page).await?,
    ))
}

/// Remove an enrollment (admin, instructor).
#[utoipa::path(delete, path = "/api/v1/courses/{cid}/enrollments/{user_id}", tag = "enrollments", security(("bearer" = [])),
    params(("cid" = String, Path), ("user_id" = String, Path)),
    responses((status = 204, description = "Removed"),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn unenroll(
    Caller(cx): Caller,
    Path((course, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    lms::enrollments::unenroll(&cx, &id(&course)?, &id(&user)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Record the caller's progress on a lesson (enrolled learner). Idempotent.
#[utoipa::path(put, path = "/api/v1/courses/{cid}/lessons/{lid}/progress", tag = "progress", security(("bearer" = [])),
    params(("cid" = String, Path), ("lid" = String, Path)), request_body = ProgressUpdate,
    responses((status = 204, description = "Recorded"),
        (status = 403, description = "`forbidden`: not enrolled", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn record_progress(
    Caller(cx): Caller,
    Path((course, lesson)): Path<(String, String)>,
    Body(req): Body<ProgressUpdate>,
) -> Result<StatusCode, ApiError> {
    lms::progress::record(&cx, &id(&course)?, &id(&lesson)?, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET …/progress`'s one parameter.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressParams {
    user_id: Option<String>,
}

/// Progress through a course: own, or (staff) `?user_id=`.
#[utoipa::path(get, path = "/api/v1/courses/{id}/progress", tag = "progress", security(("bearer" = [])),
    params(("id" = String, Path), ("user_id" = Option<String>, Query)),
    responses((status = 200, body = CourseProgress),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn course_progress(
    Caller(cx): Caller,
    Path(course): Path<String>,
    QueryOf(q): QueryOf<ProgressParams>,
) -> Result<Json<CourseProgress>, ApiError> {
    let user = q.user_id.as_deref().map(id).transpose()?;
    Ok(Json(
        lms::progress::course(&cx, &id(&course)?, user.as_deref()).await?,
    ))
}
