//! Login, logout, the caller, API keys.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lms::auth::{ApiKey, CreatedApiKey, LoginRequest, LoginResponse, NewApiKey};
use lms::page::Page;
use lms::users::User;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::{Caller, TenantOnly};
use crate::edge::extract::{Body, Query, id, paged};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
}

/// Log in with email and password; returns a bearer token (with
/// `Cache-Control: no-store`). Failed logins are throttled per account and
/// client address, per address, and (more loosely) per account.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "`invalid_credentials` (wrong email or password, same answer for both)", body = Problem),
        (status = 422, description = "`validation_failed`: the email is not an address, or a field is too long", body = Problem),
        (status = 429, description = "`rate_limited`: too many failed logins from this address, for this account, or too much unauthenticated traffic (`Retry-After`)", body = Problem),
        (status = 503, description = "`overloaded`: password hashing at its limit (`Retry-After`)", body = Problem),
    ))]
async fn login(
    axum::extract::State(state): axum::extract::State<AppState>,
    TenantOnly(tenant, origin): TenantOnly,
    client: Option<axum::Extension<lms::throttle::ClientAddr>>,
    Body(req): Body<LoginRequest>,
) -> Result<Response, ApiError> {
    let client = client.map_or_else(lms::throttle::ClientAddr::unknown, |c| c.0);
    let done = lms::auth::login(
        &state.kernel,
        &tenant,
        &state.sessions,
        &client,
        &origin,
        req,
    )
    .await?;
    Ok(no_store(Json(done).into_response()))
}

/// A response carrying a secret is never kept by a cache.
fn no_store(mut res: Response) -> Response {
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    res
}

/// End the caller's session; the token stops working at once.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Logged out")))]
async fn logout(Caller(cx): Caller) -> Result<StatusCode, ApiError> {
    lms::auth::logout(&cx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller.
#[utoipa::path(get, path = "/api/v1/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User),
        (status = 403, description = "`forbidden`: an API key is not a user", body = Problem)))]
async fn me(Caller(cx): Caller) -> Result<Json<User>, ApiError> {
    Ok(Json(lms::users::me(&cx).await?))
}

/// Create an API key (admin). The key is shown once (`Cache-Control:
/// no-store`); it acts only while its creator is an admin: it is revoked
/// when they are demoted or deleted.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])),
    request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 422, description = "`validation_failed`", body = Problem)))]
async fn create_api_key(
    Caller(cx): Caller,
    Body(req): Body<NewApiKey>,
) -> Result<Response, ApiError> {
    let key = lms::auth::create_api_key(&cx, req).await?;
    Ok(no_store((StatusCode::CREATED, Json(key)).into_response()))
}

/// List API keys (admin).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])),
    params(super::PageParams),
    responses((status = 200, body = Page<ApiKey>),
        (status = 403, description = "`forbidden`", body = Problem)))]
async fn list_api_keys(Caller(cx): Caller, q: Query) -> Result<Response, ApiError> {
    Ok(paged(&q, lms::auth::list_api_keys(&cx, &q.page).await?))
}

/// Revoke an API key (admin); it stops working at once.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "Revoked"),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn revoke_api_key(
    Caller(cx): Caller,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    lms::auth::revoke_api_key(&cx, &id(&key)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
