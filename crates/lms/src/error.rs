//! Errors of the learning domain. The HTTP edge maps each to a status and a
//! stable problem `code`; internal detail is logged there, never answered.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such object in this tenant (also: an object of another tenant).
    #[error("not found")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    Validation(String),
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("too many attempts; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// A signed link altered, expired, or signed for another tenant.
    #[error("invalid signature")]
    InvalidSignature,
    /// A shared resource (password hashing) stayed at its limit for as long
    /// as the request could wait: 503 `overloaded`.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    #[error(transparent)]
    Kernel(#[from] tenancy::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Kernel(e.into())
    }
}

impl Error {
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Kernel(e) if e.is_unique_violation())
    }
}
