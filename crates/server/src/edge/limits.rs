//! Rate limits, GCRA, checked at the edge: each tenant's allowance from its
//! plan (right after the tenant is resolved), then each user's or API key's
//! share of it (right after authentication). One tenant's flood spends only
//! its own allowance; one user's, only theirs.
//!
//! With Redis (`--redis-url`) the state lives in Redis, one atomic script per
//! check, so that a limit holds across every node. Without it — or while
//! Redis is unavailable, logged and counted — each node limits on its own
//! with `governor`, and goes back to Redis as soon as it answers.
//!
//! Answers carry the IETF draft's `RateLimit-Limit`, `RateLimit-Remaining`
//! and `RateLimit-Reset`; a refused request is 429 `rate_limited` with
//! `Retry-After`.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use tenancy::{PerPlan, Plan, Redis, Tenant, TenantId};

use crate::problem::ApiError;

pub use tenancy::Rate;

const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

/// The allowance of each plan.
pub type PlanRates = PerPlan<Rate>;

/// Each tenant's allowance (the whole organisation), unless configured otherwise.
pub fn default_rates() -> PlanRates {
    PerPlan {
        free: Rate::new(nz(20), nz(100)),
        standard: Rate::new(nz(200), nz(400)),
        enterprise: Rate::new(nz(1000), nz(2000)),
    }
}

/// Each user's (or API key's) allowance inside its tenant's, unless
/// configured otherwise.
pub fn default_user_rates() -> PlanRates {
    PerPlan {
        free: Rate::new(nz(10), nz(50)),
        standard: Rate::new(nz(50), nz(100)),
        enterprise: Rate::new(nz(100), nz(200)),
    }
}

type Limiter<K> = RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    governor::clock::DefaultClock,
    StateInformationMiddleware,
>;

/// Per-node limiters, one per plan, keyed: a tenant moved to another plan is
/// counted by that plan's limiter at once.
struct Local<K: Hash + Eq + Clone> {
    rates: PlanRates,
    limiters: PerPlan<Limiter<K>>,
}

impl<K: Hash + Eq + Clone> Local<K> {
    fn new(rates: PlanRates) -> Self {
        Self {
            rates,
            limiters: rates.map(|r| {
                RateLimiter::keyed(Quota::per_second(r.requests_per_second).allow_burst(r.burst))
                    .with_middleware::<StateInformationMiddleware>()
            }),
        }
    }

    fn check(&self, plan: Plan, key: &K) -> Verdict {
        let rate = self.rates.get(plan);
        let limiter = self.limiters.get(plan);
        let burst = rate.burst.get();
        match limiter.check_key(key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // Refilled at the plan's rate: whole again after this long.
                let missing = burst.saturating_sub(remaining);
                Verdict {
                    limit: burst,
                    remaining,
                    reset: ceil_secs(rate.interval() * missing),
                    allowed: true,
                }
            }
            Err(not_until) => Verdict {
                limit: burst,
                remaining: 0,
                reset: ceil_secs(not_until.wait_time_from(limiter.clock().now())),
                allowed: false,
            },
        }
    }

    fn forget_idle(&self) {
        let l = &self.limiters;
        for l in [&l.free, &l.standard, &l.enterprise] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// A server's rate limits: per tenant, and per user inside a tenant.
pub struct Limits {
    tenants: Local<TenantId>,
    users: Local<(TenantId, String)>,
    refused: Refused,
    /// Refusals being held back (see [`Limits::slow_down`]).
    held: tokio::sync::Semaphore,
}

/// How long a refused request is held before its 429 is sent: 150 ms plus
/// up to 100 ms of jitter, so that held clients do not all come back at once.
const HOLD: Duration = Duration::from_millis(150);
const HOLD_JITTER_MS: u32 = 100;
/// At most this many refusals are held at once; past that, they are sent at
/// once (holding must not cost the server more than answering).
const MAX_HELD: usize = 4096;

/// Allowances Redis said are spent, until when: asked again before then,
/// this node refuses on its own, without a round trip. Exact: a refused
/// request changes nothing in GCRA, and other nodes can only push the time
/// further, so Redis would refuse too. When the time comes, one request —
/// the probe — asks Redis, and the others arriving within one emission
/// interval are refused here meanwhile: only one more request's worth had
/// accrued, so at most that much is refused that Redis might have let
/// through. A flood past a limit thus costs Redis about one call per
/// emission interval and node, not one per request.
#[derive(Default)]
struct Refused(std::sync::Mutex<std::collections::HashMap<(TenantId, String), Spent>>);

#[derive(Clone, Copy)]
struct Spent {
    /// Refused here until then.
    until: Instant,
    /// The allowance Redis refused; a plan changed since is asked again.
    rate: Rate,
}

impl Refused {
    /// The refusal in force for `key` at `rate`, if any; `None` means "ask
    /// Redis" (and may make this request the probe of an expired refusal).
    fn get(&self, key: &(TenantId, String), rate: Rate) -> Option<Verdict> {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let spent = map.get_mut(key)?;
        if spent.rate != rate || now >= spent.until + rate.interval() {
            // Another plan, or long enough ago that more than one request's
            // worth has accrued: ask Redis, as many at once as come.
            map.remove(key);
            return None;
        }
        if now >= spent.until {
            // Just expired: this request is the probe. Others are refused
            // here for one interval, or until the probe's answer is noted.
            spent.until = now + rate.interval();
            return None;
        }
        Some(Verdict {
            limit: rate.burst.get(),
            remaining: 0,
            reset: ceil_secs(spent.until - now),
            allowed: false,
        })
    }

    /// What Redis answered for `key`: a refusal is remembered, a pass
    /// forgets any refusal (the next requests ask Redis again).
    fn note(&self, key: (TenantId, String), v: &tenancy::shared::Gcra, rate: Rate) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.allowed {
            map.remove(&key);
            return;
        }
        if map.len() >= 100_000 {
            map.retain(|_, s| s.until + s.rate.interval() > now);
        }
        map.insert(
            key,
            Spent {
                until: now + v.wait,
                rate,
            },
        );
    }

    fn forget_idle(&self) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.until + s.rate.interval() > now);
        map.shrink_to_fit();
    }
}

/// Who a per-user limit counts: a user, or an API key (which acts for none).
pub enum Holder<'a> {
    User(&'a str),
    ApiKey(&'a str),
}

/// What a request may do.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    limit: u32,
    remaining: u32,
    /// Seconds until the allowance is whole again (allowed), or until the
    /// next request may pass (refused).
    reset: u64,
    allowed: bool,
}

impl Verdict {
    fn from_shared(rate: Rate, v: tenancy::shared::Gcra) -> Self {
        Self {
            limit: rate.burst.get(),
            remaining: v.remaining.min(rate.burst.get()),
            reset: ceil_secs(v.wait),
            allowed: v.allowed,
        }
    }
}

impl Limits {
    pub fn new(tenant_rates: PlanRates, user_rates: PlanRates) -> Self {
        Self {
            tenants: Local::new(tenant_rates),
            users: Local::new(user_rates),
            refused: Refused::default(),
            held: tokio::sync::Semaphore::new(MAX_HELD),
        }
    }

    /// Each plan's allowance per tenant.
    pub fn rates(&self) -> &PlanRates {
        &self.tenants.rates
    }

    /// Each plan's allowance per user.
    pub fn user_rates(&self) -> &PlanRates {
        &self.users.rates
    }

    /// Counts one request of `tenant`.
    pub async fn check(&self, shared: Option<&Redis>, tenant: &Tenant) -> Verdict {
        let rate = *self.tenants.rates.get(tenant.plan);
        if let Some(redis) = shared
            && let Some(v) = self.shared(redis, tenant, "tenant".into(), rate).await
        {
            return v;
        }
        self.tenants.check(tenant.plan, &tenant.id)
    }

    /// One GCRA step in Redis on `name` of `tenant` — unless Redis refused
    /// it moments ago at the same rate. `None` when Redis is unavailable.
    async fn shared(
        &self,
        redis: &Redis,
        tenant: &Tenant,
        name: String,
        rate: Rate,
    ) -> Option<Verdict> {
        let key = (tenant.id, name);
        if let Some(v) = self.refused.get(&key, rate) {
            return Some(v);
        }
        let v = redis
            .gcra(tenant.id, &key.1, rate.interval(), rate.burst.get(), true)
            .await?;
        self.refused.note(key, &v, rate);
        Some(Verdict::from_shared(rate, v))
    }

    /// Counts one request of a user (or API key) of `tenant`.
    pub async fn check_user(
        &self,
        shared: Option<&Redis>,
        tenant: &Tenant,
        who: Holder<'_>,
    ) -> Verdict {
        let rate = *self.users.rates.get(tenant.plan);
        let name = match who {
            Holder::User(id) => format!("user:{id}"),
            Holder::ApiKey(id) => format!("api_key:{id}"),
        };
        if let Some(redis) = shared
            && let Some(v) = self.shared(redis, tenant, name.clone(), rate).await
        {
            return v;
        }
        self.users.check(tenant.plan, &(tenant.id, name))
    }

    /// Holds a refused request for a moment before its 429 leaves. A client
    /// looping as fast as it is answered — the usual flood — then sends a
    /// few requests a second per connection instead of thousands, so its
    /// refusals stop taking the CPU its neighbours' requests need. A client
    /// that respects `Retry-After` never notices. Costs a timer, for at most
    /// `MAX_HELD` requests at once.
    pub async fn slow_down(&self) {
        if let Ok(_permit) = self.held.try_acquire() {
            // Jitter, not a secret: the clock's nanoseconds will do.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let jitter = Duration::from_millis(u64::from(nanos % HOLD_JITTER_MS));
            tokio::time::sleep(HOLD + jitter).await;
        }
    }

    /// Forgets keys whose allowance is whole again (bounded memory
    /// whatever the number of tenants and users seen).
    pub fn forget_idle(&self) {
        self.tenants.forget_idle();
        self.users.forget_idle();
        self.refused.forget_idle();
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The `RateLimit-*` headers of this verdict.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset));
    }

    /// The answer to a refused request: 429 `rate_limited`.
    pub fn refusal(&self, whose: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{whose} is sending requests faster than its plan allows"),
        )
        .retry_after(self.reset.max(1));
        let mut headers = HeaderMap::new();
        self.apply(&mut headers);
        e.headers = headers
            .into_iter()
            .filter_map(|(name, value)| Some((name?, value)))
            .collect();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
