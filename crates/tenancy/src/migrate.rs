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

/// Takes the target's lock and points `search_path` at it, for the rest of
/// the transaction: one round trip.
pub(crate) async fn enter(conn: &mut DbConn, target: &Target) -> Result<()> {
    if let Target::Postgres { schema, lock } = target {
        sqlx::query("SELECT pg_advisory_xact_lock($1), set_config('search_path', $2, true)")
            .bind(*lock)
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

/// The ledger of a target, read inside the caller's transaction (after
/// [`enter`]): every applied version with its checksum.
async fn read_ledger(tx: &mut DbConn) -> Result<Vec<(i64, String)>> {
    sqlx::query(LEDGER).execute(&mut *tx).await?;
    Ok(
        sqlx::query_as("SELECT version, checksum FROM _campus_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await?,
    )
}

/// The version a target is at, per its ledger (0 when it has none).
pub async fn current_version(conn: &mut DbConn, target: &Target) -> Result<i64> {
    let mut tx = conn.begin_with(begin_statement(target)).await?;
    enter(&mut tx, target).await?;
    let applied = read_ledger(&mut tx).await?;
    tx.commit().await?;
    Ok(applied.last().map_or(0, |(v, _)| *v))
}

/// What one call to [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub from: i64,
    pub to: i64,
}

/// Checks a ledger against the set this build knows: the version it is at,
/// or why it must not be touched.
fn check_ledger(applied: &[(i64, String)], set: &[Migration]) -> Result<i64> {
    debug_assert!(set.windows(2).all(|w| w[0].version < w[1].version));
    let from = applied.last().map_or(0, |(v, _)| *v);
    let known = latest(set);
    if from > known {
        return Err(Error::SchemaTooNew { found: from, known });
    }
    // A migration edited after it was applied is refused, not silently skipped.
    for (version, sum) in applied {
        if let Some(m) = set.iter().find(|m| m.version == *version)
            && m.checksum() != *sum
        {
            return Err(Error::MigrationDrift {
                version: m.version,
                name: m.name,
            });
        }
    }
    Ok(from)
}

/// Brings `target` (on `conn`) to the latest version of `set`, each
/// migration in a transaction of its own together with its ledger row.
///
/// The ledger is read under the target's lock in the first migration's
/// transaction, so a target already at the latest version costs one short
/// transaction, and the first pending migration needs no second look.
pub async fn apply(conn: &mut DbConn, target: &Target, set: &[Migration]) -> Result<Applied> {
    let mut tx = conn.begin_with(begin_statement(target)).await?;
    enter(&mut tx, target).await?;
    let from = check_ledger(&read_ledger(&mut tx).await?, set)?;
    let mut pending = set.iter().filter(|m| m.version > from);
    if let Some(first) = pending.next() {
        // Under the lock we took before reading the ledger: nobody else
        // can have applied it since.
        record(&mut tx, first).await?;
    }
    tx.commit().await?;
    for m in pending {
        // The lock first, then the ledger: a concurrent run that got there
        // between our transactions has already recorded this version.
        let mut tx = conn.begin_with(begin_statement(target)).await?;
        enter(&mut tx, target).await?;
        apply_one(&mut tx, m).await?;
        tx.commit().await?;
    }
    Ok(Applied {
        from,
        to: latest(set),
    })
}

/// Brings a target to the latest version of `set` inside the caller's open
/// transaction `tx`, which has already [`enter`]ed it: all or nothing. For a
/// target created in that same transaction (a new tenant's schema), where
/// there is no partial progress worth keeping and every round trip counts.
pub(crate) async fn apply_in(tx: &mut DbConn, set: &[Migration]) -> Result<Applied> {
    let from = check_ledger(&read_ledger(tx).await?, set)?;
    for m in set.iter().filter(|m| m.version > from) {
        record(tx, m).await?;
    }
    Ok(Applied {
        from,
        to: latest(set),
    })
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
        None => record(conn, m).await,
    }
}

/// Runs a migration and writes its ledger row (the caller holds the lock).
async fn record(conn: &mut DbConn, m: &Migration) -> Result<()> {
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
