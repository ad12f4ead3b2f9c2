//! The kernel: the registry and the data plane behind one handle, plus the
//! tenant directory — the registry's answers cached in process and dropped
//! when the registry's generation moves.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::{Cache, CacheConfig, TenantCache};
use crate::dataplane::embedded::{Files, FilesConfig};
use crate::dataplane::postgres::{PgConfig, Placements};
use crate::dataplane::{DataPlane, TenantTx};
use crate::error::{Error, Result};
use crate::id::Slug;
use crate::migrate::{Applied, MigrationSet};
use crate::registry::{Change, Registry};
use crate::shared::Redis;
use crate::storage::{MasterKey, Storage, StorageConfig};
use crate::tenant::{Isolation, Tenant};

/// How to open the kernel.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Where the registry and the tenants' files live (embedded backend).
    pub data_dir: PathBuf,
    /// The tenants' schema, oldest first, in each dialect.
    pub tenant_migrations: MigrationSet,
    /// How many tenants' databases may be open at once (embedded backend).
    pub max_open_tenants: NonZeroUsize,
    /// Connections per open tenant database (embedded backend).
    pub tenant_pool_size: u32,
    /// PostgreSQL placements; `None` for the embedded backend.
    pub postgres: Option<PgConfig>,
    /// The isolation mode of a tenant provisioned without one.
    pub default_isolation: Option<Isolation>,
    /// Where tenants' files go and the key that protects them.
    pub storage: StorageConfig,
    /// At most this many transactions of one tenant at once (a bulkhead):
    /// more wait for the tenant's own share, so that one tenant's burst
    /// cannot take a whole shared pool. Keep it below the serving pool's
    /// size (`--pool-size`, 16 by default).
    pub tenant_transactions: NonZeroUsize,
    /// How long a transaction waits for its tenant's share before failing
    /// with [`Error::Overloaded`](crate::Error::Overloaded) (10 s).
    pub tenant_transaction_wait: std::time::Duration,
    /// The tenant cache: in process, or in Redis shared by every node.
    pub cache: CacheConfig,
}

impl KernelConfig {
    pub fn new(data_dir: impl Into<PathBuf>, tenant_migrations: MigrationSet) -> Self {
        Self {
            data_dir: data_dir.into(),
            tenant_migrations,
            max_open_tenants: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            tenant_pool_size: 4,
            postgres: None,
            default_isolation: None,
            storage: StorageConfig::default(),
            tenant_transactions: NonZeroUsize::new(8).unwrap_or(NonZeroUsize::MIN),
            tenant_transaction_wait: crate::bulkhead::WAIT,
            cache: CacheConfig::default(),
        }
    }
}

/// The isolation kernel. Cheap to clone.
#[derive(Clone)]
pub struct Kernel(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) registry: Registry,
    pub(crate) data: DataPlane,
    pub(crate) tenant_migrations: MigrationSet,
    pub(crate) default_isolation: Isolation,
    pub(crate) storage: Storage,
    bulkheads: crate::bulkhead::Bulkheads,
    pub(crate) cache: Cache,
    shared: Option<Arc<Redis>>,
    directory: Mutex<Directory>,
}

/// Resolved tenants by slug, valid as of registry generation `seen`.
struct Directory {
    seen: i64,
    by_slug: HashMap<String, Tenant>,
}

const DIRECTORY_CAPACITY: usize = 100_000;

impl Kernel {
    /// Opens the registry (migrating the control plane) and the data plane.
    pub async fn open(cfg: KernelConfig) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (registry, data, default_isolation) = match &cfg.postgres {
            None => {
                tokio::fs::create_dir_all(&cfg.data_dir).await?;
                let registry = Registry::open_sqlite(&cfg.data_dir.join("registry.db")).await?;
                let files = Files::new(FilesConfig {
                    root: cfg.data_dir.join("tenants"),
                    max_open_tenants: cfg.max_open_tenants,
                    pool_size: cfg.tenant_pool_size,
                    write_wait: cfg.tenant_transaction_wait,
                });
                (registry, DataPlane::Embedded(files), Isolation::Database)
            }
            Some(pg) => {
                let placements = Placements::connect(pg).await?;
                let registry =
                    Registry::open_postgres(placements.default_placement().owner.clone()).await?;
                for p in placements.all() {
                    placements
                        .migrate_pool(p, cfg.tenant_migrations.pool)
                        .await?;
                }
                (registry, DataPlane::Postgres(placements), Isolation::Schema)
            }
        };
        let seen = registry.generation().await?;
        let storage = open_storage(&cfg).await?;
        let (cache, shared) = match &cfg.cache.redis_url {
            Some(url) => {
                let redis = Arc::new(Redis::connect(url, &cfg.cache.environment).await?);
                (Cache::redis(redis.clone()), Some(redis))
            }
            None => {
                if !crate::shared::valid_environment(&cfg.cache.environment) {
                    return Err(Error::Invalid(format!(
                        "environment `{}`: use 1-32 of a-z, 0-9, - and _",
                        cfg.cache.environment
                    )));
                }
                (Cache::local(&cfg.cache), None)
            }
        };
        Ok(Self(Arc::new(Inner {
            cache,
            shared,
            storage,
            bulkheads: crate::bulkhead::Bulkheads::new(
                cfg.tenant_transactions,
                cfg.tenant_transaction_wait,
            ),
            registry,
            data,
            tenant_migrations: cfg.tenant_migrations,
            default_isolation: cfg.default_isolation.unwrap_or(default_isolation),
            directory: Mutex::new(Directory {
                seen,
                by_slug: HashMap::new(),
            }),
        })))
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.0
    }

    /// The control plane's registry (cross-tenant, operator use only).
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn data_plane(&self) -> &DataPlane {
        &self.0.data
    }

    /// `tenant`'s cache entries: the only way to reach the cache.
    pub fn cache(&self, tenant: &Tenant) -> TenantCache<'_> {
        self.0.cache.tenant(tenant.id)
    }

    /// `redis` or `local`.
    pub fn cache_backend(&self) -> &'static str {
        self.0.cache.backend()
    }

    /// Redis, when configured: state shared by every node (rate limits).
    pub fn shared(&self) -> Option<&Redis> {
        self.0.shared.as_deref()
    }

    /// The schema version this build serves.
    pub fn latest_version(&self) -> i64 {
        self.0.tenant_migrations.latest()
    }

    /// The isolation mode of a tenant provisioned without one.
    pub fn default_isolation(&self) -> Isolation {
        self.0.default_isolation
    }

    fn directory(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.0.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live tenant named `slug`, whatever its status (the edge gates on it).
    pub async fn resolve(&self, slug: &Slug) -> Result<Option<Tenant>> {
        let seen = {
            let dir = self.directory();
            if let Some(t) = dir.by_slug.get(slug.as_str()) {
                return Ok(Some(t.clone()));
            }
            dir.seen
        };
        // The registry's server found down a moment ago: no wait for its pool.
        if !self.0.data.registry_reachable() {
            return Err(Error::Unavailable("the registry's database is down".into()));
        }
        let found = self.0.registry.by_slug(slug).await?;
        if let Some(t) = &found {
            let mut dir = self.directory();
            // Cache only if no change was seen while we read: otherwise what
            // we read may already be stale.
            if dir.seen == seen {
                if dir.by_slug.len() >= DIRECTORY_CAPACITY {
                    dir.by_slug.clear();
                }
                dir.by_slug.insert(slug.as_str().to_owned(), t.clone());
            }
        }
        Ok(found)
    }

    /// Drops what is cached about tenants changed since the last look.
    pub async fn refresh(&self) -> Result<()> {
        let seen = self.directory().seen;
        let now = self.0.registry.generation().await?;
        if now == seen {
            return Ok(());
        }
        let changed = self.0.registry.changed_since(seen).await?;
        {
            let mut dir = self.directory();
            for (_, slug) in &changed {
                dir.by_slug.remove(slug);
            }
            dir.seen = dir.seen.max(now);
        }
        for (id, _) in changed {
            self.0.storage.forget(id);
            // A deleted or moved tenant's pool must not outlive the change.
            self.0.data.evict(id).await;
        }
        Ok(())
    }

    /// Polls the registry every `every`, so that changes made elsewhere
    /// (another process, the CLI) are seen here.
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let kernel = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = kernel.refresh().await {
                    tracing::warn!(error = %e, "registry refresh failed");
                }
            }
        })
    }

    /// A transaction on `tenant`'s data.
    ///
    /// Cancel-safe: waiting for the tenant's share may be cut short at any
    /// point; taking a connection and beginning on it runs on a task of its
    /// own (see [`detached`](crate::dataplane::detached)), so a caller that
    /// goes away half-way leaves no connection inside a transaction.
    pub async fn begin(&self, tenant: &Tenant) -> Result<TenantTx> {
        // The tenant's share first: waiting for it holds no connection.
        let share = self.0.bulkheads.enter(tenant.id).await?;
        let (kernel, tenant) = (self.clone(), tenant.clone());
        crate::dataplane::detached(
            async move { Ok(kernel.0.data.begin(&tenant).await?.sharing(share)) },
        )
        .await
    }

    /// A transaction on `tenant`'s data that holds its write lock from the
    /// start. On SQLite, writers of one tenant take turns (waiting at most
    /// the bulkhead's wait, then [`Error::Overloaded`]). Cancel-safe, as
    /// [`begin`](Self::begin).
    pub async fn begin_write(&self, tenant: &Tenant) -> Result<TenantTx> {
        // The write turn before the share: writers queued for their turn
        // hold none of the shares the tenant's readers need.
        let turn = self.0.data.write_turn(tenant).await?;
        let share = self.0.bulkheads.enter(tenant.id).await?;
        let (kernel, tenant) = (self.clone(), tenant.clone());
        crate::dataplane::detached(async move {
            Ok(kernel
                .0
                .data
                .begin_write(&tenant)
                .await?
                .sharing(share)
                .writing(turn))
        })
        .await
    }

    /// Whether the control plane and every database answer, within `wait`:
    /// what `/readyz` reports. A placement found down a moment ago is not
    /// ready without being asked again.
    pub async fn ready(&self, wait: Duration) -> Result<()> {
        if !self.0.data.reachable() {
            return Err(Error::Unavailable("a database placement is down".into()));
        }
        match tokio::time::timeout(wait, self.0.registry.ping()).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Unavailable(format!(
                "the registry did not answer within {wait:?}"
            ))),
        }
    }

    /// How many tenants the bulkheads currently track (bounded: idle ones
    /// are forgotten as the map grows).
    pub fn bulkhead_tenants(&self) -> usize {
        self.0.bulkheads.tracked()
    }

    /// Brings one tenant's database to the latest version, and records it.
    pub async fn migrate_tenant(&self, tenant: &Tenant) -> Result<Applied> {
        let applied = self
            .0
            .data
            .migrate(tenant, &self.0.tenant_migrations)
            .await?;
        if tenant.schema_version != applied.to {
            self.0
                .registry
                .update(tenant.id, Change::SchemaVersion(applied.to))
                .await?;
            self.refresh().await?;
        }
        Ok(applied)
    }

    /// One tenant by slug, from the registry (not cached): the operator's view.
    pub async fn find(&self, slug: &Slug) -> Result<Tenant> {
        self.0.registry.by_slug(slug).await?.ok_or(Error::NotFound)
    }

    /// Every tenant that is not purged.
    pub async fn list(&self) -> Result<Vec<Tenant>> {
        self.0.registry.list().await
    }
}

/// The object store and the master key the configuration names; the
/// embedded defaults live in the data directory.
async fn open_storage(cfg: &KernelConfig) -> Result<Storage> {
    let url = match &cfg.storage.url {
        Some(u) => u.clone(),
        None => {
            let dir = cfg.data_dir.join("objects");
            tokio::fs::create_dir_all(&dir).await?;
            let dir = tokio::fs::canonicalize(&dir).await?;
            url::Url::from_directory_path(&dir)
                .map_err(|_| Error::Invalid(format!("{} is not an absolute path", dir.display())))?
                .to_string()
        }
    };
    let store = crate::storage::open_store(&url)?;
    let master = match &cfg.storage.master_key {
        Some(k) => k.clone(),
        None => {
            tokio::fs::create_dir_all(&cfg.data_dir).await?;
            let path = cfg.data_dir.join("master.key");
            tokio::task::spawn_blocking(move || MasterKey::load_or_create(&path))
                .await
                .map_err(|e| Error::Invalid(format!("reading the master key: {e}")))??
        }
    };
    Ok(Storage::new(store, master, cfg.storage.quotas))
}
