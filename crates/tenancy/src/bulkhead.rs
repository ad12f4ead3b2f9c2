//! Bulkheads: at most so many transactions of one tenant at once, so that a
//! tenant's burst waits for its own share instead of taking the whole shared
//! pool; the other tenants keep theirs.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::id::TenantId;

/// How long a transaction waits for a pooled connection (and, unless
/// configured otherwise, for its tenant's share) before giving up.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A permit of `sem`, waited for at most `wait`; failing as a pool would
/// ([`Error::Overloaded`] when the wait runs out). A wait is counted in
/// `campus_db_waiting{for}` while it lasts (`what`: `tenant_share`, a
/// tenant's bulkhead; `database_slot`, the database-mode budget).
pub(crate) async fn permit(
    sem: Arc<Semaphore>,
    wait: Duration,
    what: &'static str,
) -> Result<OwnedSemaphorePermit> {
    if let Ok(permit) = sem.clone().try_acquire_owned() {
        return Ok(permit);
    }
    let _waiting = Waiting::new(what);
    match tokio::time::timeout(wait, sem.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(Error::Db(sqlx::Error::PoolClosed)),
        Err(_) => Err(Error::Overloaded),
    }
}

/// One transaction waiting, in `campus_db_waiting{for}`, while it lives.
pub(crate) struct Waiting(&'static str);

impl Waiting {
    pub(crate) fn new(what: &'static str) -> Self {
        metrics::gauge!("campus_db_waiting", "for" => what).increment(1.0);
        Self(what)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("campus_db_waiting", "for" => self.0).decrement(1.0);
    }
}

pub(crate) struct Bulkheads {
    per_tenant: usize,
    wait: Duration,
    inner: Mutex<Shares>,
}

struct Shares {
    by_tenant: HashMap<TenantId, Arc<Semaphore>>,
    /// The map is swept of idle tenants when it grows past this.
    sweep_at: usize,
}

const FIRST_SWEEP: usize = 1024;

impl Bulkheads {
    pub(crate) fn new(per_tenant: NonZeroUsize, wait: Duration) -> Self {
        Self {
            per_tenant: per_tenant.get(),
            wait,
            inner: Mutex::new(Shares {
                by_tenant: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    /// One of `tenant`'s shares, held until the permit is dropped; waits
    /// while the tenant already has all of them in use, at most `wait`.
    pub(crate) async fn enter(&self, tenant: TenantId) -> Result<OwnedSemaphorePermit> {
        let share = {
            let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if s.by_tenant.len() >= s.sweep_at {
                // A tenant nobody holds a share of is forgotten: its next
                // transaction starts afresh with all of them.
                let per_tenant = self.per_tenant;
                s.by_tenant.retain(|_, sem| {
                    Arc::strong_count(sem) > 1 || sem.available_permits() < per_tenant
                });
                s.sweep_at = (2 * s.by_tenant.len()).max(FIRST_SWEEP);
            }
            s.by_tenant
                .entry(tenant)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        permit(share, self.wait, "tenant_share").await
    }

    /// How many tenants the map holds (for tests and metrics).
    pub(crate) fn tracked(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_tenant
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_tenants_are_forgotten_so_the_map_stays_bounded() {
        let b = Bulkheads::new(NonZeroUsize::new(2).expect("non-zero"), WAIT);
        let busy = TenantId::new();
        let held = b.enter(busy).await.expect("share");
        for _ in 0..10 * FIRST_SWEEP {
            drop(b.enter(TenantId::new()).await.expect("share"));
        }
        assert!(b.tracked() <= FIRST_SWEEP + 1, "{} tracked", b.tracked());
        // A tenant holding a share is never forgotten: its count holds.
        let second = b.enter(busy).await.expect("second share");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), b.enter(busy))
                .await
                .is_err(),
            "a third share of a tenant holding two"
        );
        drop((held, second));
    }
}
