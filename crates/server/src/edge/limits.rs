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

/// What unauthenticated requests (logins, missing or bad tokens, signed
/// links that do not hold) of a tenant may send, unless configured otherwise: their own
/// allowance, apart from (and smaller than) what its signed-in users spend.
pub fn default_anonymous_rates() -> PlanRates {
    PerPlan {
        free: Rate::new(nz(5), nz(20)),
        standard: Rate::new(nz(20), nz(50)),
        enterprise: Rate::new(nz(50), nz(100)),
    }
}

/// What unauthenticated requests from one client address may send, over
/// every tenant, unless configured otherwise.
pub fn default_address_rate() -> Rate {
    Rate::new(nz(10), nz(50))
}

/// The scope of limits that belong to no tenant (per client address).
fn everyone() -> TenantId {
    uuid::Uuid::nil().into()
}

/// A server's rate limits: per tenant, and per user inside a tenant; for
/// unauthenticated requests, per client address and per tenant.
pub struct Limits {
    tenants: Local<TenantId>,
    users: Local<(TenantId, String)>,
    anonymous: Local<TenantId>,
    addresses: Local<String>,
    address_rate: Rate,
    refused: Refused,
    /// Refusals being held back (see [`Limits::refuse`]): at most
    /// `MAX_HELD` in all, and how many of each tenant's.
    held: tokio::sync::Semaphore,
    held_by_tenant: std::sync::Mutex<std::collections::HashMap<TenantId, usize>>,
    log: RefusalLog,
}

/// Refusals are logged per tenant and limit, not per request: the first at
/// once, then at most one line per [`LOG_EVERY`] with how many there were
/// since — so that a flood cannot flood the logs (or spend the CPU and the
/// log pipeline its neighbours' lines need). `campus_rate_limited_total`
/// counts every one.
#[derive(Default)]
struct RefusalLog(std::sync::Mutex<std::collections::HashMap<(TenantId, &'static str), Tally>>);

struct Tally {
    slug: String,
    /// `None` until the first line.
    logged_at: Option<Instant>,
    /// Refused since `logged_at`, not logged yet.
    unlogged: u64,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn refused(&self, tenant: &Tenant, limit: &'static str) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let tally = map.entry((tenant.id, limit)).or_insert_with(|| Tally {
            slug: tenant.slug.to_string(),
            logged_at: None,
            unlogged: 0,
        });
        tally.unlogged += 1;
        if tally.due(now) {
            tally.log(limit, now);
        }
    }

    /// Logs what is left to log, and forgets the quiet.
    fn flush(&self) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(_, limit), tally| {
            if tally.unlogged > 0 && tally.due(now) {
                tally.log(limit, now);
            }
            !tally.due(now)
        });
        map.shrink_to_fit();
    }
}

impl Tally {
    fn due(&self, now: Instant) -> bool {
        self.logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
    }

    fn log(&mut self, limit: &str, now: Instant) {
        tracing::warn!(
            tenant = %self.slug,
            limit,
            refused = self.unlogged,
            "rate limit refusing requests (logged at most every 10 s)"
        );
        self.logged_at = Some(now);
        self.unlogged = 0;
    }
}

/// How long a refused request is held before its 429 is sent: 150 ms, times
/// one more for every `HELD_STEP` refusals of the same tenant already held,
/// up to `MAX_HOLD`; plus up to two thirds of that again of jitter, so that
/// held clients do not all come back at once. A tenant flooding over many
/// connections is thus slowed in proportion: its refusals come back at
/// about `HELD_STEP` per 200 ms (640/s) whatever its number of connections,
/// until the hold reaches its cap (past about 3,400 held).
const HOLD: Duration = Duration::from_millis(150);
const HELD_STEP: usize = 128;
const MAX_HOLD: Duration = Duration::from_secs(4);
/// The hold of a refusal with `before` of its tenant's held already; `nanos`
/// picks the jitter.
fn hold(before: usize, nanos: u32) -> Duration {
    let times = u32::try_from(before / HELD_STEP + 1).unwrap_or(u32::MAX);
    let hold = HOLD.checked_mul(times).unwrap_or(MAX_HOLD).min(MAX_HOLD);
    hold + hold.mul_f64(f64::from(nanos % 1000) / 1500.0)
}

/// At most this many refusals are held at once; past that, they are sent at
/// once (holding must not cost the server more than answering).
const MAX_HELD: usize = 16_384;

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

/// One held refusal of a tenant, counted while it lasts (dropped with the
/// request if its client goes away first).
struct HeldBy<'a> {
    map: &'a std::sync::Mutex<std::collections::HashMap<TenantId, usize>>,
    tenant: TenantId,
    /// How many of the tenant's were held already.
    before: usize,
}

impl<'a> HeldBy<'a> {
    fn enter(
        map: &'a std::sync::Mutex<std::collections::HashMap<TenantId, usize>>,
        tenant: TenantId,
    ) -> Self {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(tenant).or_default();
        let before = *n;
        *n += 1;
        Self {
            map,
            tenant,
            before,
        }
    }
}

impl Drop for HeldBy<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

/// Who a per-user limit counts: a user, or an API key (which acts for none).
pub enum Holder<'a> {
    User(&'a str),
    ApiKey(&'a str),
    /// A signed content link that holds, by its signature: one link (say
    /// one user's video, shared too widely) spends like one user.
    Link(&'a str),
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
        Self::with_anonymous(
            tenant_rates,
            user_rates,
            default_anonymous_rates(),
            default_address_rate(),
        )
    }

    pub fn with_anonymous(
        tenant_rates: PlanRates,
        user_rates: PlanRates,
        anonymous_rates: PlanRates,
        address_rate: Rate,
    ) -> Self {
        Self {
            tenants: Local::new(tenant_rates),
            users: Local::new(user_rates),
            anonymous: Local::new(anonymous_rates),
            addresses: Local::new(PerPlan {
                free: address_rate,
                standard: address_rate,
                enterprise: address_rate,
            }),
            address_rate,
            refused: Refused::default(),
            held: tokio::sync::Semaphore::new(MAX_HELD),
            held_by_tenant: Default::default(),
            log: RefusalLog::default(),
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
        self.shared_in(redis, tenant.id, name, rate).await
    }

    /// [`Limits::shared`] in any scope (a tenant, or [`everyone`]).
    async fn shared_in(
        &self,
        redis: &Redis,
        scope: TenantId,
        name: String,
        rate: Rate,
    ) -> Option<Verdict> {
        let key = (scope, name);
        if let Some(v) = self.refused.get(&key, rate) {
            return Some(v);
        }
        let v = redis
            .gcra(scope, &key.1, rate.interval(), rate.burst.get(), true)
            .await?;
        self.refused.note(key, &v, rate);
        Some(Verdict::from_shared(rate, v))
    }

    /// Each plan's allowance per tenant for unauthenticated requests.
    pub fn anonymous_rates(&self) -> &PlanRates {
        &self.anonymous.rates
    }

    /// Counts one unauthenticated request of `tenant` from `client`: first
    /// the address's allowance (over every tenant), then the tenant's
    /// anonymous one — never the allowance its signed-in users spend. `Err`
    /// names the limit that refused (`address` or `anonymous`).
    pub async fn check_anonymous(
        &self,
        shared: Option<&Redis>,
        tenant: &Tenant,
        client: &lms::throttle::ClientAddr,
    ) -> Result<Verdict, (Verdict, &'static str)> {
        let name = format!("address:{}", client.as_str());
        let rate = self.address_rate;
        let by_address = match shared {
            Some(redis) => self.shared_in(redis, everyone(), name.clone(), rate).await,
            None => None,
        }
        .unwrap_or_else(|| self.addresses.check(Plan::Free, &name));
        if !by_address.allowed() {
            return Err((by_address, "address"));
        }
        let rate = *self.anonymous.rates.get(tenant.plan);
        let v = match shared {
            Some(redis) => {
                self.shared_in(redis, tenant.id, "anonymous".into(), rate)
                    .await
            }
            None => None,
        }
        .unwrap_or_else(|| self.anonymous.check(tenant.plan, &tenant.id));
        if v.allowed() {
            Ok(v)
        } else {
            Err((v, "anonymous"))
        }
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
            Holder::Link(sig) => format!("link:{sig}"),
        };
        if let Some(redis) = shared
            && let Some(v) = self.shared(redis, tenant, name.clone(), rate).await
        {
            return v;
        }
        self.users.check(tenant.plan, &(tenant.id, name))
    }

    /// A request of `tenant` refused by its `limit` (`tenant`, `user`,
    /// `anonymous` or `address`):
    /// counted, logged (summed, see [`RefusalLog`]), then held for a moment
    /// before its 429 leaves (see [`HOLD`]: longer the more of the tenant's
    /// refusals are held already). A client looping as fast as it is answered —
    /// the usual flood — then sends a few requests a second per connection
    /// instead of thousands, so its refusals stop taking the CPU its
    /// neighbours' requests need. A client that respects `Retry-After` never
    /// notices. Holding costs a timer, for at most `MAX_HELD` requests at
    /// once.
    pub async fn refuse(&self, tenant: &Tenant, limit: &'static str) {
        super::metrics::rate_limited(&tenant.id, limit);
        self.log.refused(tenant, limit);
        let Ok(_permit) = self.held.try_acquire() else {
            return;
        };
        let held = HeldBy::enter(&self.held_by_tenant, tenant.id);
        // Jitter, not a secret: the clock's nanoseconds will do.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        tokio::time::sleep(hold(held.before, nanos)).await;
    }

    /// Forgets keys whose allowance is whole again (bounded memory
    /// whatever the number of tenants and users seen).
    pub fn forget_idle(&self) {
        self.tenants.forget_idle();
        self.users.forget_idle();
        self.anonymous.forget_idle();
        self.addresses.forget_idle();
        self.refused.forget_idle();
        self.log.flush();
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
    fn a_tenants_refusals_are_held_longer_the_more_of_them_are_held() {
        let ms = Duration::from_millis;
        assert_eq!(hold(0, 0), ms(150));
        assert!(hold(0, 999) < ms(250));
        assert_eq!(hold(HELD_STEP - 1, 0), ms(150));
        assert_eq!(hold(HELD_STEP, 0), ms(300));
        assert_eq!(hold(100 * HELD_STEP, 0), MAX_HOLD);
        assert!(hold(usize::MAX, 999) < MAX_HOLD * 5 / 3);
    }

    #[test]
    fn held_refusals_are_counted_per_tenant() {
        let map = std::sync::Mutex::default();
        let (a, b) = (TenantId::new(), TenantId::new());
        let held_a: Vec<_> = (0..3).map(|_| HeldBy::enter(&map, a)).collect();
        assert_eq!(
            held_a.iter().map(|h| h.before).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // Another tenant's flood does not lengthen this one's holds.
        assert_eq!(HeldBy::enter(&map, b).before, 0);
        drop(held_a);
        assert_eq!(HeldBy::enter(&map, a).before, 0);
        assert!(
            map.lock().unwrap().is_empty(),
            "dropped holds are forgotten"
        );
    }

    #[test]
    fn a_redis_refusal_is_remembered_then_probed_by_one_request() {
        use tenancy::shared::Gcra;
        let refused = Refused::default();
        let key = (TenantId::new(), "tenant".to_owned());
        let (rate, other_plan) = (rate(1, 5), rate(2, 5));
        let answer = |allowed, wait| Gcra {
            allowed,
            remaining: 0,
            wait,
        };
        assert!(
            refused.get(&key, rate).is_none(),
            "nothing known: ask Redis"
        );

        refused.note(key.clone(), &answer(false, Duration::from_secs(10)), rate);
        let v = refused.get(&key, rate).expect("refused on the node");
        assert!(!v.allowed && v.reset == 10, "{v:?}");
        assert!(
            refused.get(&key, other_plan).is_none(),
            "another plan asks Redis"
        );

        // Just expired: the first request asks Redis, the next ones are
        // refused on the node for one interval (1 s at 1/s)…
        refused.note(key.clone(), &answer(false, Duration::ZERO), rate);
        assert!(refused.get(&key, rate).is_none(), "the probe asks Redis");
        assert!(refused.get(&key, rate).is_some(), "the others wait for it");
        // …until Redis lets the probe through: then all ask again.
        refused.note(key.clone(), &answer(true, Duration::ZERO), rate);
        assert!(refused.get(&key, rate).is_none());
        assert!(refused.get(&key, rate).is_none());
    }

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate::new(nz(per_second), nz(burst))
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
