//! The tenant API, `/api/v1`: one router per resource, merged here.

use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub mod audit;
pub mod auth;
pub mod courses;
pub mod files;
pub mod learning;
pub mod users;

/// Every tenant route (all behind tenant resolution).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(users::routes())
        .merge(courses::routes())
        .merge(learning::routes())
        .merge(files::routes())
        .merge(audit::routes())
}

/// Keyset pagination parameters (documentation only; parsed by `edge::extract::Query`).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// 1 to 200, default 50.
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    after: Option<String>,
}
