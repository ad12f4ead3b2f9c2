//! Extractors that turn bad input into clean problems: JSON bodies (unknown
//! fields rejected), ids in paths, pagination in queries.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, http::HeaderValue};
use lms::page::{Page, PageRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON body; any rejection becomes a problem.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            )),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is larger than this server accepts",
                ))
            }
            Err(e) => Err(ApiError::invalid_body(e.body_text())),
        }
    }
}

/// A UUID from the path, in canonical form. Anything else names nothing: 404.
pub fn id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::not_found())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    limit: Option<u32>,
    after: Option<String>,
    user_id: Option<String>,
    purge: Option<bool>,
}

/// `?limit=&after=` (and the few other query parameters routes take).
pub struct Query {
    pub page: PageRequest,
    pub path: String,
    pub user_id: Option<String>,
    pub purge: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", why);
        let q = parts.uri.query().unwrap_or("");
        let p: PageParams = serde_urlencoded_like(q).map_err(bad)?;
        let page = PageRequest::new(p.limit, p.after.as_deref()).map_err(|e| bad(e.to_string()))?;
        Ok(Query {
            page,
            path: parts.uri.path().to_owned(),
            user_id: p.user_id,
            purge: p.purge.unwrap_or(false),
        })
    }
}

/// A route's own query parameters, strictly: an unknown or malformed one
/// is 400 `invalid_query`.
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        serde_urlencoded_like(parts.uri.query().unwrap_or(""))
            .map(QueryOf)
            .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", why))
    }
}

fn serde_urlencoded_like<T: DeserializeOwned>(q: &str) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|_| "malformed query".to_owned())?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| e.body_text())
}

/// A page of a list, with its `Link: <…>; rel="next"` header.
pub fn paged<T: Serialize>(q: &Query, page: Page<T>) -> Response {
    let link = page.next_cursor.as_ref().map(|c| {
        format!(
            "<{}?limit={}&after={}>; rel=\"next\"",
            q.path, q.page.limit, c
        )
    });
    let mut res = Json(page).into_response();
    if let Some(v) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        res.headers_mut().insert(axum::http::header::LINK, v);
    }
    res
}
