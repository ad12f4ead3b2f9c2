//! Connections: the accept loop and what each connection may hold.
//!
//! Over hyper's HTTP/1.1 connection (axum's `serve` exposes none of this):
//!
//! * a **connection cap** (`max_connections`, a semaphore): past it a new
//!   connection is answered `503 overloaded` (problem+json, `Retry-After: 1`,
//!   written without reading the request) and closed, so that a client or a
//!   load balancer sees why and retries, rather than a reset. Those answers
//!   are bounded too ([`REFUSING_AT_ONCE`]); past that, a connection is
//!   closed at once. Accept errors (`EMFILE`…) back off and are logged,
//!   never spin nor end the loop.
//! * per connection, a watchdog ([`Activity`]) closes it when the client
//!   takes too long: the **headers** of a request must be complete within
//!   `header_read_timeout` of their first byte (of the accept, for the first
//!   request); a connection between requests is closed after `idle_timeout`;
//!   a response the client does not read (a write pending) for
//!   `idle_timeout` closes it too. Request **bodies** have their own rules
//!   ([`crate::edge::body`]): cut with 408.
//! * **under pressure** — when at most a quarter of the slots are free —
//!   connections that are not inside a request get [`PRESSED_TIMEOUT`] at
//!   most, for their headers or between requests, until half the slots are
//!   free again ([`Pressure`]): connections held open doing nothing (a
//!   slowloris from many addresses, idle keep-alives) then give way within
//!   seconds to clients that send requests, instead of holding every slot
//!   for the full timeouts. A request being served or a body being read
//!   keeps its own rules.
//! * hyper's own answers to a request it cannot parse (400, 414, 431 when
//!   the head exceeds [`MAX_HEAD`]) are replaced on the way out by the same
//!   answers as problem+json ([`Watched`]).
//! * every request carries `ConnectInfo<SocketAddr>`, the peer's address.
//! * **graceful shutdown**: stop accepting, let requests in flight finish
//!   for up to `shutdown_grace`, then close what is left.
//!
//! What is hit is counted (`campus_connections_refused_total`,
//! `campus_connection_timeouts_total{kind}`, `campus_accept_errors_total`,
//! gauge `campus_connections_open`) and logged as one summed line per 10 s.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::edge::body::{BodyLimits, TimedBody, TimedOut};
use crate::problem::ApiError;

/// How much of a connection a client may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; past it, new ones are answered 503.
    pub max_connections: usize,
    /// From a request's first byte (the accept, for the first) to the end
    /// of its headers.
    pub header_read_timeout: Duration,
    /// A connection with no request (or a response not read) for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Request bodies: see [`crate::edge::body`].
    pub body: BodyLimits,
    /// After a shutdown signal, how long requests in flight may take.
    pub shutdown_grace: Duration,
    /// How long, after the stop signal, the listeners keep accepting while
    /// `/readyz` answers 503 `stopping` (so that load balancers take the
    /// node out first); then requests in flight get `shutdown_grace`.
    pub shutdown_delay: Duration,
    /// Which listener this is (`public`, `admin`): the `listener` label of
    /// `campus_connections_open` and `campus_connections_pressure` (the
    /// counters sum every listener).
    pub listener: &'static str,
}

/// The admin listener's connection cap: operators and a Prometheus, not the
/// public; enough for them, too few to matter if it is reached.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

impl ConnectionLimits {
    /// The admin listener's limits: these, with its own smaller cap.
    pub fn for_admin(self) -> Self {
        Self {
            max_connections: ADMIN_MAX_CONNECTIONS,
            listener: "admin",
            ..self
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body: BodyLimits {
                read_timeout: Duration::from_secs(30),
                min_rate: 500,
            },
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            listener: "public",
        }
    }
}

/// The largest request head (request line and headers) hyper buffers;
/// more is answered 431. Bounds what each connection holds while its
/// headers arrive.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header fields a request may have; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// Over-the-cap connections answered 503 at once (each holds its socket for
/// up to [`LINGER`]); past it they are closed without an answer.
pub const REFUSING_AT_ONCE: usize = 64;

/// How long an over-the-cap connection is read (and discarded) after its 503,
/// so that closing it does not reset the answer away.
const LINGER: Duration = Duration::from_secs(1);

/// Timeouts for headers and between requests while the server is under
/// [`Pressure`]: a client that means to send a request sends its head in
/// milliseconds.
pub const PRESSED_TIMEOUT: Duration = Duration::from_secs(2);

/// The most connections the default cap allows: each held connection costs
/// about 20–26 KiB of memory while it waits (measured, `docs/benchmarks.md`),
/// and up to [`MAX_HEAD`] more while a large head arrives, so 4,096 of them
/// stay within about 100 MiB, 500 MiB at the very worst.
pub const DEFAULT_CAP_MAX: u64 = 4096;

/// The cap when none is configured: three quarters of the open-files limit
/// (at least 64 kept for the databases, tenants' files and logs), at least
/// 16, at most [`DEFAULT_CAP_MAX`] (memory).
pub fn default_max_connections() -> usize {
    #[cfg(unix)]
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    #[cfg(not(unix))]
    let nofile = 10_000u64;
    max_connections_for(nofile)
}

pub fn max_connections_for(nofile: u64) -> usize {
    let reserve = (nofile / 4).max(64);
    let n = nofile.saturating_sub(reserve).clamp(16, DEFAULT_CAP_MAX);
    usize::try_from(n).unwrap_or(DEFAULT_CAP_MAX as usize)
}

/// Serves `app` on `listener` until `shutdown` resolves, then for at most
/// `limits.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let pressure = Arc::new(Pressure {
        listener: limits.listener,
        ..Pressure::default()
    });
    metrics::gauge!("campus_connections_pressure", "listener" => limits.listener).set(0.0);
    let cap = limits.max_connections;
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let (stop, stopping) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    // The watchdog times headers (hyper's timer would also time the wait
    // between requests, with the same limit).
    // `max_buf_size` bounds the read buffer, `max_header_size` the head
    // itself (one read may fill the buffer past its bound).
    http.max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .header_read_timeout(None)
        .keep_alive(true);
    let http = Arc::new(http);
    let logger = tokio::spawn(log_tally(limits.max_connections));
    let mut tasks = JoinSet::new();
    let mut backoff = BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                pressure.update(slots.available_permits(), cap);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    backoff = BACKOFF_MIN;
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            pressure.update(slots.available_permits(), cap);
                            let conn = Conn {
                                addr,
                                app: app.clone(),
                                http: http.clone(),
                                limits,
                                pressure: pressure.clone(),
                                stopping: stopping.clone(),
                                _slot: slot,
                            };
                            tasks.spawn(conn.serve(stream));
                        }
                        Err(_) => {
                            pressure.update(0, cap);
                            refuse(stream, &refusing);
                        }
                    }
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tally().accept_error(&e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    if !tasks.is_empty() {
        tracing::info!(
            open = tasks.len(),
            grace_s = limits.shutdown_grace.as_secs_f64(),
            "stopping: letting requests in flight finish"
        );
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            open = tasks.len(),
            "closing connections still open after the shutdown grace period"
        );
        tasks.shutdown().await;
    }
    logger.abort();
    Ok(())
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Errors of one connection that died in the backlog, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers an over-the-cap connection 503 and closes it.
fn refuse(stream: TcpStream, refusing: &Arc<Semaphore>) {
    tally().refused();
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        // A few hundred bytes: they fit a fresh socket's buffer, no waiting.
        let _ = stream.try_write(refusal());
        let _ = stream.shutdown().await;
        let _ = tokio::time::timeout(LINGER, async {
            let mut buf = [0u8; 4096];
            let mut left = 64 * 1024usize;
            while left > 0 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    });
}

fn refusal() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server has too many open connections; try again shortly",
        );
        raw_problem(&err, Some(1))
    })
}

/// A whole HTTP/1.1 answer, written without hyper: `err` as problem+json,
/// closing the connection.
fn raw_problem(err: &ApiError, retry_after_s: Option<u64>) -> Vec<u8> {
    let body = serde_json::to_vec(&err.problem(None)).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         x-content-type-options: nosniff\r\nconnection: close\r\n",
        err.status.as_u16(),
        err.status.canonical_reason().unwrap_or("Error"),
        body.len()
    );
    if let Some(s) = retry_after_s {
        out.push_str(&format!("retry-after: {s}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// One accepted connection.
struct Conn {
    addr: SocketAddr,
    app: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    limits: ConnectionLimits,
    pressure: Arc<Pressure>,
    stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
}

/// Whether the server is short of connection slots: on when at most a
/// quarter of them are free, off again when half are (so that it does not
/// flap). While it is on, a connection's headers and the wait between its
/// requests get at most [`PRESSED_TIMEOUT`].
#[derive(Default)]
struct Pressure {
    listener: &'static str,
    on: AtomicBool,
    /// Wakes every watchdog when the pressure comes on.
    raised: Notify,
}

impl Pressure {
    fn update(&self, free: usize, cap: usize) {
        let on = self.on.load(Ordering::Relaxed);
        if !on && free <= cap / 4 {
            if self.on.swap(true, Ordering::Relaxed) {
                return;
            }
            metrics::gauge!("campus_connections_pressure", "listener" => self.listener).set(1.0);
            tally().pressure.fetch_add(1, Ordering::Relaxed);
            self.raised.notify_waiters();
        } else if on && free >= cap / 2 && self.on.swap(false, Ordering::Relaxed) {
            metrics::gauge!("campus_connections_pressure", "listener" => self.listener).set(0.0);
        }
    }

    fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }
}

impl Conn {
    async fn serve(mut self, stream: TcpStream) {
        let _open = OpenGauge::new(self.limits.listener);
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
            substitute: None,
        });
        let (addr, app, body) = (self.addr, self.app.clone(), self.limits.body);
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |req| {
                handle(req, addr, app.clone(), activity.clone(), body)
            })
        };
        let conn = self.http.serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, peer = %self.addr, "connection ended with an error");
                    }
                    return;
                }
                why = activity.expired(&self.limits, &self.pressure) => {
                    tally().timed_out(why);
                    return; // dropping the connection closes it
                }
                _ = self.stopping.wait_for(|s| *s), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn handle(
    mut req: Request<Incoming>,
    addr: SocketAddr,
    app: Router,
    activity: Arc<Activity>,
    body: BodyLimits,
) -> Result<Response<Tracked>, Infallible> {
    let busy = Busy::new(activity);
    let timed_out = TimedOut::default();
    req.extensions_mut().insert(ConnectInfo(addr));
    req.extensions_mut().insert(timed_out.clone());
    let req = req.map(|b| axum::body::Body::new(TimedBody::new(b, body, timed_out)));
    let res = match app.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    Ok(res.map(|inner| Tracked { inner, _busy: busy }))
}

/// A response body; the connection is busy until it is dropped (sent, or
/// the connection gone).
struct Tracked {
    inner: axum::body::Body,
    _busy: Busy,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection is doing, for its watchdog: times in milliseconds
/// since the accept; `0` in the `…_at` fields means "not now", others are
/// stored plus one.
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// When the last request in flight finished.
    idle_since: AtomicU64,
    /// When the head of the next request started arriving (+1).
    head_at: AtomicU64,
    /// Since when a write has been waiting for the client to read (+1).
    blocked_at: AtomicU64,
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
pub enum Expired {
    Headers,
    Idle,
    Send,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // The first request's time runs from the accept.
            head_at: AtomicU64::new(1),
            blocked_at: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self
                .head_at
                .compare_exchange(0, self.now() + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// Whether hyper is reading a head (no request handed to the app yet):
    /// a write now is one of its own answers to a head it could not parse.
    fn reading_head(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.head_at.load(Ordering::Relaxed) != 0
    }

    fn write_pending(&self, pending: bool) {
        if pending {
            if self
                .blocked_at
                .compare_exchange(0, self.now() + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.changed.notify_one();
            }
        } else {
            self.blocked_at.store(0, Ordering::Relaxed);
        }
    }

    /// The next deadline and what it is for; `None` while busy. `pressed`:
    /// headers and idle waits get at most [`PRESSED_TIMEOUT`].
    fn deadline(&self, l: &ConnectionLimits, pressed: bool) -> Option<(Expired, u64)> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        let short = |d: Duration| if pressed { d.min(PRESSED_TIMEOUT) } else { d };
        let mut next: Option<(Expired, u64)> = None;
        let mut consider = |why, at: u64| {
            if next.is_none_or(|(_, n)| at < n) {
                next = Some((why, at));
            }
        };
        let blocked = self.blocked_at.load(Ordering::Relaxed);
        if blocked != 0 {
            consider(Expired::Send, blocked - 1 + ms(l.idle_timeout));
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            match self.head_at.load(Ordering::Relaxed) {
                0 => consider(
                    Expired::Idle,
                    self.idle_since.load(Ordering::Relaxed) + ms(short(l.idle_timeout)),
                ),
                head => consider(
                    Expired::Headers,
                    head - 1 + ms(short(l.header_read_timeout)),
                ),
            }
        }
        next
    }

    /// Resolves when the client has run out of time.
    async fn expired(&self, l: &ConnectionLimits, pressure: &Pressure) -> Expired {
        loop {
            let changed = self.changed.notified();
            let raised = pressure.raised.notified();
            let wake = match self.deadline(l, pressure.on()) {
                Some((why, at)) if at <= self.now() => return why,
                Some((_, at)) => self.born + Duration::from_millis(at),
                None => Instant::now() + l.idle_timeout,
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = changed => {}
                () = raised => {}
            }
        }
    }
}

/// A request in flight on its connection.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.head_at.store(0, Ordering::Relaxed);
        a.changed.notify_one();
        Self(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        a.changed.notify_one();
    }
}

/// The socket as hyper sees it: reads and stalled writes are reported to
/// the connection's [`Activity`], and hyper's bare answers to a head it
/// cannot parse are replaced by problem+json.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// The problem answer being written instead of hyper's.
    substitute: Option<Vec<u8>>,
}

impl Watched {
    /// Starts replacing hyper's answer when `first` is one.
    fn check(&mut self, first: &[u8]) {
        if self.substitute.is_none() && self.activity.reading_head() {
            self.substitute = hyper_answer(first);
        }
    }

    /// Writes what is left of the substitute.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.substitute.as_mut().filter(|r| !r.is_empty()) {
            let res = Pin::new(&mut self.inner).poll_write(cx, rest);
            self.activity.write_pending(res.is_pending());
            let n = ready!(res)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rest.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper answers a head it cannot parse with a bare `400`, `414` or `431`
/// (no body); the same answer as problem+json.
fn hyper_answer(first: &[u8]) -> Option<Vec<u8>> {
    let rest = first
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| first.strip_prefix(b"HTTP/1.0 "))?;
    let (status, code, detail) = match rest.get(..4)? {
        b"400 " => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be parsed",
        ),
        b"414 " => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request target is longer than this server accepts",
        ),
        b"431 " => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request's headers are larger than this server accepts",
        ),
        _ => return None,
    };
    // Its shape exactly: a bare head. The app's own answers always carry a
    // content type, so a response of the app is never mistaken for one.
    let end = first.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&first[..end]).to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") || !head.contains("\r\ncontent-length: 0") {
        return None;
    }
    Some(raw_problem(&ApiError::new(status, code, detail), None))
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(buf);
        if self.substitute.is_some() {
            ready!(self.drain(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write_pending(res.is_pending());
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.check(first);
        }
        if self.substitute.is_some() {
            ready!(self.drain(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write_pending(res.is_pending());
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `campus_connections_open{listener}`, while it lives.
struct OpenGauge(&'static str);

impl OpenGauge {
    fn new(listener: &'static str) -> Self {
        metrics::gauge!("campus_connections_open", "listener" => listener).increment(1.0);
        Self(listener)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("campus_connections_open", "listener" => self.0).decrement(1.0);
    }
}

/// What slow or too many clients cost, counted for the metrics and summed
/// for the log (one line per kind and 10 s, not one per client).
#[derive(Default)]
pub struct Tally {
    refused: AtomicU64,
    /// Times the pressure came on.
    pressure: AtomicU64,
    headers: AtomicU64,
    idle: AtomicU64,
    send: AtomicU64,
    body: AtomicU64,
    accept_errors: AtomicU64,
    last_accept_error: Mutex<Option<String>>,
}

/// The process's tally.
pub fn tally() -> &'static Tally {
    static TALLY: OnceLock<Tally> = OnceLock::new();
    TALLY.get_or_init(Tally::default)
}

impl Tally {
    fn refused(&self) {
        metrics::counter!("campus_connections_refused_total").increment(1);
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn timed_out(&self, why: Expired) {
        let (kind, n) = match why {
            Expired::Headers => ("headers", &self.headers),
            Expired::Idle => ("idle", &self.idle),
            Expired::Send => ("send", &self.send),
        };
        metrics::counter!("campus_connection_timeouts_total", "kind" => kind).increment(1);
        n.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn slow_body(&self) {
        metrics::counter!("campus_connection_timeouts_total", "kind" => "body").increment(1);
        self.body.fetch_add(1, Ordering::Relaxed);
    }

    fn accept_error(&self, e: &io::Error) {
        metrics::counter!("campus_accept_errors_total").increment(1);
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_accept_error.lock() {
            *last = Some(e.to_string());
        }
    }
}

/// Logs the tally every 10 s, when there is something in it.
async fn log_tally(max_connections: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = tally();
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        let refused = take(&t.refused);
        if refused > 0 {
            tracing::warn!(
                refused,
                max_connections,
                "connection cap reached: new connections answered 503 overloaded in the last 10 s"
            );
        }
        let pressed = take(&t.pressure);
        if pressed > 0 {
            tracing::warn!(
                times = pressed,
                max_connections,
                timeout_s = PRESSED_TIMEOUT.as_secs_f64(),
                "few connection slots left: headers and idle connections got shorter timeouts in the last 10 s"
            );
        }
        let errors = take(&t.accept_errors);
        if errors > 0 {
            let last = t.last_accept_error.lock().ok().and_then(|mut l| l.take());
            tracing::warn!(
                errors,
                last_error = last.as_deref().unwrap_or(""),
                "accepting connections failed (backing off); at the open-files limit, lower max_connections or raise the limit"
            );
        }
        let (headers, body, idle, send) = (
            take(&t.headers),
            take(&t.body),
            take(&t.idle),
            take(&t.send),
        );
        if headers + body + send > 0 {
            tracing::info!(
                headers,
                body,
                send,
                idle,
                "closed slow clients in the last 10 s (headers, body or reads too slow)"
            );
        } else if idle > 0 {
            tracing::debug!(idle, "closed idle connections in the last 10 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_open_files_limit() {
        assert_eq!(max_connections_for(96), 32);
        assert_eq!(max_connections_for(1024), 768);
        assert_eq!(max_connections_for(20_000), 4096);
        assert_eq!(max_connections_for(10), 16);
    }

    #[test]
    fn hypers_bare_answers_become_problems() {
        let out = hyper_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
        )
        .expect("a 431");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(text.contains("\"code\":\"headers_too_large\""), "{text}");
        assert!(hyper_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        // One of the app's own 400s is left alone.
        assert!(
            hyper_answer(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 99\r\n\r\n{"
            )
            .is_none()
        );
        assert!(hyper_answer(b"garbage").is_none());
    }
}
