//! Request bodies that must keep arriving: a client that stalls (an upload
//! left one byte short) or trickles (a JSON body at 1 byte/s) is cut off,
//! and the request is answered 408 `request_timeout` (see [`super::guard`]).
//!
//! Two rules, the shape of Apache's `mod_reqtimeout` (`body=20,MinRate=500`):
//! * **idle**: the body may go at most `read_timeout` without a byte, counted
//!   only while the server waits for the client (not while a handler works
//!   between reads, e.g. sending an upload's part to S3);
//! * **rate**: once the body has started, the whole body must have arrived
//!   by `read_timeout + received / min_rate` — every `min_rate` bytes buys one
//!   more second — so a trickle cannot hold a connection for long.
//!
//! When a rule is broken the body ends with [`BodyTimeout`]; whatever the
//! handler was doing with it (an extractor, an upload) fails and drops what it
//! buffered, and the shared [`TimedOut`] flag tells the edge to answer 408.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use bytes::BytesMut;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How long a request body may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The longest wait for the next byte; also the allowance before the
    /// minimum rate applies.
    pub read_timeout: Duration,
    /// Bytes per second a body must average after `read_timeout`; 0: no
    /// minimum rate (the idle rule alone).
    pub min_rate: u64,
}

/// Set once the request's body was cut off for being too slow; an extension
/// of every request served through [`crate::serve`].
#[derive(Debug, Clone, Default)]
pub struct TimedOut(pub Arc<AtomicBool>);

impl TimedOut {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The error a body ends with when it was too slow.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// Pieces of a body shorter than this are gathered into chunks of at least
/// this size before they are handed on (see [`TimedBody`]).
pub const GATHER: usize = 16 * 1024;

/// A request body under [`BodyLimits`], handed on in chunks of at least
/// [`GATHER`] bytes (but the last).
///
/// hyper hands out each piece of a body as it reads it, as a slice of its
/// read buffer (8 KiB or more), and takes a fresh buffer for the next read
/// while that slice is alive. A body collected piece by piece (the JSON
/// extractor, an upload's part) from a client sending one byte per packet
/// would hold one whole buffer per byte — measured: 10 connections sending a
/// JSON body at 250 B/s in 1-byte packets grew the server by 70 MiB in 10 s —
/// and, copied out, still a list entry and an allocation per byte. Gathered,
/// a body costs about its length whatever its packets; pieces of [`GATHER`]
/// or more pass as they are when nothing is waiting to be gathered.
pub struct TimedBody<B> {
    inner: B,
    /// Small pieces received and not yet handed on.
    gathered: BytesMut,
    /// Trailers that arrived while pieces were still gathered.
    trailers: Option<Frame<Bytes>>,
    /// The inner body has ended.
    done: bool,
    limits: BodyLimits,
    timed_out: TimedOut,
    /// When the body was first asked for.
    started: Option<Instant>,
    received: u64,
    /// Armed while the server waits for the client; `None` otherwise.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limits: BodyLimits, timed_out: TimedOut) -> Self {
        Self {
            inner,
            gathered: BytesMut::new(),
            trailers: None,
            done: false,
            limits,
            timed_out,
            started: None,
            received: 0,
            waiting: None,
        }
    }

    /// What was gathered, as one chunk of its own (none if nothing was).
    fn flush(&mut self) -> Option<Frame<Bytes>> {
        (!self.gathered.is_empty())
            .then(|| Frame::data(std::mem::take(&mut self.gathered).freeze()))
    }

    /// When the client's time runs out, waiting from `now`.
    fn deadline(&self, started: Instant, now: Instant) -> Instant {
        let idle = now + self.limits.read_timeout;
        if self.limits.min_rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.limits.min_rate as f64);
        idle.min(started + self.limits.read_timeout + earned)
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out.get() {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        loop {
            if this.done {
                // What was gathered first, then the trailers, then the end.
                return Poll::Ready(
                    this.flush()
                        .map(Ok)
                        .or_else(|| this.trailers.take().map(Ok)),
                );
            }
            let now = Instant::now();
            let started = *this.started.get_or_insert(now);
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => {
                    // The body is broken: nothing of it comes after the error.
                    this.gathered.clear();
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.waiting = None;
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => {
                            // The last frame: what was gathered goes first.
                            this.done = true;
                            this.trailers = Some(trailers);
                            continue;
                        }
                    };
                    this.received += data.len() as u64;
                    if this.gathered.is_empty() && data.len() >= GATHER {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    this.gathered.extend_from_slice(&data);
                    if this.gathered.len() >= GATHER {
                        return Poll::Ready(this.flush().map(Ok));
                    }
                }
                Poll::Pending => {
                    if this.waiting.is_none() {
                        let deadline = this.deadline(started, now);
                        this.waiting = Some(Box::pin(tokio::time::sleep_until(deadline)));
                    }
                    let expired = this
                        .waiting
                        .as_mut()
                        .is_some_and(|s| s.as_mut().poll(cx).is_ready());
                    if !expired {
                        return Poll::Pending;
                    }
                    this.timed_out.0.store(true, Ordering::Relaxed);
                    crate::connection::tally().slow_body();
                    return Poll::Ready(Some(Err(BodyTimeout.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.gathered.is_empty()
            && self.trailers.is_none()
            && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.gathered.len() as u64;
        if self.done {
            return SizeHint::with_exact(held);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util_free::Trickle;

    /// A body that yields one byte per `every`, `n` times.
    mod http_body_util_free {
        use super::*;
        pub struct Trickle {
            pub left: usize,
            pub every: Duration,
            pub next: Option<Pin<Box<Sleep>>>,
        }
        impl Body for Trickle {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                if self.left == 0 {
                    return Poll::Ready(None);
                }
                let every = self.every;
                let sleep = self
                    .next
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                std::task::ready!(sleep.as_mut().poll(cx));
                self.next = None;
                self.left -= 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
            }
        }
    }

    async fn read_all<B: Body<Data = Bytes> + Unpin>(mut b: B) -> Result<usize, B::Error> {
        let mut n = 0;
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
            n += f?.into_data().map(|d| d.len()).unwrap_or(0);
        }
        Ok(n)
    }

    /// A body of given frames, in order (hyper's pieces, then trailers).
    struct Frames(Vec<Frame<Bytes>>);
    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(self.0.remove(0))))
        }
    }

    /// Everything `frames` hands on through a [`TimedBody`], which ends.
    async fn through(frames: Vec<Frame<Bytes>>) -> Vec<Frame<Bytes>> {
        let mut body = TimedBody::new(Frames(frames), limits(10, 100), TimedOut::default());
        let mut out = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            out.push(f.expect("frame"));
        }
        assert!(body.is_end_stream());
        out
    }

    async fn chunks(pieces: Vec<Bytes>) -> Vec<Bytes> {
        through(pieces.into_iter().map(Frame::data).collect())
            .await
            .into_iter()
            .map(|f| f.into_data().expect("data"))
            .collect()
    }

    #[tokio::test]
    async fn small_pieces_are_gathered_and_do_not_keep_the_buffers_they_were_read_into() {
        // As hyper hands out a body sent one byte per packet: each byte a
        // slice of a read buffer of its own.
        let buffers: Vec<Bytes> = (0..GATHER + 10)
            .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; 8192]))
            .collect();
        let pieces = buffers.iter().map(|b| b.slice(0..1)).collect();
        let out = chunks(pieces).await;
        // One chunk of GATHER bytes, then the rest at the end of the body.
        assert_eq!(
            out.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![GATHER, 10]
        );
        let want: Vec<u8> = (0..GATHER + 10).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(out.concat(), want, "every byte, in order");
        // No read buffer is held by what was handed on.
        assert!(buffers.into_iter().all(|b| b.is_unique()));
    }

    #[tokio::test]
    async fn trailers_follow_what_was_gathered() {
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames = vec![
            Frame::data(Bytes::from_static(b"ab")),
            Frame::data(Bytes::from_static(b"c")),
            Frame::trailers(trailers.clone()),
        ];
        let out = through(frames).await;
        assert_eq!(out.len(), 2, "the data, then the trailers");
        assert_eq!(out[0].data_ref().map(|d| &d[..]), Some(&b"abc"[..]));
        assert_eq!(out[1].trailers_ref(), Some(&trailers));
    }

    #[tokio::test]
    async fn large_pieces_pass_as_they_are() {
        let big = Bytes::from(vec![b'y'; GATHER]);
        let out = chunks(vec![big.slice(..), Bytes::from_static(b"end")]).await;
        assert_eq!(
            out.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![GATHER, 3]
        );
        // Not copied: the first chunk is the piece itself.
        assert!(!big.is_unique());
        assert_eq!(out[0].as_ptr(), big.as_ptr());
    }

    fn limits(read_timeout_s: u64, min_rate: u64) -> BodyLimits {
        BodyLimits {
            read_timeout: Duration::from_secs(read_timeout_s),
            min_rate,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_minimum_rate_is_cut_after_the_allowance() {
        let flag = TimedOut::default();
        let body = Trickle {
            left: 1000,
            every: Duration::from_secs(1),
            next: None,
        };
        let t0 = Instant::now();
        let res = read_all(TimedBody::new(body, limits(10, 100), flag.clone())).await;
        assert!(res.is_err());
        assert!(flag.get());
        // 10 s allowance, plus 1/100 s per byte received.
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(12),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_fast_enough_arrives_whole() {
        let flag = TimedOut::default();
        let body = Trickle {
            left: 50,
            every: Duration::from_millis(100),
            next: None,
        };
        let n = read_all(TimedBody::new(body, limits(1, 5), flag.clone()))
            .await
            .expect("in time");
        assert_eq!(n, 50);
        assert!(!flag.get());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_after_the_read_timeout_without_a_rate() {
        let flag = TimedOut::default();
        let body = Trickle {
            left: 3,
            every: Duration::from_secs(5),
            next: None,
        };
        assert_eq!(
            read_all(TimedBody::new(body, limits(6, 0), TimedOut::default()))
                .await
                .expect("each byte within 6 s"),
            3
        );
        let body = Trickle {
            left: 3,
            every: Duration::from_secs(7),
            next: None,
        };
        assert!(
            read_all(TimedBody::new(body, limits(6, 0), flag.clone()))
                .await
                .is_err()
        );
        assert!(flag.get());
    }
}
