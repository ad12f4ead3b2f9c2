//! Files: lesson content (with signed links) and avatars. Bodies stream in
//! and out; nothing holds a whole file in memory.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use lms::files::{ContentUrl, Opened};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::auth::{Caller, TenantOnly};
use crate::edge::extract::id;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_lesson_content, put_lesson_content))
        .routes(routes!(create_content_url))
        .routes(routes!(get_avatar, put_avatar))
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The body limit of the routes that stream a body in (uploads), for the
/// edge's early refusal of a larger declared `Content-Length`; `None` for the
/// others (they take JSON, under `json_limit`).
pub fn body_limit(route: &str, config: &crate::state::ServerConfig) -> Option<u64> {
    match route {
        "/api/v1/courses/{cid}/lessons/{lid}/content" => Some(config.upload_limit),
        "/api/v1/users/{id}/avatar" => Some(lms::files::AVATAR_MAX),
        _ => None,
    }
}

/// Refuses a body whose declared length is already over `limit`, before
/// reading a byte of it.
fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(too_large()),
        _ => Ok(()),
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the file is larger than this server accepts",
    )
}

fn stored(etag: &str) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// Store a lesson's content (admin, instructor): `video/mp4` or
/// `application/pdf`, checked against the file's magic bytes; replaces any
/// earlier file.
#[utoipa::path(put, path = "/api/v1/courses/{cid}/lessons/{lid}/content", tag = "files",
    security(("bearer" = [])),
    params(("cid" = String, Path), ("lid" = String, Path)),
    request_body(content((Vec<u8> = "video/mp4"), (Vec<u8> = "application/pdf"))),
    responses((status = 204, description = "Stored; the new `ETag` is in the header"),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 413, description = "`payload_too_large` (over the server's limit) or `quota_exceeded` (over the tenant's storage quota)", body = Problem),
        (status = 415, description = "`unsupported_media_type`: not MP4 or PDF, or the bytes are not of the declared type", body = Problem)))]
async fn put_lesson_content(
    State(state): State<AppState>,
    Caller(cx): Caller,
    Path((course, lesson)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (course, lesson) = (id(&course)?, id(&lesson)?);
    let limit = state.config.upload_limit;
    check_length(&headers, limit)?;
    let done = lms::files::put_lesson_content(
        &cx,
        &course,
        &lesson,
        content_type(&headers),
        limit,
        body.into_data_stream(),
    )
    .await?;
    Ok(stored(&done.etag))
}

#[derive(serde::Deserialize)]
struct Signed {
    tenant: Option<String>,
    expires: Option<String>,
    sig: Option<String>,
}

/// A lesson's content (staff, or an enrolled learner; or anyone holding a
/// signed link from `content-url`, without `Authorization`). Honours `Range`
/// (one range; `bytes=a-b`, `a-`, `-n`) and `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/courses/{cid}/lessons/{lid}/content", tag = "files",
    security(("bearer" = []), ()),
    params(("cid" = String, Path), ("lid" = String, Path),
        ("tenant" = Option<String>, Query, description = "from a signed link: the tenant it names (no `X-Tenant` needed)"),
        ("expires" = Option<String>, Query, description = "from a signed link"),
        ("sig" = Option<String>, Query, description = "from a signed link")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range, with `Content-Range`"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 403, description = "`forbidden` (not enrolled), or `invalid_signature` (a link altered, expired or of another tenant)", body = Problem),
        (status = 404, description = "`not_found`: no such lesson, or it has no content", body = Problem),
        (status = 416, description = "`range_not_satisfiable`, with `Content-Range: bytes */<length>`", body = Problem)))]
async fn get_lesson_content(
    State(state): State<AppState>,
    Path((course, lesson)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    let signed: Signed = axum::extract::Query::<Signed>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or(Signed {
            tenant: None,
            expires: None,
            sig: None,
        });
    let opened = if signed.expires.is_some() || signed.sig.is_some() {
        let TenantOnly(tenant, _) = TenantOnly::from_request_parts(&mut parts, &state).await?;
        // Checked over the ids exactly as the link spells them: a changed
        // byte anywhere is a bad signature, not a different lesson.
        lms::files::signed_lesson_content(
            &state.kernel,
            &tenant,
            &course,
            &lesson,
            signed.tenant.as_deref().unwrap_or(""),
            signed.expires.as_deref().unwrap_or(""),
            signed.sig.as_deref().unwrap_or(""),
        )
        .await?
    } else {
        let Caller(cx) = Caller::from_request_parts(&mut parts, &state).await?;
        lms::files::lesson_content(&cx, &id(&course)?, &id(&lesson)?).await?
    };
    Ok(serve(opened, &parts.headers).await)
}

/// A signed link to a lesson's content, for a `<video>` or `<iframe>`: valid
/// for at most 15 minutes, without `Authorization`, under this tenant only.
#[utoipa::path(post, path = "/api/v1/courses/{cid}/lessons/{lid}/content-url", tag = "files",
    security(("bearer" = [])),
    params(("cid" = String, Path), ("lid" = String, Path)),
    responses((status = 200, body = ContentUrl),
        (status = 403, description = "`forbidden`: not enrolled", body = Problem),
        (status = 404, description = "`not_found`", body = Problem)))]
async fn create_content_url(
    Caller(cx): Caller,
    Path((course, lesson)): Path<(String, String)>,
) -> Result<Json<ContentUrl>, ApiError> {
    Ok(Json(
        lms::files::content_url(&cx, &id(&course)?, &id(&lesson)?).await?,
    ))
}

/// Store a user's avatar (admin, or self): PNG, JPEG or WebP, at most 5 MiB,
/// checked against the file's magic bytes.
#[utoipa::path(put, path = "/api/v1/users/{id}/avatar", tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    request_body(content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp"))),
    responses((status = 204, description = "Stored; the new `ETag` is in the header"),
        (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`", body = Problem),
        (status = 413, description = "`payload_too_large` (over 5 MiB) or `quota_exceeded`", body = Problem),
        (status = 415, description = "`unsupported_media_type`", body = Problem)))]
async fn put_avatar(
    Caller(cx): Caller,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = id(&user)?;
    check_length(&headers, lms::files::AVATAR_MAX)?;
    let done =
        lms::files::put_avatar(&cx, &user, content_type(&headers), body.into_data_stream()).await?;
    Ok(stored(&done.etag))
}

/// A user's avatar (any caller of the tenant), with `ETag`.
#[utoipa::path(get, path = "/api/v1/users/{id}/avatar", tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "The image", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "`not_found`: no such user, or no avatar", body = Problem)))]
async fn get_avatar(
    Caller(cx): Caller,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let opened = lms::files::avatar(&cx, &id(&user)?).await?;
    Ok(serve(opened, &headers).await)
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    Full,
    /// `first..=last`
    Part(u64, u64),
    Unsatisfiable,
}

/// One range (`bytes=a-b`, `bytes=a-`, `bytes=-n`). Several ranges, other
/// units and malformed values are ignored (the whole file is sent), as
/// RFC 9110 allows.
pub fn want(range: Option<&str>, len: u64) -> Want {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Want::Full;
    };
    if spec.contains(',') {
        return Want::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Want::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            None => Want::Full,
            Some(0) => Want::Unsatisfiable,
            Some(_) if len == 0 => Want::Unsatisfiable,
            Some(n) => Want::Part(len.saturating_sub(n), len - 1),
        },
        (a, "") => match num(a) {
            None => Want::Full,
            Some(a) if a >= len => Want::Unsatisfiable,
            Some(a) => Want::Part(a, len - 1),
        },
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    Want::Unsatisfiable
                } else {
                    Want::Part(a, b.min(len - 1))
                }
            }
            _ => Want::Full,
        },
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison).
fn none_match(value: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    value.trim() == "*" || value.split(',').any(|t| bare(t) == bare(etag))
}

/// Answers a file: `ETag`, `If-None-Match`, `If-Range`, `Range`.
async fn serve(opened: Opened, headers: &HeaderMap) -> Response {
    let Opened { storage, object } = opened;
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let mut res = if get(header::IF_NONE_MATCH).is_some_and(|v| none_match(v, &object.etag)) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let range_applies = get(header::IF_RANGE).is_none_or(|v| v.trim() == object.etag);
        let range = if range_applies {
            get(header::RANGE)
        } else {
            None
        };
        let (status, first, last) = match want(range, object.len) {
            Want::Full => (StatusCode::OK, 0, object.len),
            Want::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
            Want::Unsatisfiable => {
                let mut res = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    "the range is outside the file",
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", object.len)) {
                    res.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return res;
            }
        };
        let mut stream = storage.read(&object, first..last).boxed();
        // The first piece is read before answering, so that a file that does
        // not open (altered, or not this tenant's) is a clean 500, not a
        // response cut short.
        let head = match stream.next().await {
            Some(Err(e)) => return ApiError::internal(e).into_response(),
            head => head,
        };
        let stream = futures_util::stream::iter(head).chain(stream).map(|r| {
            r.map_err(|e| {
                tracing::error!(error = %e, "reading a stored file failed mid-response");
                std::io::Error::other("stored file unreadable")
            })
        });
        let mut res = (status, Body::from_stream(stream)).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(object.kind.mime()),
        );
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(v) =
                HeaderValue::from_str(&format!("bytes {first}-{}/{}", last - 1, object.len))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        res
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&object.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A tenant's file is for that tenant's users: never in a shared cache.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::{Want, want};

    #[test]
    fn ranges() {
        assert_eq!(want(None, 10), Want::Full);
        assert_eq!(want(Some("bytes=0-0"), 10), Want::Part(0, 0));
        assert_eq!(want(Some("bytes=9-"), 10), Want::Part(9, 9));
        assert_eq!(want(Some("bytes=-3"), 10), Want::Part(7, 9));
        assert_eq!(want(Some("bytes=-30"), 10), Want::Part(0, 9));
        assert_eq!(want(Some("bytes=5-100"), 10), Want::Part(5, 9));
        assert_eq!(want(Some("bytes=10-"), 10), Want::Unsatisfiable);
        assert_eq!(want(Some("bytes=-0"), 10), Want::Unsatisfiable);
        assert_eq!(want(Some("bytes=0-0"), 0), Want::Unsatisfiable);
        assert_eq!(want(Some("bytes=5-2"), 10), Want::Full);
        assert_eq!(want(Some("bytes=0-1,3-4"), 10), Want::Full);
        assert_eq!(want(Some("items=0-1"), 10), Want::Full);
        assert_eq!(want(Some("bytes=+1-2"), 10), Want::Full);
    }
}
