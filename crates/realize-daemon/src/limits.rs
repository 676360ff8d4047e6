//! Wire-level limits applied before tonic sees a request: the size of each
//! gRPC message, the peer's memory budget while a message arrives, and the
//! deadline a call carries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use crate::budget::{BUDGET_WAIT, BudgetError, PeerBudget, Reservation};
use crate::stall::Activity;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Reserving = Pin<Box<dyn Future<Output = Result<Reservation, BudgetError>> + Send>>;

/// A request body that fails with ResourceExhausted as soon as a gRPC message's
/// 5-byte prefix declares more than `max` bytes, before anything buffers it.
///
/// tonic has its own limit, but it answers OutOfRange, which gRPC reserves for
/// ranges; this one answers what gRPC says a message too large is.
pub(crate) struct MessageLimit<B> {
    inner: B,
    max: usize,
    frames: FrameReader,
    failed: bool,
    budget: Option<MessageBudget>,
    /// Told of every byte that arrives, and while a message is partly received.
    activity: Option<Activity>,
    /// Whether `activity` was last told a message is partly received.
    told_mid_message: bool,
}

/// Counts the message being received in its peer's memory budget: tonic
/// gathers a whole message before decoding it, so without this, calls whose
/// messages all arrive slowly would hold up to `max_message_size` each.
struct MessageBudget {
    peer: Arc<PeerBudget>,
    max: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The message in progress (its number in the stream) and its bytes,
    /// given back once its last byte has gone to tonic, which decodes it then.
    held: Option<(u64, Reservation)>,
    /// A frame that starts a message, held back until that message has room:
    /// holding it stops this stream's HTTP/2 window, so the client waits too.
    waiting: Option<(Frame<Bytes>, u64, Reserving)>,
}

impl<B> MessageLimit<B> {
    pub fn new(inner: B, max: usize) -> Self {
        MessageLimit {
            inner,
            max,
            frames: FrameReader::default(),
            failed: false,
            budget: None,
            activity: None,
            told_mid_message: false,
        }
    }

    /// Tells `activity` when bytes arrive and while a message is partly
    /// received, for the call's `stall_timeout`.
    pub fn watched(mut self, activity: Activity) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Counts each message in `peer`'s budget (of `max` bytes, read at each
    /// message) while it arrives.
    pub fn budgeted(
        mut self,
        peer: Arc<PeerBudget>,
        max: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        self.budget = Some(MessageBudget {
            peer,
            max,
            held: None,
            waiting: None,
        });
        self
    }

    fn tell_mid_message(&mut self, mid_message: bool) {
        if let Some(activity) = &self.activity
            && mid_message != self.told_mid_message
        {
            activity.mid_message(mid_message, self.told_mid_message);
            self.told_mid_message = mid_message;
        }
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        self.tell_mid_message(false);
        if let Some(budget) = &mut self.budget {
            budget.held = None;
            budget.waiting = None;
        }
        Poll::Ready(Some(Err(Box::new(status))))
    }
}

impl<B> Drop for MessageLimit<B> {
    fn drop(&mut self) {
        // A message cut off is no longer waited for.
        self.tell_mid_message(false);
    }
}

impl<B> std::fmt::Debug for MessageLimit<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageLimit")
            .field("max", &self.max)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<B> Body for MessageLimit<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Some(budget) = &mut self.budget
            && let Some((_, number, reserving)) = &mut budget.waiting
        {
            let reserved = ready!(reserving.as_mut().poll(cx));
            let number = *number;
            return match (reserved, budget.waiting.take()) {
                (Ok(reservation), Some((frame, ..))) => {
                    budget.held = Some((number, reservation));
                    Poll::Ready(Some(Ok(frame)))
                }
                (Err(e), _) => {
                    tracing::warn!(error = %e, "message refused: no room in the peer's memory budget");
                    self.fail(Status::resource_exhausted(e.to_string()))
                }
                (Ok(_), None) => Poll::Ready(None),
            };
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let max = self.max;
            let fed = self.frames.feed(data, max);
            if let Some(activity) = &self.activity {
                activity.touch();
            }
            let mid_message = self.frames.in_progress().is_some();
            self.tell_mid_message(mid_message);
            if let Err(len) = fed {
                tracing::warn!(
                    size = len,
                    max_message_size = max,
                    "message refused: larger than max_message_size"
                );
                return self.fail(Status::resource_exhausted(format!(
                    "message of {len} bytes is larger than the daemon's max_message_size ({max} bytes)"
                )));
            }
            let in_progress = self.frames.in_progress();
            if let Some(budget) = &mut self.budget {
                match in_progress {
                    None => budget.held = None,
                    Some((number, _))
                        if budget.held.as_ref().is_some_and(|(n, _)| *n == number) => {}
                    Some((number, len)) => {
                        budget.held = None;
                        let (peer, max) = (Arc::clone(&budget.peer), Arc::clone(&budget.max));
                        let reserving: Reserving = Box::pin(async move {
                            peer.reserve("a request message", len, || max(), BUDGET_WAIT)
                                .await
                        });
                        budget.waiting = Some((frame, number, reserving));
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the gRPC framing of a byte stream (1 flag byte, 4 bytes of length,
/// then the message) across chunk boundaries, reading only the prefixes.
#[derive(Debug, Default)]
struct FrameReader {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    /// Messages whose prefix has been read, the current one included.
    started: u64,
    /// The declared length of the current message.
    current_len: u64,
}

impl FrameReader {
    /// The message whose bytes are still arriving, if any: its number in the
    /// stream and its declared length.
    fn in_progress(&self) -> Option<(u64, u64)> {
        (self.remaining > 0).then_some((self.started, self.current_len))
    }

    /// Takes the next bytes of the stream; `Err` with the declared length if a
    /// message is longer than `max`.
    fn feed(&mut self, mut data: &[u8], max: usize) -> Result<(), u64> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(5 - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                if len > max as u64 {
                    return Err(len);
                }
                self.remaining = len;
                self.started += 1;
                self.current_len = len;
            }
        }
        Ok(())
    }
}

/// Parses a `grpc-timeout` header value: 1 to 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len as usize));
        bytes
    }

    /// Feeds `stream` in chunks of `chunk` bytes; the first length over `max`.
    fn check(stream: &[u8], chunk: usize, max: usize) -> Result<(), u64> {
        let mut reader = FrameReader::default();
        stream
            .chunks(chunk)
            .try_for_each(|data| reader.feed(data, max))
    }

    #[test]
    fn messages_within_the_limit_pass_however_they_are_split() {
        let stream = [message(10), message(0), message(100), message(3)].concat();
        for chunk in [1, 2, 4, 5, 6, 7, 100, 1000] {
            assert_eq!(check(&stream, chunk, 100), Ok(()), "chunk {chunk}");
        }
    }

    #[test]
    fn a_message_over_the_limit_is_caught_by_its_prefix() {
        let stream = [message(10), message(101), message(3)].concat();
        for chunk in [1, 3, 5, 16, 1000] {
            assert_eq!(check(&stream, chunk, 100), Err(101), "chunk {chunk}");
        }
        // Only the prefix is needed: a 4 GiB declaration is refused without its bytes.
        assert_eq!(
            check(&[0, 0xff, 0xff, 0xff, 0xff], 5, 100),
            Err(u32::MAX as u64)
        );
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "1", "123456789S", "1s", "-1S", "1.5S", "é", "1 S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
