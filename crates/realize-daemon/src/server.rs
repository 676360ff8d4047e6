//! The gRPC handler: admits calls, decodes requests, calls realize-core's `Service`, encodes answers.
//!
//! Every request field is validated by the realize-proto conversions before
//! the store sees it, and every error becomes a status in one place
//! ([`status`]).
//!
//! Each call is first admitted against the live config and the daemon's state
//! ([`Handler::admit`]): a peer no longer in the config is refused, and so is
//! every call once shutdown has started, and a call past the connection's
//! `max_calls_per_connection`. Once it has decoded the directory, a call is
//! authorized against the peer's `dirs` and `access` ([`Admitted::authorize`])
//! before anything touches the disk. An admitted call runs until its deadline
//! (the client's `grpc-timeout` or `call_timeout`, whichever is sooner) or until its connection's
//! cancel token fires (end of the grace period, or its peer removed); how it
//! stops then depends on what it does, so that nothing on disk is left
//! half-done (see [`Handler::cancellable`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use opentelemetry::KeyValue;
use realize_core::delta::{MAX_RANGE, MIN_BLOCK_SIZE, max_delta_len};
use realize_core::store::{CHUNK_SIZE, HASH_BUFFERED, READ_BUFFERED};
use realize_core::{
    ByteRange, ByteStream, DirId, ExpectedHash, FileStamp, RelPath, Service, ServiceError,
    Sha256Hash, StoreError, WholeFile,
};
use realize_net::metrics::{RpcCall, RpcSide, record_limit};
use realize_net::throttle::check_rate;
use realize_proto::{WireError, error_from_request_stream, pb};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::budget::{BUDGET_WAIT, BudgetError, PeerBudget, Reservation};
use crate::config::{Access, CallRate};
use crate::limits::grpc_timeout;
use crate::stall::{Activity, FromClient};
use crate::state::{ActiveCall, Calls, ConnectionContext, Live, LiveConfig};

/// The largest data chunk a Write or ApplyDelta may carry (SPEC §4: chunks are
/// 64 KiB to 1 MiB); `max_message_size` bounds it too, this says what the
/// protocol means.
pub const MAX_CHUNK: usize = 1024 * 1024;

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

/// What a call does to the directory it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

impl Admitted {
    fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    fn service(&self) -> &Arc<dyn Service> {
        &self.live.service
    }

    /// Whether the peer may do what the call needs in `dir`; a denial is logged.
    fn authorize(&self, dir: &DirId, need: Need) -> Result<(), Status> {
        authorize(&self.live, &self.connection.peer.peer_id, dir, need)
    }

    /// A Write or ApplyDelta may not declare a file larger than `max_file_size`.
    fn check_file_size(&self, dir: &DirId, path: &RelPath, size: u64) -> Result<(), Status> {
        check_file_size(&self.live, dir, path, size)
    }
}

/// Whether `peer_id` may do what a call needs in `dir` under `live`; a denial is logged.
///
/// A directory the daemon does not serve is left to the store, which calls it
/// unknown (InvalidArgument) whatever the peer's allowlist says.
fn authorize(live: &Live, peer_id: &str, dir: &DirId, need: Need) -> Result<(), Status> {
    let denial = match live.peers.get(peer_id) {
        None => Some(CallError::NotAllowed {
            peer: peer_id.to_string(),
            dir: dir.clone(),
        }),
        Some(peer) if !peer.may_access(dir) && live.dirs.contains(dir) => {
            Some(CallError::NotAllowed {
                peer: peer_id.to_string(),
                dir: dir.clone(),
            })
        }
        Some(peer) if need == Need::Write && peer.access == Access::ReadOnly => {
            Some(CallError::ReadOnly {
                peer: peer_id.to_string(),
                dir: dir.clone(),
            })
        }
        Some(_) => None,
    };
    match denial {
        Some(denial) => {
            tracing::warn!(peer = %peer_id, %dir, "permission denied: {denial}");
            Err(denial.into())
        }
        None => Ok(()),
    }
}

/// A file may not be larger than `max_file_size`.
fn check_file_size(live: &Live, dir: &DirId, path: &RelPath, size: u64) -> Result<(), Status> {
    let max = live.limits.max_file_size;
    if size > max {
        return Err(CallError::FileTooLarge {
            dir: dir.clone(),
            path: path.clone(),
            size,
            max,
        }
        .into());
    }
    Ok(())
}

impl Handler {
    /// Files of a WriteFiles call, under the config in force now: a reload
    /// during a long call applies from its next files. One answer per file,
    /// in order; the files of one directory that pass the checks are written
    /// together.
    async fn write_some_files(
        &self,
        peer_id: &str,
        files: Vec<pb::WriteFilesRequest>,
    ) -> Vec<pb::WriteFilesResponse> {
        let live = self.live.current();
        let mut answers: Vec<Option<Result<u64, Status>>> = files.iter().map(|_| None).collect();
        let mut batches: Vec<(DirId, Vec<(usize, WholeFile)>)> = Vec::new();
        for (index, file) in files.iter().enumerate() {
            match check_whole_file(&live, peer_id, file) {
                Ok((dir, whole)) => match batches.last_mut() {
                    Some((last, batch)) if *last == dir => batch.push((index, whole)),
                    _ => batches.push((dir, vec![(index, whole)])),
                },
                Err(status) => answers[index] = Some(Err(status)),
            }
        }
        for (dir, batch) in batches {
            let (indexes, wholes): (Vec<usize>, Vec<WholeFile>) = batch.into_iter().unzip();
            let written = live.service.write_files(&dir, wholes).await;
            for (index, result) in indexes.into_iter().zip(written) {
                answers[index] = Some(result.map_err(|e| status(&e)));
            }
        }
        files
            .into_iter()
            .zip(answers)
            .map(|(file, answer)| {
                let answer = answer.unwrap_or_else(|| Err(no_answer()));
                let (code, message) = code_and_message(&answer);
                pb::WriteFilesResponse {
                    path: file.path,
                    code,
                    message,
                    bytes_written: answer.unwrap_or(0),
                }
            })
            .collect()
    }
}

/// Why the daemon itself refused a call (the store's refusals are `ServiceError`s).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("peer {peer} may not access directory {dir}")]
    NotAllowed { peer: String, dir: DirId },
    #[error("peer {peer} may not change directory {dir}: its access is read-only")]
    ReadOnly { peer: String, dir: DirId },
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
}

/// The one place where the daemon's own refusals become statuses.
impl From<CallError> for Status {
    fn from(error: CallError) -> Status {
        let message = error.to_string();
        match error {
            CallError::NotAllowed { .. } | CallError::ReadOnly { .. } => {
                Status::permission_denied(message)
            }
            CallError::TooManyCalls { .. } | CallError::Memory(_) => {
                Status::resource_exhausted(message)
            }
            CallError::FileTooLarge { .. }
            | CallError::ReadTooLarge { .. }
            | CallError::BadTimeout(_) => Status::invalid_argument(message),
            CallError::Deadline(_) | CallError::Stalled(_) => Status::deadline_exceeded(message),
            CallError::RateLimited { pushback_ms, .. } => {
                // gRPC's standard way to say when to try again (gRFC A6), which
                // gRPC clients with a retry policy honour, as realize does.
                let mut trailers = MetadataMap::new();
                trailers.insert(realize_net::retry::PUSHBACK, pushback_ms.into());
                Status::with_metadata(tonic::Code::ResourceExhausted, message, trailers)
            }
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

    /// Lets a call in, or says why not.
    fn admit<T>(&self, request: &Request<T>, method: &'static str) -> Result<Admitted, Status> {
        let connection = request
            .extensions()
            .get::<ConnectionContext>()
            .cloned()
            .ok_or_else(|| Status::internal("call without a connection"))?;
        let live = self.live.current();
        if let Some(refusal) = self.refusal(&live, &connection) {
            tracing::debug!(reason = refusal.message(), "call refused");
            return Err(refusal);
        }
        let max = live.limits.max_calls_per_connection;
        let Some(active) = connection.active.try_start(max as usize) else {
            let refusal = CallError::TooManyCalls { max };
            tracing::warn!("call refused: {refusal}");
            return Err(refusal.into());
        };
        self.check_rate(&live, &connection.peer.peer_id)?;
        // call_timeout bounds every call: a client's longer deadline would
        // let it hold the call (and what it buffers) for as long as it likes.
        let timeout = match request.metadata().get("grpc-timeout") {
            Some(value) => {
                let text = value.to_str().unwrap_or_default();
                grpc_timeout(text)
                    .ok_or_else(|| CallError::BadTimeout(text.to_string()))?
                    .min(live.limits.call_timeout)
            }
            None => live.limits.call_timeout,
        };
        let deadline = Instant::now() + timeout;
        let cancel = connection.cancel.child_token();
        // Set by the connection for each request; a harness without one
        // gets an activity nothing reports to, which never stalls.
        let activity = request
            .extensions()
            .get::<Activity>()
            .cloned()
            .unwrap_or_default();
        tokio::spawn(
            activity
                .clone()
                .watch(deadline, live.limits.stall_timeout, cancel.clone()),
        );
        // With "call refused" and "call cancelled", this shows at debug level what
        // each call became; tests wait for it to know a call is in flight.
        tracing::debug!("call started");
        Ok(Admitted {
            _timer: cancel.clone().drop_guard(),
            activity,
            method,
            live,
            connection,
            cancel,
            deadline,
            timeout,
            _active: active,
        })
    }

    /// Counts the call against its peer's `calls_per_second`; a call over it is
    /// refused with the time until the next may start. A stream is one call,
    /// however many messages it carries.
    fn check_rate(&self, live: &Live, peer_id: &str) -> Result<(), Status> {
        let Some(rate) = live.peers.get(peer_id).and_then(|peer| peer.rate) else {
            return Ok(());
        };
        let Err(wait) = self.calls.rates.take(peer_id, rate, Instant::now()) else {
            return Ok(());
        };
        crate::rate::record_refusal(peer_id);
        let refusal = CallError::RateLimited {
            peer: peer_id.to_owned(),
            rate,
            pushback_ms: crate::rate::pushback_ms(wait),
        };
        tracing::warn!("call refused: {refusal}");
        Err(refusal.into())
    }

    /// Why calls on this connection may not run (any more), if they may not.
    fn refusal(&self, live: &Live, connection: &ConnectionContext) -> Option<Status> {
        if !live.allows(&connection.peer) {
            return Some(Status::unauthenticated(format!(
                "peer {} is no longer allowed by realized's config",
                connection.peer.peer_id
            )));
        }
        if self.calls.is_shutting_down() {
            return Some(Status::unavailable(SHUTTING_DOWN));
        }
        None
    }

    /// The status of a call whose token fired, logged once per call.
    fn cancelled(&self, call: &Admitted) -> Status {
        let status = self
            .refusal(&self.live.current(), &call.connection)
            .unwrap_or_else(|| {
                if call.activity.stalled() {
                    CallError::Stalled(self.live.current().limits.stall_timeout).into()
                } else if Instant::now() >= call.deadline {
                    CallError::Deadline(call.timeout).into()
                } else {
                    Status::unavailable("connection closing")
                }
            });
        tracing::info!(reason = status.message(), "call cancelled");
        status
    }

    /// Runs `work` until it ends or the call is cancelled; a cancelled call's work is
    /// dropped where it is.
    ///
    /// Used for what only reads (Hash, Signature, Diff, List, Read, Info, and the
    /// header of a Write): dropping it changes nothing on disk. Writes stop through
    /// their input instead ([`cancellable_body`]), so the store ends them its usual way.
    /// Finish and Delete are not cut: each is short, and the client acts on neither
    /// before it has succeeded.
    async fn cancellable<T>(
        &self,
        call: &Admitted,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::select! {
            biased;
            result = work => result,
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
                item.unwrap_or_else(|panic| Err(span.in_scope(|| panicked(method, &*panic))))
            })
            .boxed();
        futures::stream::unfold(Some((stream, call)), move |state| {
            let handler = handler.clone();
            async move {
                let (mut stream, call) = state?;
                tokio::select! {
                    biased;
                    item = stream.next() => item.map(|item| (item, Some((stream, call)))),
                    () = call.cancel().cancelled() => Some((Err(handler.cancelled(&call)), None)),
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
    ) -> Result<T, Status> {
        match result {
            Ok(value) => Ok(value),
            Err(_) if call.cancel().is_cancelled() => Err(self.cancelled(call)),
            Err(ServiceError::Transport { source, .. }) if source.is::<BudgetError>() => {
                match source.downcast::<BudgetError>() {
                    Ok(refusal) => Err(memory_refused(*refusal)),
                    Err(source) => Err(Status::internal(source.to_string())),
                }
            }
            Err(e) => Err(status(&e)),
        }
    }

    /// Takes `bytes` from the call's peer's memory budget for `what`, waiting
    /// for room at most [`BUDGET_WAIT`], and never past the call's deadline.
    async fn reserve(
        &self,
        call: &Admitted,
        what: &'static str,
        bytes: u64,
    ) -> Result<Reservation, Status> {
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

fn status(error: &ServiceError) -> Status {
    realize_proto::status_from_error(error)
}

fn invalid(error: WireError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn target(dir: &str, path: &str) -> Result<(DirId, RelPath), Status> {
    let dir = realize_proto::dir_id(dir).map_err(invalid)?;
    let path = realize_proto::rel_path(path)
        .map_err(|e| Status::invalid_argument(format!("{dir}: {e}")))?;
    Ok((dir, path))
}

fn required_range(range: Option<pb::ByteRange>) -> Result<ByteRange, Status> {
    range
        .map(ByteRange::from)
        .ok_or_else(|| invalid(WireError::Missing("range")))
}

/// One call being served: a span naming the method and the peer, so every
/// log line of the call (including the store's audit events) says who asked,
/// and its measurement as a server-side RPC.
struct Observed {
    span: tracing::Span,
    method: &'static str,
}

fn observe<T>(method: &'static str, request: &Request<T>) -> Observed {
    let span = match request.extensions().get::<ConnectionContext>() {
        Some(connection) => {
            let peer = &connection.peer;
            // The key says which of the peer's keys made the call (several while
            // one is replaced), so the audit trail can tell them apart.
            tracing::info_span!("rpc", method, peer = %peer.peer_id, addr = %peer.addr, key = %peer.key)
        }
        None => tracing::info_span!("rpc", method),
    };
    realize_net::traces::continue_trace(&span, request.metadata());
    Observed { span, method }
}

impl Observed {
    /// Runs a handler in the call's span, measured; a panic in it is the
    /// call's `INTERNAL` error rather than a stream reset the client cannot read.
    async fn run<T>(self, handler: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let measured = RpcCall::start(RpcSide::Server, self.method);
        let (method, span) = (self.method, self.span.clone());
        let result = std::panic::AssertUnwindSafe(handler.instrument(self.span))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(span.in_scope(|| panicked(method, &*panic))));
        measured.finish(match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        });
        result
    }
}

/// Logs and counts a panic of a call, and makes it the call's status.
fn panicked(method: &'static str, panic: &(dyn std::any::Any + Send)) -> Status {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    tracing::error!(panic = what, "call panicked; the daemon serves on");
    static PANICS: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    PANICS
        .get_or_init(|| {
            opentelemetry::global::meter("realize")
                .u64_counter("realize.rpc.panics")
                .with_description("gRPC calls whose handler panicked, by method")
                .build()
        })
        .add(1, &[opentelemetry::KeyValue::new("method", method)]);
    Status::internal(format!(
        "{method} failed: internal error in the daemon ({what})"
    ))
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

fn server_stream<T, U>(
    stream: BoxStream<'static, Result<T, ServiceError>>,
    convert: fn(T) -> U,
) -> ServerStream<U>
where
    T: Send + 'static,
    U: Send + 'static,
{
    stream
        .map(move |item| item.map(convert).map_err(|e| status(&e)))
        .boxed()
}

mod handlers;
mod memory;
mod requests;

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
