//! Extractors that turn bad input into clean problems: JSON bodies (unknown
//! fields rejected), ids in paths, pagination in queries.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, http::HeaderValue};
use lms::page::{Page, PageRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON body, which must be an object (serde would also take a struct
/// written as an array: `["a title"]`); any rejection becomes a problem.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is larger than this server accepts",
                ));
            }
            Err(r) => return Err(ApiError::invalid_body(r.body_text())),
        };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid_body(
                "the body must be a JSON object".to_owned(),
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError::invalid_body(e.body_text())),
        }
    }
}

/// `Content-Type: application/json`, or any `…+json` type (as axum's `Json`).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind == "application" && (sub == "json" || sub.ends_with("+json"))
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
}

/// A list's `?limit=&after=`, and nothing else: any other parameter is 400
/// `invalid_query` (a route with parameters of its own takes [`QueryOf`]).
pub struct Query {
    pub page: PageRequest,
    pub path: String,
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
