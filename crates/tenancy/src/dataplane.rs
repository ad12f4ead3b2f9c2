//! Where SQL meets the tenant.
//!
//! [`TenantTx`] is the only way to run a statement against a tenant's data,
//! and only this module opens one: repositories take a `&mut TenantTx`, never a
//! pool. In the embedded setup each tenant (`database` isolation) is a SQLite
//! file of its own, `<data dir>/tenants/<tenant uuid>/tenant.db`, reached
//! through a bounded LRU of small pools — the number of open files and
//! connections is bounded whatever the number of tenants.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Transaction};

use crate::error::{Error, Result};
use crate::id::TenantId;
use crate::migrate::{self, Applied, Migration};

/// The SQL dialect of the data plane.
pub type Db = sqlx::Sqlite;
/// A connection of the data plane, as lent by a [`TenantTx`].
pub type DbConn = sqlx::SqliteConnection;
type Pool = sqlx::Pool<Db>;

/// An open transaction on one tenant's data, and nobody else's.
///
/// Dropped without [`commit`](Self::commit), it rolls back — also when the
/// request that held it is cancelled half-way.
pub struct TenantTx {
    tenant: TenantId,
    tx: Transaction<'static, Db>,
}

impl TenantTx {
    /// The tenant this transaction belongs to.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    /// The connection, to run statements on: `query(..).execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut DbConn {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

/// Tuning of the embedded data plane.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// `<data dir>/tenants`.
    pub root: PathBuf,
    /// How many tenants' pools may be open at once.
    pub max_open_tenants: NonZeroUsize,
    /// Connections per open tenant.
    pub pool_size: u32,
}

/// The tenants' databases (embedded: one SQLite file per tenant).
pub struct DataPlane {
    cfg: DataPlaneConfig,
    pools: Mutex<LruCache<TenantId, Pool>>,
}

impl DataPlane {
    pub fn new(cfg: DataPlaneConfig) -> Self {
        let pools = Mutex::new(LruCache::new(cfg.max_open_tenants));
        Self { cfg, pools }
    }

    /// The directory of one tenant. Built from its UUID only.
    pub fn tenant_dir(&self, id: TenantId) -> PathBuf {
        tenant_dir(&self.cfg.root, id)
    }

    fn db_path(&self, id: TenantId) -> PathBuf {
        self.tenant_dir(id).join("tenant.db")
    }

    fn options(path: &Path, create: bool) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
    }

    fn pool(&self, id: TenantId) -> Result<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&id) {
            return Ok(pool.clone());
        }
        let path = self.db_path(id);
        // Serving never creates a database: only provisioning does.
        if !path.exists() {
            return Err(Error::NotFound);
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(self.cfg.pool_size)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(60))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(Self::options(&path, false));
        if let Some((old_id, old)) = pools.push(id, pool.clone())
            && old_id != id
        {
            // Not closed: another caller may have just taken it from the LRU
            // and be about to begin on it, which a closed pool refuses
            // (`PoolClosed`, over and over while many tenants are busy).
            // Dropped here, it closes its connections once its last user
            // lets go of it.
            tracing::debug!(tenant_id = %old_id, "dropping least recently used tenant pool");
            drop(old);
        }
        Ok(pool)
    }

    async fn begin_with(&self, id: TenantId, statement: &'static str) -> Result<TenantTx> {
        // A pool evicted between `pool()` and `begin` is closed; the retry
        // opens a fresh one.
        for _ in 0..3 {
            let pool = self.pool(id)?;
            match pool.begin_with(statement).await {
                Ok(tx) => return Ok(TenantTx { tenant: id, tx }),
                Err(sqlx::Error::PoolClosed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Db(sqlx::Error::PoolClosed))
    }

    /// A connection to one tenant's database, retried like
    /// [`begin_with`](Self::begin_with) when its pool was evicted (and closed)
    /// between `pool()` and `acquire` — as a registry change does.
    async fn acquire(&self, id: TenantId) -> Result<sqlx::pool::PoolConnection<Db>> {
        for _ in 0..3 {
            let pool = self.pool(id)?;
            match pool.acquire().await {
                Ok(conn) => return Ok(conn),
                Err(sqlx::Error::PoolClosed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Db(sqlx::Error::PoolClosed))
    }

    /// A transaction for reading (and writing) one tenant's data.
    pub async fn begin(&self, id: TenantId) -> Result<TenantTx> {
        self.begin_with(id, "BEGIN").await
    }

    /// A transaction that takes the tenant's write lock up front, so that two
    /// writers queue instead of failing on a lock upgrade.
    pub async fn begin_write(&self, id: TenantId) -> Result<TenantTx> {
        self.begin_with(id, "BEGIN IMMEDIATE").await
    }

    /// Creates the tenant's database if it does not exist. Idempotent.
    pub async fn create(&self, id: TenantId) -> Result<()> {
        let dir = self.tenant_dir(id);
        tokio::fs::create_dir_all(&dir).await?;
        let conn =
            sqlx::SqliteConnection::connect_with(&Self::options(&self.db_path(id), true)).await?;
        conn.close().await?;
        Ok(())
    }

    /// Brings one tenant's database to the latest migration of `set`.
    pub async fn migrate(&self, id: TenantId, set: &[Migration]) -> Result<Applied> {
        let mut conn = self.acquire(id).await?;
        migrate::apply(&mut conn, set).await
    }

    /// The schema version recorded in the tenant's own ledger.
    pub async fn version(&self, id: TenantId) -> Result<i64> {
        let mut conn = self.acquire(id).await?;
        migrate::current_version(&mut conn).await
    }

    /// Closes the tenant's pool, if open.
    pub async fn evict(&self, id: TenantId) {
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop(&id);
        if let Some(pool) = pool {
            pool.close().await;
        }
    }

    /// Destroys the tenant's database for good.
    pub async fn destroy(&self, id: TenantId) -> Result<()> {
        self.evict(id).await;
        match tokio::fs::remove_dir_all(self.tenant_dir(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Whether the tenant's database exists.
    pub fn exists(&self, id: TenantId) -> bool {
        self.db_path(id).exists()
    }

    /// How many tenants' pools are open now, and how many connections they hold.
    pub fn open_stats(&self) -> (usize, u32) {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let conns = pools.iter().map(|(_, p)| p.size()).sum();
        (pools.len(), conns)
    }
}

/// `<root>/<tenant uuid>`: the one rule for a tenant's directory.
pub fn tenant_dir(root: &Path, id: TenantId) -> PathBuf {
    root.join(id.to_string())
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
    }
}
