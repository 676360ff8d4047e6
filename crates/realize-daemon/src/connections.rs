//! The open connections, each served by hyper's HTTP/2 server in a task of its own.
//!
//! Serving each connection here, rather than through tonic's `Server`, is what lets
//! the daemon close one connection alone (its peer was removed from the config) and
//! close them all only after the grace period (shutdown); see docs/design.md.
//! A connection is closed gracefully: HTTP/2 GOAWAY, the calls left finish
//! sending their status, then TLS close_notify. A call that cannot finish
//! within [`CLOSE_TIMEOUT`] (its peer does not read its response, so flow
//! control holds it) is reset, which lets the connection close cleanly all the
//! same; one that still does not close (its peer reads nothing at all) is
//! dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use realize_core::ErrorChain;
use realize_net::connection::{PeerInfo, ServerConn, http2};
use realize_proto::pb::realize_server::RealizeServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tower::ServiceExt;
use tracing::Instrument;

use crate::limits::MessageLimit;
use crate::server::Handler;
use crate::stall::Activity;
use crate::state::{ActiveCalls, CallExecutor, Calls, ConnectionContext, Live, LiveConfig};

/// How long a connection asked to close may take to do it cleanly, before its calls
/// are reset, and again after that before it is dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 limits that hold whatever the config says, so that no header block
/// makes hyper allocate more than this; frame and window sizes are
/// [`realize_net::connection::http2`]'s, shared with the client.
mod h2 {
    use std::time::Duration;

    /// gRPC headers are a few hundred bytes; 16 KiB leaves room for metadata.
    pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
    /// Streams a client may open and reset before the daemon sees them (the
    /// "rapid reset" attack, CVE-2023-44487), and streams the daemon may reset
    /// for errors, before the connection is closed.
    pub const MAX_PENDING_RESETS: usize = 20;
    pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
    /// A peer that answers no PING within the timeout is gone: its connection is
    /// closed even while a call waits on it.
    pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
    pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
}

/// What every connection serves: the health service, and the realize service
/// whose message limits are set per connection from the config in force.
#[derive(Clone)]
pub(crate) struct Services {
    pub health: Routes,
    pub handler: Handler,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Connections {
    /// One task per connection.
    tracker: TaskTracker,
    /// Parent of every connection's close token.
    close_all: CancellationToken,
    open: Mutex<HashMap<u64, Open>>,
    next_id: AtomicU64,
    /// Connections that were dropped because they did not close in time.
    dropped: AtomicUsize,
}

#[derive(Debug)]
struct Open {
    peer: PeerInfo,
    close: CancellationToken,
    cancel_calls: CancellationToken,
}

/// Removes a connection from the open ones when its task ends, however it ends.
struct Registered {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.registry().remove(&self.id);
    }
}

/// Logs how a connection ended. A peer that hangs up while the daemon closes the
/// connection (as hyper's client does on GOAWAY) is no error of the daemon's.
fn log_end(result: Result<(), hyper::Error>, closed: &str) {
    match result {
        Ok(()) => tracing::info!("{closed}"),
        Err(e) if hung_up(&e) => tracing::info!("connection closed by the peer"),
        Err(e) => tracing::info!(error = %ErrorChain(&e), "connection ended with an error"),
    }
}

fn hung_up(error: &hyper::Error) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        cause = e.source();
    }
    false
}

impl Connections {
    fn registry(&self) -> MutexGuard<'_, HashMap<u64, Open>> {
        // Only inserts and removes happen under the lock, so a panic cannot leave
        // the map half-updated.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `conn` in a task of its own; its calls run on `calls`.
    pub fn serve(
        self: &Arc<Self>,
        conn: ServerConn,
        services: &Services,
        calls: &Calls,
        live: &Arc<LiveConfig>,
    ) {
        let peer = conn.peer_info().clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = self.close_all.child_token();
        let limits = live.current().limits;
        let cancel = calls.cancel.child_token();
        self.registry().insert(
            id,
            Open {
                peer: peer.clone(),
                close: close.clone(),
                cancel_calls: cancel.clone(),
            },
        );
        let context = ConnectionContext {
            peer: peer.clone(),
            cancel,
            active: Arc::new(ActiveCalls::default()),
            budget: calls.budgets.peer(&peer.peer_id),
        };
        let registered = Registered {
            connections: Arc::clone(self),
            id,
        };
        // A reload may have removed the peer since its handshake. Checked after
        // registering: a reload that swaps the config later also finds it here.
        if !live.current().allows(&peer) {
            tracing::info!(peer = %peer.peer_id, addr = %peer.addr, "closing connection: the config no longer allows its peer, key or address");
            context.cancel.cancel();
            close.cancel();
        }
        let realize = RealizeServer::new(services.handler.clone())
            .max_decoding_message_size(limits.max_message_size)
            .max_encoding_message_size(limits.max_message_size);
        let routes = services.health.clone().add_service(realize).prepare();
        let max_message = limits.max_message_size;
        let active = Arc::clone(&context.active);
        let budget_live = Arc::clone(live);
        let max_memory: Arc<dyn Fn() -> u64 + Send + Sync> =
            Arc::new(move || budget_live.current().limits.max_memory_per_peer);
        let service = routes.map_request(move |request: http::Request<Incoming>| {
            let activity = Activity::default();
            let mut request = request.map(|body| {
                MessageLimit::new(body, max_message)
                    .budgeted(Arc::clone(&context.budget), Arc::clone(&max_memory))
                    .watched(activity.clone())
            });
            request.extensions_mut().insert(context.clone());
            request.extensions_mut().insert(activity);
            request
        });
        let reset = CancellationToken::new();
        let mut builder = hyper::server::conn::http2::Builder::new(CallExecutor {
            tracker: calls.tracker.clone(),
            reset: reset.clone(),
        });
        // Set deliberately rather than left to hyper's defaults, which may change:
        // these bound what one connection can make the daemon hold.
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_calls_per_connection)
            .max_frame_size(http2::MAX_FRAME_SIZE)
            .initial_stream_window_size(http2::STREAM_WINDOW)
            .initial_connection_window_size(http2::CONNECTION_WINDOW)
            .max_header_list_size(h2::MAX_HEADER_LIST_SIZE)
            .max_pending_accept_reset_streams(h2::MAX_PENDING_RESETS)
            .max_local_error_reset_streams(h2::MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(h2::KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(h2::KEEP_ALIVE_TIMEOUT);
        let idle_live = Arc::clone(live);
        let span = tracing::info_span!("connection", peer = %peer.peer_id, addr = %peer.addr);
        let this = Arc::clone(self);
        self.tracker.spawn(
            async move {
                let mut connection = Box::pin(
                    builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service)),
                );
                let idle = active.idle_for(|| idle_live.current().limits.idle_timeout);
                tokio::select! {
                    result = connection.as_mut() => {
                        // Released before the line is logged, so whoever reads it finds
                        // the connection no longer counted against any limit.
                        drop((connection, registered));
                        log_end(result, "connection closed by the peer");
                        return;
                    }
                    () = close.cancelled() => {}
                    () = idle => tracing::info!(
                        idle_timeout = %humantime::format_duration(idle_live.current().limits.idle_timeout),
                        "closing idle connection"
                    ),
                }
                connection.as_mut().graceful_shutdown();
                let closing = format!(
                    "connection did not close within {}",
                    humantime::format_duration(CLOSE_TIMEOUT)
                );
                let mut closed = tokio::time::timeout(CLOSE_TIMEOUT, connection.as_mut()).await;
                if closed.is_err() {
                    tracing::warn!("{closing}: resetting its calls");
                    reset.cancel();
                    closed = tokio::time::timeout(CLOSE_TIMEOUT, connection.as_mut()).await;
                }
                drop((connection, registered));
                match closed {
                    Ok(result) => log_end(result, "connection closed"),
                    Err(_) => {
                        this.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "{closing} after its calls were reset: dropped without a clean TLS close"
                        );
                    }
                }
            }
            .instrument(span),
        );
    }

    pub fn count(&self) -> usize {
        self.registry().len()
    }

    /// Closes the connections of peers that `live` no longer allows, cancelling their
    /// calls first; returns how many.
    pub fn close_removed_peers(&self, live: &Live) -> usize {
        let open = self.registry();
        let mut closed = 0;
        for conn in open.values().filter(|conn| !live.allows(&conn.peer)) {
            tracing::info!(peer = %conn.peer.peer_id, addr = %conn.peer.addr, "closing connection: the config no longer allows its peer, key or address");
            conn.cancel_calls.cancel();
            conn.close.cancel();
            closed += 1;
        }
        closed
    }

    /// Closes every connection, and waits until all are closed or dropped; returns how
    /// many had to be dropped.
    pub async fn close_all(&self) -> usize {
        let dropped_before = self.dropped.load(Ordering::Relaxed);
        self.close_all.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.dropped.load(Ordering::Relaxed) - dropped_before
    }
}
