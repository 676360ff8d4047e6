//! The one way into a call: observed (a span naming the peer, and its
//! measurement), admitted (peer still allowed, not shutting down, within the
//! connection's call limit and the peer's call rate, with a deadline), its
//! request decoded by realize-proto, and authorized against the peer's
//! `dirs` and `access`; then the method's own work.

use realize_net::metrics::{RpcCall, RpcSide};
use realize_proto::request::ClientStream;

use super::*;
use crate::limits::grpc_timeout;

/// What a call does to the directory it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Need {
    Read,
    Write,
}

/// What a decoded request reaches, for its authorization.
pub(super) trait Scoped {
    /// The directory it names; none for Info and Configure.
    fn dir(&self) -> Option<&DirId>;
    /// The file it writes and the size it declares for it, which may not
    /// pass `max_file_size`.
    fn declared_size(&self) -> Option<(&RelPath, u64)> {
        None
    }
}

macro_rules! scoped_by_dir {
    ($($request:ty),*) => {$(
        impl Scoped for $request {
            fn dir(&self) -> Option<&DirId> {
                Some(&self.dir)
            }
        }
    )*};
}

scoped_by_dir!(
    request::List,
    request::Read,
    request::Signature,
    request::Diff,
    request::Hash,
    request::Finish,
    request::Delete,
    FileRefs
);

impl Scoped for request::ReadFiles {
    fn dir(&self) -> Option<&DirId> {
        Some(&self.refs.dir)
    }
}

impl Scoped for request::Info {
    fn dir(&self) -> Option<&DirId> {
        None
    }
}

impl Scoped for request::Configure {
    fn dir(&self) -> Option<&DirId> {
        None
    }
}

impl Scoped for WriteHeader {
    fn dir(&self) -> Option<&DirId> {
        Some(&self.dir)
    }
    fn declared_size(&self) -> Option<(&RelPath, u64)> {
        Some((&self.path, self.file_size))
    }
}

impl Scoped for ApplyDeltaHeader {
    fn dir(&self) -> Option<&DirId> {
        Some(&self.dir)
    }
    fn declared_size(&self) -> Option<(&RelPath, u64)> {
        Some((&self.path, self.file_size))
    }
}

impl Handler {
    /// A call whose request is one message: observed, admitted, its request
    /// decoded and authorized for `need`, then `work`.
    pub(super) async fn unary<M, Q, R, Fut>(
        &self,
        method: &'static str,
        request: Request<M>,
        need: Need,
        work: impl FnOnce(Admitted, Q) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Q: TryFrom<M> + Scoped,
        DecodeError: From<Q::Error>,
        Fut: Future<Output = Result<R, CallError>>,
    {
        self.admitted(method, request, |call, message| async move {
            let request = Q::try_from(message).map_err(DecodeError::from)?;
            call.authorize_request(&request, need)?;
            work(call, request).await
        })
        .await
    }

    /// A call whose client streams its request: observed, admitted, its
    /// header read, decoded and authorized for `need`, then `work` with the
    /// rest of the stream.
    pub(super) async fn streaming<M, R, Fut>(
        &self,
        method: &'static str,
        request: Request<Streaming<M>>,
        need: Need,
        work: impl FnOnce(Admitted, M::Header, Streaming<M>) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        M: ClientStream,
        M::Header: Scoped,
        Fut: Future<Output = Result<R, CallError>>,
    {
        self.admitted(method, request, |call, mut stream| async move {
            let first = call.activity.awaiting_client(header(&mut stream));
            let header = self.cancellable(&call, first).await?;
            call.authorize_request(&header, need)?;
            work(call, header, stream).await
        })
        .await
    }

    /// A call observed and admitted, then `work` with its request as it came.
    pub(super) async fn admitted<M, R, Fut>(
        &self,
        method: &'static str,
        request: Request<M>,
        work: impl FnOnce(Admitted, M) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<R, CallError>>,
    {
        observe(method, &request)
            .run(async {
                let call = self.admit(&request, method)?;
                work(call, request.into_inner()).await.map(Response::new)
            })
            .await
    }

    /// Lets a call in, or says why not.
    fn admit<T>(&self, request: &Request<T>, method: &'static str) -> Result<Admitted, CallError> {
        let connection = request
            .extensions()
            .get::<ConnectionContext>()
            .cloned()
            .ok_or(CallError::NoConnection)?;
        let live = self.live.current();
        if let Some(refusal) = self.refusal(&live, &connection) {
            tracing::debug!(reason = refusal.to_string().as_str(), "call refused");
            return Err(refusal);
        }
        let max = live.limits.max_calls_per_connection;
        let Some(active) = connection.active.try_start(max as usize) else {
            let refusal = CallError::TooManyCalls { max };
            tracing::warn!("call refused: {refusal}");
            return Err(refusal);
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
    fn check_rate(&self, live: &Live, peer_id: &str) -> Result<(), CallError> {
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
        Err(refusal)
    }

    /// Why calls on this connection may not run (any more), if they may not.
    pub(super) fn refusal(&self, live: &Live, connection: &ConnectionContext) -> Option<CallError> {
        if !live.allows(&connection.peer) {
            return Some(CallError::NoLongerAllowed(connection.peer.peer_id.clone()));
        }
        if self.calls.is_shutting_down() {
            return Some(CallError::ShuttingDown);
        }
        None
    }
}

impl Admitted {
    /// Whether the peer may make `request`, which needs `need` of its directory.
    fn authorize_request(&self, request: &impl Scoped, need: Need) -> Result<(), CallError> {
        let Some(dir) = request.dir() else {
            return Ok(());
        };
        authorize(&self.live, &self.connection.peer.peer_id, dir, need)?;
        match request.declared_size() {
            Some((path, size)) => check_file_size(&self.live, dir, path, size),
            None => Ok(()),
        }
    }
}

/// Whether `peer_id` may do what a call needs in `dir` under `live`; a denial is logged.
///
/// A directory the daemon does not serve is left to the store, which calls it
/// unknown (InvalidArgument) whatever the peer's allowlist says.
pub(super) fn authorize(
    live: &Live,
    peer_id: &str,
    dir: &DirId,
    need: Need,
) -> Result<(), CallError> {
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
            Err(denial)
        }
        None => Ok(()),
    }
}

/// A file may not be larger than `max_file_size`.
pub(super) fn check_file_size(
    live: &Live,
    dir: &DirId,
    path: &RelPath,
    size: u64,
) -> Result<(), CallError> {
    let max = live.limits.max_file_size;
    if size > max {
        return Err(CallError::FileTooLarge {
            dir: dir.clone(),
            path: path.clone(),
            size,
            max,
        });
    }
    Ok(())
}

/// The first message of a client stream, which must be its header.
async fn header<M: ClientStream>(stream: &mut Streaming<M>) -> Result<M::Header, CallError> {
    match stream.message().await.map_err(CallError::Stream)? {
        Some(message) => Ok(message.into_header()?),
        None => Err(DecodeError::EmptyStream.into()),
    }
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
    async fn run<T>(
        self,
        handler: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, Status> {
        let measured = RpcCall::start(RpcSide::Server, self.method);
        let (method, span) = (self.method, self.span.clone());
        let result = std::panic::AssertUnwindSafe(handler.instrument(self.span))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(span.in_scope(|| panicked(method, &*panic))))
            .map_err(Status::from);
        measured.finish(match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        });
        result
    }
}

/// Logs and counts a panic of a call, and makes it the call's error.
pub(super) fn panicked(method: &'static str, panic: &(dyn std::any::Any + Send)) -> CallError {
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
    CallError::Panicked {
        method,
        what: what.to_string(),
    }
}
