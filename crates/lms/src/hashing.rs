//! Password hashing as a bounded, shared resource.
//!
//! Each Argon2 call takes ~19 MiB and tens of milliseconds of one core. Run
//! on tokio's blocking pool, every concurrent call got its own thread (and
//! allocator arena, kept after it ends): a login flood grew the server by
//! gigabytes and slowed every tenant. Here, hashing runs on a fixed set of
//! `global` threads of its own, so at most `global` × 19 MiB is in use at
//! once; a request waits for one of its tenant's `per_tenant` shares (like
//! the database bulkheads: a tenant's flood waits behind itself), then for
//! one of the `global` ones, both within `wait` — past it, 503 `overloaded`.
//! Refusals are counted in `campus_password_hashing_refused_total` and
//! logged at most once per 10 s with their number.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tenancy::TenantId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// How much hashing may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingConfig {
    /// Hashes at once in the whole process (and threads of the pool).
    pub global: NonZeroUsize,
    /// Hashes at once for one tenant.
    pub per_tenant: NonZeroUsize,
    /// How long a request waits for its turn before 503 `overloaded`.
    pub wait: Duration,
}

impl Default for HashingConfig {
    /// As many as the cores (2 to 8); half of them per tenant; 2 s.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
        let global = cores.clamp(2, 8);
        Self {
            global: NonZeroUsize::new(global).unwrap_or(NonZeroUsize::MIN),
            per_tenant: NonZeroUsize::new(global.div_ceil(2)).unwrap_or(NonZeroUsize::MIN),
            wait: Duration::from_secs(2),
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing pool and its shares. Cheap to clone; its threads end with the
/// last clone.
#[derive(Clone)]
pub struct Hasher(Arc<Inner>);

struct Inner {
    config: HashingConfig,
    global: Arc<Semaphore>,
    tenants: Mutex<Shares>,
    jobs: Mutex<mpsc::Sender<Job>>,
    refused: Mutex<Summed>,
}

struct Shares {
    by_tenant: HashMap<TenantId, Arc<Semaphore>>,
    sweep_at: usize,
}

/// Refusals since the last log line.
struct Summed {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hasher").field(&self.0.config).finish()
    }
}

const FIRST_SWEEP: usize = 1024;

impl Hasher {
    pub fn new(config: HashingConfig) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.global.get() {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("campus-argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self(Arc::new(Inner {
            config,
            global: Arc::new(Semaphore::new(config.global.get())),
            tenants: Mutex::new(Shares {
                by_tenant: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
            jobs: Mutex::new(tx),
            refused: Mutex::new(Summed {
                logged_at: None,
                unlogged: 0,
            }),
        }))
    }

    pub fn config(&self) -> HashingConfig {
        self.0.config
    }

    /// Hashes running or holding a turn now (at most the configured
    /// concurrency; more wait, up to their wait, then are refused).
    pub fn busy(&self) -> usize {
        self.0.config.global.get() - self.0.global.available_permits()
    }

    fn share(&self, tenant: TenantId) -> Arc<Semaphore> {
        let per_tenant = self.0.config.per_tenant.get();
        let mut s = self.0.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if s.by_tenant.len() >= s.sweep_at {
            s.by_tenant.retain(|_, sem| {
                Arc::strong_count(sem) > 1 || sem.available_permits() < per_tenant
            });
            s.sweep_at = (2 * s.by_tenant.len()).max(FIRST_SWEEP);
        }
        s.by_tenant
            .entry(tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(per_tenant)))
            .clone()
    }

    /// The tenant's share, then a global one, both within the wait.
    async fn turn(&self, tenant: TenantId) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let deadline = tokio::time::Instant::now() + self.0.config.wait;
        let share = self.share(tenant);
        let mine = match tokio::time::timeout_at(deadline, share.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(self.refuse("tenant")),
        };
        let global =
            match tokio::time::timeout_at(deadline, self.0.global.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Err(self.refuse("global")),
            };
        Ok((mine, global))
    }

    fn refuse(&self, share: &'static str) -> Error {
        metrics::counter!("campus_password_hashing_refused_total", "share" => share).increment(1);
        let now = Instant::now();
        let mut s = self.0.refused.lock().unwrap_or_else(|e| e.into_inner());
        s.unlogged += 1;
        if s.logged_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused = s.unlogged,
                share,
                "password hashing at its limit: requests answered 503 overloaded (logged at most every 10 s)"
            );
            s.logged_at = Some(now);
            s.unlogged = 0;
        }
        Error::Overloaded("too many passwords are being checked; try again shortly")
    }

    /// Runs `f` on the pool, in the tenant's turn.
    async fn run<T: Send + 'static>(
        &self,
        tenant: TenantId,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let permits = self.turn(tenant).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The permits go with the work: released when it is done, even if
        // the request went away meanwhile.
        let job: Job = Box::new(move || {
            let out = f();
            drop(permits);
            let _ = tx.send(out);
        });
        self.0
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| Error::Internal("the password hashing pool is gone".into()))?;
        rx.await
            .map_err(|_| Error::Internal("password hashing failed".into()))
    }

    /// Hashes a password with Argon2id.
    pub async fn hash(&self, tenant: TenantId, password: String) -> Result<String> {
        self.run(tenant, move || hash_now(&password)).await?
    }

    /// Checks a password against a stored hash. With no stored hash it still
    /// does the work, so that an unknown email costs the same time as a
    /// wrong password.
    pub async fn verify(
        &self,
        tenant: TenantId,
        password: String,
        stored: Option<String>,
    ) -> Result<bool> {
        self.run(tenant, move || verify_now(&password, stored))
            .await
    }
}

/// The process's hasher for work outside a server's requests (provisioning
/// a tenant's first admin), with the settings given to [`configure`].
pub fn global() -> &'static Hasher {
    GLOBAL.get_or_init(|| Hasher::new(HashingConfig::default()))
}

static GLOBAL: OnceLock<Hasher> = OnceLock::new();

/// Sets the settings of [`global`]; only before its first use.
pub fn configure(config: HashingConfig) {
    // Its threads are started only if it is the one kept.
    GLOBAL.get_or_init(|| Hasher::new(config));
}

fn argon() -> Argon2<'static> {
    Argon2::default()
}

pub(crate) fn hash_now(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

fn verify_now(password: &str, stored: Option<String>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let known = stored.is_some();
    let hash = stored.unwrap_or_else(|| {
        DUMMY
            .get_or_init(|| hash_now("not a password anyone has").unwrap_or_default())
            .clone()
    });
    let ok = PasswordHash::new(&hash)
        .map(|h| argon().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false);
    ok && known
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(global: usize, per_tenant: usize, wait_ms: u64) -> HashingConfig {
        HashingConfig {
            global: NonZeroUsize::new(global).expect("non-zero"),
            per_tenant: NonZeroUsize::new(per_tenant).expect("non-zero"),
            wait: Duration::from_millis(wait_ms),
        }
    }

    #[tokio::test]
    async fn hashes_and_verifies_on_the_pool() {
        let h = Hasher::new(config(1, 1, 5_000));
        let t = TenantId::new();
        let hash = h.hash(t, "a password".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            h.verify(t, "a password".into(), Some(hash.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !h.verify(t, "another".into(), Some(hash))
                .await
                .expect("verify")
        );
        assert!(
            !h.verify(t, "a password".into(), None)
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn a_tenant_past_its_share_is_refused_while_another_gets_its_turn() {
        let h = Hasher::new(config(2, 1, 50));
        let (a, b) = (TenantId::new(), TenantId::new());
        let held = h.turn(a).await.expect("a's turn");
        assert!(matches!(h.turn(a).await, Err(Error::Overloaded(_))));
        let other = h.turn(b).await.expect("b's turn");
        // Both global shares are in use: a third tenant waits, then is refused.
        assert!(matches!(
            h.turn(TenantId::new()).await,
            Err(Error::Overloaded(_))
        ));
        drop((held, other));
        drop(h.turn(a).await.expect("a's turn again"));
    }
}
