//! Per-tenant rate limits: a GCRA limiter (the `governor` crate) per plan,
//! keyed by the tenant's id, checked once per request right after the tenant
//! is resolved. One tenant's flood spends only its own allowance.
//!
//! Answers carry the IETF draft's `RateLimit-Limit`, `RateLimit-Remaining`
//! and `RateLimit-Reset`; a refused request is 429 `rate_limited` with
//! `Retry-After`. The limits live in this process: with several nodes each
//! enforces them on its own share of the traffic.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use tenancy::{PerPlan, Tenant, TenantId};

use crate::problem::ApiError;

/// A plan's allowance: a sustained rate and the burst it may spend at once.
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
}

const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

/// The allowance of each plan, per tenant (the whole organisation).
pub type PlanRates = PerPlan<Rate>;

/// The allowances a server has unless configured otherwise.
pub fn default_rates() -> PlanRates {
    PerPlan {
        free: Rate::new(nz(20), nz(100)),
        standard: Rate::new(nz(200), nz(400)),
        enterprise: Rate::new(nz(1000), nz(2000)),
    }
}

type Limiter = DefaultKeyedRateLimiter<TenantId, StateInformationMiddleware>;

/// The limiters of a server: one per plan, each keyed by tenant, so that a
/// tenant moved to another plan is counted by that plan's limiter at once.
pub struct TenantLimits {
    rates: PlanRates,
    limiters: PerPlan<Limiter>,
}

fn limiter(rate: Rate) -> Limiter {
    governor::RateLimiter::keyed(
        Quota::per_second(rate.requests_per_second).allow_burst(rate.burst),
    )
    .with_middleware::<StateInformationMiddleware>()
}

/// What a request may do, per its tenant's limiter.
pub struct Verdict {
    limit: u32,
    remaining: u32,
    /// Seconds until the allowance is whole again (allowed), or until the
    /// next request may pass (refused).
    reset: u64,
    allowed: bool,
}

impl TenantLimits {
    pub fn new(rates: PlanRates) -> Self {
        Self {
            rates,
            limiters: rates.map(|r| limiter(*r)),
        }
    }

    pub fn rates(&self) -> &PlanRates {
        &self.rates
    }

    /// Counts one request of `tenant`.
    pub fn check(&self, tenant: &Tenant) -> Verdict {
        let rate = self.rates.get(tenant.plan);
        let limiter = self.limiters.get(tenant.plan);
        let burst = rate.burst.get();
        match limiter.check_key(&tenant.id) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // Refilled at the plan's rate: whole again after this long.
                let missing = u64::from(burst.saturating_sub(remaining));
                let per_second = u64::from(rate.requests_per_second.get());
                Verdict {
                    limit: burst,
                    remaining,
                    reset: missing.div_ceil(per_second),
                    allowed: true,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Verdict {
                    limit: burst,
                    remaining: 0,
                    reset: ceil_secs(wait),
                    allowed: false,
                }
            }
        }
    }

    /// Forgets tenants whose allowance is whole again (bounded memory
    /// whatever the number of tenants seen).
    pub fn forget_idle(&self) {
        let l = &self.limiters;
        for l in [&l.free, &l.standard, &l.enterprise] {
            l.retain_recent();
            l.shrink_to_fit();
        }
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
    pub fn refusal(&self) -> Response {
        let mut res = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this organisation is sending requests faster than its plan allows",
        )
        .retry_after(self.reset.max(1))
        .into_response();
        self.apply(res.headers_mut());
        res
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
