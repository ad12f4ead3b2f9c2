//! Where the cache meets the tenant: [`TenantCache`], a handle scoped to one
//! tenant, is the only way to read or write a cache entry.
//!
//! One key rule, whatever the backend: `<environment>:<tenant uuid>:<generation>:<key>`.
//! The tenant's uuid comes from its [`TenantId`], never from input, so two
//! tenants' entries cannot collide whatever `<key>` is. Flushing a tenant
//! bumps its generation — one write, O(1), never a scan and never a
//! `FLUSHDB` — and entries of older generations are never read again (they
//! expire, or are evicted).
//!
//! Two backends, chosen at start-up: in process (the embedded default, see
//! [`local`]) and Redis (`--redis-url`), where generations live in Redis so
//! that a flush on one node is seen by every node's next read.
//!
//! A read returns a [`Ticket`]: the generation it saw. An entry is written
//! under that generation, so a value loaded from the database before a
//! concurrent flush lands in a dead generation and is never served. Writers
//! flush *after* their transaction commits.
//!
//! If Redis fails, reads bypass the cache (straight to the database). A
//! flush is marked pending on this node before it is sent, and unmarked
//! only once Redis has it: until then this node bypasses that tenant's
//! entries, and a background task writes it as soon as Redis answers —
//! even if the request that flushed went away mid-flush. Other nodes see it
//! when it is written (within `REPLAY_EVERY` of Redis answering again).

mod local;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::id::TenantId;
use crate::shared::Redis;

/// How the cache is set up.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The first part of every key (`prod`, `staging`…): several deployments
    /// can share one Redis. 1-32 of a-z, 0-9, `-` and `_`.
    pub environment: String,
    /// Redis for a cache (and limits) shared by every node; `None` keeps the
    /// cache in this process.
    pub redis_url: Option<String>,
    /// The in-process cache's size in bytes; one tenant may use at most an
    /// eighth of it, so that no tenant can evict all the others' entries.
    pub local_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            environment: "campus".into(),
            redis_url: None,
            local_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The full key of `key` in `tenant`'s generation `generation`.
pub fn entry_key(environment: &str, tenant: TenantId, generation: &str, key: &str) -> String {
    format!("{environment}:{tenant}:{generation}:{key}")
}

/// A key part the code names: printable ASCII, no spaces, at most 200 bytes.
fn valid_key(key: &str) -> bool {
    (1..=200).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The generation a read saw; an entry is written under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket(String);

/// What a read found.
#[derive(Debug)]
pub enum Lookup<T> {
    Hit(T),
    /// Not cached: load it, and [`TenantCache::put`] it with this ticket.
    Miss(Ticket),
    /// The cache cannot be used now (Redis unavailable, a flush of the
    /// tenant not written yet, or a key refused): load it and do not cache it.
    Bypass,
}

enum Backend {
    Local(local::Local),
    Redis(Arc<Redis>),
}

/// The cache of every tenant. Reach it through [`crate::Kernel::cache`].
pub struct Cache {
    env: String,
    backend: Backend,
    /// Tenants whose flush is not written to Redis yet.
    pending: Arc<Mutex<Pending>>,
}

/// An entry larger than this is not cached (in Redis, where there is no
/// per-tenant budget, one tenant's large values must not crowd out the
/// others' or slow the connection every node shares).
const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// How often flushes Redis missed are retried in the background, so that
/// other nodes see them soon after Redis returns (not only when this node
/// next reads the cache).
const REPLAY_EVERY: Duration = Duration::from_millis(100);

static FLUSH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local g = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = math.max(g + 1, now)
redis.call('SET', KEYS[1], string.format('%d', n), 'EX', 86400)
return string.format('%d', n)
",
    )
});

/// The generation is made from Redis's clock when missing (first use, Redis
/// restarted empty, evicted, or expired: it lives a day, so that a purged
/// tenant leaves nothing behind), so that it never goes back to a value
/// whose entries could still exist.
static GET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local g = redis.call('GET', KEYS[1])
if not g then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])), 'NX', 'EX', 86400)
  g = redis.call('GET', KEYS[1])
end
return {g, redis.call('GET', ARGV[1] .. g .. ':' .. ARGV[2])}
",
    )
});

impl Cache {
    pub(crate) fn local(cfg: &CacheConfig) -> Self {
        Self {
            env: cfg.environment.clone(),
            backend: Backend::Local(local::Local::new(cfg.local_bytes)),
            pending: Arc::default(),
        }
    }

    /// The cache in Redis. Flushes Redis missed are retried in the
    /// background for as long as the cache lives.
    pub(crate) fn redis(redis: Arc<Redis>) -> Self {
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let (weak, link) = (Arc::downgrade(&pending), redis.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REPLAY_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pending) = weak.upgrade() else { break };
                replay(&pending, &link).await;
            }
        });
        Self {
            env: redis.environment().to_owned(),
            backend: Backend::Redis(redis),
            pending,
        }
    }

    /// The handle on `tenant`'s entries.
    pub fn tenant(&self, tenant: TenantId) -> TenantCache<'_> {
        TenantCache {
            cache: self,
            tenant,
        }
    }

    /// `redis` or `local`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis(_) => "redis",
        }
    }

    /// Destroys every entry of a purged tenant. With Redis, its generation
    /// is bumped first (so nothing of it is served even if the removal is
    /// cut short), then its keys are removed.
    /// Drops the tenant's entries held in this process (none with Redis).
    pub(crate) fn forget_local(&self, tenant: TenantId) {
        if let Backend::Local(l) = &self.backend {
            l.forget(tenant);
        }
    }

    /// What of the tenant's entries is still there (a purge's check):
    /// this process's partition, or its keys in Redis.
    pub(crate) async fn remains(&self, tenant: TenantId) -> crate::Result<(String, bool)> {
        match &self.backend {
            Backend::Local(l) => Ok(("cache entries in this process".into(), l.holds(tenant))),
            Backend::Redis(r) => {
                let what = format!("Redis keys {}*", r.prefix(tenant));
                match r.count_tenant_keys(tenant).await {
                    Some(n) => Ok((what, n > 0)),
                    None => Err(crate::Error::Unavailable(format!(
                        "Redis did not answer while checking {what}"
                    ))),
                }
            }
        }
    }

    pub(crate) async fn purge(&self, tenant: TenantId) {
        match &self.backend {
            Backend::Local(l) => l.forget(tenant),
            Backend::Redis(r) => {
                self.tenant(tenant).flush().await;
                if !r.forget_tenant(tenant).await {
                    tracing::warn!(target: "campus::redis", %tenant,
                        "a purged tenant's cache entries are left to expire: Redis is unavailable");
                }
            }
        }
    }
}

/// Flushes sent or to send to Redis, by tenant: the latest flush's mark,
/// and from when the background replays it (at once if Redis missed it;
/// else once the request sending it has had its time, in case it was
/// dropped). Marks are never reused, so a flush written only unmarks its
/// tenant if no later flush of it was marked meanwhile.
#[derive(Default)]
struct Pending {
    last_mark: u64,
    by_tenant: HashMap<TenantId, (u64, Instant)>,
}

impl Pending {
    fn mark(&mut self, tenant: TenantId) -> u64 {
        self.last_mark += 1;
        let replay_from = Instant::now() + crate::shared::CALL_TIMEOUT;
        self.by_tenant.insert(tenant, (self.last_mark, replay_from));
        self.last_mark
    }

    fn missed(&mut self, tenant: TenantId, mark: u64) {
        if let Some((m, replay_from)) = self.by_tenant.get_mut(&tenant)
            && *m == mark
        {
            *replay_from = Instant::now();
        }
    }

    fn written(&mut self, tenant: TenantId, mark: u64) {
        if self.by_tenant.get(&tenant).is_some_and(|(m, _)| *m == mark) {
            self.by_tenant.remove(&tenant);
        }
    }

    /// Whether a flush of `tenant` is not written yet (its entries are not
    /// read meanwhile).
    fn holds(&self, tenant: TenantId) -> bool {
        self.by_tenant.contains_key(&tenant)
    }

    /// The flushes the background should write now.
    fn due(&self) -> Vec<(TenantId, u64)> {
        let now = Instant::now();
        self.by_tenant
            .iter()
            .filter(|(_, (_, from))| *from <= now)
            .map(|(t, (m, _))| (*t, *m))
            .collect()
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the flushes not written yet, tried even while requests skip
/// Redis, so that each is written as soon as Redis is back — before other
/// nodes, whose requests still skip Redis for a moment, read from it again.
async fn replay(pending: &Mutex<Pending>, redis: &Redis) {
    let waiting = lock(pending).due();
    if waiting.is_empty() {
        return;
    }
    for (tenant, mark) in waiting {
        if redis_flush(redis, tenant, true).await.is_none() {
            return;
        }
        lock(pending).written(tenant, mark);
    }
    tracing::info!(target: "campus::redis", "flushes Redis missed are written");
}

/// Bumps `tenant`'s generation in Redis; in the `background`, even while
/// requests skip Redis.
async fn redis_flush(redis: &Redis, tenant: TenantId, background: bool) -> Option<String> {
    let gen_key = format!("{}gen", redis.prefix(tenant));
    let flush = |mut c: redis::aio::ConnectionManager| async move {
        FLUSH.key(&gen_key).invoke_async(&mut c).await
    };
    if background {
        redis.attempt("cache_flush", flush).await
    } else {
        redis.call("cache_flush", flush).await
    }
}

fn count(tenant: TenantId, result: &'static str) {
    metrics::counter!("campus_cache_lookups_total", "tenant" => tenant.to_string(), "result" => result)
        .increment(1);
}

/// One tenant's cache entries.
pub struct TenantCache<'a> {
    cache: &'a Cache,
    tenant: TenantId,
}

impl TenantCache<'_> {
    /// The entry `key`, if cached in the tenant's current generation.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Lookup<T> {
        if !valid_key(key) {
            tracing::warn!(key, "cache key refused");
            return Lookup::Bypass;
        }
        let found = match &self.cache.backend {
            Backend::Local(l) => Some(l.get(&self.cache.env, self.tenant, key)),
            Backend::Redis(r) => {
                if !lock(&self.cache.pending).holds(self.tenant) {
                    let prefix = r.prefix(self.tenant);
                    let gen_key = format!("{prefix}gen");
                    r.call("cache_get", |mut c| async move {
                        let (g, v): (String, Option<Vec<u8>>) = GET
                            .key(&gen_key)
                            .arg(&prefix)
                            .arg(key)
                            .invoke_async(&mut c)
                            .await?;
                        Ok((Ticket(g), v))
                    })
                    .await
                } else {
                    None
                }
            }
        };
        let Some((ticket, bytes)) = found else {
            count(self.tenant, "bypass");
            return Lookup::Bypass;
        };
        match bytes.map(|b| serde_json::from_slice(&b)) {
            Some(Ok(v)) => {
                count(self.tenant, "hit");
                Lookup::Hit(v)
            }
            Some(Err(e)) => {
                // Written by another build, say: load it again.
                tracing::warn!(key, error = %e, "cache entry unreadable");
                count(self.tenant, "miss");
                Lookup::Miss(ticket)
            }
            None => {
                count(self.tenant, "miss");
                Lookup::Miss(ticket)
            }
        }
    }

    /// Caches `value` as `key` for `ttl`, in the generation `ticket` saw.
    pub async fn put<T: Serialize>(&self, ticket: Ticket, key: &str, value: &T, ttl: Duration) {
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        if ttl.is_zero() || bytes.len() > MAX_ENTRY_BYTES {
            return;
        }
        match &self.cache.backend {
            Backend::Local(l) => l.put(&self.cache.env, self.tenant, &ticket.0, key, bytes, ttl),
            Backend::Redis(r) => {
                let full = entry_key(&self.cache.env, self.tenant, &ticket.0, key);
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                let _: Option<()> = r
                    .call("cache_put", |mut c| async move {
                        redis::cmd("SET")
                            .arg(&full)
                            .arg(bytes)
                            .arg("PX")
                            .arg(ms)
                            .query_async(&mut c)
                            .await
                    })
                    .await;
            }
        }
    }

    /// The entry `key`, or `load`ed and cached for `ttl`.
    pub async fn get_or_load<T, E>(
        &self,
        key: &str,
        ttl: Duration,
        load: impl AsyncFnOnce() -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
    {
        match self.get(key).await {
            Lookup::Hit(v) => Ok(v),
            Lookup::Miss(ticket) => {
                let v = load().await?;
                self.put(ticket, key, &v, ttl).await;
                Ok(v)
            }
            Lookup::Bypass => load().await,
        }
    }

    /// Drops every entry of this tenant, on every node: bumps its generation.
    /// Call it after the write that made entries stale has committed.
    pub async fn flush(&self) {
        match &self.cache.backend {
            Backend::Local(l) => l.flush(self.tenant),
            Backend::Redis(r) => {
                // Marked before it is sent: should this request be dropped
                // before Redis answers (its client gone), the background
                // replay still writes it, and this node bypasses the
                // tenant's entries until then.
                let mark = lock(&self.cache.pending).mark(self.tenant);
                let written = redis_flush(r, self.tenant, false).await.is_some();
                let mut pending = lock(&self.cache.pending);
                if written {
                    pending.written(self.tenant, mark);
                } else {
                    pending.missed(self.tenant, mark);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u128) -> TenantId {
        TenantId::from(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_flush_written_unmarks_its_tenant_only_if_none_came_after_it() {
        let (a, b) = (id(1), id(2));
        let mut p = Pending::default();
        let first = p.mark(a);
        let second = p.mark(a);
        let other = p.mark(b);
        // The first flush written while a second is on its way: still pending.
        p.written(a, first);
        assert!(p.holds(a));
        p.written(a, second);
        assert!(!p.holds(a));
        // A mark is never reused: an old one cannot unmark a new flush.
        let third = p.mark(a);
        p.written(a, first);
        p.written(a, second);
        assert!(p.holds(a));
        p.written(a, third);
        p.written(b, other);
        assert!(p.by_tenant.is_empty());
    }

    #[test]
    fn the_background_replays_a_missed_flush_at_once_and_one_in_flight_later() {
        let (a, b) = (id(1), id(2));
        let mut p = Pending::default();
        let _in_flight = p.mark(a);
        let missed = p.mark(b);
        p.missed(b, missed);
        assert_eq!(p.due(), vec![(b, missed)]);
    }

    proptest! {
        /// Two tenants' keys never collide, whatever the keys and
        /// generations: the tenant's part is a fixed-length uuid between
        /// separators that neither the environment nor the uuid contain.
        #[test]
        fn keys_of_two_tenants_never_collide(
            a in any::<u128>(), b in any::<u128>(),
            ga in "[0-9]{1,20}", gb in "[0-9]{1,20}",
            ka in "\\PC{0,64}", kb in "\\PC{0,64}",
            env in "[a-z0-9_-]{1,32}",
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(
                entry_key(&env, id(a), &ga, &ka),
                entry_key(&env, id(b), &gb, &kb)
            );
        }

        /// Within one tenant, a new generation never meets an old one's keys.
        #[test]
        fn generations_never_collide(
            a in any::<u128>(), ga in 0u64.., gb in 0u64.., ka in "\\PC{0,64}", kb in "\\PC{0,64}",
        ) {
            prop_assume!(ga != gb);
            prop_assert_ne!(
                entry_key("campus", id(a), &ga.to_string(), &ka),
                entry_key("campus", id(a), &gb.to_string(), &kb)
            );
        }
    }

    #[tokio::test]
    async fn a_flush_leaves_every_other_tenant_alone() {
        let cache = Cache::local(&CacheConfig::default());
        let (a, b) = (cache.tenant(id(1)), cache.tenant(id(2)));
        for t in [&a, &b] {
            let Lookup::Miss(ticket) = t.get::<String>("k").await else {
                panic!("empty cache hit")
            };
            t.put(
                ticket,
                "k",
                &format!("{}", t.tenant),
                Duration::from_secs(60),
            )
            .await;
        }
        a.flush().await;
        assert!(matches!(a.get::<String>("k").await, Lookup::Miss(_)));
        match b.get::<String>("k").await {
            Lookup::Hit(v) => assert_eq!(v, id(2).to_string()),
            other => panic!("tenant b lost its entry: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_value_loaded_before_a_flush_is_never_served() {
        let cache = Cache::local(&CacheConfig::default());
        let t = cache.tenant(id(7));
        let Lookup::Miss(ticket) = t.get::<u32>("n").await else {
            panic!("empty cache hit")
        };
        // The value is loaded, a writer commits and flushes, then the
        // (now stale) value is put with the ticket of before the flush.
        t.flush().await;
        t.put(ticket, "n", &1u32, Duration::from_secs(60)).await;
        assert!(matches!(t.get::<u32>("n").await, Lookup::Miss(_)));
    }

    #[tokio::test]
    async fn the_same_key_in_two_tenants_is_two_entries() {
        let cache = Cache::local(&CacheConfig::default());
        let a = cache.tenant(id(1));
        let Lookup::Miss(ticket) = a.get::<String>("courses").await else {
            panic!("empty cache hit")
        };
        a.put(
            ticket,
            "courses",
            &"a's".to_owned(),
            Duration::from_secs(60),
        )
        .await;
        assert!(matches!(
            cache.tenant(id(2)).get::<String>("courses").await,
            Lookup::Miss(_)
        ));
    }
}
