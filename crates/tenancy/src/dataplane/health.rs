//! Whether a PostgreSQL placement is reachable, as last seen.
//!
//! A placement is marked down when a connection to it cannot be made (the
//! probe below) or a fresh one is lost before anything was sent. While it is
//! down, transactions on it fail at once with
//! [`Error::Unavailable`] instead of each waiting for the pool's acquire
//! timeout; once per backoff (250 ms, doubling up to 2 s) one transaction is
//! let through to try again, and the first that succeeds marks it up.
//!
//! A pool that cannot hand out a connection within [`PROBE_AFTER`] is either
//! busy or looking at a server that is gone: a probe (one fresh connection,
//! at most [`PROBE_TIMEOUT`], shared by every waiter for [`PROBE_FRESH`])
//! tells which, so that a busy server is answered `overloaded` after the
//! full wait and a server that is down `unavailable` at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::str::FromStr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// How long a transaction waits for a pooled connection before asking
/// whether the server is there at all.
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(500);
/// How long a probe may take to connect.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a probe's answer stands for every other waiter.
const PROBE_FRESH: Duration = Duration::from_millis(500);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct Health {
    placement: String,
    url: url::Url,
    state: Mutex<State>,
    /// One probe at a time; its result, and when it was taken.
    probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

#[derive(Default)]
struct State {
    /// Since when the placement is down, and why; `None` while it is up.
    down: Option<(Instant, String)>,
    /// Until when transactions fail fast.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Health {
    pub(crate) fn new(placement: &str, url: url::Url) -> Self {
        metrics::gauge!("campus_database_up", "placement" => placement.to_owned()).set(1.0);
        Self {
            placement: placement.to_owned(),
            url,
            state: Mutex::new(State::default()),
            probe: tokio::sync::Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the placement was found down and not seen up since.
    pub(crate) fn is_down(&self) -> bool {
        self.state().down.is_some()
    }

    /// Fails fast while the placement is down and its backoff runs; lets
    /// one caller through per backoff to try again.
    pub(crate) fn gate(&self) -> Result<()> {
        let mut s = self.state();
        let Some((_, why)) = &s.down else {
            return Ok(());
        };
        let now = Instant::now();
        match s.retry_at {
            Some(at) if now < at => Err(Error::Unavailable(format!(
                "placement `{}` is down ({why}); not retried for a moment",
                self.placement
            ))),
            _ => {
                // This caller tries; the others keep failing fast meanwhile.
                s.retry_at = Some(now + s.backoff);
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                Ok(())
            }
        }
    }

    /// The placement could not be reached.
    pub(crate) fn failed(&self, why: &str) {
        let mut s = self.state();
        if s.down.is_none() {
            tracing::error!(placement = %self.placement, error = %why,
                "database unreachable; failing fast with 503 unavailable until it answers again");
            metrics::gauge!("campus_database_up", "placement" => self.placement.clone()).set(0.0);
            metrics::counter!("campus_database_outages_total", "placement" => self.placement.clone())
                .increment(1);
            s.down = Some((Instant::now(), why.to_owned()));
            s.backoff = FIRST_BACKOFF;
        }
        s.retry_at = Some(Instant::now() + s.backoff);
    }

    /// The placement answered.
    pub(crate) fn succeeded(&self) {
        let mut s = self.state();
        if let Some((since, _)) = s.down.take() {
            tracing::warn!(placement = %self.placement, down_for_s = since.elapsed().as_secs_f64(),
                "database reachable again");
            metrics::gauge!("campus_database_up", "placement" => self.placement.clone()).set(1.0);
            *s = State::default();
        }
    }

    /// Asks the server whether it is there, at most [`PROBE_TIMEOUT`]; a
    /// fresh answer of another caller's probe stands for this one.
    pub(crate) async fn probe(&self) -> Result<(), String> {
        let mut last = self.probe.lock().await;
        if let Some((at, res)) = &*last
            && at.elapsed() < PROBE_FRESH
        {
            return res.clone();
        }
        let res = match tokio::time::timeout(PROBE_TIMEOUT, answers(&self.url)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        match &res {
            Ok(()) => self.succeeded(),
            Err(why) => self.failed(why),
        }
        *last = Some((Instant::now(), res.clone()));
        res
    }

    /// A connection of `pool`: failing at once while the placement is down,
    /// and as soon as a probe finds it down while waiting.
    pub(crate) async fn acquire(
        &self,
        pool: &sqlx::Pool<super::Db>,
    ) -> Result<sqlx::pool::PoolConnection<super::Db>> {
        self.gate()?;
        // Counted while it waits (an idle connection is handed over at once).
        let _waiting = crate::bulkhead::Waiting::new("connection");
        let acquire = pool.acquire();
        tokio::pin!(acquire);
        let probe = async {
            tokio::time::sleep(PROBE_AFTER).await;
            self.probe().await
        };
        let got = tokio::select! {
            got = &mut acquire => got,
            Err(why) = probe => {
                return Err(Error::Unavailable(format!(
                    "placement `{}` does not answer: {why}",
                    self.placement
                )));
            }
        };
        match got {
            Ok(conn) => {
                // Pinged (an idle one) or just made: the server answers.
                self.succeeded();
                Ok(conn)
            }
            Err(e) => {
                let e = Error::from(e);
                if let Error::Unavailable(why) = &e {
                    self.failed(why);
                }
                Err(e)
            }
        }
    }
}

/// Whether the PostgreSQL server at `url` answers: an `SSLRequest` on a
/// fresh socket, answered `S` or `N` by the postmaster itself before any
/// session exists — no login, no connection of the placement's budget, no
/// line in the server's log.
async fn answers(url: &url::Url) -> Result<(), String> {
    /// The length (8) and the `SSLRequest` code (1234.5679).
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let opts =
        sqlx::postgres::PgConnectOptions::from_str(url.as_str()).map_err(|e| e.to_string())?;
    let port = opts.get_port();
    let socket = opts.get_socket().cloned().or_else(|| {
        opts.get_host()
            .starts_with('/')
            .then(|| std::path::PathBuf::from(opts.get_host()))
    });
    let mut reply = [0u8; 1];
    match socket {
        #[cfg(unix)]
        Some(dir) => {
            let path = if dir.is_dir() {
                dir.join(format!(".s.PGSQL.{port}"))
            } else {
                dir
            };
            let mut s = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            s.write_all(&SSL_REQUEST).await.map_err(|e| e.to_string())?;
            s.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
        }
        _ => {
            let host = opts.get_host().to_owned();
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("{host}:{port}: {e}"))?;
            s.write_all(&SSL_REQUEST).await.map_err(|e| e.to_string())?;
            s.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
        }
    }
    match reply[0] {
        b'S' | b'N' => Ok(()),
        other => Err(format!("unexpected answer {other:#x} to a probe")),
    }
}
