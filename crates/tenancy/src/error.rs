//! Errors of the isolation kernel.

use crate::id::SlugError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidSlug(#[from] SlugError),
    #[error("no such tenant")]
    NotFound,
    #[error("a tenant with this slug already exists")]
    SlugTaken,
    #[error("tenant is {0} and cannot be {1}")]
    InvalidTransition(&'static str, &'static str),
    #[error("isolation mode `{0}` is not available on this data plane")]
    UnsupportedIsolation(&'static str),
    #[error("unknown placement `{0}`")]
    UnknownPlacement(String),
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error("migration {version} ({name}) was changed after it was applied")]
    MigrationDrift { version: i64, name: &'static str },
    #[error("tenant database is at version {found}, newer than this build knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the tenant's storage quota would be exceeded")]
    QuotaExceeded,
    #[error("the file is larger than this server accepts")]
    TooLarge,
    #[error("the file is not of its declared type")]
    MediaMismatch,
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    #[error("stored data failed a check: {0}")]
    Crypto(&'static str),
    #[error("object store error: {0}")]
    Store(object_store::Error),
    /// The tenant's share of database work (its bulkhead), or the serving
    /// pool itself, stayed taken for as long as a transaction may wait.
    #[error("too much database work at once; try again shortly")]
    Overloaded,
    /// This node's master key is not the deployment's (or it has none while
    /// the deployment has one): nothing may be served or written with it.
    #[error("{0}")]
    WrongMasterKey(String),
    /// The registry has not been read successfully for longer than the
    /// directory may be trusted: tenants are not served from stale answers.
    #[error("the registry cannot be read; tenants are not served from a stale directory")]
    Unavailable,
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Error::Overloaded,
            other => Error::Db(other),
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound,
            other => Error::Store(other),
        }
    }
}

impl Error {
    /// True for a unique-constraint violation, whatever the backend.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}
