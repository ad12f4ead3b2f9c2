//! The login throttle: guessing is slowed without handing anyone a lockout.
//!
//! Failed logins are counted three ways, each a GCRA budget (`max_failures`
//! at once, then one more per `window / max_failures`):
//!
//! * per (tenant, account, client address) — tight: one address guessing one
//!   account is stopped after a few tries, and only that address is;
//! * per client address, over every tenant and account — one address
//!   guessing many accounts;
//! * per (tenant, account), from anywhere — much looser: a ceiling on a
//!   guess spread over many addresses.
//!
//! An attempt spends one of each before its password is checked (so that
//! guesses sent at once each count); a login that succeeds gives back what
//! it spent and clears its (tenant, account, address) count; a refused
//! attempt keeps nothing. The account is named by a SHA-256 of its
//! normalised email and the address by its text (an IPv6 address by its
//! /64), so no key is longer than a few dozen bytes whatever a client sends.
//!
//! With Redis the counts are shared by every node (one atomic script each);
//! without it, or while Redis is unavailable, each node counts on its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tenancy::{Redis, TenantId};

use crate::error::{Error, Result};

/// Where a request came from, as the limits key it: an IPv4 address, an
/// IPv6 /64, or `unknown` (no socket address: one shared bucket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientAddr(String);

impl ClientAddr {
    pub fn new(ip: Option<IpAddr>) -> Self {
        let Some(ip) = ip else {
            return Self::unknown();
        };
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => Self(v4.to_string()),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                Self(format!("{net}/64"))
            }
        }
    }

    pub fn unknown() -> Self {
        Self("unknown".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `max_failures` at once, then one more per `window / max_failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_failures: u32,
    pub window: Duration,
}

impl Budget {
    pub const fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
        }
    }

    fn interval(&self) -> Duration {
        self.window / self.max_failures.max(1)
    }
}

/// The three budgets of the throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// One account from one address: 5 per 15 minutes.
    pub per_account_address: Budget,
    /// One address, whatever the account or tenant: 100 per 15 minutes.
    pub per_address: Budget,
    /// One account, from anywhere: 100 per hour.
    pub per_account: Budget,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_account_address: Budget::new(5, Duration::from_secs(15 * 60)),
            per_address: Budget::new(100, Duration::from_secs(15 * 60)),
            per_account: Budget::new(100, Duration::from_secs(60 * 60)),
        }
    }
}

/// The scope of counts that belong to no tenant (per address): the nil id.
fn everyone() -> TenantId {
    uuid::Uuid::nil().into()
}

/// One GCRA budget, in Redis or in this process.
struct Bucket {
    /// `account_address`, `address` or `account`: in metrics, logs and keys.
    kind: &'static str,
    budget: Budget,
    /// (scope, key): the theoretical arrival time. Keys are bounded (hashes
    /// and addresses); expired entries are swept as the map grows.
    local: Mutex<HashMap<(TenantId, String), Instant>>,
    refused: Mutex<(Option<Instant>, u64)>,
}

const SWEEP_PAST: usize = 100_000;

impl Bucket {
    fn new(kind: &'static str, budget: Budget) -> Self {
        Self {
            kind,
            budget,
            local: Mutex::new(HashMap::new()),
            refused: Mutex::new((None, 0)),
        }
    }

    fn name(&self, key: &str) -> String {
        format!("login:{}:{key}", self.kind)
    }

    /// Spends one; Err with the seconds to wait when the budget is spent
    /// (and then nothing is spent).
    async fn spend(&self, shared: Option<&Redis>, scope: TenantId, key: &str) -> Result<(), u64> {
        let interval = self.budget.interval();
        let burst = self.budget.max_failures.max(1);
        if let Some(redis) = shared
            && let Some(v) = redis
                .gcra(scope, &self.name(key), interval, burst, true)
                .await
        {
            return if v.allowed {
                Ok(())
            } else {
                Err(v.wait.as_secs().max(1))
            };
        }
        let now = Instant::now();
        let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > SWEEP_PAST {
            map.retain(|_, tat| *tat > now);
            map.shrink_to_fit();
        }
        let k = (scope, key.to_owned());
        let tat = map.get(&k).map_or(now, |tat| (*tat).max(now)) + interval;
        if let Some(allow_at) = tat.checked_sub(interval * burst)
            && allow_at > now
        {
            return Err((allow_at - now).as_secs().max(1));
        }
        map.insert(k, tat);
        Ok(())
    }

    /// Gives back one spent (a login that succeeded, or was never checked).
    async fn refund(&self, shared: Option<&Redis>, scope: TenantId, key: &str) {
        if let Some(redis) = shared {
            redis
                .refund_limit(scope, &self.name(key), self.budget.interval())
                .await;
        }
        let now = Instant::now();
        let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let k = (scope, key.to_owned());
        if let Some(tat) = map.get_mut(&k) {
            match tat.checked_sub(self.budget.interval()) {
                Some(t) if t > now => *tat = t,
                _ => {
                    map.remove(&k);
                }
            }
        }
    }

    async fn forget(&self, shared: Option<&Redis>, scope: TenantId, key: &str) {
        if let Some(redis) = shared {
            redis.forget_limit(scope, &self.name(key)).await;
        }
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(scope, key.to_owned()));
    }

    /// Counted, and logged at most once per 10 s with the number since.
    fn refused(&self) {
        metrics::counter!("campus_login_throttled_total", "limit" => self.kind).increment(1);
        let now = Instant::now();
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        r.1 += 1;
        if r.0
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
        {
            tracing::warn!(
                limit = self.kind,
                refused = r.1,
                "login throttle refusing attempts (logged at most every 10 s)"
            );
            *r = (Some(now), 0);
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, tat| *tat > now);
        map.shrink_to_fit();
    }
}

/// Counts login attempts; see the module's documentation.
pub struct LoginThrottle {
    per_account_address: Bucket,
    per_address: Bucket,
    per_account: Bucket,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(ThrottleConfig::default())
    }
}

/// One attempt's keys, to settle it once its password is checked.
pub struct Attempt {
    tenant: TenantId,
    account: String,
    account_address: String,
    address: String,
}

impl LoginThrottle {
    pub fn new(c: ThrottleConfig) -> Self {
        Self {
            per_account_address: Bucket::new("account_address", c.per_account_address),
            per_address: Bucket::new("address", c.per_address),
            per_account: Bucket::new("account", c.per_account),
        }
    }

    /// Counts one attempt on `email` (normalised) of `tenant` from `client`:
    /// `RateLimited` when any budget is spent — and then nothing is counted.
    pub async fn attempt(
        &self,
        shared: Option<&Redis>,
        tenant: TenantId,
        email: &str,
        client: &ClientAddr,
    ) -> Result<Attempt> {
        let account = digest(email);
        let a = Attempt {
            tenant,
            account_address: format!("{account}:{}", client.as_str()),
            account,
            address: client.as_str().to_owned(),
        };
        let steps: [(&Bucket, TenantId, &str); 3] = [
            (&self.per_address, everyone(), &a.address),
            (&self.per_account_address, tenant, &a.account_address),
            (&self.per_account, tenant, &a.account),
        ];
        for (i, (bucket, scope, key)) in steps.iter().enumerate() {
            if let Err(retry_after_s) = bucket.spend(shared, *scope, key).await {
                bucket.refused();
                for (b, s, k) in &steps[..i] {
                    b.refund(shared, *s, k).await;
                }
                return Err(Error::RateLimited { retry_after_s });
            }
        }
        Ok(a)
    }

    /// The password was right: what the attempt spent is given back, and
    /// the account's failures from this address are forgotten.
    pub async fn succeeded(&self, shared: Option<&Redis>, a: &Attempt) {
        self.per_account_address
            .forget(shared, a.tenant, &a.account_address)
            .await;
        self.per_address
            .refund(shared, everyone(), &a.address)
            .await;
        self.per_account.refund(shared, a.tenant, &a.account).await;
    }

    /// The password was never checked (the server was too busy): the
    /// attempt counts for nothing.
    pub async fn not_checked(&self, shared: Option<&Redis>, a: &Attempt) {
        self.per_account_address
            .refund(shared, a.tenant, &a.account_address)
            .await;
        self.per_address
            .refund(shared, everyone(), &a.address)
            .await;
        self.per_account.refund(shared, a.tenant, &a.account).await;
    }

    /// Drops the counts that have run out (bounded memory).
    pub fn forget_idle(&self) {
        self.per_account_address.sweep();
        self.per_address.sweep();
        self.per_account.sweep();
    }
}

fn digest(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_by_ipv4_or_ipv6_64() {
        let k = |s: &str| ClientAddr::new(Some(s.parse().expect("ip"))).0;
        assert_eq!(k("192.0.2.1"), "192.0.2.1");
        assert_eq!(k("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(k("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64");
        assert_eq!(ClientAddr::new(None).0, "unknown");
    }

    #[tokio::test]
    async fn one_address_is_stopped_another_is_not_and_the_account_ceiling_holds() {
        let t = ThrottleConfig {
            per_account_address: Budget::new(2, Duration::from_secs(600)),
            per_address: Budget::new(100, Duration::from_secs(600)),
            per_account: Budget::new(4, Duration::from_secs(600)),
        };
        let th = LoginThrottle::new(t);
        let tenant = TenantId::new();
        let addr = |n: u8| ClientAddr::new(Some(IpAddr::from([192, 0, 2, n])));
        for _ in 0..2 {
            th.attempt(None, tenant, "a@x.test", &addr(1))
                .await
                .expect("counted");
        }
        assert!(
            th.attempt(None, tenant, "a@x.test", &addr(1))
                .await
                .is_err()
        );
        // Another address still gets through, and its success gives back.
        let ok = th
            .attempt(None, tenant, "a@x.test", &addr(2))
            .await
            .expect("counted");
        th.succeeded(None, &ok).await;
        // The ceiling: 2 spent from address 1; two more addresses fill it.
        th.attempt(None, tenant, "a@x.test", &addr(3))
            .await
            .expect("counted");
        th.attempt(None, tenant, "a@x.test", &addr(4))
            .await
            .expect("counted");
        assert!(
            th.attempt(None, tenant, "a@x.test", &addr(5))
                .await
                .is_err()
        );
        // A refusal by the ceiling did not spend address 5's own counts.
        let m = th.per_account_address.local.lock().expect("map");
        assert!(!m.keys().any(|(_, k)| k.ends_with(":192.0.2.5")));
    }
}
