//! Send-rate limits: a shared, changeable limit, the byte stream it slows down, and the filter that slows a service.
//!
//! Only what a side *sends* is limited, so each end of a connection limits
//! its own writes and the two directions are independent. The limit is a
//! token bucket (async-speed-limit) whose delay comes after the bytes are
//! written; a change applies at once, even to a write waiting on the old
//! limit.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_speed_limit::Limiter;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;

use crate::service::{ByteStream, Filter, Method, Service, WholeFile, Wrapped};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_stream::wrappers::WatchStream;

/// The highest limit accepted, 1 TB/s; anything above is a mistake.
pub const MAX_RATE: u64 = 1_000_000_000_000;

/// Why a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("rate must be greater than zero")]
    /// Zero bytes per second would never send anything.
    Zero,
    #[error("rate {0} B/s is above the maximum of {MAX_RATE} B/s")]
    /// Above [`MAX_RATE`].
    TooHigh(u64),
    #[error("invalid rate {input:?}: {reason} (examples: 1M, 512k, 10MiB)")]
    /// Not a rate.
    Malformed {
        /// The text given.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks a limit in bytes per second.
pub fn check_rate(rate: u64) -> Result<u64, RateError> {
    match rate {
        0 => Err(RateError::Zero),
        r if r > MAX_RATE => Err(RateError::TooHigh(r)),
        r => Ok(r),
    }
}

/// Parses a rate such as `1M` (10^6 B/s), `512k`, `10MiB` (2^20 B/s units) or
/// `1500`; zero and values above [`MAX_RATE`] are refused.
pub fn parse_rate(input: &str) -> Result<u64, RateError> {
    let size: bytesize::ByteSize =
        input
            .parse()
            .map_err(|reason: String| RateError::Malformed {
                input: input.to_string(),
                reason: reason.to_string(),
            })?;
    check_rate(size.as_u64())
}

/// A send limit in bytes per second (`None`: unlimited), shared by the
/// streams it limits and whoever changes it.
#[derive(Clone)]
pub struct SendLimit {
    limiter: Limiter,
    current: watch::Sender<Option<u64>>,
}

impl fmt::Debug for SendLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SendLimit").field(&self.get()).finish()
    }
}

fn speed(limit: Option<u64>) -> f64 {
    limit.map_or(f64::INFINITY, |rate| rate as f64)
}

impl SendLimit {
    /// A limit; the caller checks `limit` with [`check_rate`].
    pub fn new(limit: Option<u64>) -> Self {
        SendLimit {
            limiter: Limiter::new(speed(limit)),
            current: watch::Sender::new(limit),
        }
    }

    /// The limit now.
    pub fn get(&self) -> Option<u64> {
        *self.current.borrow()
    }

    /// Changes the limit for every stream sharing it, at once; returns the old one.
    pub fn set(&self, limit: Option<u64>) -> Option<u64> {
        self.limiter.set_speed_limit(speed(limit));
        self.current.send_replace(limit)
    }

    /// Limits what is written to `io`.
    pub fn wrap<S>(&self, io: S) -> Throttled<S> {
        Throttled {
            inner: io,
            limit: self.clone(),
            delay: None,
            changes: WatchStream::from_changes(self.current.subscribe()),
            traffic: None,
        }
    }

    /// Limits what is written to `io`, and tells `traffic` what goes
    /// through it, for a transport's metrics.
    pub fn wrap_observed<S>(&self, io: S, traffic: Arc<dyn Traffic>) -> Throttled<S> {
        Throttled {
            traffic: Some(traffic),
            ..self.wrap(io)
        }
    }

    /// Waits as long as sending `bytes` more takes under the limit.
    pub async fn consume(&self, bytes: usize) {
        let mut changes = WatchStream::from_changes(self.current.subscribe());
        let mut wait = self.limiter.consume_duration(bytes);
        while !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => return,
                // A new limit settles the same debt at the new rate.
                Some(_) = changes.next() => wait = self.limiter.consume_duration(0),
            }
        }
    }
}

/// What a [`Throttled`] stream tells of the bytes that go through it
/// (see [`SendLimit::wrap_observed`]); both methods do nothing by default.
pub trait Traffic: Send + Sync + fmt::Debug {
    /// `bytes` were read from the stream.
    fn received(&self, _bytes: usize) {}

    /// `bytes` were written to the stream, and the next write waits `wait`
    /// for them under the limit.
    fn sent(&self, _bytes: usize, _wait: Duration) {}
}

/// A byte stream whose writes are slowed to a [`SendLimit`]; reads pass through.
pub struct Throttled<S> {
    inner: S,
    limit: SendLimit,
    /// The wait owed for the last write, before the next one may start.
    delay: Option<Pin<Box<Sleep>>>,
    changes: WatchStream<Option<u64>>,
    traffic: Option<Arc<dyn Traffic>>,
}

impl<S> fmt::Debug for Throttled<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttled")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S> Throttled<S> {
    /// The stream it wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn sleep(wait: Duration) -> Option<Pin<Box<Sleep>>> {
        (!wait.is_zero()).then(|| Box::pin(tokio::time::sleep(wait)))
    }

    /// Ready once the wait owed for earlier writes is over.
    fn poll_delay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.delay.is_some() {
            // Polled first so a change of limit wakes this task.
            if let Poll::Ready(Some(_)) = self.changes.poll_next_unpin(cx) {
                self.delay = Self::sleep(self.limit.limiter.consume_duration(0));
                continue;
            }
            if let Some(delay) = &mut self.delay {
                ready!(delay.as_mut().poll(cx));
            }
            self.delay = None;
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read > 0
            && let Some(traffic) = &self.traffic
        {
            traffic.received(read);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_delay(cx));
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if written > 0 {
            let wait = self.limit.limiter.consume_duration(written);
            if let Some(traffic) = &self.traffic {
                traffic.sent(written, wait);
            }
            self.delay = Self::sleep(wait);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Slows a stream of chunks to a limit, for data that crosses no socket.
fn throttle_stream(stream: ByteStream, limit: SendLimit, len: fn(&Bytes) -> usize) -> ByteStream {
    stream
        .then(move |item| {
            let limit = limit.clone();
            async move {
                if let Ok(chunk) = &item {
                    limit.consume(len(chunk)).await;
                }
                item
            }
        })
        .boxed()
}

/// The filter of a [`Service`] whose incoming data (writes, deltas and whole
/// files) is slowed to a limit: how a move between two local directories
/// honours `--throttle`.
#[derive(Debug)]
pub struct Throttle(pub SendLimit);

#[async_trait]
impl Filter for Throttle {
    fn incoming(&self, _method: Method, data: ByteStream) -> ByteStream {
        throttle_stream(data, self.0.clone(), Bytes::len)
    }

    async fn incoming_files(&self, files: Vec<WholeFile>) -> Vec<WholeFile> {
        for file in &files {
            self.0.consume(file.data.len()).await;
        }
        files
    }
}

/// A service throttled by [`Throttle`].
pub type ThrottledService = Wrapped<dyn Service, Throttle>;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn rates() {
        let check = |input: &str, expected: Result<u64, &str>| {
            let got = parse_rate(input).map_err(|e| e.to_string());
            match expected {
                Ok(rate) => assert_eq!(got, Ok(rate), "{input:?}"),
                Err(text) => {
                    let message = got.expect_err(input);
                    assert!(
                        message.contains(text),
                        "{input:?}: {message:?} lacks {text:?}"
                    );
                }
            }
        };
        check("1M", Ok(1_000_000));
        check("1MB", Ok(1_000_000));
        check("512k", Ok(512_000));
        check("512K", Ok(512_000));
        check("512Ki", Ok(524_288));
        check("10MiB", Ok(10_485_760));
        check("1.5M", Ok(1_500_000));
        check("1500", Ok(1500));
        check("1G", Ok(1_000_000_000));
        check("0", Err("greater than zero"));
        check("0M", Err("greater than zero"));
        check("2000T", Err("above the maximum"));
        check("fast", Err("invalid rate \"fast\""));
        check("", Err("invalid rate"));
        check("-1M", Err("invalid rate"));
        check("10 furlongs", Err("invalid rate"));
    }

    /// Writes `total` bytes through a limited duplex pipe while a reader drains it.
    async fn timed_write(
        limit: &SendLimit,
        total: usize,
        change: Option<(usize, Option<u64>)>,
    ) -> Duration {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut writer = limit.wrap(client);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            server.read_to_end(&mut sink).await.map(|_| sink.len())
        });
        let started = Instant::now();
        let chunk = vec![7u8; 16 * 1024];
        let mut written = 0;
        while written < total {
            if let Some((at, new)) = change
                && written == at
            {
                limit.set(new);
            }
            writer.write_all(&chunk).await.unwrap();
            written += chunk.len();
        }
        writer.shutdown().await.unwrap();
        drop(writer);
        assert_eq!(reader.await.unwrap().unwrap(), total);
        started.elapsed()
    }

    #[tokio::test]
    async fn writes_are_held_to_the_limit() {
        let limit = SendLimit::new(Some(1_000_000));
        let elapsed = timed_write(&limit, 512 * 1024, None).await;
        // 512 KiB at 1 MB/s: at least 0.52 s less the initial bucket (0.1 s).
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    }

    /// On tokio's paused clock, so the 4 s the old limit owes are virtual and
    /// the test measures whether they were waited, not how fast the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_raised_limit_applies_to_a_write_already_waiting() {
        let limit = SendLimit::new(Some(16_000));
        let (client, mut server) = tokio::io::duplex(256 * 1024);
        let mut writer = limit.wrap(client);
        let started = tokio::time::Instant::now();
        // 64 KiB at 16 KB/s: the next write owes about 4 s.
        writer.write_all(&[7u8; 64 * 1024]).await.unwrap();
        let lifted = {
            let limit = limit.clone();
            async move {
                limit.set(None);
            }
        };
        let (written, ()) = tokio::join!(writer.write_all(&[8u8; 1024]), lifted);
        written.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} of virtual time after the limit was lifted",
            started.elapsed()
        );
        let mut received = vec![0u8; 65 * 1024];
        server.read_exact(&mut received).await.unwrap();
        assert_eq!(limit.get(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_change_the_debt_is_waited() {
        let limit = SendLimit::new(Some(16_000));
        let (client, mut server) = tokio::io::duplex(256 * 1024);
        let mut writer = limit.wrap(client);
        let started = tokio::time::Instant::now();
        writer.write_all(&[7u8; 64 * 1024]).await.unwrap();
        writer.write_all(&[8u8; 1024]).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let mut received = vec![0u8; 65 * 1024];
        server.read_exact(&mut received).await.unwrap();
    }

    #[tokio::test]
    async fn a_lowered_limit_slows_a_write_in_flight() {
        let limit = SendLimit::new(None);
        // Unlimited for the first half, then 256 KB/s for the other 256 KiB.
        let elapsed = timed_write(&limit, 512 * 1024, Some((256 * 1024, Some(256_000)))).await;
        assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    }

    /// Whole files, forwarded to the store as one batch, are held to the
    /// limit as streamed data is.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_batch_of_whole_files_is_held_to_the_limit() {
        let root = tempfile::tempdir().unwrap();
        let dir = crate::DirId::new("d").unwrap();
        let store = crate::LocalStore::new([(dir.clone(), root.path().to_path_buf())]);
        let limit = SendLimit::new(Some(16_000));
        let service = ThrottledService::new(std::sync::Arc::new(store), Throttle(limit));
        let files: Vec<WholeFile> = (0..2u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 32 * 1024]);
                WholeFile {
                    path: crate::RelPath::new(&format!("f{i}")).unwrap(),
                    digest: crate::Digest::of(crate::DigestAlgorithm::Blake3, &data),
                    data,
                }
            })
            .collect();
        let started = tokio::time::Instant::now();
        let written = service.write_files(&dir, files).await;
        assert_eq!(
            written.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [32 * 1024; 2]
        );
        // 64 KiB at 16 KB/s: about 4 s, less the initial bucket.
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        for i in 0..2u8 {
            assert_eq!(
                std::fs::read(root.path().join(format!("f{i}"))).unwrap(),
                vec![i; 32 * 1024]
            );
        }
    }
}
