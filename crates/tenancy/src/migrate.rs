//! Plain-SQL migrations with a ledger kept inside each migrated target (a
//! SQLite file, a PostgreSQL schema or database, the shared pool schema).
//!
//! Each migration runs in its own transaction together with its ledger row,
//! so a run killed half-way leaves every target at a whole version, and the
//! next run takes up where it stopped. Two runs on the same target serialise —
//! SQLite on its write lock, PostgreSQL on an advisory lock keyed by the
//! target — and re-read the ledger inside it, so a migration is never applied
//! twice.

use sha2::{Digest, Sha256};
use sqlx::Connection;

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

/// The tenant schema in each dialect. The versions match: version N means the
/// same thing whichever backend a tenant lives on.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    /// A SQLite file per tenant.
    pub sqlite: &'static [Migration],
    /// A PostgreSQL schema (or database) per tenant.
    pub postgres: &'static [Migration],
    /// The shared tables of `pool` isolation, once per placement.
    pub pool: &'static [Migration],
}

impl MigrationSet {
    /// The version this build serves.
    pub fn latest(&self) -> i64 {
        latest(self.sqlite)
    }
}

/// The latest version of a set (0 for an empty set).
pub fn latest(set: &[Migration]) -> i64 {
    set.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Where a set of migrations is applied.
#[derive(Debug, Clone)]
pub enum Target {
    /// A whole SQLite database.
    Sqlite,
    /// A PostgreSQL schema: `search_path` is set to it for each migration, and
    /// runs on the same target serialise on `lock`.
    Postgres { schema: String, lock: i64 },
}

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS _campus_migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

async fn enter(conn: &mut DbConn, target: &Target) -> Result<()> {
    if let Target::Postgres { schema, lock } = target {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(*lock)
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(crate::dataplane::quote(schema))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn begin_statement(target: &Target) -> &'static str {
    match target {
        Target::Sqlite => "BEGIN IMMEDIATE",
        Target::Postgres { .. } => "BEGIN",
    }
}

/// The ledger of a target: every applied version with its checksum.
async fn ledger(conn: &mut DbConn, target: &Target) -> Result<Vec<(i64, String)>> {
    let mut tx = conn.begin_with(begin_statement(target)).await?;
    enter(&mut tx, target).await?;
    sqlx::query(LEDGER).execute(&mut *tx).await?;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, checksum FROM _campus_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The version a target is at, per its ledger (0 when it has none).
pub async fn current_version(conn: &mut DbConn, target: &Target) -> Result<i64> {
    Ok(ledger(conn, target).await?.last().map_or(0, |(v, _)| *v))
}

/// What one call to [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub from: i64,
    pub to: i64,
}

/// Brings `target` (on `conn`) to the latest version of `set`.
pub async fn apply(conn: &mut DbConn, target: &Target, set: &[Migration]) -> Result<Applied> {
    debug_assert!(set.windows(2).all(|w| w[0].version < w[1].version));
    let applied = ledger(conn, target).await?;
    let from = applied.last().map_or(0, |(v, _)| *v);
    let known = latest(set);
    if from > known {
        return Err(Error::SchemaTooNew { found: from, known });
    }
    // A migration edited after it was applied is refused, not silently skipped.
    for (version, sum) in &applied {
        if let Some(m) = set.iter().find(|m| m.version == *version)
            && m.checksum() != *sum
        {
            return Err(Error::MigrationDrift {
                version: m.version,
                name: m.name,
            });
        }
    }
    for m in set.iter().filter(|m| m.version > from) {
        // The lock first, then the ledger: a concurrent run that got there
        // before us has already recorded this version.
        let mut tx = conn.begin_with(begin_statement(target)).await?;
        enter(&mut tx, target).await?;
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
            // A whole file of statements, sent as one simple query.
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
