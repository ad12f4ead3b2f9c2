//! RFC 9457 problem details: the one shape of every error this server answers.
//!
//! Internal errors are logged with their detail and answered without it. The
//! response carries the problem in its extensions too, so that the edge can
//! stamp the request id into the body on the way out.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A problem details body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:campus:problem:<code>`
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable.
    pub code: &'static str,
    pub request_id: Option<String>,
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after_s: Option<u64>,
    /// More headers of the answer (`RateLimit-*` on a 429).
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
            headers: Vec::new(),
        }
    }

    pub fn retry_after(mut self, s: u64) -> Self {
        self.retry_after_s = Some(s);
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token for this tenant is required",
        )
    }

    pub fn invalid_tenant() -> Self {
        // One body for malformed, unknown and deleted: no enumeration.
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_tenant",
            "the tenant is not valid",
        )
    }

    /// 503 `unavailable`: something this answer needs (the registry, a
    /// database) cannot be reached now; retrying shortly helps.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail).retry_after(2)
    }

    pub fn invalid_body(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", detail)
    }

    /// An internal error: logged in full, answered without detail.
    #[track_caller]
    pub fn internal(e: impl std::fmt::Display) -> Self {
        let at = std::panic::Location::caller();
        tracing::error!(error = %e, at = %at, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        )
    }

    pub fn problem(&self, request_id: Option<String>) -> Problem {
        Problem {
            kind: format!("urn:campus:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code,
            request_id,
        }
    }
}

/// Renders a problem as a response.
pub fn render(problem: &Problem, retry_after_s: Option<u64>) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(s) = retry_after_s {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = render(&self.problem(None), self.retry_after_s);
        for (name, value) in &self.headers {
            res.headers_mut().insert(name.clone(), value.clone());
        }
        res.extensions_mut().insert(self);
        res
    }
}

impl From<lms::Error> for ApiError {
    #[track_caller]
    fn from(e: lms::Error) -> Self {
        use lms::Error as E;
        match e {
            E::NotFound => Self::not_found(),
            E::Forbidden(why) => Self::new(StatusCode::FORBIDDEN, "forbidden", why),
            E::Conflict(why) => Self::new(StatusCode::CONFLICT, "conflict", why),
            E::Validation(why) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", why)
            }
            E::InvalidCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "wrong email or password",
            ),
            E::RateLimited { retry_after_s } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many attempts; try again later",
            )
            .retry_after(retry_after_s),
            E::UnsupportedMediaType(why) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                why,
            ),
            E::InvalidSignature => Self::new(
                StatusCode::FORBIDDEN,
                "invalid_signature",
                "the link is not valid here, or has expired",
            ),
            // Summed in the log where it is refused (lms::hashing).
            E::Overloaded(why) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", why).retry_after(1)
            }
            E::Kernel(tenancy::Error::NotFound) => Self::not_found(),
            E::Kernel(tenancy::Error::QuotaExceeded) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                "the tenant's storage quota would be exceeded",
            ),
            E::Kernel(tenancy::Error::TooLarge) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the file is larger than this server accepts",
            ),
            E::Kernel(tenancy::Error::MediaMismatch) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the file's bytes are not of its declared type",
            ),
            E::Kernel(tenancy::Error::Overloaded) => {
                // The request waited its turn and gave up: the tenant's
                // bulkhead (or the whole serving pool) stayed full.
                tracing::warn!("database work at its limit; answered 503 overloaded");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too much database work is in progress for this request to wait its turn; try again shortly",
                )
                .retry_after(1)
            }
            E::Kernel(tenancy::Error::Conflict(why)) => {
                // Rolled back whole; the client's retry runs it again.
                tracing::warn!(reason = %why, "transaction conflicted with concurrent work; answered 503 overloaded");
                metrics::counter!("campus_db_conflicts_total").increment(1);
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "this request conflicted with concurrent work and changed nothing; try again",
                )
                .retry_after(1)
            }
            E::Kernel(tenancy::Error::Unavailable(why)) => {
                // The database or the registry is down, restarting, or
                // dropped the connection: nothing to fix here, only to wait.
                // The outage itself is logged once, when it is found
                // (`database unreachable`); each answer only at debug.
                tracing::debug!(reason = %why, "unavailable; answered 503 unavailable");
                metrics::counter!("campus_db_unavailable_total").increment(1);
                Self::unavailable(
                    "a database this request needs cannot be reached right now; try again shortly",
                )
            }
            E::Kernel(tenancy::Error::Incomplete(why)) => {
                tracing::error!(reason = %why, "operator work incomplete");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "incomplete", why)
            }
            E::Kernel(tenancy::Error::Archive(why)) => {
                tracing::warn!(reason = %why, "tenant archive refused");
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_archive", why)
            }
            E::Kernel(tenancy::Error::Interrupted(why)) => {
                tracing::info!(reason = %why, "upload interrupted");
                Self::invalid_body("the body could not be read to its end")
            }
            other => Self::internal(other),
        }
    }
}

impl From<tenancy::Error> for ApiError {
    #[track_caller]
    fn from(e: tenancy::Error) -> Self {
        lms::Error::from(e).into()
    }
}
