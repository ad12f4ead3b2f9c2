//! Where SQL meets the tenant.
//!
//! [`TenantTx`] is the only way to run a statement against a tenant's data,
//! and only this module opens one: repositories take a `&mut TenantTx`, never a
//! pool. The backend is chosen once, at start-up:
//!
//! * [`embedded`] — each tenant a SQLite file of its own (`database` isolation),
//!   `<data dir>/tenants/<tenant uuid>/tenant.db`, through a bounded LRU of
//!   small pools;
//! * [`postgres`] — placements (PostgreSQL servers), each with one bounded pool
//!   shared by its `schema` and `pool` tenants, plus a bounded LRU of small
//!   pools for `database` tenants.
//!
//! The number of connections is bounded whatever the number of tenants.

pub mod embedded;
pub(crate) mod health;
pub mod postgres;

use std::path::{Path, PathBuf};

use sqlx::Transaction;

use crate::error::{Error, Result};
use crate::id::TenantId;
use crate::migrate::{Applied, MigrationSet};
use crate::tenant::{Isolation, Tenant};

/// The SQL interface of the data plane: one dialect-neutral driver over
/// SQLite and PostgreSQL, chosen at start-up.
pub type Db = sqlx::Any;
/// A connection of the data plane, as lent by a [`TenantTx`].
pub type DbConn = sqlx::AnyConnection;
/// A row of the data plane.
pub type DbRow = sqlx::any::AnyRow;

/// An open transaction on one tenant's data, and nobody else's.
///
/// Dropped without [`commit`](Self::commit), it rolls back — also when the
/// request that held it is cancelled half-way. Everything that scopes it to
/// its tenant (PostgreSQL role, search path, tenant setting) is local to the
/// transaction and ends with it.
pub struct TenantTx {
    tenant: TenantId,
    tx: Transaction<'static, Db>,
    /// A `database` tenant's share of its placement's connection budget,
    /// given back when the transaction ends (after its connection is).
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// One of the tenant's own shares (its bulkhead), given back likewise.
    _share: Option<tokio::sync::OwnedSemaphorePermit>,
    /// SQLite: the tenant's one write turn, given back likewise.
    _writer: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl TenantTx {
    pub(crate) fn new(tenant: TenantId, tx: Transaction<'static, Db>) -> Self {
        Self {
            tenant,
            tx,
            _slot: None,
            _share: None,
            _writer: None,
        }
    }

    pub(crate) fn writing(mut self, turn: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        self._writer = turn;
        self
    }

    pub(crate) fn holding(mut self, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        self._slot = Some(slot);
        self
    }

    pub(crate) fn sharing(mut self, share: tokio::sync::OwnedSemaphorePermit) -> Self {
        self._share = Some(share);
        self
    }

    /// The tenant this transaction belongs to.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    /// The connection, to run statements on: `query(..).execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut DbConn {
        &mut self.tx
    }

    /// Commits. Runs to its end even if the caller is cancelled meanwhile:
    /// a `COMMIT` cut off half-way would leave the transaction's drop to
    /// send a `ROLLBACK` after it ("there is no transaction in progress"),
    /// and the caller would not know whether it committed.
    pub async fn commit(self) -> Result<()> {
        let Self {
            tx,
            _slot,
            _share,
            _writer,
            ..
        } = self;
        detached(async move {
            let done = tx.commit().await;
            // The turns are given back once the connection is.
            drop((_slot, _share, _writer));
            Ok(done?)
        })
        .await
    }
}

/// Runs `work` on a task of its own and waits for it. A caller cancelled
/// while waiting does not cut `work` short: it runs to its end, and what it
/// returns is dropped (a transaction begun for nobody rolls back and its
/// connection goes back to the pool whole). For the steps that must not be
/// interrupted half-way: acquiring a connection and beginning a transaction
/// on it, and committing.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // Nobody waiting any more: the result is dropped here.
        let _ = tx.send(work.await);
    });
    rx.await
        .map_err(|_| Error::Db(sqlx::Error::WorkerCrashed))?
}

/// Whether a connection may go back to its pool: never inside a transaction.
/// A connection whose `BEGIN` went out but whose `Transaction` never came to
/// be (cancelled or failed half-way) would otherwise be lent to the next
/// caller inside that transaction — on SQLite holding the tenant's write lock
/// ("attempted to call begin_with at non-zero transaction depth" for every
/// later writer on it), on PostgreSQL "idle in transaction". Such a
/// connection is closed instead. A rollback queued by a dropped
/// `Transaction` has run by the time this answers: SQLite's worker takes
/// the ping after it; PostgreSQL's driver counts it done when queued (and
/// the pool's own ping, next, sends it).
pub(crate) fn after_release(
    conn: &mut DbConn,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, std::result::Result<bool, sqlx::Error>> {
    Box::pin(async move {
        use sqlx::Connection;
        if conn.backend_name() == "SQLite" {
            // Runs after any rollback queued on the connection's worker.
            conn.ping().await?;
        }
        if conn.is_in_transaction() {
            tracing::warn!(
                "a connection came back to its pool inside a transaction; closed instead"
            );
            metrics::counter!("campus_db_connections_discarded_total").increment(1);
            return Ok(false);
        }
        Ok(true)
    })
}

/// Empties an LRU of tenants' pools and closes each (for a clean stop).
pub(crate) async fn close_all(pools: &std::sync::Mutex<lru::LruCache<TenantId, sqlx::Pool<Db>>>) {
    let open: Vec<sqlx::Pool<Db>> = {
        let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::from_fn(|| pools.pop_lru().map(|(_, p)| p)).collect()
    };
    for pool in open {
        pool.close().await;
    }
}

/// How PostgreSQL opens a snapshot transaction (see [`DataPlane::begin_snapshot`]).
pub(crate) const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// The tenants' databases, on the backend chosen at start-up.
pub enum DataPlane {
    Embedded(embedded::Files),
    Postgres(postgres::Placements),
}

impl DataPlane {
    /// A transaction for reading (and writing) one tenant's data.
    pub async fn begin(&self, t: &Tenant) -> Result<TenantTx> {
        match self {
            DataPlane::Embedded(f) => f.begin(t.id, "BEGIN").await,
            DataPlane::Postgres(p) => p.begin(t, None).await,
        }
    }

    /// A read-only transaction that sees every table of the tenant as of
    /// one moment, whatever commits meanwhile: SQLite's read transaction
    /// (one snapshot of the write-ahead log from its first read), and
    /// PostgreSQL's `REPEATABLE READ`.
    pub async fn begin_snapshot(&self, t: &Tenant) -> Result<TenantTx> {
        match self {
            DataPlane::Embedded(f) => f.begin(t.id, "BEGIN").await,
            DataPlane::Postgres(p) => p.begin(t, Some(SNAPSHOT)).await,
        }
    }

    /// A transaction that will write: on SQLite it takes the write lock up
    /// front, so that two writers queue instead of failing on a lock upgrade.
    pub async fn begin_write(&self, t: &Tenant) -> Result<TenantTx> {
        match self {
            DataPlane::Embedded(f) => f.begin(t.id, "BEGIN IMMEDIATE").await,
            DataPlane::Postgres(p) => p.begin(t, None).await,
        }
    }

    /// The tenant's write turn, on SQLite (one writer per file): held by
    /// the write transaction, waited for before any connection is taken.
    pub(crate) async fn write_turn(
        &self,
        t: &Tenant,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        match self {
            DataPlane::Embedded(f) => Ok(Some(f.write_turn(t.id).await?)),
            DataPlane::Postgres(_) => Ok(None),
        }
    }

    /// Closes every connection, for a clean stop.
    pub(crate) async fn close(&self) {
        match self {
            DataPlane::Embedded(f) => f.close().await,
            DataPlane::Postgres(p) => p.close().await,
        }
    }

    /// Whether every placement answered when last tried (always on SQLite).
    pub fn reachable(&self) -> bool {
        match self {
            DataPlane::Embedded(_) => true,
            DataPlane::Postgres(p) => p.reachable(),
        }
    }

    /// Each placement and whether it answered when last tried (none on
    /// SQLite: the registry is the data plane's file).
    pub fn placements_reachable(&self) -> Vec<(String, bool)> {
        match self {
            DataPlane::Embedded(_) => Vec::new(),
            DataPlane::Postgres(p) => p.each_reachable(),
        }
    }

    /// Whether the placement holding the registry answered when last tried.
    pub(crate) fn registry_reachable(&self) -> bool {
        match self {
            DataPlane::Embedded(_) => true,
            DataPlane::Postgres(p) => p.registry_reachable(),
        }
    }

    /// Creates the tenant's database (schema, role…) if missing, and brings it
    /// to the latest version. Idempotent.
    pub async fn build(&self, t: &Tenant, set: &MigrationSet) -> Result<Applied> {
        match self {
            DataPlane::Embedded(f) => {
                f.create(t.id).await?;
                f.migrate(t.id, set.sqlite).await
            }
            DataPlane::Postgres(p) => p.build(t, set).await,
        }
    }

    /// Brings an existing tenant database to the latest version.
    pub async fn migrate(&self, t: &Tenant, set: &MigrationSet) -> Result<Applied> {
        match self {
            DataPlane::Embedded(f) => f.migrate(t.id, set.sqlite).await,
            DataPlane::Postgres(p) => p.migrate(t, set).await,
        }
    }

    /// Destroys the tenant's data for good.
    pub async fn destroy(&self, t: &Tenant) -> Result<()> {
        match self {
            DataPlane::Embedded(f) => f.destroy(t.id).await,
            DataPlane::Postgres(p) => p.destroy(t).await,
        }
    }

    /// Whether the tenant's place (its mode on its placement) already holds
    /// something of it; with `roles`, its PostgreSQL role counts too (roles
    /// are the cluster's, shared by every database of it).
    pub async fn holds(&self, t: &Tenant, roles: bool) -> Result<bool> {
        match self {
            DataPlane::Embedded(f) => Ok(f.exists(t.id)),
            DataPlane::Postgres(p) => p.holds(t, roles).await,
        }
    }

    /// What of the tenant's data is still there, each thing named and found
    /// or not (a purge's check).
    pub async fn remains(&self, t: &Tenant) -> Result<Vec<(String, bool)>> {
        match self {
            DataPlane::Embedded(f) => {
                let dir = f.tenant_dir(t.id);
                let found = tokio::fs::try_exists(&dir).await?;
                Ok(vec![(format!("directory {}", dir.display()), found)])
            }
            DataPlane::Postgres(p) => p.remains(t).await,
        }
    }

    /// Closes the tenant's own pool, if it has one open.
    pub async fn evict(&self, id: TenantId) {
        match self {
            DataPlane::Embedded(f) => f.evict(id).await,
            DataPlane::Postgres(p) => p.evict(id).await,
        }
    }

    /// Whether this backend offers an isolation mode, and on which placement
    /// (`None`: the default placement). Returns the placement's name.
    pub fn check(&self, isolation: Isolation, placement: Option<&str>) -> Result<String> {
        match self {
            DataPlane::Embedded(f) => f.check(isolation, placement),
            DataPlane::Postgres(p) => p.check(isolation, placement),
        }
    }

    /// The embedded directory of a tenant (meaningful for the embedded backend only).
    pub fn tenant_dir(&self, id: TenantId) -> PathBuf {
        match self {
            DataPlane::Embedded(f) => f.tenant_dir(id),
            DataPlane::Postgres(p) => tenant_dir(&p.unused_root(), id),
        }
    }

    /// Whether the tenant's database exists.
    pub async fn exists(&self, t: &Tenant) -> Result<bool> {
        match self {
            DataPlane::Embedded(f) => Ok(f.exists(t.id)),
            DataPlane::Postgres(p) => p.exists(t).await,
        }
    }

    /// Embedded: how many tenants' pools are open now, and their connections.
    /// PostgreSQL: pools open (placements plus `database` tenants) and connections.
    pub fn open_stats(&self) -> (usize, u32) {
        match self {
            DataPlane::Embedded(f) => f.open_stats(),
            DataPlane::Postgres(p) => p.open_stats(),
        }
    }

    /// Each placement's serving pool, `(placement, open, idle)` (none
    /// embedded: SQLite files have their own small pools).
    pub fn pool_stats(&self) -> Vec<(String, u32, usize)> {
        match self {
            DataPlane::Embedded(_) => Vec::new(),
            DataPlane::Postgres(p) => p.pool_stats(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, DataPlane::Postgres(_))
    }
}

/// `<root>/<tenant uuid>`: the one rule for a tenant's directory.
pub fn tenant_dir(root: &Path, id: TenantId) -> PathBuf {
    root.join(id.to_string())
}

/// The SQL name of a tenant's schema, role and database: `t_` and the 32 hex
/// digits of its UUID. Derived from the id only, never from input.
pub fn sql_name(id: TenantId) -> String {
    format!("t_{}", id.simple())
}

/// Quotes an SQL identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Component;

    proptest! {
        #[test]
        fn a_tenant_dir_is_one_plain_component_under_the_root(bytes in any::<[u8; 16]>()) {
            let id = TenantId::from(uuid::Uuid::from_bytes(bytes));
            let root = Path::new("/srv/campus/tenants");
            let dir = tenant_dir(root, id);
            prop_assert_eq!(dir.parent(), Some(root));
            let last: Vec<_> = dir.strip_prefix(root).unwrap().components().collect();
            prop_assert_eq!(last.len(), 1);
            prop_assert!(matches!(last[0], Component::Normal(_)));
            let name = dir.file_name().unwrap().to_str().unwrap();
            prop_assert_eq!(name.len(), 36);
            prop_assert!(name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        }

        #[test]
        fn sql_names_are_plain_lowercase_identifiers(bytes in any::<[u8; 16]>()) {
            let id = TenantId::from(uuid::Uuid::from_bytes(bytes));
            let name = sql_name(id);
            prop_assert_eq!(name.len(), 34);
            prop_assert!(name.starts_with("t_"));
            prop_assert!(name[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(quote(&name), format!("\"{name}\""));
        }

        #[test]
        fn quoting_keeps_any_text_one_identifier(s in "\\PC{0,40}") {
            let q = quote(&s);
            prop_assert!(q.starts_with('"') && q.ends_with('"'));
            let inner = &q[1..q.len() - 1];
            // Every quote inside is doubled: no way out of the identifier.
            prop_assert!(!inner.replace("\"\"", "").contains('"'));
        }
    }
}
