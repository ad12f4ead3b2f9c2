//! Plain-SQL migrations with a ledger kept inside each database.
//!
//! Each migration runs in its own write transaction together with its ledger
//! row, so a run killed half-way leaves every database at a whole version, and
//! the next run takes up where it stopped. Two runs on the same database
//! serialise on the write lock and re-read the ledger inside it, so a
//! migration is never applied twice.

use sha2::{Digest, Sha256};

use crate::dataplane::DbConn;
use crate::error::{Error, Result};

/// One migration: a version, a name and its SQL (usually `include_str!`).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    fn checksum(&self) -> String {
        let digest = Sha256::digest(self.sql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The latest version of a set (0 for an empty set).
pub fn latest(set: &[Migration]) -> i64 {
    set.iter().map(|m| m.version).max().unwrap_or(0)
}

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS _campus_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

/// The version a database is at, per its ledger (0 when it has none).
pub async fn current_version(conn: &mut DbConn) -> Result<i64> {
    sqlx::query(LEDGER).execute(&mut *conn).await?;
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _campus_migrations")
        .fetch_one(&mut *conn)
        .await?;
    Ok(v.unwrap_or(0))
}

/// What one call to [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub from: i64,
    pub to: i64,
}

/// Brings the database on `conn` to the latest version of `set`.
pub async fn apply(conn: &mut DbConn, set: &[Migration]) -> Result<Applied> {
    debug_assert!(set.windows(2).all(|w| w[0].version < w[1].version));
    let from = current_version(conn).await?;
    let known = latest(set);
    if from > known {
        return Err(Error::SchemaTooNew { found: from, known });
    }
    for m in set {
        // The write lock first, then the ledger: a concurrent run that got
        // there before us has already recorded this version.
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
        apply_one(&mut tx, m).await?;
        tx.commit().await?;
    }
    Ok(Applied { from, to: known })
}

async fn apply_one(conn: &mut DbConn, m: &Migration) -> Result<()> {
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT checksum FROM _campus_migrations WHERE version = $1")
            .bind(m.version)
            .fetch_optional(&mut *conn)
            .await?;
    match recorded {
        Some(sum) if sum == m.checksum() => Ok(()),
        Some(_) => Err(Error::MigrationDrift {
            version: m.version,
            name: m.name,
        }),
        None => {
            // A whole file of statements; `raw_sql`'s future is not `Send`.
            sqlx::Executor::execute(&mut *conn, m.sql).await?;
            sqlx::query(
                "INSERT INTO _campus_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum())
            .bind(crate::clock::now())
            .execute(&mut *conn)
            .await?;
            tracing::debug!(version = m.version, name = m.name, "migration applied");
            Ok(())
        }
    }
}
