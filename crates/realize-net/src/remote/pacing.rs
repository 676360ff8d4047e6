//! Honouring a daemon's pushback: a call refused for its peer's rate
//! (RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`) is made again once the
//! daemon's wait is over, so a rate-limited move goes slower instead of failing.
//!
//! The wait is shared by every call to the daemon: after one refusal, the
//! others wait too rather than each collecting a refusal of its own. A call
//! whose messages the client streams is sent again whole from [`Replay`].

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::stream::{BoxStream, Fuse};
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::connection::http2::STREAM_WINDOW;
use crate::retry::pushback;

/// What a refused streaming call may have sent before its refusal came back, and so what
/// [`Replay`] keeps: the daemon refuses a call over its rate before reading any of its
/// messages, so no more than its stream window, plus a message or two in the client's
/// buffers, can have left. Past this, the daemon has read the call: it was admitted.
const REPLAY_LIMIT: usize = STREAM_WINDOW as usize + 2 * 1024 * 1024;

/// When the daemon said the next call may start, shared by the clones of a service.
#[derive(Debug, Default)]
struct NotBefore(Mutex<Option<Instant>>);

/// How calls to one daemon are paced: its pushback, and the calls' deadline.
#[derive(Clone, Debug, Default)]
pub(super) struct Pacing {
    not_before: Arc<NotBefore>,
    pub(super) deadline: Option<Instant>,
}

impl Pacing {
    /// Makes a call with `attempt` until it is not refused with a pushback, waiting
    /// as the daemon asked before each; gives the refusal back when `can_retry` says
    /// the call cannot be made again, or the wait would pass the deadline.
    pub(super) async fn paced<R, Fut>(
        &self,
        can_retry: impl Fn() -> bool,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<R, tonic::Status>
    where
        Fut: Future<Output = Result<R, tonic::Status>>,
    {
        loop {
            let not_before = *self
                .not_before
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(not_before) = not_before {
                tokio::time::sleep_until(not_before).await;
            }
            let status = match attempt().await {
                Err(status) => status,
                answered => return answered,
            };
            let Some(wait) = pushback(&status) else {
                return Err(status);
            };
            let until = Instant::now().checked_add(wait);
            let in_time = match (until, self.deadline) {
                (Some(until), Some(deadline)) => until < deadline,
                (until, None) => until.is_some(),
                (None, Some(_)) => false,
            };
            if !in_time || !can_retry() {
                return Err(status);
            }
            tracing::info!(
                wait_ms = wait.as_millis(),
                "the daemon asks us to slow down: {}",
                status.message()
            );
            if let Some(until) = until {
                self.push(until);
            }
        }
    }

    /// No call starts before `until`.
    fn push(&self, until: Instant) {
        let mut not_before = self
            .not_before
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *not_before = Some(not_before.map_or(until, |earlier| earlier.max(until)));
    }
}

/// The messages of a client-streaming call, kept until the daemon must have
/// admitted it, so that a call refused for its rate can be sent again whole, as
/// gRPC's own transparent retries keep a call's messages (gRFC A6).
#[derive(Debug)]
pub(super) struct Replay<M>(Arc<Mutex<Kept<M>>>);

struct Kept<M> {
    /// Fused: an attempt that replaces one that read the source to its end
    /// polls it again, and most streams must not be polled past their end.
    source: Fuse<BoxStream<'static, M>>,
    /// What `source` has given so far, while under [`REPLAY_LIMIT`].
    messages: Vec<M>,
    bytes: usize,
    /// Past the limit: the messages are no longer kept, and the call cannot be
    /// sent again.
    committed: bool,
    /// The attempt reading `source`; the streams of earlier attempts give nothing more.
    attempt: u64,
}

impl<M> std::fmt::Debug for Kept<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("messages", &self.messages.len())
            .field("bytes", &self.bytes)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl<M: prost::Message + Clone + Send + 'static> Replay<M> {
    pub(super) fn new(source: impl Stream<Item = M> + Send + 'static) -> Self {
        Replay(Arc::new(Mutex::new(Kept {
            source: source.boxed().fuse(),
            messages: Vec::new(),
            bytes: 0,
            committed: false,
            attempt: 0,
        })))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept<M>> {
        // Every update under the lock is a push or a counter: a panic cannot
        // leave it inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the call can be sent again from its start.
    pub(super) fn replayable(&self) -> bool {
        !self.kept().committed
    }

    /// The messages of a new attempt: those kept, then the rest of the source.
    pub(super) fn attempt(&self) -> Attempt<M> {
        let mut kept = self.kept();
        kept.attempt = kept.attempt.wrapping_add(1);
        Attempt {
            kept: Arc::clone(&self.0),
            id: kept.attempt,
            position: 0,
        }
    }
}

/// One attempt's messages (see [`Replay::attempt`]).
pub(super) struct Attempt<M> {
    kept: Arc<Mutex<Kept<M>>>,
    id: u64,
    position: usize,
}

impl<M: prost::Message + Clone> Stream for Attempt<M> {
    type Item = M;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        let kept = Arc::clone(&self.kept);
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.attempt != self.id {
            // A refused attempt that its call has not dropped yet: it must not take
            // messages from the one that replaced it, nor end as if complete.
            return Poll::Pending;
        }
        if !kept.committed && self.position < kept.messages.len() {
            self.position += 1;
            return Poll::Ready(Some(kept.messages[self.position - 1].clone()));
        }
        let message = futures::ready!(kept.source.poll_next_unpin(cx));
        if let Some(message) = &message
            && !kept.committed
        {
            kept.bytes = kept.bytes.saturating_add(message.encoded_len());
            if kept.bytes > REPLAY_LIMIT {
                kept.committed = true;
                kept.messages = Vec::new();
            } else {
                kept.messages.push(message.clone());
                self.position = kept.messages.len();
            }
        }
        Poll::Ready(message)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use realize_proto::pb;

    fn data(n: u8, len: usize) -> pb::WriteRequest {
        pb::WriteRequest {
            message: Some(pb::write_request::Message::Data(vec![n; len].into())),
        }
    }

    fn refused(ms: &str) -> tonic::Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-retry-pushback-ms", ms.parse().unwrap());
        tonic::Status::with_metadata(tonic::Code::ResourceExhausted, "slow down", metadata)
    }

    #[tokio::test]
    async fn a_refused_stream_is_sent_again_whole() {
        let replay = Replay::new(futures::stream::iter((0..4).map(|n| data(n, 10))));
        let mut first = replay.attempt();
        assert_eq!(first.next().await, Some(data(0, 10)));
        assert_eq!(first.next().await, Some(data(1, 10)));
        assert!(replay.replayable());
        let second: Vec<_> = replay.attempt().collect().await;
        assert_eq!(second, (0..4).map(|n| data(n, 10)).collect::<Vec<_>>());
        // The first attempt gives nothing more once replaced.
        assert!(futures::poll!(first.next()).is_pending());
    }

    #[tokio::test]
    async fn a_stream_read_to_its_end_is_sent_again_whole() {
        // unfold panics when polled past its end, as the WriteFiles queue does.
        let source =
            futures::stream::unfold(
                0u8,
                |n| async move { (n < 2).then(|| (data(n, 10), n + 1)) },
            );
        let replay = Replay::new(source);
        let first: Vec<_> = replay.attempt().collect().await;
        assert_eq!(first, vec![data(0, 10), data(1, 10)]);
        let second: Vec<_> = replay.attempt().collect().await;
        assert_eq!(second, first);
    }

    #[tokio::test]
    async fn a_stream_past_the_limit_is_not_sent_again() {
        let big = REPLAY_LIMIT / 2 + 1;
        let replay = Replay::new(futures::stream::iter((0..3).map(move |n| data(n, big))));
        let mut attempt = replay.attempt();
        attempt.next().await;
        assert!(replay.replayable());
        attempt.next().await;
        assert!(!replay.replayable());
        assert_eq!(attempt.next().await, Some(data(2, big)));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_wait_the_pushback_then_go_on() {
        let pacing = Pacing::default();
        let start = Instant::now();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let answer = pacing
            .paced(
                || true,
                || async {
                    match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                        0 | 1 => Err(refused("200")),
                        _ => Ok(7),
                    }
                },
            )
            .await;
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        // Other calls wait out the last pushback too.
        pacing.push(Instant::now() + Duration::from_millis(50));
        let other = pacing.paced(|| true, || async { Ok(()) }).await;
        assert!(other.is_ok());
        assert_eq!(start.elapsed(), Duration::from_millis(450));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_returned_when_waiting_cannot_help() {
        let soon = Pacing {
            deadline: Some(Instant::now() + Duration::from_millis(100)),
            ..Pacing::default()
        };
        let status = soon
            .paced(|| true, || async { Err::<(), _>(refused("200")) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let pacing = Pacing::default();
        for (can_retry, status) in [
            (false, refused("200")),
            (true, refused("-1")),
            (true, refused("soon")),
            (true, tonic::Status::resource_exhausted("no pushback")),
            (true, tonic::Status::unavailable("down")),
        ] {
            let expected = status.code();
            let status = pacing
                .paced(|| can_retry, || async { Err::<(), _>(status.clone()) })
                .await
                .unwrap_err();
            assert_eq!(status.code(), expected);
        }
    }
}
