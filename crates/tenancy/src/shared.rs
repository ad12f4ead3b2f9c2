//! Redis, shared by every node: the tenant cache's generations and entries,
//! and the GCRA state of rate limits and login throttles that must hold
//! across nodes.
//!
//! Redis trouble is not an outage. Every call is bounded by a short timeout;
//! after a failure, calls skip Redis for a moment and answer `None`, and the
//! caller falls back (cache bypassed, per-node limits). An outage is logged
//! once when it starts and once when it ends, and every call that could not
//! use Redis is counted in `campus_redis_unavailable_total{op}`. The
//! connection is re-established on its own: no restart is needed.
//!
//! Keys are `<environment>:<tenant uuid>:…`, built here from a [`TenantId`]
//! and parts the code names (never raw input). Limits that belong to no
//! tenant (per client address) use the nil UUID.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use crate::error::{Error, Result};
use crate::id::TenantId;

/// How long one Redis call may take before it counts as a failure.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long calls skip Redis after a failure before trying it again.
const BACKOFF: Duration = Duration::from_millis(500);

fn backoff_ms() -> u64 {
    u64::try_from(BACKOFF.as_millis()).unwrap_or(500)
}

/// Whether `e` says Redis cannot be reached or cannot serve (the breaker
/// opens), rather than refusing one call (it stays closed).
fn unreachable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            K::Server(S::BusyLoading | S::MasterDown | S::ClusterDown | S::TryAgain | S::ReadOnly)
                | K::AuthenticationFailed
                | K::ClusterConnectionNotFound
        )
}

/// GCRA in one atomic script, on Redis's own clock (so that every node
/// agrees on time). KEYS[1]: the theoretical arrival time (µs). ARGV: the
/// emission interval (µs), the burst, and 1 to spend one request or 0 only to
/// ask whether one would pass. Returns {allowed, remaining, µs}: µs until the
/// allowance is whole again when allowed, until the next request may pass
/// when refused.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now}
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return {1, math.floor((now - allow_at) / interval), new_tat - now}
";

/// Gives one request's worth back to a GCRA state (a login that succeeded
/// after it was counted). KEYS[1]: the theoretical arrival time (µs); ARGV[1]:
/// the emission interval (µs).
const REFUND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new_tat = tat - tonumber(ARGV[1])
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return 1
";

/// The connection to Redis, with its circuit breaker.
pub struct Redis {
    env: String,
    conn: ConnectionManager,
    gcra: Script,
    refund: Script,
    epoch: Instant,
    /// Calls skip Redis until this instant (ms since `epoch`).
    skip_until_ms: AtomicU64,
    /// Whether an outage is under way (for logging its start and end once).
    down: AtomicBool,
    /// Whether Redis ever answered since this node started.
    answered: AtomicBool,
}

/// A GCRA verdict from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub allowed: bool,
    /// Requests that could still pass at once.
    pub remaining: u32,
    /// Allowed: until the allowance is whole again. Refused: until the next
    /// request may pass.
    pub wait: Duration,
}

/// A sustained rate and the burst that may be spent at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    pub const fn new(requests_per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            requests_per_second,
            burst,
        }
    }

    /// One request's worth of the allowance.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.requests_per_second.get()
    }
}

/// `<environment>` must be a short name: it starts every key.
pub fn valid_environment(env: &str) -> bool {
    (1..=32).contains(&env.len())
        && env
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Redis {
    /// A connection to `url` (`redis://host:port/db`). Redis being down at
    /// start is not fatal (it is logged, and calls fall back until it
    /// answers); a malformed URL is.
    pub async fn connect(url: &str, env: &str) -> Result<Self> {
        if !valid_environment(env) {
            return Err(Error::Invalid(format!(
                "environment `{env}`: use 1-32 of a-z, 0-9, - and _"
            )));
        }
        let client =
            redis::Client::open(url).map_err(|e| Error::Invalid(format!("redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::Invalid(format!("redis: {e}")))?;
        let me = Self {
            env: env.to_owned(),
            conn,
            gcra: Script::new(GCRA),
            refund: Script::new(REFUND),
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            answered: AtomicBool::new(false),
        };
        let pong: Option<String> = me
            .call("ping", |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await;
        if pong.is_some() {
            tracing::info!(target: "campus::redis", "Redis answers: cache and limits are shared across nodes");
        }
        Ok(me)
    }

    /// The environment every key starts with.
    pub fn environment(&self) -> &str {
        &self.env
    }

    /// Whether Redis answers now (a PING within the call timeout), and
    /// whether it ever answered since this node started: a node whose Redis
    /// never answered is misconfigured, one whose Redis went away is
    /// degraded (it goes on without it).
    pub async fn health(&self) -> (bool, bool) {
        let pong: Option<String> = self
            .attempt("ping", |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await;
        (pong.is_some(), self.answered.load(Ordering::Relaxed))
    }

    /// Whether Redis answered once since this node started.
    pub fn ever_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// `<environment>:<tenant uuid>:` — the start of every key of `tenant`.
    pub fn prefix(&self, tenant: TenantId) -> String {
        format!("{}:{}:", self.env, tenant)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on the connection, bounded by the timeout; `None` when Redis
    /// is unavailable (logged and counted).
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let now = self.now_ms();
        let skip_until = self.skip_until_ms.load(Ordering::Relaxed);
        // During an outage, once the back-off is over, one call probes
        // Redis (and pushes the back-off on); the others keep skipping
        // instead of each waiting out the timeout.
        let skip = now < skip_until
            || (self.down.load(Ordering::Relaxed)
                && self
                    .skip_until_ms
                    .compare_exchange(
                        skip_until,
                        now + backoff_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err());
        if skip {
            metrics::counter!("campus_redis_unavailable_total", "op" => op).increment(1);
            return None;
        }
        self.attempt(op, f).await
    }

    /// Like [`Redis::call`], but tries Redis even while calls skip it: for
    /// background work that must reach Redis as soon as it is back (the
    /// flushes it missed), where waiting costs no request anything.
    pub(crate) async fn attempt<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let failure = match tokio::time::timeout(CALL_TIMEOUT, f(self.conn.clone())).await {
            Ok(Ok(v)) => {
                self.answered.store(true, Ordering::Relaxed);
                if self.down.swap(false, Ordering::Relaxed) {
                    self.skip_until_ms.store(0, Ordering::Relaxed);
                    tracing::info!(target: "campus::redis", "Redis is back: shared cache and limits resume");
                }
                return Some(v);
            }
            Ok(Err(e)) if !unreachable(&e) => {
                // Redis answered, with an error about this call (out of
                // memory, say): this call goes without, the others still try.
                metrics::counter!("campus_redis_unavailable_total", "op" => op).increment(1);
                tracing::debug!(target: "campus::redis", op, error = %e, "Redis refused a call");
                return None;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        metrics::counter!("campus_redis_unavailable_total", "op" => op).increment(1);
        self.skip_until_ms
            .store(self.now_ms() + backoff_ms(), Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "campus::redis",
                op,
                error = %failure,
                "Redis is unavailable: cache bypassed, rate limits per node until it answers"
            );
        }
        None
    }

    /// One GCRA step on `<environment>:<tenant>:limit:<name>`: one request
    /// per `interval` sustained, `burst` at once. Spends one request when
    /// `spend`, else only asks whether one would pass. `None` when Redis is
    /// unavailable: the caller limits per node.
    pub async fn gcra(
        &self,
        tenant: TenantId,
        name: &str,
        interval: Duration,
        burst: u32,
        spend: bool,
    ) -> Option<Gcra> {
        let key = format!("{}limit:{name}", self.prefix(tenant));
        let interval = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let (allowed, remaining, micros): (i64, i64, i64) = self
            .call("rate_limit", |mut c| async move {
                self.gcra
                    .key(&key)
                    .arg(interval)
                    .arg(burst.max(1))
                    .arg(if spend { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(Gcra {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            wait: Duration::from_micros(u64::try_from(micros.max(0)).unwrap_or(0)),
        })
    }

    /// Gives one `interval` back to `<environment>:<tenant>:limit:<name>`.
    /// `false` when Redis is unavailable.
    pub async fn refund_limit(&self, tenant: TenantId, name: &str, interval: Duration) -> bool {
        let key = format!("{}limit:{name}", self.prefix(tenant));
        let interval = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.call("rate_limit", |mut c| async move {
            self.refund
                .key(&key)
                .arg(interval)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// Forgets `<environment>:<tenant>:limit:<name>` (a login that succeeded
    /// clears its failures). `false` when Redis is unavailable.
    pub async fn forget_limit(&self, tenant: TenantId, name: &str) -> bool {
        let key = format!("{}limit:{name}", self.prefix(tenant));
        self.call("rate_limit", |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await
        })
        .await
        .is_some()
    }

    /// How many keys of `tenant` (`<environment>:<uuid>:*`) Redis holds;
    /// `None` when Redis is unavailable. A purge's check.
    pub async fn count_tenant_keys(&self, tenant: TenantId) -> Option<u64> {
        let pattern = format!("{}*", self.prefix(tenant));
        let (mut cursor, mut found) = (0u64, 0u64);
        loop {
            let pattern = &pattern;
            let (next, n): (u64, u64) = self
                .call("count_tenant_keys", |mut c| async move {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    Ok((next, keys.len() as u64))
                })
                .await?;
            found += n;
            if next == 0 {
                return Some(found);
            }
            cursor = next;
        }
    }

    /// Removes every key of `tenant` (`<environment>:<uuid>:*`): its cache
    /// entries of every generation and its limits. Only for a purged tenant —
    /// a flush never scans. `false` when Redis is unavailable.
    pub async fn forget_tenant(&self, tenant: TenantId) -> bool {
        let pattern = format!("{}*", self.prefix(tenant));
        let mut cursor: u64 = 0;
        loop {
            let pattern = &pattern;
            let page: Option<(u64, Vec<String>)> = self
                .call("forget_tenant", |mut c| async move {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    if !keys.is_empty() {
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<i64>(&mut c)
                            .await?;
                    }
                    Ok((next, keys))
                })
                .await;
            match page {
                Some((0, _)) => return true,
                Some((next, _)) => cursor = next,
                None => return false,
            }
        }
    }
}
