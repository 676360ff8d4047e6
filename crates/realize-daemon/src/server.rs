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

/// What the budget calls a chunk of a Write.
const WRITE_CHUNK: &str = "a Write chunk";

/// Bytes a Read holds at most: the store's read-ahead, and the chunk tonic
/// is encoding; less for a shorter read.
fn read_memory(length: Option<u64>) -> u64 {
    let most = READ_BUFFERED.saturating_add(CHUNK_SIZE as u64);
    length.map_or(most, |length| length.min(most))
}

/// The length of `range` a Signature, Diff or ApplyDelta may cover: longer
/// ranges are refused by the store before any byte is read.
fn budgeted_range(range: ByteRange) -> u64 {
    range.len().min(MAX_RANGE)
}

/// Bytes a Signature holds at most: the range, and the signature made of
/// it (12 bytes per block, counted twice: fast_rsync's and the copy sent).
fn signature_memory(range: ByteRange, block_size: u32) -> u64 {
    let len = budgeted_range(range);
    let blocks = (len / u64::from(block_size.max(MIN_BLOCK_SIZE))).saturating_add(1);
    len.saturating_add(blocks.saturating_mul(24))
}

/// Bytes a Diff holds at most: the range, the delta made of it, and the
/// signature (as sent, its copy, and its index).
fn diff_memory(range: ByteRange, signature_len: usize) -> u64 {
    let len = budgeted_range(range);
    len.saturating_add(max_delta_len(len))
        .saturating_add((signature_len as u64).saturating_mul(4))
}

/// Bytes an ApplyDelta holds at most: the delta, checked whole before
/// anything is written, the range as it is, and the range patched.
fn apply_delta_memory(range: ByteRange) -> u64 {
    let len = budgeted_range(range);
    max_delta_len(len).saturating_add(len.saturating_mul(2))
}

/// Files a ReadFiles or DeleteFiles call may name at most.
const MAX_FILES_PER_CALL: usize = 1024;
/// Bytes of files a ReadFiles call may ask for at most (each file is read
/// only if it has the stamp, so the size, the call gives).
const MAX_READ_BYTES_PER_CALL: u64 = 16 * 1024 * 1024;

/// A file named by a ReadFiles or DeleteFiles call: its path as sent, and
/// the file, or why it is refused.
type CheckedRef = (String, Result<(RelPath, FileStamp), Status>);

/// The directory of a ReadFiles or DeleteFiles call, and the files it names.
fn file_refs(dir: &str, files: Vec<pb::FileRef>) -> Result<(DirId, Vec<CheckedRef>), Status> {
    let dir = realize_proto::dir_id(dir).map_err(invalid)?;
    if files.len() > MAX_FILES_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "{dir}: {} files in one call, at most {MAX_FILES_PER_CALL}",
            files.len()
        )));
    }
    let files = files
        .into_iter()
        .map(|file| {
            let checked = realize_proto::rel_path(&file.path)
                .map_err(|e| Status::invalid_argument(format!("{dir}: {e}")))
                .and_then(|path| {
                    let stamp = file.stamp.ok_or_else(|| {
                        Status::invalid_argument(format!("{dir}/{path}: no stamp"))
                    })?;
                    Ok((path, FileStamp::from(stamp)))
                });
            (file.path, checked)
        })
        .collect();
    Ok((dir, files))
}

/// Bytes the stamps of `files` claim in all; `None` if the sum does not fit
/// in a u64 (the sizes are the client's, and a wrapped sum would look small).
fn claimed_bytes(files: &[(RelPath, FileStamp)]) -> Option<u64> {
    files
        .iter()
        .try_fold(0u64, |sum, (_, stamp)| sum.checked_add(stamp.size))
}

/// How one file of a batch call went, as its answer says it: the gRPC code,
/// and the message if it failed.
fn code_and_message<T>(outcome: &Result<T, Status>) -> (i32, String) {
    match outcome {
        Ok(_) => (tonic::Code::Ok as i32, String::new()),
        Err(status) => (status.code() as i32, status.message().to_string()),
    }
}

/// A store that answered fewer files than it was given: a bug, said per file.
fn no_answer() -> Status {
    Status::internal("the store gave no answer for this file")
}

/// The files of [`file_refs`] that passed the checks, for the store.
fn valid_refs(files: &[CheckedRef]) -> Vec<(RelPath, FileStamp)> {
    files
        .iter()
        .filter_map(|(_, checked)| checked.as_ref().ok().cloned())
        .collect()
}

/// Each file of [`file_refs`] with its outcome: its refusal, or the store's
/// answer for it (given in order for the files that passed the checks).
fn outcomes<T>(
    files: Vec<CheckedRef>,
    answers: Vec<Result<T, ServiceError>>,
) -> Vec<(String, Result<T, Status>)> {
    let mut answers = answers.into_iter();
    files
        .into_iter()
        .map(|(path, checked)| {
            let outcome = match checked {
                Err(refused) => Err(refused),
                Ok(_) => match answers.next() {
                    Some(answer) => answer.map_err(|e| status(&e)),
                    None => Err(no_answer()),
                },
            };
            (path, outcome)
        })
        .collect()
}

/// What a WriteFiles message asks, if the peer may ask it.
fn check_whole_file(
    live: &Live,
    peer_id: &str,
    file: &pb::WriteFilesRequest,
) -> Result<(DirId, WholeFile), Status> {
    let (dir, path) = target(&file.dir, &file.path)?;
    authorize(live, peer_id, &dir, Need::Write)?;
    check_file_size(live, &dir, &path, file.data.len() as u64)?;
    let sha256 = Sha256Hash::from_slice(&file.sha256).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{dir}/{path}: sha256 must be 32 bytes, got {}",
            file.sha256.len()
        ))
    })?;
    Ok((
        dir,
        WholeFile {
            path,
            data: file.data.clone(),
            sha256,
        },
    ))
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

/// [`PeerBudget::reserve`] against the live `max_memory_per_peer`.
fn reserve(
    budget: &Arc<PeerBudget>,
    live: &Arc<LiveConfig>,
    what: &'static str,
    bytes: u64,
) -> impl Future<Output = Result<Reservation, BudgetError>> + Send + use<> {
    let (budget, live) = (Arc::clone(budget), Arc::clone(live));
    async move {
        let max = || live.current().limits.max_memory_per_peer;
        budget.reserve(what, bytes, max, BUDGET_WAIT).await
    }
}

/// The status of a call refused memory, logged.
fn memory_refused(refusal: BudgetError) -> Status {
    tracing::warn!("call refused: {refusal}");
    CallError::from(refusal).into()
}

/// A chunk of data that keeps its bytes counted in its peer's budget for as
/// long as any copy of it lives (in the store's queue, being written).
#[derive(Debug)]
struct Budgeted {
    data: bytes::Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data`, each chunk counted in the peer's budget from when it is taken
/// until the store has dropped it: a chunk is not taken until it fits.
fn budgeted_body(
    data: ByteStream,
    budget: &Arc<PeerBudget>,
    live: &Arc<LiveConfig>,
    what: &'static str,
) -> ByteStream {
    let (budget, live) = (Arc::clone(budget), Arc::clone(live));
    data.and_then(move |chunk| {
        let reserving = reserve(&budget, &live, what, chunk.len() as u64);
        async move {
            match reserving.await {
                Ok(reservation) => Ok(bytes::Bytes::from_owner(Budgeted {
                    data: chunk,
                    _reservation: reservation,
                })),
                Err(refusal) => Err(ServiceError::Transport {
                    context: "memory budget".to_string(),
                    source: Box::new(refusal),
                }),
            }
        }
    })
    .boxed()
}

/// A response stream that keeps its bytes counted in the peer's budget
/// until it has ended or been dropped.
struct Holding<T> {
    stream: ServerStream<T>,
    _reservation: Reservation,
}

impl<T> futures::Stream for Holding<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

fn holding<T: Send + 'static>(
    stream: ServerStream<T>,
    reservation: Reservation,
) -> ServerStream<T> {
    Holding {
        stream,
        _reservation: reservation,
    }
    .boxed()
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

/// The first message of a client stream must be its header.
async fn header<M, H>(
    stream: &mut Streaming<M>,
    take: impl Fn(M) -> Option<H>,
) -> Result<H, Status> {
    match stream.message().await? {
        Some(message) => {
            take(message).ok_or_else(|| Status::invalid_argument("first message must be a header"))
        }
        None => Err(Status::invalid_argument("empty request stream")),
    }
}

/// The rest of a client stream as data chunks; a second header, or a chunk larger
/// than [`MAX_CHUNK`], is an invalid request.
fn body<M: Send + 'static>(
    stream: Streaming<M>,
    take: fn(M) -> Option<bytes::Bytes>,
    dir: &DirId,
    path: &RelPath,
) -> ByteStream {
    let (dir, path) = (dir.to_string(), path.to_string());
    stream
        .map_err(error_from_request_stream)
        .and_then(move |m| {
            let invalid = |reason: String| {
                ServiceError::from(StoreError::InvalidRequest {
                    dir: dir.clone(),
                    path: path.clone(),
                    reason,
                })
            };
            futures::future::ready(match take(m) {
                None => Err(invalid("expected data after the header".to_string())),
                Some(chunk) if chunk.len() > MAX_CHUNK => Err(invalid(format!(
                    "data chunk of {} bytes is larger than {MAX_CHUNK} bytes",
                    chunk.len()
                ))),
                Some(chunk) => Ok(chunk),
            })
        })
        .boxed()
}

/// The data of a whole-file Write, and the SHA-256 of its `finish` message,
/// sent once the data has ended; never sent if the stream ends without one.
fn whole_file_body(
    stream: Streaming<pb::WriteRequest>,
    dir: &DirId,
    path: &RelPath,
) -> (ByteStream, ExpectedHash) {
    use pb::write_request::Message;
    let (sender, expected) = tokio::sync::oneshot::channel();
    let (dir, path) = (dir.to_string(), path.to_string());
    let invalid = move |reason: String| {
        ServiceError::from(StoreError::InvalidRequest {
            dir: dir.clone(),
            path: path.clone(),
            reason,
        })
    };
    // The sender is taken when the stream ends or fails: a stream that has
    // ended is never polled again.
    let data = stream::unfold((stream, Some(sender)), move |(mut stream, sender)| {
        let invalid = invalid.clone();
        async move {
            let sender = sender?;
            let message = match stream.next().await? {
                Ok(message) => message.message,
                Err(status) => {
                    return Some((Err(error_from_request_stream(status)), (stream, None)));
                }
            };
            let chunk = match message {
                Some(Message::Data(chunk)) if chunk.len() > MAX_CHUNK => Err(format!(
                    "data chunk of {} bytes is larger than {MAX_CHUNK} bytes",
                    chunk.len()
                )),
                Some(Message::Data(chunk)) => Ok(chunk),
                Some(Message::Finish(finish)) => match Sha256Hash::from_slice(&finish.sha256) {
                    Some(hash) => {
                        let _ = sender.send(hash);
                        return None;
                    }
                    None => Err(format!(
                        "sha256 must be 32 bytes, got {}",
                        finish.sha256.len()
                    )),
                },
                _ => Err("expected data or finish after the header".to_string()),
            };
            Some(match chunk {
                Ok(chunk) => (Ok(chunk), (stream, Some(sender))),
                Err(reason) => (Err(invalid(reason)), (stream, None)),
            })
        }
    });
    (data.boxed(), expected)
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

#[tonic::async_trait]
impl pb::realize_server::Realize for Handler {
    type ListStream = ServerStream<pb::ListResponse>;
    type ReadStream = ServerStream<pb::ReadResponse>;
    type DiffStream = ServerStream<pb::DiffResponse>;
    type WriteFilesStream = ServerStream<pb::WriteFilesResponse>;
    type ReadFilesStream = ServerStream<pb::ReadFilesResponse>;

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let observed = observe("List", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let dir = realize_proto::dir_id(&request.dir).map_err(invalid)?;
                call.authorize(&dir, Need::Read)?;
                let entries = self
                    .cancellable(&call, async {
                        call.service()
                            .list(&dir, request.include_partial)
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                let stream = server_stream(entries, pb::ListResponse::from);
                Ok(Response::new(self.cancellable_stream(call, stream)))
            })
            .await
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let observed = observe("Read", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let memory = self
                    .reserve(&call, "a Read", read_memory(request.length))
                    .await?;
                let data = self
                    .cancellable(&call, async {
                        call.service()
                            .read(
                                &dir,
                                &path,
                                request.offset,
                                request.length,
                                request.if_stamp.map(Into::into),
                            )
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                let stream = server_stream(data, |data| pb::ReadResponse { data });
                Ok(Response::new(
                    self.cancellable_stream(call, holding(stream, memory)),
                ))
            })
            .await
    }

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        use pb::write_request::Message;
        let observed = observe("Write", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let mut stream = request.into_inner();
                let header = self
                    .cancellable(
                        &call,
                        call.activity
                            .awaiting_client(header(&mut stream, |m| match m.message {
                                Some(Message::Header(h)) => Some(h),
                                _ => None,
                            })),
                    )
                    .await?;
                let (dir, path) = target(&header.dir, &header.path)?;
                call.authorize(&dir, Need::Write)?;
                call.check_file_size(&dir, &path, header.file_size)?;
                let result = if header.whole_file {
                    if header.offset != 0 {
                        return Err(Status::invalid_argument(format!(
                            "{dir}/{path}: a whole-file write starts at offset 0, not {}",
                            header.offset
                        )));
                    }
                    let (data, expected) = whole_file_body(stream, &dir, &path);
                    let data =
                        budgeted_body(data, &call.connection.budget, &self.live, WRITE_CHUNK);
                    let data = cancellable_body(data, &call);
                    call.service()
                        .write_file(&dir, &path, header.file_size, data, expected)
                        .await
                } else {
                    let data = body(
                        stream,
                        |m| match m.message {
                            Some(Message::Data(d)) => Some(d),
                            _ => None,
                        },
                        &dir,
                        &path,
                    );
                    let data =
                        budgeted_body(data, &call.connection.budget, &self.live, WRITE_CHUNK);
                    let data = cancellable_body(data, &call);
                    call.service()
                        .write(&dir, &path, header.offset, header.file_size, data)
                        .await
                };
                let bytes_written = self.write_outcome(&call, result)?;
                tracing::debug!(%dir, %path, offset = header.offset, bytes_written, "write");
                Ok(Response::new(pb::WriteResponse { bytes_written }))
            })
            .await
    }

    async fn write_files(
        &self,
        request: Request<Streaming<pb::WriteFilesRequest>>,
    ) -> Result<Response<Self::WriteFilesStream>, Status> {
        let observed = observe("WriteFiles", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let peer_id = call.connection.peer.peer_id.clone();
                let (handler, span) = (self.clone(), tracing::Span::current());
                let (budget, live) = (Arc::clone(&call.connection.budget), Arc::clone(&self.live));
                // The files that have arrived are written together, in one
                // trip to the disk, while the next ones arrive. Each file is
                // counted in the peer's budget before the next is taken, until
                // its batch is written.
                let responses = request
                    .into_inner()
                    .and_then(move |file| {
                        let reserving =
                            reserve(&budget, &live, "a WriteFiles file", file.data.len() as u64);
                        async move {
                            reserving
                                .await
                                .map(|memory| (file, memory))
                                .map_err(memory_refused)
                        }
                    })
                    .ready_chunks(FILES_AT_ONCE)
                    .map(move |messages| {
                        let (handler, peer_id) = (handler.clone(), peer_id.clone());
                        async move {
                            let mut files = Vec::with_capacity(messages.len());
                            let mut memory = Vec::with_capacity(messages.len());
                            let mut broken = None;
                            for message in messages {
                                match message {
                                    Ok((file, held)) => {
                                        files.push(file);
                                        memory.push(held);
                                    }
                                    // The client's stream broke: no more files.
                                    Err(status) => {
                                        broken = Some(status);
                                        break;
                                    }
                                }
                            }
                            let mut answers: Vec<Result<pb::WriteFilesResponse, Status>> = handler
                                .write_some_files(&peer_id, files)
                                .await
                                .into_iter()
                                .map(Ok)
                                .collect();
                            drop(memory);
                            answers.extend(broken.map(Err));
                            stream::iter(answers)
                        }
                        .instrument(span.clone())
                    })
                    .buffered(2)
                    .flatten()
                    .boxed();
                Ok(Response::new(self.cancellable_stream(call, responses)))
            })
            .await
    }

    async fn read_files(
        &self,
        request: Request<pb::ReadFilesRequest>,
    ) -> Result<Response<Self::ReadFilesStream>, Status> {
        let observed = observe("ReadFiles", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, files) = file_refs(&request.dir, request.files)?;
                call.authorize(&dir, Need::Read)?;
                let valid = valid_refs(&files);
                // Read whole before they are sent: what the stamps claim is
                // what the call may make the daemon hold.
                let claimed = claimed_bytes(&valid)
                    .filter(|claimed| *claimed <= MAX_READ_BYTES_PER_CALL)
                    .ok_or_else(|| CallError::ReadTooLarge {
                        dir: dir.clone(),
                        claimed: claimed_bytes(&valid),
                    })?;
                let memory = self.reserve(&call, "a ReadFiles call", claimed).await?;
                let read = self
                    .cancellable(&call, async {
                        Ok(call.service().read_files(&dir, &valid).await)
                    })
                    .await?;
                let answers: Vec<Result<pb::ReadFilesResponse, Status>> = outcomes(files, read)
                    .into_iter()
                    .map(|(path, outcome)| {
                        let (code, message) = code_and_message(&outcome);
                        let (data, sha256) = match outcome {
                            Ok(whole) => {
                                (whole.data, bytes::Bytes::copy_from_slice(&whole.sha256.0))
                            }
                            Err(_) => Default::default(),
                        };
                        Ok(pb::ReadFilesResponse {
                            path,
                            code,
                            message,
                            data,
                            sha256,
                        })
                    })
                    .collect();
                let stream = holding(stream::iter(answers).boxed(), memory);
                Ok(Response::new(self.cancellable_stream(call, stream)))
            })
            .await
    }

    async fn delete_files(
        &self,
        request: Request<pb::DeleteFilesRequest>,
    ) -> Result<Response<pb::DeleteFilesResponse>, Status> {
        let observed = observe("DeleteFiles", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, files) = file_refs(&request.dir, request.files)?;
                call.authorize(&dir, Need::Write)?;
                let valid = valid_refs(&files);
                // Not cut by a cancellation, as Delete: it is short, and the
                // client acts on nothing before it has the answer.
                let deleted = call.service().delete_files(&dir, &valid).await;
                let results = outcomes(files, deleted)
                    .into_iter()
                    .map(|(path, outcome)| {
                        let (code, message) = code_and_message(&outcome);
                        pb::FileResult {
                            path,
                            code,
                            message,
                        }
                    })
                    .collect();
                Ok(Response::new(pb::DeleteFilesResponse { results }))
            })
            .await
    }

    async fn signature(
        &self,
        request: Request<pb::SignatureRequest>,
    ) -> Result<Response<pb::SignatureResponse>, Status> {
        let observed = observe("Signature", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let range = required_range(request.range)?;
                let _memory = self
                    .reserve(
                        &call,
                        "a Signature",
                        signature_memory(range, request.block_size),
                    )
                    .await?;
                let signature = self
                    .cancellable(&call, async {
                        call.service()
                            .signature(&dir, &path, range, request.block_size)
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                Ok(Response::new(pb::SignatureResponse { signature }))
            })
            .await
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<Self::DiffStream>, Status> {
        let observed = observe("Diff", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let range = required_range(request.range)?;
                let memory = self
                    .reserve(&call, "a Diff", diff_memory(range, request.signature.len()))
                    .await?;
                let delta = self
                    .cancellable(&call, async {
                        call.service()
                            .diff(&dir, &path, range, request.signature)
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                let stream = server_stream(delta, |delta| pb::DiffResponse { delta });
                Ok(Response::new(
                    self.cancellable_stream(call, holding(stream, memory)),
                ))
            })
            .await
    }

    async fn apply_delta(
        &self,
        request: Request<Streaming<pb::ApplyDeltaRequest>>,
    ) -> Result<Response<pb::ApplyDeltaResponse>, Status> {
        use pb::apply_delta_request::Message;
        let observed = observe("ApplyDelta", &request);
        let method = observed.method;
        observed.run(async {
            let call = self.admit(&request, method)?;
            let mut stream = request.into_inner();
            let header = self
                .cancellable(
                    &call,
                    call.activity.awaiting_client(header(&mut stream, |m| match m.message {
                        Some(Message::Header(h)) => Some(h),
                        _ => None,
                    })),
                )
                .await?;
            let (dir, path) = target(&header.dir, &header.path)?;
            call.authorize(&dir, Need::Write)?;
            call.check_file_size(&dir, &path, header.file_size)?;
            let range = required_range(header.range)?;
            let _memory = self
                .reserve(&call, "an ApplyDelta", apply_delta_memory(range))
                .await?;
            let delta = body(
                stream,
                |m| match m.message {
                    Some(Message::Delta(d)) => Some(d),
                    _ => None,
                },
                &dir,
                &path,
            );
            let delta = cancellable_body(delta, &call);
            let result = call
                .service()
                .apply_delta(&dir, &path, range, header.file_size, delta)
                .await;
            let bytes_written = self.write_outcome(&call, result)?;
            tracing::debug!(%dir, %path, start = range.start, end = range.end, bytes_written, "delta applied");
            Ok(Response::new(pb::ApplyDeltaResponse { bytes_written }))
        })
        .await
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let observed = observe("Hash", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let kind = realize_proto::file_kind(request.kind).map_err(invalid)?;
                let _memory = self.reserve(&call, "a Hash", HASH_BUFFERED).await?;
                let result = self
                    .cancellable(&call, async {
                        call.service()
                            .hash(&dir, &path, kind, request.range.map(ByteRange::from))
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                Ok(Response::new(result.into()))
            })
            .await
    }

    async fn finish(
        &self,
        request: Request<pb::FinishRequest>,
    ) -> Result<Response<pb::FinishResponse>, Status> {
        let observed = observe("Finish", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Write)?;
                let verified = match request.sha256.len() {
                    0 => None,
                    _ => Some(Sha256Hash::from_slice(&request.sha256).ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{dir}/{path}: sha256 must be 32 bytes, got {}",
                            request.sha256.len()
                        ))
                    })?),
                };
                // Only a digest to check makes Finish read the file.
                let needs = if verified.is_some() { HASH_BUFFERED } else { 0 };
                let _memory = self.reserve(&call, "a Finish", needs).await?;
                call.service()
                    .finish(&dir, &path, verified)
                    .await
                    .map_err(|e| status(&e))?;
                Ok(Response::new(pb::FinishResponse {}))
            })
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let observed = observe("Delete", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Write)?;
                call.service()
                    .delete(&dir, &path, request.if_stamp.map(Into::into))
                    .await
                    .map_err(|e| status(&e))?;
                Ok(Response::new(pb::DeleteResponse {}))
            })
            .await
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let observed = observe("Info", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let mut info = self
                    .cancellable(&call, async {
                        call.service().info().await.map_err(|e| status(&e))
                    })
                    .await?;
                // A peer sees only the directories it may access, and how.
                if let Some(peer) = call.live.peers.get(&call.connection.peer.peer_id) {
                    info.dirs.retain(|dir| peer.may_access(&dir.id));
                    for dir in &mut info.dirs {
                        dir.read_only = peer.access == Access::ReadOnly;
                    }
                }
                Ok(Response::new(pb::InfoResponse {
                    send_limit: call.connection.peer.send_limit.get(),
                    ..info.into()
                }))
            })
            .await
    }

    async fn configure(
        &self,
        request: Request<pb::ConfigureRequest>,
    ) -> Result<Response<pb::ConfigureResponse>, Status> {
        let observed = observe("Configure", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let peer = &call.connection.peer;
                let limit = request
                    .into_inner()
                    .send_limit
                    .map(check_rate)
                    .transpose()
                    .map_err(|e| Status::invalid_argument(format!("send_limit: {e}")))?;
                let old = peer.send_limit.set(limit);
                if old != limit {
                    tracing::info!(
                        peer = %peer.peer_id,
                        connection = %peer.addr,
                        old = %Rate(old),
                        new = %Rate(limit),
                        "send limit changed"
                    );
                    record_limit(
                        limit,
                        &[
                            KeyValue::new("scope", "connection"),
                            KeyValue::new("peer", peer.peer_id.clone()),
                        ],
                    );
                }
                Ok(Response::new(pb::ConfigureResponse {
                    send_limit: peer.send_limit.get(),
                }))
            })
            .await
    }
}

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
