//! What the console shows of a tenant's traffic over the last hour, as this
//! node saw it: per minute, requests, refusals (429, 503), server errors and
//! latency; and its stored bytes, sampled once a minute by the fleet task.
//!
//! Bounded whatever the number of tenants: a tenant is kept only while it
//! has a minute in the last hour (a sweep drops the rest), each in a fixed
//! ring of 60 minutes (about 1.5 KiB); storage samples are kept for tenants
//! that store something, 60 of them each. Prometheus holds the fleet-wide,
//! longer view; this is what an operator glances at.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tenancy::TenantId;

/// Minutes kept.
pub const MINUTES: usize = 60;

#[derive(Debug, Clone, Copy, Default)]
pub struct Minute {
    /// Unix minute this slot holds (0: never used).
    pub at: u64,
    pub requests: u32,
    /// 429 and 503: the server said no (rate limits, overload).
    pub refused: u32,
    /// 5xx other than 503.
    pub errors: u32,
    pub latency_us_sum: u64,
    pub latency_us_max: u32,
}

#[derive(Debug, Clone, Copy)]
struct Ring([Minute; MINUTES]);

impl Default for Ring {
    fn default() -> Self {
        Self([Minute::default(); MINUTES])
    }
}

/// A tenant's last hour, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hour {
    pub requests: u64,
    pub refused: u64,
    pub errors: u64,
    /// Unix seconds of the last request this node answered it (to the minute).
    pub last_minute: Option<u64>,
}

#[derive(Default)]
pub struct Activity {
    /// Boxed: the map's spare slots cost a pointer, not a ring.
    traffic: DashMap<TenantId, Box<Ring>>,
    storage: DashMap<TenantId, Vec<(u64, i64)>>,
}

fn unix_minute(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Activity {
    /// Counts one answered request of `tenant`.
    pub fn record(&self, tenant: TenantId, status: u16, elapsed: Duration) {
        let minute = unix_minute(SystemTime::now());
        let mut ring = self.traffic.entry(tenant).or_default();
        let slot = &mut ring.0[(minute % MINUTES as u64) as usize];
        if slot.at != minute {
            *slot = Minute {
                at: minute,
                ..Minute::default()
            };
        }
        let us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        slot.requests = slot.requests.saturating_add(1);
        match status {
            429 | 503 => slot.refused = slot.refused.saturating_add(1),
            500..=599 => slot.errors = slot.errors.saturating_add(1),
            _ => {}
        }
        slot.latency_us_sum = slot.latency_us_sum.saturating_add(u64::from(us));
        slot.latency_us_max = slot.latency_us_max.max(us);
    }

    /// The last hour of `tenant`, oldest minute first (60 entries, empty
    /// minutes included, each with its `at`).
    pub fn minutes(&self, tenant: TenantId) -> Vec<Minute> {
        let now = unix_minute(SystemTime::now());
        let ring = self.traffic.get(&tenant).map(|r| **r);
        (0..MINUTES as u64)
            .map(|back| now - (MINUTES as u64 - 1 - back))
            .map(|m| {
                ring.map(|r| r.0[(m % MINUTES as u64) as usize])
                    .filter(|s| s.at == m)
                    .unwrap_or(Minute {
                        at: m,
                        ..Minute::default()
                    })
            })
            .collect()
    }

    /// The last hour of `tenant`, summed.
    pub fn hour(&self, tenant: TenantId) -> Hour {
        let now = unix_minute(SystemTime::now());
        let Some(ring) = self.traffic.get(&tenant) else {
            return Hour::default();
        };
        let mut h = Hour::default();
        for s in ring.0.iter().filter(|s| s.at + (MINUTES as u64) > now) {
            h.requests += u64::from(s.requests);
            h.refused += u64::from(s.refused);
            h.errors += u64::from(s.errors);
            if s.requests > 0 {
                h.last_minute = Some(h.last_minute.unwrap_or(0).max(s.at * 60));
            }
        }
        h
    }

    /// Drops tenants with no minute in the last hour.
    pub fn sweep(&self) {
        let now = unix_minute(SystemTime::now());
        self.traffic
            .retain(|_, ring| ring.0.iter().any(|s| s.at + (MINUTES as u64) > now));
        self.traffic.shrink_to_fit();
    }

    /// Records every tenant's stored bytes now (`figures`: every tenant
    /// that stores something); a tenant that no longer does is dropped.
    pub fn sample_storage(&self, figures: &[(TenantId, i64)]) {
        let minute = unix_minute(SystemTime::now());
        let present: std::collections::HashSet<TenantId> =
            figures.iter().map(|(id, _)| *id).collect();
        self.storage.retain(|id, _| present.contains(id));
        for (id, bytes) in figures {
            let mut samples = self.storage.entry(*id).or_default();
            if samples.last().is_some_and(|(m, _)| *m == minute) {
                samples.pop();
            }
            samples.push((minute, *bytes));
            let extra = samples.len().saturating_sub(MINUTES);
            samples.drain(..extra);
        }
        self.storage.shrink_to_fit();
    }

    /// `tenant`'s stored bytes over the last hour: `(unix minute, bytes)`.
    pub fn storage(&self, tenant: TenantId) -> Vec<(u64, i64)> {
        self.storage
            .get(&tenant)
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Tenants tracked now (traffic, storage).
    pub fn tracked(&self) -> (usize, usize) {
        (self.traffic.len(), self.storage.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_hour_sums_its_minutes_and_classes() {
        let a = Activity::default();
        let t = TenantId::from(uuid::Uuid::now_v7());
        let other = TenantId::from(uuid::Uuid::now_v7());
        a.record(t, 200, Duration::from_millis(3));
        a.record(t, 429, Duration::from_millis(1));
        a.record(t, 503, Duration::from_millis(1));
        a.record(t, 500, Duration::from_millis(9));
        a.record(other, 200, Duration::from_millis(1));
        let h = a.hour(t);
        assert_eq!((h.requests, h.refused, h.errors), (4, 2, 1));
        assert!(h.last_minute.is_some());
        let minutes = a.minutes(t);
        assert_eq!(minutes.len(), MINUTES);
        let last = minutes.last().copied().unwrap_or_default();
        assert_eq!(last.requests, 4);
        assert_eq!(last.latency_us_max, 9_000);
        assert_eq!(a.hour(other).requests, 1);
        a.sweep();
        assert_eq!(a.tracked().0, 2, "both were active this minute");
    }

    #[test]
    fn storage_samples_are_bounded_and_follow_the_figures() {
        let a = Activity::default();
        let t = TenantId::from(uuid::Uuid::now_v7());
        for n in 0..100 {
            a.sample_storage(&[(t, n)]);
        }
        assert_eq!(a.storage(t), vec![(unix_minute(SystemTime::now()), 99)]);
        a.sample_storage(&[]);
        assert!(a.storage(t).is_empty());
    }
}
