//! The gRPC handler: admits calls, decodes requests, calls realize-core's `Service`, encodes answers.
//!
//! Every call takes one path in (`admission`): it is observed (a span and
//! its measurement), admitted against the live config and the daemon's state
//! (a peer no longer in the config is refused, and so is every call once
//! shutdown has started, a call past the connection's
//! `max_calls_per_connection` or its peer's call rate), its request decoded
//! by realize-proto's conversions, and authorized against the peer's `dirs`
//! and `access` before anything touches the disk. Each method then is the
//! store call and nothing else (`handlers`). Every error becomes a status
//! in one place, `From<CallError> for Status`.
//!
//! An admitted call runs until its deadline (the client's `grpc-timeout` or
//! `call_timeout`, whichever is sooner) or until its connection's cancel
//! token fires (end of the grace period, or its peer removed); how it stops
//! then depends on what it does, so that nothing on disk is left half-done
//! (see `Handler::cancellable`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use opentelemetry::KeyValue;
use realize_core::limits::{
    CHUNK_SIZE, HASH_BUFFERED, MAX_RANGE, MIN_BLOCK_SIZE, READ_BUFFERED, max_delta_len,
};
use realize_core::{
    ByteRange, ByteStream, DirId, ExpectedHash, FileStamp, RelPath, Service, ServiceError,
    WholeFile,
};
use realize_net::metrics::record_limit;
use realize_net::throttle::{RateError, check_rate};
use realize_proto::request::{self, ApplyDeltaHeader, FileRefs, Named, WriteFile, WriteHeader};
use realize_proto::response::{self, FileAnswer, no_answer};
use realize_proto::{
    DecodeError, error_from_request, error_from_request_stream, pb, status_from_error,
};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::budget::{BUDGET_WAIT, BudgetError, PeerBudget, Reservation};
use crate::config::{Access, CallRate};
use crate::stall::{Activity, FromClient};
use crate::state::{ActiveCall, Calls, ConnectionContext, Live, LiveConfig};

/// Files of one WriteFiles call written together at most; their answers
/// keep the order the files came in.
const FILES_AT_ONCE: usize = 64;

/// What a call gets once shutdown has started.
pub const SHUTTING_DOWN: &str = "realized is shutting down";

/// Serves the live config's [`Service`] (normally a `LocalStore`) as the realize.v1 gRPC service.
#[derive(Debug, Clone)]
pub struct Handler {
    live: Arc<LiveConfig>,
    calls: Arc<Calls>,
}

/// A call that may run: the config as it was when it started, and its connection.
struct Admitted {
    method: &'static str,
    /// What the call's client sends, for `stall_timeout`.
    activity: Activity,
    live: Arc<Live>,
    connection: ConnectionContext,
    /// Fired at the call's deadline, or when its connection's token fires.
    cancel: CancellationToken,
    deadline: Instant,
    /// How long the call was given.
    timeout: Duration,
    /// Counts the call against `max_calls_per_connection` until it ends.
    _active: ActiveCall,
    /// Ends the deadline's timer with the call.
    _timer: DropGuard,
}

impl Admitted {
    fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    fn service(&self) -> &Arc<dyn Service> {
        &self.live.service
    }
}

/// Why a call failed: the daemon's own refusals, a request that breaks the
/// contract, or the store's error.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("peer {peer} may not access directory {dir}")]
    NotAllowed { peer: String, dir: DirId },
    #[error("peer {peer} may not change directory {dir}: its access is read-only")]
    ReadOnly { peer: String, dir: DirId },
    #[error("peer {0} is no longer allowed by realized's config")]
    NoLongerAllowed(String),
    #[error("{SHUTTING_DOWN}")]
    ShuttingDown,
    #[error("connection closing")]
    Closing,
    #[error("call without a connection")]
    NoConnection,
    #[error("{max} calls already run on this connection (max_calls_per_connection)")]
    TooManyCalls { max: u32 },
    #[error(
        "{dir}/{path}: file size {size} is larger than the daemon's max_file_size ({max} bytes)"
    )]
    FileTooLarge {
        dir: DirId,
        path: RelPath,
        size: u64,
        max: u64,
    },
    #[error(
        "{dir}: {} bytes of files in one ReadFiles call, at most {MAX_READ_BYTES_PER_CALL}",
        claimed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
    )]
    ReadTooLarge { dir: DirId, claimed: Option<u64> },
    #[error("invalid grpc-timeout {0:?}")]
    BadTimeout(String),
    #[error("send_limit: {0}")]
    SendLimit(#[from] RateError),
    #[error("call exceeded its deadline of {}", humantime::format_duration(*.0))]
    Deadline(Duration),
    #[error("no data from the client for {} (stall_timeout)", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error(transparent)]
    Memory(#[from] BudgetError),
    #[error(
        "peer {peer} is limited to {rate}: retry in {}",
        humantime::format_duration(Duration::from_millis(*pushback_ms))
    )]
    RateLimited {
        peer: String,
        rate: CallRate,
        pushback_ms: u64,
    },
    #[error("{method} failed: internal error in the daemon ({what})")]
    Panicked { method: &'static str, what: String },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The client's request stream failed as it was read.
    #[error("{}", .0.message())]
    Stream(Status),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The one place where a call's errors become statuses.
impl From<CallError> for Status {
    fn from(error: CallError) -> Status {
        let message = error.to_string();
        match error {
            CallError::NotAllowed { .. } | CallError::ReadOnly { .. } => {
                Status::permission_denied(message)
            }
            CallError::NoLongerAllowed(_) => Status::unauthenticated(message),
            CallError::ShuttingDown | CallError::Closing => Status::unavailable(message),
            CallError::NoConnection | CallError::Panicked { .. } => Status::internal(message),
            CallError::TooManyCalls { .. } | CallError::Memory(_) => {
                Status::resource_exhausted(message)
            }
            CallError::FileTooLarge { .. }
            | CallError::ReadTooLarge { .. }
            | CallError::BadTimeout(_)
            | CallError::SendLimit(_) => Status::invalid_argument(message),
            CallError::Deadline(_) | CallError::Stalled(_) => Status::deadline_exceeded(message),
            CallError::RateLimited { pushback_ms, .. } => {
                // gRPC's standard way to say when to try again (gRFC A6), which
                // gRPC clients with a retry policy honour, as realize does.
                let mut trailers = MetadataMap::new();
                trailers.insert(realize_net::retry::PUSHBACK, pushback_ms.into());
                Status::with_metadata(tonic::Code::ResourceExhausted, message, trailers)
            }
            CallError::Decode(error) => error.into(),
            CallError::Stream(status) => status,
            CallError::Service(error) => status_from_error(&error),
        }
    }
}

/// Why a Write or ApplyDelta stream stopped early: the call was cancelled, so the
/// store aborts the write exactly as when a client's stream breaks.
#[derive(Debug, thiserror::Error)]
#[error("call cancelled")]
struct CallCancelled;

impl Handler {
    pub(crate) fn new(live: Arc<LiveConfig>, calls: Arc<Calls>) -> Self {
        Handler { live, calls }
    }

    /// The status of a call whose token fired, logged once per call.
    fn cancelled(&self, call: &Admitted) -> CallError {
        let error = self
            .refusal(&self.live.current(), &call.connection)
            .unwrap_or_else(|| {
                if call.activity.stalled() {
                    CallError::Stalled(self.live.current().limits.stall_timeout)
                } else if Instant::now() >= call.deadline {
                    CallError::Deadline(call.timeout)
                } else {
                    CallError::Closing
                }
            });
        tracing::info!(reason = error.to_string().as_str(), "call cancelled");
        error
    }

    /// Runs `work` until it ends or the call is cancelled; a cancelled call's work is
    /// dropped where it is.
    ///
    /// Used for what only reads (Hash, Signature, Diff, List, Read, Info, and the
    /// header of a Write): dropping it changes nothing on disk. Writes stop through
    /// their input instead ([`cancellable_body`]), so the store ends them its usual way.
    /// Finish and Delete are not cut: each is short, and the client acts on neither
    /// before it has succeeded.
    async fn cancellable<T, E>(
        &self,
        call: &Admitted,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, CallError>
    where
        CallError: From<E>,
    {
        tokio::select! {
            biased;
            result = work => Ok(result?),
            () = call.cancel().cancelled() => Err(self.cancelled(call)),
        }
    }

    /// A response stream that ends with the cancellation status once the call is
    /// cancelled, so the client never mistakes a cut stream for a complete one.
    fn cancellable_stream<T: Send + 'static>(
        &self,
        call: Admitted,
        stream: ServerStream<T>,
    ) -> ServerStream<T> {
        let handler = self.clone();
        let (method, span) = (call.method, tracing::Span::current());
        // A panic while the stream is polled ends it with INTERNAL, like one
        // in the handler (see `Observed::run`).
        let stream = std::panic::AssertUnwindSafe(stream)
            .catch_unwind()
            .map(move |item| {
                item.unwrap_or_else(|panic| Err(span.in_scope(|| panicked(method, &*panic)).into()))
            })
            .boxed();
        futures::stream::unfold(Some((stream, call)), move |state| {
            let handler = handler.clone();
            async move {
                let (mut stream, call) = state?;
                tokio::select! {
                    biased;
                    item = stream.next() => item.map(|item| (item, Some((stream, call)))),
                    () = call.cancel().cancelled() => {
                        Some((Err(handler.cancelled(&call).into()), None))
                    }
                }
            }
        })
        .boxed()
    }

    /// The outcome of a Write or ApplyDelta: if the call was cancelled, its input was
    /// cut, and the store's error only says so.
    fn write_outcome<T>(
        &self,
        call: &Admitted,
        result: Result<T, ServiceError>,
    ) -> Result<T, CallError> {
        match result {
            Ok(value) => Ok(value),
            Err(_) if call.cancel().is_cancelled() => Err(self.cancelled(call)),
            Err(ServiceError::Transport { context, source }) if source.is::<BudgetError>() => {
                match source.downcast::<BudgetError>() {
                    Ok(refusal) => Err(memory_refused(*refusal)),
                    Err(source) => Err(ServiceError::Transport { context, source }.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Takes `bytes` from the call's peer's memory budget for `what`, waiting
    /// for room at most [`BUDGET_WAIT`], and never past the call's deadline.
    async fn reserve(
        &self,
        call: &Admitted,
        what: &'static str,
        bytes: u64,
    ) -> Result<Reservation, CallError> {
        let reserving = reserve(&call.connection.budget, &self.live, what, bytes);
        self.cancellable(call, async { reserving.await.map_err(memory_refused) })
            .await
    }
}

/// A client stream's data that fails once the call is cancelled: the store then aborts
/// the write, keeping in the partial file what was written, and never truncates or
/// extends it as if the data were complete.
fn cancellable_body(body: ByteStream, call: &Admitted) -> ByteStream {
    // The data comes from the client: waiting for it counts toward a stall.
    let body = FromClient::new(body, call.activity.clone()).boxed();
    let cancel = call.cancel().clone();
    futures::stream::unfold(Some((body, cancel)), |state| async move {
        let (mut body, cancel) = state?;
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                let error = ServiceError::Transport {
                    context: "call cancelled".to_string(),
                    source: Box::new(CallCancelled),
                };
                Some((Err(error), None))
            }
            item = body.next() => item.map(|item| (item, Some((body, cancel)))),
        }
    })
    .boxed()
}

/// A send limit for people: `unlimited` or bytes per second.
struct Rate(Option<u64>);

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(rate) => write!(f, "{rate} B/s"),
            None => f.write_str("unlimited"),
        }
    }
}

type ServerStream<T> = BoxStream<'static, Result<T, Status>>;

/// The store's stream as answers, each item converted by realize-proto.
fn server_stream<T, U>(stream: BoxStream<'static, Result<T, ServiceError>>) -> ServerStream<U>
where
    T: Send + 'static,
    U: From<T> + Send + 'static,
{
    stream
        .map(|item| item.map(U::from).map_err(|e| status_from_error(&e)))
        .boxed()
}

mod admission;
mod handlers;
mod memory;
mod requests;

use admission::*;
use memory::*;
use requests::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(size: u64) -> (RelPath, FileStamp) {
        let path = RelPath::new("f").unwrap_or_else(|e| panic!("{e}"));
        let stamp = FileStamp {
            size,
            mtime_unix_nanos: 0,
            inode: 1,
        };
        (path, stamp)
    }

    #[test]
    fn claimed_sizes_that_overflow_are_not_a_small_sum() {
        // Issue 14: 1023 files of 256 KiB and one of 2^64 - 1023 * 256 KiB
        // wrapped to 0 with a plain sum.
        let mut files = vec![stamped(262_144); 1023];
        files.push(stamped(u64::MAX - 1023 * 262_144 + 1));
        assert_eq!(claimed_bytes(&files), None);
        files.pop();
        assert_eq!(claimed_bytes(&files), Some(1023 * 262_144));
        assert_eq!(claimed_bytes(&[]), Some(0));
        assert_eq!(
            claimed_bytes(&[stamped(u64::MAX), stamped(0)]),
            Some(u64::MAX)
        );
    }
}
