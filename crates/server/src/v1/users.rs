//! Users of the tenant.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lms::page::Page;
use lms::users::{NewUser, User, UserPatch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::Caller;
use crate::edge::extract::{Body, Query, id, paged};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, patch_user, delete_user))
}

/// List users (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])),
    params(super::PageParams),
    responses((status = 200, body = Page<User>),
        (status = 403, description = "`forbidden`", body = Problem)))]
async fn list_users(Caller(cx): Caller, q: Query) -> Result<Response, ApiError> {
    Ok(paged(&q, lms::users::list(&cx, &q.page).await?))
}

/// Create a user (admin).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(("bearer" = [])),
    request_body = NewUser,
    responses((status = 201, body = User),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 409, description = "`conflict`: the email is taken in this tenant", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem),
        (status = 503, description = "`overloaded`: password hashing at its limit (`Retry-After`)", body = Problem)))]
async fn create_user(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(cx): Caller,
    Body(req): Body<NewUser>,
) -> Result<Response, ApiError> {
    let user = lms::users::create(&cx, &state.sessions.hasher, req).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// One user (admin, or self).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = User),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn get_user(Caller(cx): Caller, Path(user): Path<String>) -> Result<Json<User>, ApiError> {
    Ok(Json(lms::users::fetch(&cx, &id(&user)?).await?))
}

/// Change a user (admin; self for `name` and `password`). Changing one's
/// own password needs `current_password`; an admin setting another user's
/// password does not. A password change ends the user's other sessions; an
/// admin demoted loses the API keys they created (revoked).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = UserPatch,
    responses((status = 200, body = User),
        (status = 403, description = "`forbidden` (also: `current_password` wrong)", body = Problem),
        (status = 503, description = "`overloaded`: password hashing at its limit (`Retry-After`)", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: email taken, or the last admin", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn patch_user(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(cx): Caller,
    Path(user): Path<String>,
    Body(patch): Body<UserPatch>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(
        lms::users::update(&cx, &state.sessions.hasher, &id(&user)?, patch).await?,
    ))
}

/// Delete a user (admin). The API keys they created are revoked.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 409, description = "`conflict`: the last admin", body = Problem)))]
async fn delete_user(Caller(cx): Caller, Path(user): Path<String>) -> Result<StatusCode, ApiError> {
    lms::users::delete(&cx, &id(&user)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
