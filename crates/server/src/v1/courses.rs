//! Courses and lessons.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lms::courses::{Course, CoursePatch, Lesson, LessonPatch, NewCourse, NewLesson};
use lms::page::Page;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::Caller;
use crate::edge::extract::{Body, Query, id, paged};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_courses, create_course))
        .routes(routes!(get_course, patch_course, delete_course))
        .routes(routes!(list_lessons, create_lesson))
        .routes(routes!(get_lesson, patch_lesson, delete_lesson))
}

/// List courses (learners see published courses only).
#[utoipa::path(get, path = "/api/v1/courses", tag = "courses", security(("bearer" = [])),
    params(super::PageParams),
    responses((status = 200, body = Page<Course>)))]
async fn list_courses(Caller(cx): Caller, q: Query) -> Result<Response, ApiError> {
    Ok(paged(&q, lms::courses::list(&cx, &q.page).await?))
}

/// Create a course (admin, instructor).
#[utoipa::path(post, path = "/api/v1/courses", tag = "courses", security(("bearer" = [])),
    request_body = NewCourse,
    responses((status = 201, body = Course),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn create_course(
    Caller(cx): Caller,
    Body(req): Body<NewCourse>,
) -> Result<Response, ApiError> {
    let course = lms::courses::create(&cx, req).await?;
    Ok((StatusCode::CREATED, Json(course)).into_response())
}

/// One course.
#[utoipa::path(get, path = "/api/v1/courses/{id}", tag = "courses", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Course),
        (status = 404, description = "`not_found` (also: unpublished, for learners)", body = Problem)))]
async fn get_course(
    Caller(cx): Caller,
    Path(course): Path<String>,
) -> Result<Json<Course>, ApiError> {
    Ok(Json(lms::courses::get(&cx, &id(&course)?).await?))
}

/// Change a course (admin, instructor).
#[utoipa::path(patch, path = "/api/v1/courses/{id}", tag = "courses", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = CoursePatch,
    responses((status = 200, body = Course),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn patch_course(
    Caller(cx): Caller,
    Path(course): Path<String>,
    Body(patch): Body<CoursePatch>,
) -> Result<Json<Course>, ApiError> {
    Ok(Json(lms::courses::update(&cx, &id(&course)?, patch).await?))
}

/// Delete a course and its lessons (admin, instructor).
#[utoipa::path(delete, path = "/api/v1/courses/{id}", tag = "courses", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn delete_course(
    Caller(cx): Caller,
    Path(course): Path<String>,
) -> Result<StatusCode, ApiError> {
    lms::courses::delete(&cx, &id(&course)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A course's lessons, by position (staff, or enrolled learners).
#[utoipa::path(get, path = "/api/v1/courses/{id}/lessons", tag = "lessons", security(("bearer" = [])),
    params(("id" = String, Path), super::PageParams),
    responses((status = 200, body = Page<Lesson>),
        (status = 403, description = "`forbidden`: not enrolled", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn list_lessons(
    Caller(cx): Caller,
    Path(course): Path<String>,
    q: Query,
) -> Result<Response, ApiError> {
    Ok(paged(
        &q,
        lms::courses::list_lessons(&cx, &id(&course)?, &q.page).await?,
    ))
}

/// Add a lesson (admin, instructor).
#[utoipa::path(post, path = "/api/v1/courses/{id}/lessons", tag = "lessons", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = NewLesson,
    responses((status = 201, body = Lesson),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn create_lesson(
    Caller(cx): Caller,
    Path(course): Path<String>,
    Body(req): Body<NewLesson>,
) -> Result<Response, ApiError> {
    let lesson = lms::courses::create_lesson(&cx, &id(&course)?, req).await?;
    Ok((StatusCode::CREATED, Json(lesson)).into_response())
}

/// One lesson (staff, or enrolled learners).
#[utoipa::path(get, path = "/api/v1/courses/{cid}/lessons/{lid}", tag = "lessons", security(("bearer" = [])),
    params(("cid" = String, Path), ("lid" = String, Path)),
    responses((status = 200, body = Lesson),
        (status = 403, description = "`forbidden`: not enrolled", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn get_lesson(
    Caller(cx): Caller,
    Path((course, lesson)): Path<(String, String)>,
) -> Result<Json<Lesson>, ApiError> {
    Ok(Json(
        lms::courses::get_lesson(&cx, &id(&course)?, &id(&lesson)?).await?,
    ))
}

/// Change a lesson's title or position (admin, instructor).
#[utoipa::path(patch, path = "/api/v1/courses/{cid}/lessons/{lid}", tag = "lessons", security(("bearer" = [])),
    params(("cid" = String, Path), ("lid" = String, Path)), request_body = LessonPatch,
    responses((status = 200, body = Lesson),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn patch_lesson(
    Caller(cx): Caller,
    Path((course, lesson)): Path<(String, String)>,
    Body(patch): Body<LessonPatch>,
) -> Result<Json<Lesson>, ApiError> {
    Ok(Json(
        lms::courses::update_lesson(&cx, &id(&course)?, &id(&lesson)?, patch).await?,
    ))
}

/// Delete a lesson (admin, instructor).
#[utoipa::path(delete, path = "/api/v1/courses/{cid}/lessons/{lid}", tag = "lessons", security(("bearer" = [])),
    params(("cid" = String, Path), ("lid" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn delete_lesson(
    Caller(cx): Caller,
    Path((course, lesson)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    lms::courses::delete_lesson(&cx, &id(&course)?, &id(&lesson)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
