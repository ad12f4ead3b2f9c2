//! The embedded backend: one SQLite file per tenant, through a bounded LRU of
//! small pools (WAL, busy timeout, foreign keys on).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use tokio::sync::OwnedSemaphorePermit;

use super::{Db, TenantTx, tenant_dir};
use crate::bulkhead::Bulkheads;
use crate::error::{Error, Result};
use crate::id::TenantId;
use crate::migrate::{self, Applied, Migration, Target};
use crate::tenant::Isolation;

type Pool = sqlx::Pool<Db>;

/// The only placement of the embedded backend.
pub const PLACEMENT: &str = "default";

const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                       PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

/// SQLite's page cache per connection, in KiB, unless configured otherwise
/// (SQLite's own default is 2,000 KiB: with many tenants open, that adds up).
pub const CACHE_KIB: u32 = 512;

/// Tuning of the embedded data plane.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// `<data dir>/tenants`.
    pub root: PathBuf,
    /// How many tenants' pools may be open at once.
    pub max_open_tenants: NonZeroUsize,
    /// Connections per open tenant.
    pub pool_size: u32,
    /// Page cache per connection, in KiB.
    pub cache_kib: u32,
    /// How long a write transaction waits for its tenant's write turn
    /// before failing with [`Error::Overloaded`].
    pub write_wait: Duration,
}

/// The tenants' SQLite files.
pub struct Files {
    cfg: FilesConfig,
    pools: Mutex<LruCache<TenantId, Pool>>,
    /// One write turn per tenant: SQLite has one writer per file at a time,
    /// so writers queue here, in order and cancellably, rather than inside
    /// SQLite's busy handler (which polls, holds a pooled connection while
    /// it does, and fails with "database is locked" after its timeout).
    writers: Bulkheads,
}

/// A pool over one SQLite file; every connection gets the pragmas.
pub(crate) fn sqlite_pool(path: &Path, create: bool, size: u32, cache_kib: u32) -> Result<Pool> {
    let url = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .to_url_lossy();
    AnyPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(PRAGMAS).await?;
                conn.execute(format!("PRAGMA cache_size = -{cache_kib}").as_str())
                    .await
                    .map(|_| ())
            })
        })
        .after_release(super::after_release)
        .connect_lazy(url.as_str())
        .map_err(Error::from)
}

impl Files {
    pub fn new(cfg: FilesConfig) -> Self {
        let pools = Mutex::new(LruCache::new(cfg.max_open_tenants));
        let writers = Bulkheads::new(NonZeroUsize::MIN, cfg.write_wait);
        Self {
            cfg,
            pools,
            writers,
        }
    }

    /// Closes every open tenant's pool (SQLite checkpoints a file's
    /// write-ahead log into it when its last connection closes).
    pub(crate) async fn close(&self) {
        super::close_all(&self.pools).await;
    }

    /// The tenant's write turn: waits while another transaction of the
    /// tenant writes, at most [`FilesConfig::write_wait`].
    pub(crate) async fn write_turn(&self, id: TenantId) -> Result<OwnedSemaphorePermit> {
        self.writers.enter(id).await
    }

    /// The directory of one tenant. Built from its UUID only.
    pub fn tenant_dir(&self, id: TenantId) -> PathBuf {
        tenant_dir(&self.cfg.root, id)
    }

    fn db_path(&self, id: TenantId) -> PathBuf {
        self.tenant_dir(id).join("tenant.db")
    }

    pub(crate) fn check(&self, isolation: Isolation, placement: Option<&str>) -> Result<String> {
        if isolation != Isolation::Database {
            return Err(Error::UnsupportedIsolation(isolation.as_str()));
        }
        match placement {
            None | Some(PLACEMENT) => Ok(PLACEMENT.to_owned()),
            Some(other) => Err(Error::UnknownPlacement(other.to_owned())),
        }
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
        let pool = sqlite_pool(&path, false, self.cfg.pool_size, self.cfg.cache_kib)?;
        if let Some((old_id, old)) = pools.push(id, pool.clone())
            && old_id != id
        {
            // Not closed: another caller may have just taken it from the LRU
            // and be about to begin on it, which a closed pool refuses.
            // Dropped here, it closes its connections once its last user
            // lets go of it.
            tracing::debug!(tenant_id = %old_id, "dropping least recently used tenant pool");
            drop(old);
        }
        Ok(pool)
    }

    pub(crate) async fn begin(&self, id: TenantId, statement: &'static str) -> Result<TenantTx> {
        // A pool evicted (and closed) between `pool()` and `begin`: the retry
        // opens a fresh one.
        for _ in 0..3 {
            let pool = self.pool(id)?;
            match pool.begin_with(statement).await {
                Ok(tx) => return Ok(TenantTx::new(id, tx)),
                Err(sqlx::Error::PoolClosed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Db(sqlx::Error::PoolClosed))
    }

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

    /// Creates the tenant's database file if it does not exist. Idempotent.
    pub(crate) async fn create(&self, id: TenantId) -> Result<()> {
        // Private from the start: the directory, and the file (whose mode
        // SQLite gives its -wal and -shm too).
        let (dir, file) = (self.tenant_dir(id), self.db_path(id));
        tokio::task::spawn_blocking(move || {
            crate::private::dir(&dir)?;
            crate::private::file(&file)
        })
        .await
        .map_err(|e| Error::Invalid(format!("making a tenant's directory: {e}")))??;
        let pool = sqlite_pool(&self.db_path(id), true, 1, self.cfg.cache_kib)?;
        let conn = pool.acquire().await?;
        conn.detach().close().await?;
        pool.close().await;
        Ok(())
    }

    pub(crate) async fn migrate(&self, id: TenantId, set: &[Migration]) -> Result<Applied> {
        let mut conn = self.acquire(id).await?;
        migrate::apply(&mut conn, &Target::Sqlite, set).await
    }

    pub(crate) async fn evict(&self, id: TenantId) {
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop(&id);
        if let Some(pool) = pool {
            pool.close().await;
        }
    }

    pub(crate) async fn destroy(&self, id: TenantId) -> Result<()> {
        self.evict(id).await;
        match tokio::fs::remove_dir_all(self.tenant_dir(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Whether the tenant's database file exists.
    pub fn exists(&self, id: TenantId) -> bool {
        self.db_path(id).exists()
    }

    pub(crate) fn open_stats(&self) -> (usize, u32) {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let conns = pools.iter().map(|(_, p)| p.size()).sum();
        (pools.len(), conns)
    }
}
