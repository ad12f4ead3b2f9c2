//! The kernel: the registry and the data plane behind one handle, plus the
//! tenant directory — the registry's answers cached in process and dropped
//! when the registry's generation moves.

use std::collections::{HashMap, HashSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// SQLite's page cache per connection, in KiB (embedded backend).
    pub sqlite_cache_kib: u32,
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
    /// Registry lookups of slugs the directory does not know, per second
    /// (burst twice that), for the whole node: a flood of made-up slugs
    /// costs at most this many queries; beyond it they are answered as
    /// unknown without one.
    pub unknown_tenant_lookups: NonZeroU32,
    /// How long the directory may go without a successful registry refresh
    /// (while [`Kernel::watch`] runs) before tenants are no longer served
    /// from it: then [`Kernel::resolve`] fails with [`Error::Unavailable`].
    pub registry_max_staleness: Duration,
}

impl KernelConfig {
    pub fn new(data_dir: impl Into<PathBuf>, tenant_migrations: MigrationSet) -> Self {
        Self {
            data_dir: data_dir.into(),
            tenant_migrations,
            max_open_tenants: NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
            tenant_pool_size: 2,
            sqlite_cache_kib: crate::dataplane::embedded::CACHE_KIB,
            postgres: None,
            default_isolation: None,
            storage: StorageConfig::default(),
            tenant_transactions: NonZeroUsize::new(8).unwrap_or(NonZeroUsize::MIN),
            tenant_transaction_wait: crate::bulkhead::WAIT,
            cache: CacheConfig::default(),
            unknown_tenant_lookups: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            registry_max_staleness: Duration::from_secs(5),
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
    /// Registry queries made by [`Kernel::resolve`].
    lookups: AtomicU64,
    /// The budget of lookups of slugs the directory does not know.
    unknown_budget: governor::DefaultDirectRateLimiter,
    max_staleness: Duration,
    /// Whether [`Kernel::watch`] keeps the directory fresh (then staleness
    /// is bounded).
    watching: AtomicBool,
}

/// Resolved tenants by slug, valid as of registry generation `seen`.
struct Directory {
    seen: i64,
    by_slug: HashMap<String, Tenant>,
    /// Slugs the registry recently said no tenant has, until when.
    unknown: HashMap<String, Instant>,
    /// Slugs some tenant has (or had) as of `seen`: read at open, kept up
    /// by refresh. Looking one up never counts against the unknown-slug
    /// budget, so a flood of made-up names cannot keep a tenant out.
    known: HashSet<String>,
    /// When the registry was last read successfully.
    refreshed_at: Instant,
    /// The deployment's operator token hash, as of `seen`.
    operator_token: Option<[u8; 32]>,
}

const DIRECTORY_CAPACITY: usize = 100_000;
/// At most this many unknown slugs are remembered…
const UNKNOWN_CAPACITY: usize = 10_000;
/// …each for this long (and forgotten as soon as a tenant takes the slug).
const UNKNOWN_TTL: Duration = Duration::from_secs(5);

/// The registry's setting holding the master key's check.
const MASTER_KEY_CHECK: &str = "master_key_check";
/// The registry's setting holding the operator token's SHA-256 (hex).
pub const OPERATOR_TOKEN: &str = "operator_token_sha256";

impl Kernel {
    /// Opens the registry (migrating the control plane) and the data plane.
    pub async fn open(cfg: KernelConfig) -> Result<Self> {
        sqlx::any::install_default_drivers();
        // Whatever this process creates from now on is its user's alone.
        crate::private::restrict_umask();
        // The data directory: made private, or tightened if an older
        // install left it open (on PostgreSQL it may hold only the master
        // key, or nothing at all).
        let (dir, embedded) = (cfg.data_dir.clone(), cfg.postgres.is_none());
        tokio::task::spawn_blocking(move || -> Result<()> {
            if embedded || dir.exists() {
                crate::private::tighten(&dir)?;
            }
            if embedded {
                crate::private::file(&dir.join("registry.db"))?;
                crate::private::dir(&dir.join("tenants"))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Invalid(format!("preparing the data directory: {e}")))??;
        let (registry, data, default_isolation) = match &cfg.postgres {
            None => {
                let registry = Registry::open_sqlite(&cfg.data_dir.join("registry.db")).await?;
                let files = Files::new(FilesConfig {
                    root: cfg.data_dir.join("tenants"),
                    max_open_tenants: cfg.max_open_tenants,
                    pool_size: cfg.tenant_pool_size,
                    cache_kib: cfg.sqlite_cache_kib,
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
        let storage = open_storage(&cfg, &registry).await?;
        let operator_token = operator_token(&registry).await?;
        let known = registry.live_slugs().await?.into_iter().collect();
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
                unknown: HashMap::new(),
                known,
                refreshed_at: Instant::now(),
                operator_token,
            }),
            lookups: AtomicU64::new(0),
            unknown_budget: governor::RateLimiter::direct(
                governor::Quota::per_second(cfg.unknown_tenant_lookups).allow_burst(
                    cfg.unknown_tenant_lookups
                        .saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)),
                ),
            ),
            max_staleness: cfg.registry_max_staleness,
            watching: AtomicBool::new(false),
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

    /// The storage quota a plan gives a tenant, in stored bytes.
    pub fn storage_quota(&self, plan: crate::Plan) -> u64 {
        *self.0.storage.quotas.get(plan)
    }

    /// The isolation mode of a tenant provisioned without one.
    pub fn default_isolation(&self) -> Isolation {
        self.0.default_isolation
    }

    fn directory(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.0.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live tenant named `slug`, whatever its status (the edge gates on it).
    ///
    /// Known slugs are answered from the directory; a slug the registry
    /// recently said is unknown is answered `None` from memory too; other
    /// slugs cost a registry query within a node-wide budget, beyond which
    /// they are answered `None` unasked. While the registry cannot be read
    /// for longer than the configured staleness, nothing is answered from
    /// the directory: [`Error::Unavailable`].
    pub async fn resolve(&self, slug: &Slug) -> Result<Option<Tenant>> {
        let seen = {
            let mut dir = self.directory();
            if self.0.watching.load(Ordering::Relaxed)
                && dir.refreshed_at.elapsed() > self.0.max_staleness
            {
                count_lookup("stale");
                return Err(Error::Unavailable(
                    "the registry has not been read for too long; tenants are not served from a stale directory".into(),
                ));
            }
            if let Some(t) = dir.by_slug.get(slug.as_str()) {
                return Ok(Some(t.clone()));
            }
            match dir.unknown.get(slug.as_str()) {
                Some(until) if *until > Instant::now() => {
                    count_lookup("unknown_cached");
                    return Ok(None);
                }
                Some(_) => {
                    dir.unknown.remove(slug.as_str());
                }
                None => {}
            }
            if !dir.known.contains(slug.as_str()) && self.0.unknown_budget.check().is_err() {
                count_lookup("refused");
                tracing::debug!("unknown-tenant lookup budget spent; answered as unknown");
                return Ok(None);
            }
            dir.seen
        };
        // The registry's server found down a moment ago: no wait for its pool.
        if !self.0.data.registry_reachable() {
            return Err(Error::Unavailable("the registry's database is down".into()));
        }
        self.0.lookups.fetch_add(1, Ordering::Relaxed);
        count_lookup("registry");
        let found = self.0.registry.by_slug(slug).await?;
        let mut dir = self.directory();
        // Cache only if no change was seen while we read: otherwise what
        // we read may already be stale.
        if dir.seen == seen {
            match &found {
                Some(t) => {
                    if dir.by_slug.len() >= DIRECTORY_CAPACITY {
                        dir.by_slug.clear();
                    }
                    dir.known.insert(slug.as_str().to_owned());
                    dir.by_slug.insert(slug.as_str().to_owned(), t.clone());
                }
                None => {
                    let now = Instant::now();
                    if dir.unknown.len() >= UNKNOWN_CAPACITY {
                        dir.unknown.retain(|_, until| *until > now);
                    }
                    if dir.unknown.len() < UNKNOWN_CAPACITY {
                        dir.unknown
                            .insert(slug.as_str().to_owned(), now + UNKNOWN_TTL);
                    }
                }
            }
        }
        Ok(found)
    }

    /// How many registry queries [`resolve`](Self::resolve) has made.
    pub fn registry_lookups(&self) -> u64 {
        self.0.lookups.load(Ordering::Relaxed)
    }

    /// The deployment's operator token hash, as the registry last said.
    pub fn operator_token_sha256(&self) -> Option<[u8; 32]> {
        self.directory().operator_token
    }

    /// Drops what is cached about tenants changed since the last look.
    pub async fn refresh(&self) -> Result<()> {
        let seen = self.directory().seen;
        let now = self.0.registry.generation().await?;
        if now == seen {
            self.directory().refreshed_at = Instant::now();
            return Ok(());
        }
        let changed = self.0.registry.changed_since(seen).await?;
        let token = operator_token(&self.0.registry).await?;
        {
            let mut dir = self.directory();
            for (_, slug, _) in &changed {
                dir.by_slug.remove(slug);
                dir.unknown.remove(slug);
                dir.known.insert(slug.clone());
            }
            dir.seen = dir.seen.max(now);
            dir.operator_token = token;
            dir.refreshed_at = Instant::now();
        }
        for (id, _, gone) in changed {
            self.0.storage.forget(id);
            if gone {
                // Unreachable already; freed now rather than when evicted.
                self.0.cache.forget_local(id);
            }
            // A deleted or moved tenant's pool must not outlive the change.
            self.0.data.evict(id).await;
        }
        Ok(())
    }

    /// Whether `sig` is what [`TenantStorage::sign`](crate::TenantStorage::sign)
    /// gives for `tenant` and these values: no I/O (the key is the
    /// deployment's), so that the edge can check a link before it counts
    /// the request. The expiry is the caller's to check.
    pub fn verify_signature(
        &self,
        tenant: crate::TenantId,
        purpose: &str,
        parts: &[&str],
        expires: i64,
        sig: &str,
    ) -> bool {
        self.0.storage.verify(tenant, purpose, parts, expires, sig)
    }

    /// Closes the kernel's connections, for a clean stop (after the last
    /// request): on the embedded default the registry's and every open
    /// tenant's write-ahead log is checkpointed into its database file, so
    /// that a copy of the data directory taken afterwards needs no `-wal`
    /// file. Nothing may use the kernel afterwards.
    pub async fn close(&self) {
        self.0.registry.close().await;
        self.0.data.close().await;
    }

    /// Polls the registry every `every`, so that changes made elsewhere
    /// (another process, the CLI) are seen here. From then on the directory
    /// is trusted only while these polls succeed (see
    /// [`KernelConfig::registry_max_staleness`]).
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let kernel = self.clone();
        self.0.watching.store(true, Ordering::Relaxed);
        self.directory().refreshed_at = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match kernel.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("registry refresh works again; tenants are served");
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "registry refresh failed; tenants stop being served once the directory is older than the staleness bound");
                        }
                        failing = true;
                    }
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

    /// A read-only transaction on `tenant`'s data that sees all of it as of
    /// one moment (an export's snapshot) while the tenant keeps serving.
    /// Cancel-safe, as [`begin`](Self::begin).
    pub async fn begin_snapshot(&self, tenant: &Tenant) -> Result<TenantTx> {
        let share = self.0.bulkheads.enter(tenant.id).await?;
        let (kernel, tenant) = (self.clone(), tenant.clone());
        crate::dataplane::detached(async move {
            Ok(kernel.0.data.begin_snapshot(&tenant).await?.sharing(share))
        })
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

    /// Each dependency this node serves from, checked now within `wait`:
    /// the registry, every placement (PostgreSQL), Redis (when configured)
    /// and the object store. What `/readyz` shows.
    pub async fn readiness(&self, wait: Duration) -> Vec<Dependency> {
        // The probes run at once, under one deadline.
        let registry = tokio::time::timeout(wait, self.0.registry.ping());
        let redis = async {
            match self.shared() {
                Some(r) => Some(match tokio::time::timeout(wait, r.health()).await {
                    Ok(h) => h,
                    Err(_) => (false, r.ever_answered()),
                }),
                None => None,
            }
        };
        let store = self.object_store();
        let probe = object_store::path::Path::from("campus-readiness-probe");
        let stored = tokio::time::timeout(wait, store.head(&probe));
        let (registry, redis, stored) = tokio::join!(registry, redis, stored);
        let mut out = Vec::new();
        out.push(Dependency {
            name: "registry".into(),
            health: match registry {
                Ok(Ok(())) => Health::Up,
                Ok(Err(e)) => Health::Down(e.to_string()),
                Err(_) => Health::Down(format!("the registry did not answer within {wait:?}")),
            },
        });
        for (name, up) in self.0.data.placements_reachable() {
            out.push(Dependency {
                name: format!("placement:{name}"),
                health: if up {
                    Health::Up
                } else {
                    Health::Down("found down; retried after its backoff".into())
                },
            });
        }
        if let Some((now, ever)) = redis {
            out.push(Dependency {
                name: "redis".into(),
                health: match (now, ever) {
                    (true, _) => Health::Up,
                    // Gone after answering: nodes go on without it.
                    (false, true) => Health::Degraded(
                        "Redis does not answer; cache bypassed, limits per node".into(),
                    ),
                    (false, false) => Health::Down(
                        "Redis has not answered since this node started: check --redis-url".into(),
                    ),
                },
            });
        }
        out.push(Dependency {
            name: "object_store".into(),
            health: match stored {
                Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Health::Up,
                Ok(Err(e)) => Health::Down(e.to_string()),
                Err(_) => Health::Down(format!("the object store did not answer within {wait:?}")),
            },
        });
        out
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

/// One dependency's state, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dependency {
    pub name: String,
    #[serde(flatten)]
    pub health: Health,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "lowercase")]
pub enum Health {
    Up,
    /// Working without it, worse (Redis gone after answering).
    Degraded(String),
    Down(String),
}

/// How long a lease lasts without its holder renewing it.
const LEASE: Duration = Duration::from_secs(10);

/// A lease held on long operator work (see [`Kernel::lease`]): renewed in
/// the background while held, released when dropped.
pub struct Lease {
    kernel: Kernel,
    name: String,
    owner: String,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (kernel, name, owner) = (
            self.kernel.clone(),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.owner),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = kernel.0.registry.release_lease(&name, &owner).await;
            });
        }
    }
}

impl Lease {
    /// Gives the lease back now (rather than from a background task).
    pub async fn release(self) {
        self.renew.abort();
        let _ = self
            .kernel
            .0
            .registry
            .release_lease(&self.name, &self.owner)
            .await;
    }
}

impl Kernel {
    /// The lease `name` (`move:<tenant id>`, `import:<slug>`), so that the
    /// same long work never runs twice at once, from any node or CLI: `None`
    /// while someone else holds it (a holder that died frees it within
    /// ten seconds).
    pub(crate) async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let owner = uuid::Uuid::now_v7().to_string();
        let lease = LEASE.as_secs() as i64;
        let now = crate::clock::unix_now();
        if !self
            .0
            .registry
            .take_lease(name, &owner, now + lease, now)
            .await?
        {
            return Ok(None);
        }
        let renew = {
            let (kernel, name, owner) = (self.clone(), name.to_owned(), owner.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE / 4).await;
                    let now = crate::clock::unix_now();
                    if let Err(e) = kernel
                        .0
                        .registry
                        .take_lease(&name, &owner, now + lease, now)
                        .await
                    {
                        tracing::warn!(lease = %name, error = %e, "renewing a lease failed; retrying");
                    }
                }
            })
        };
        Ok(Some(Lease {
            kernel: self.clone(),
            name: name.to_owned(),
            owner,
            renew,
        }))
    }
}

fn count_lookup(result: &'static str) {
    metrics::counter!("campus_tenant_lookups_total", "result" => result).increment(1);
}

/// The deployment's operator token hash, if the registry holds one.
async fn operator_token(registry: &Registry) -> Result<Option<[u8; 32]>> {
    let Some((hex, _)) = registry.setting(OPERATOR_TOKEN).await? else {
        return Ok(None);
    };
    Ok(decode_hash(&hex))
}

/// 64 hex digits as 32 bytes.
pub fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

const GIVE_THE_SAME_KEY: &str = "give every node of a deployment the same master key \
    (CAMPUS_MASTER_KEY, --master-key-file, or a copy of the first node's <data dir>/master.key)";

/// The object store and the master key the configuration names; the
/// embedded defaults live in the data directory.
///
/// The master key must be the deployment's: the registry records its check
/// at the first start, and a node whose key does not match (or that has
/// none while the deployment has one) stops here, before it writes anything
/// (a key file, a tenant's data key).
async fn open_storage(cfg: &KernelConfig, registry: &Registry) -> Result<Storage> {
    let recorded = registry.setting(MASTER_KEY_CHECK).await?.map(|(v, _)| v);
    let configured = match &cfg.storage.master_key {
        Some(k) => Some(k.clone()),
        None => {
            let path = cfg.data_dir.join("master.key");
            tokio::task::spawn_blocking(move || MasterKey::load(&path))
                .await
                .map_err(|e| Error::Invalid(format!("reading the master key: {e}")))??
        }
    };
    let master = match (configured, &recorded) {
        (None, Some(_)) => {
            return Err(Error::WrongMasterKey(format!(
                "this node has no master key, but the deployment has one (its check is in the \
                 registry): refusing to start rather than make another; {GIVE_THE_SAME_KEY}"
            )));
        }
        (Some(k), _) => k,
        (None, None) => {
            let dir = cfg.data_dir.clone();
            tokio::task::spawn_blocking(move || {
                crate::private::dir(&dir)?;
                MasterKey::load_or_create(&dir.join("master.key"))
            })
            .await
            .map_err(|e| Error::Invalid(format!("reading the master key: {e}")))??
        }
    };
    let mismatch = || {
        Error::WrongMasterKey(format!(
            "this node's master key is not the deployment's (the registry holds the check of \
             another key): refusing to start, as it would make data keys no other node can \
             read; {GIVE_THE_SAME_KEY}"
        ))
    };
    let check = master.check();
    match recorded {
        Some(r) if r != check => return Err(mismatch()),
        Some(_) => {}
        None => {
            // An install older than the check: its tenants' data keys tell
            // whether this is their key.
            if let Some((tenant, wrapped)) = registry.any_wrapped_key().await?
                && master.unwrap(tenant, &wrapped).is_err()
            {
                return Err(mismatch());
            }
            let (winner, _) = registry
                .setting_or_insert(MASTER_KEY_CHECK, &check, "first start")
                .await?;
            if winner != check {
                return Err(mismatch());
            }
        }
    }
    let url = match &cfg.storage.url {
        Some(u) => u.clone(),
        None => {
            let dir = cfg.data_dir.join("objects");
            let made = dir.clone();
            tokio::task::spawn_blocking(move || crate::private::dir(&made))
                .await
                .map_err(|e| Error::Invalid(format!("making {}: {e}", dir.display())))??;
            let dir = tokio::fs::canonicalize(&dir).await?;
            url::Url::from_directory_path(&dir)
                .map_err(|_| Error::Invalid(format!("{} is not an absolute path", dir.display())))?
                .to_string()
        }
    };
    let store = crate::storage::open_store(&url)?;
    Ok(Storage::new(store, master, cfg.storage.quotas))
}
