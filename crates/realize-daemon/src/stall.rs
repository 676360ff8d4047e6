//! `stall_timeout`: when a call waits on its client's data and no byte
//! comes, it ends instead of holding its slot and memory until
//! `call_timeout`.
//!
//! Two things say a call waits on its client: a request message partly
//! received ([`crate::limits::MessageLimit`] sees each frame), and a handler
//! waiting for the next message of a data stream ([`FromClient`]). Bytes
//! arriving at all, even slowly (a client throttled to a few KB/s), keep the
//! call alive: only silence ends it. Time the daemon spends itself (a disk
//! write, a hash) never counts, nor does a WriteFiles call idle between
//! files.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::time::{Duration, Instant};

/// A call's view of its client's data, shared by its streams and its watchdog.
#[derive(Clone, Debug)]
pub(crate) struct Activity(Arc<State>);

#[derive(Debug)]
struct State {
    started: Instant,
    /// When a byte last came, in milliseconds since `started`.
    last_byte: AtomicU64,
    /// Reasons the call now waits on its client (a message partly received,
    /// a handler waiting for the next message).
    waiting: AtomicUsize,
    stalled: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(State {
            started: Instant::now(),
            last_byte: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
        }))
    }
}

impl Activity {
    /// Bytes came from the client.
    pub fn touch(&self) {
        let now = self.0.started.elapsed().as_millis();
        self.0
            .last_byte
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn set_waiting(&self, waiting: bool) {
        if waiting {
            self.touch();
            self.0.waiting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A request message is now partly received (`mid`), or no longer;
    /// `was` is what this activity was told last.
    pub fn mid_message(&self, mid: bool, was: bool) {
        if mid != was {
            self.set_waiting(mid);
        }
    }

    /// When the call counts as stalled if nothing changes: `None` while it
    /// does not wait on its client.
    fn stall_at(&self, stall_timeout: Duration) -> Option<Instant> {
        if self.0.waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let last = Duration::from_millis(self.0.last_byte.load(Ordering::Relaxed));
        Some(self.0.started + last + stall_timeout)
    }

    /// Whether the watchdog ended the call for a stall.
    pub fn stalled(&self) -> bool {
        self.0.stalled.load(Ordering::Relaxed)
    }

    /// Fires `cancel` at `deadline`, or once the call has waited on its
    /// client for `stall_timeout` without a byte (then [`Activity::stalled`]).
    pub async fn watch(
        self,
        deadline: Instant,
        stall_timeout: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            // Rechecked at least this often, since waiting may start at any time.
            let next_look = Instant::now() + stall_timeout;
            let wake = self
                .stall_at(stall_timeout)
                .unwrap_or(next_look)
                .min(deadline);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = cancel.cancelled() => return,
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.stall_at(stall_timeout).is_some_and(|at| now >= at) {
                self.0.stalled.store(true, Ordering::Relaxed);
                break;
            }
        }
        cancel.cancel();
    }
}

impl Activity {
    /// Awaits `work`, which waits on the client (the header of a Write).
    pub async fn awaiting_client<T>(&self, work: impl Future<Output = T>) -> T {
        let _waiting = Waiting::new(self.clone());
        work.await
    }
}

/// Counts as waiting on the client while it lives.
struct Waiting(Activity);

impl Waiting {
    fn new(activity: Activity) -> Self {
        activity.set_waiting(true);
        Waiting(activity)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.set_waiting(false);
    }
}

/// A stream of the client's data that tells the call's [`Activity`] while a
/// handler waits for its next item.
pub(crate) struct FromClient<S> {
    inner: S,
    activity: Activity,
    waiting: bool,
}

impl<S> FromClient<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        FromClient {
            inner,
            activity,
            waiting: false,
        }
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            self.activity.set_waiting(waiting);
        }
    }
}

impl<S: Stream + Unpin> Stream for FromClient<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.set_waiting(true);
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if polled.is_ready() {
            self.set_waiting(false);
        }
        polled
    }
}

impl<S> Drop for FromClient<S> {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_while_waiting_on_the_client_stalls_the_call() {
        let activity = Activity::default();
        let cancel = CancellationToken::new();
        let far = Instant::now() + Duration::from_secs(3600);
        let watch = tokio::spawn(activity.clone().watch(
            far,
            Duration::from_secs(120),
            cancel.clone(),
        ));
        // A stream the client never feeds: the handler waits on it.
        let mut stream = FromClient::new(futures::stream::pending::<()>(), activity.clone());
        assert!(futures::poll!(stream.next()).is_pending());
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert!(!cancel.is_cancelled());
        activity.touch(); // a byte of the next message: alive again
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert!(!cancel.is_cancelled());
        tokio::time::sleep(Duration::from_secs(2)).await;
        watch.await.unwrap();
        assert!(cancel.is_cancelled() && activity.stalled());
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_daemon_spends_itself_never_stalls_the_call() {
        let activity = Activity::default();
        let cancel = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(1000);
        let watch = tokio::spawn(activity.clone().watch(
            deadline,
            Duration::from_secs(120),
            cancel.clone(),
        ));
        // An item came, and the handler works on it for long: not waiting.
        let mut stream = FromClient::new(futures::stream::iter([1, 2]), activity.clone());
        assert_eq!(stream.next().await, Some(1));
        tokio::time::sleep(Duration::from_secs(999)).await;
        assert!(!cancel.is_cancelled());
        tokio::time::sleep(Duration::from_secs(2)).await;
        watch.await.unwrap();
        assert!(
            cancel.is_cancelled() && !activity.stalled(),
            "ended by its deadline"
        );
    }
}
