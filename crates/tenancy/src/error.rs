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
    /// The transaction lost a race with concurrent work (deadlock,
    /// serialization failure, a catalog row changed by another session) and
    /// was rolled back whole: trying again helps. Provisioning retries it
    /// itself; a request is answered 503 `overloaded` with `Retry-After`.
    #[error("concurrent work conflicted; try again: {0}")]
    Conflict(String),
    /// This node's master key is not the deployment's (or it has none while
    /// the deployment has one): nothing may be served or written with it.
    #[error("{0}")]
    WrongMasterKey(String),
    /// A database this needs cannot be reached (refused, reset, terminated
    /// by an administrator, starting up or shutting down; found down a
    /// moment ago and not tried again until its backoff ends), or the
    /// registry has not been read for longer than the directory may be
    /// trusted.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The same long work (a move of this tenant, an import of this slug)
    /// is running elsewhere; try again when it ends.
    #[error("{0}")]
    Busy(String),
    /// Work that did what it could but left something for the operator:
    /// a move that switched, but found a write on the old copy after the
    /// copy (kept for inspection). Says what, and what to do.
    #[error("{0}")]
    Incomplete(String),
    /// A tenant archive that cannot be imported: damaged, forged, of a
    /// newer format, or opened with the wrong key. Nothing was changed.
    #[error("archive: {0}")]
    Archive(String),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Error::Overloaded,
            e if is_busy(&e) => {
                tracing::info!(error = %e, "database busy; answered as overloaded");
                Error::Overloaded
            }
            e if is_connection_lost(&e) => Error::Unavailable(e.to_string()),
            e if is_conflict(&e) => Error::Conflict(e.to_string()),
            other => Error::Db(other),
        }
    }
}

/// SQLite's `SQLITE_BUSY` (5) or `SQLITE_LOCKED` (6), with any extended code:
/// another writer held the lock past the busy timeout. Retrying helps.
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                && d.code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs of work that lost a race with other work and may
/// simply be tried again: `serialization_failure`, `deadlock_detected`,
/// `lock_not_available`.
const CONFLICT_STATES: &[&str] = &["40001", "40P01", "55P03"];

/// The statement lost a race with concurrent work (a deadlock, a
/// serialization failure, or PostgreSQL's "tuple concurrently updated" when
/// two sessions change one catalog row at once): nothing of it was applied
/// and trying again helps ([`Error::Conflict`]).
pub(crate) fn is_conflict(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    let Some(p) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() else {
        return false;
    };
    CONFLICT_STATES.contains(&p.code())
        || (p.code() == "XX000" && p.message().contains("concurrently"))
}

/// PostgreSQL SQLSTATEs of a server that went away or is not taking
/// connections: connection exceptions (class 08), `admin_shutdown`,
/// `crash_shutdown`, `cannot_connect_now`, `too_many_connections`.
const CONNECTION_STATES: &[&str] = &["57P01", "57P02", "57P03", "53300"];

/// The connection to the database was lost or could not be made: the
/// server was stopped, restarted, or is out of reach. Nothing of the
/// statement that saw it can be trusted to have run (or not).
pub(crate) fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .map(|p| p.code())
            .is_some_and(|c| c.starts_with("08") || CONNECTION_STATES.contains(&c)),
        _ => false,
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
