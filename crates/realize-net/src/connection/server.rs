//! The daemon's side: the accept loop, the TLS handshake under the server's policy, and
//! the authenticated connections handed to tonic.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::Instrument;

use super::is_unpinned_key;
use crate::keys::PublicKey;
use crate::metrics::OpenConnection;
use crate::throttle::{SendLimit, Throttled};
use crate::tls::{Refusal, ServerTls, TlsError};

/// Accepted connections waiting for the server to pick them up; small because tonic
/// drains the stream continuously.
const ACCEPT_QUEUE: usize = 32;

/// Pause after an accept error that is not about one connection (such as running out of
/// file descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the accept loop asks of the server at each connection, so a changed
/// config (a reload) applies from the next connection on.
pub trait ServerPolicy: Send + Sync + std::fmt::Debug {
    /// Connections open at once, handshakes included; one more is closed at
    /// once, before any TLS work is spent on it.
    fn max_connections(&self) -> usize;
    /// Connections one peer may have open at once; one more is closed right
    /// after the handshake that identifies its peer, so it never holds a
    /// slot of `max_connections` beyond its handshake.
    fn max_connections_per_peer(&self) -> usize;
    /// How long a client has to complete its TLS handshake.
    fn handshake_timeout(&self) -> Duration;
}

/// The number of connections open, handshakes included.
///
/// A count and a guard rather than a `Semaphore`: the limit it is checked against
/// may change at any connection (a reload), and a semaphore cannot shrink below the
/// permits it has handed out.
#[derive(Debug, Default)]
struct OpenCount(AtomicUsize);

/// One connection counted in [`OpenCount`] until it is dropped, with its connection.
#[derive(Debug)]
struct Counted(Arc<OpenCount>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The authenticated connections open, by peer id.
#[derive(Debug, Default)]
struct PeerCounts(std::sync::Mutex<HashMap<String, usize>>);

impl PeerCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Every update is a single insert or remove: a panic cannot leave one half done.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more connection of `peer`, unless it has `max` already.
    fn try_take(self: &Arc<Self>, peer: &str, max: usize) -> Option<PeerCounted> {
        let mut counts = self.lock();
        let count = counts.entry(peer.to_owned()).or_default();
        if *count >= max {
            if *count == 0 {
                counts.remove(peer);
            }
            return None;
        }
        *count += 1;
        Some(PeerCounted {
            counts: Arc::clone(self),
            peer: peer.to_owned(),
        })
    }
}

/// One connection counted in [`PeerCounts`] until it is dropped, with its connection.
#[derive(Debug)]
struct PeerCounted {
    counts: Arc<PeerCounts>,
    peer: String,
}

impl Drop for PeerCounted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// Who is on the other end of a server connection; handlers get it from the request extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer id it authenticated as.
    pub peer_id: String,
    /// Its address.
    pub addr: SocketAddr,
    /// What this server sends on this connection may be limited (Configure).
    pub send_limit: SendLimit,
    /// The key the peer authenticated with, so a server can tell whether the peer is
    /// still allowed after its peer set changed.
    pub key: PublicKey,
}

/// A server-side connection whose TLS handshake has completed and whose peer is known.
pub struct ServerConn<S = Throttled<TcpStream>> {
    inner: tokio_rustls::server::TlsStream<S>,
    info: PeerInfo,
    _open: OpenConnection,
    _counted: Counted,
    _peer_counted: PeerCounted,
}

impl<S> ServerConn<S> {
    /// Who is on the other end.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }
}

impl<S> std::fmt::Debug for ServerConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerConn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerConn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S> Connected for ServerConn<S> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// Why one incoming connection was dropped; only logged, never sent to tonic.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    // io::Error hides the rustls error from the source chain, so show it in the message.
    #[error("{0}")]
    Tls(io::Error),
    #[error("client key is not among the allowed peers")]
    UnknownKey,
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error("peer sent no usable certificate")]
    NoCertificate,
    #[error("peer {peer} (key {key}) may not connect from this address (allowed_networks)")]
    Network { peer: String, key: PublicKey },
    #[error("cannot set up TLS for the connection")]
    Settings(#[source] TlsError),
    #[error("peer {peer} already has {max} connections open (max_connections_per_peer)")]
    TooManyForPeer { peer: String, max: usize },
}

impl HandshakeError {
    /// A short label for metrics.
    fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Tls(_) => "tls",
            HandshakeError::UnknownKey => "unknown_key",
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::NoCertificate => "no_certificate",
            HandshakeError::Network { .. } => "network",
            HandshakeError::Settings(_) => "tls",
            HandshakeError::TooManyForPeer { .. } => "too_many_connections_per_peer",
        }
    }
}

/// Accepts TCP connections and yields those that complete a mutual TLS handshake with a
/// known peer.
///
/// Each handshake runs in its own task under the policy's handshake timeout, so a slow
/// or silent client cannot hold up the others. A connection past the policy's
/// `max_connections` is closed before its handshake, one past its peer's
/// `max_connections_per_peer` right after it. Refused connections are logged and
/// dropped. `policy` is consulted at each connection, so changes to it apply to the next
/// one. The background tasks stop once the returned stream is dropped or closed. Must be
/// called inside a tokio runtime.
pub fn incoming(listener: TcpListener, tls: ServerTls, policy: Arc<dyn ServerPolicy>) -> Incoming {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let accept = tokio::spawn(accept_loop(listener, tls, policy, tx));
    Incoming {
        conns: ReceiverStream::new(rx),
        accept,
    }
}

/// The stream of authenticated connections made by [`incoming`].
#[derive(Debug)]
pub struct Incoming {
    conns: ReceiverStream<Result<ServerConn, io::Error>>,
    accept: JoinHandle<()>,
}

impl Incoming {
    /// Stops accepting and returns once the listening socket is closed, so a client
    /// connecting afterwards is refused rather than left waiting. Handshakes still in
    /// progress are dropped.
    pub async fn close(self) {
        drop(self.conns);
        // The accept loop only ends by returning; a panic in it has nothing to clean up.
        let _ = self.accept.await;
    }
}

impl Stream for Incoming {
    type Item = Result<ServerConn, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().conns).poll_next(cx)
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    policy: Arc<dyn ServerPolicy>,
    tx: mpsc::Sender<Result<ServerConn, io::Error>>,
) {
    let open = Arc::new(OpenCount::default());
    let peers = Arc::new(PeerCounts::default());
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                if !is_connection_error(&e) {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                continue;
            }
        };
        // Only this task adds to the count, so nothing can slip in between the check
        // and the increment.
        let max = policy.max_connections();
        if open.0.load(Ordering::SeqCst) >= max {
            crate::metrics::net().handshakes_refused.add(
                1,
                &[opentelemetry::KeyValue::new(
                    "reason",
                    "too_many_connections",
                )],
            );
            tracing::warn!(addr = %addr, max_connections = max, "connection refused: too many connections");
            drop(tcp);
            continue;
        }
        open.0.fetch_add(1, Ordering::SeqCst);
        let counted = Counted(Arc::clone(&open));
        let span = tracing::info_span!("accept", addr = %addr);
        let task = accept_one(
            tls.clone(),
            tcp,
            addr,
            Arc::clone(&policy),
            (counted, Arc::clone(&peers)),
            tx.clone(),
        );
        tokio::spawn(task.instrument(span));
    }
}

async fn accept_one(
    tls: ServerTls,
    tcp: TcpStream,
    addr: SocketAddr,
    policy: Arc<dyn ServerPolicy>,
    counted: (Counted, Arc<PeerCounts>),
    tx: mpsc::Sender<Result<ServerConn, io::Error>>,
) {
    let timeout = policy.handshake_timeout();
    let result = tokio::time::timeout(timeout, handshake(&tls, tcp, addr, &*policy, counted))
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)));
    match result {
        Ok(conn) => {
            // The key names which of the peer's keys it used, so a rotation can be
            // followed in the log.
            tracing::info!(peer = %conn.info.peer_id, addr = %addr, key = %conn.info.key, "connection accepted");
            // Fails only when the server is gone; the connection is then dropped.
            let _ = tx.send(Ok(conn)).await;
        }
        Err(e) => {
            crate::metrics::net()
                .handshakes_refused
                .add(1, &[opentelemetry::KeyValue::new("reason", e.reason())]);
            match &e {
                HandshakeError::TooManyForPeer { peer, max } => tracing::warn!(
                    peer = %peer,
                    addr = %addr,
                    max_connections_per_peer = max,
                    "connection closed: peer has too many connections open"
                ),
                HandshakeError::Network { peer, key } => tracing::warn!(
                    peer = %peer,
                    addr = %addr,
                    key = %key,
                    "tls handshake refused: {e}"
                ),
                _ => tracing::warn!(addr = %addr, error = %e, "tls handshake refused"),
            }
        }
    }
}

/// Errors that concern only the connection being accepted, after which accepting again
/// at once is right.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// The server's TCP → TLS step; anything wrapping the raw stream (such as a rate limit)
/// belongs here.
async fn handshake(
    tls: &ServerTls,
    tcp: TcpStream,
    addr: SocketAddr,
    peers: &dyn ServerPolicy,
    (counted, peer_counts): (Counted, Arc<PeerCounts>),
) -> Result<ServerConn, HandshakeError> {
    if let Err(e) = tcp.set_nodelay(true) {
        // Only a latency cost, not a reason to refuse the peer.
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let send_limit = SendLimit::new(None);
    let (config, verdict) = tls
        .for_client(addr.ip())
        .map_err(HandshakeError::Settings)?;
    let accepted = TlsAcceptor::from(config)
        .accept(send_limit.wrap_observed(tcp, std::sync::Arc::new(crate::metrics::Wire)))
        .await;
    // The verifier's decision, taken from the peers as they were at that moment,
    // names the peer; looking it up again could see a reloaded config.
    let (tls, key, peer_id) = match (accepted, verdict.get()) {
        (Ok(tls), Some((key, Ok(peer_id)))) => (tls, key.clone(), peer_id.clone()),
        (Ok(_), _) => return Err(HandshakeError::NoCertificate),
        (Err(_), Some((key, Err(Refusal::Network { peer })))) => {
            return Err(HandshakeError::Network {
                peer: peer.clone(),
                key: key.clone(),
            });
        }
        (Err(e), _) if is_unpinned_key(&e) => return Err(HandshakeError::UnknownKey),
        (Err(e), _) => return Err(HandshakeError::Tls(e)),
    };
    let max = peers.max_connections_per_peer();
    let Some(peer_counted) = peer_counts.try_take(&peer_id, max) else {
        // Closed cleanly (close_notify), not with an alert, which is how a
        // refused key looks to the client: this one may come back later.
        let mut tls = tls;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return Err(HandshakeError::TooManyForPeer { peer: peer_id, max });
    };
    Ok(ServerConn {
        inner: tls,
        _open: OpenConnection::new(&peer_id),
        _counted: counted,
        _peer_counted: peer_counted,
        info: PeerInfo {
            peer_id,
            addr,
            send_limit,
            key,
        },
    })
}
