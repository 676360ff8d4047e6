//! Peer connections: the daemon's stream of authenticated TLS connections and the client channel.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use crate::keys::PublicKey;
use crate::metrics::OpenConnection;
use crate::throttle::{SendLimit, Throttled};
use crate::tls::{Refusal, SERVER_NAME, ServerTls, TlsError};

/// HTTP/2 settings of the daemon, the receiving end of bulk data.
///
/// A data chunk (256 KiB) travels in one DATA frame instead of sixteen of
/// HTTP/2's default 16 KiB, and the windows let a few chunks per stream be in
/// flight: measured on loopback, this cut a large move's time by about a
/// seventh (docs/design.md). The windows also bound what a peer can make a
/// connection buffer. The same settings on the client made uploads slower
/// in the same measurements, so it keeps tonic's defaults.
pub mod http2 {
    /// Largest DATA frame either end accepts.
    pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
    /// Bytes a peer may send on one stream before it is read.
    pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
    /// Bytes a peer may send on one connection, all streams together, before they are read.
    pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
}

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
    pub peer_id: String,
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
    let accepted = TlsAcceptor::from(config).accept(send_limit.wrap(tcp)).await;
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

/// Why the client could not open a channel to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server address {addr:?}")]
    InvalidAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("server at {addr} presented a key not in --peers")]
    UntrustedServer {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("daemon at {addr} refused our key: it is not among the daemon's [peers]")]
    RefusedByServer {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("timed out connecting to {addr} after {after:?}")]
    TimedOut {
        addr: String,
        after: Duration,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Opens a gRPC channel to the daemon at `addr` (`host:port`) over mutual TLS.
///
/// With TLS 1.3 the server checks the client's key after the client considers the
/// handshake done, so [`dial`] waits for the daemon's first bytes: a daemon that does
/// not allow this client closes the connection instead, and that is reported here as
/// [`ConnectError::RefusedByServer`] rather than as a puzzling failure of the first call.
///
/// What we send is held to `send_limit`. The channel makes exactly one
/// connection: once it is lost, calls fail (Unavailable) instead of tonic
/// silently dialling again, because a new connection starts without the
/// per-connection state set on the old one (the daemon's send limit), and the
/// caller must reconnect, and re-apply it, explicitly.
pub async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    send_limit: SendLimit,
) -> Result<Channel, ConnectError> {
    let endpoint = Endpoint::try_from(format!("http://{addr}"))
        .map_err(|source| ConnectError::InvalidAddress {
            addr: addr.to_owned(),
            source,
        })?
        .connect_timeout(connect_timeout);
    let connector = TlsConnector::from(tls);
    let target = addr.to_owned();
    let dialled = Arc::new(AtomicBool::new(false));
    let result = endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let target = target.clone();
            let send_limit = send_limit.clone();
            let first = !dialled.swap(true, Ordering::SeqCst);
            async move {
                if !first {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("connection to {target} was lost"),
                    ));
                }
                dial(&target, &connector, &send_limit)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await;
    result.map_err(|source| {
        let addr = addr.to_owned();
        if chain_has(&source, is_unpinned_key) {
            ConnectError::UntrustedServer { addr, source }
        } else if chain_has(&source, |e| {
            e.get_ref()
                .is_some_and(|inner| inner.is::<RefusedAfterHandshake>())
        }) {
            ConnectError::RefusedByServer { addr, source }
        } else if chain_has(&source, |e| e.kind() == io::ErrorKind::TimedOut) {
            ConnectError::TimedOut {
                addr,
                after: connect_timeout,
                source,
            }
        } else {
            ConnectError::Connect { addr, source }
        }
    })
}

/// The client's TCP → TLS step; anything wrapping the raw stream (such as a rate limit)
/// belongs here.
///
/// It returns only once the daemon has sent its first bytes (the HTTP/2 settings it
/// sends unprompted), which proves the daemon accepted our key.
async fn dial(
    addr: &str,
    connector: &TlsConnector,
    send_limit: &SendLimit,
) -> io::Result<ClientConn> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut tls = connector.connect(name, send_limit.wrap(tcp)).await?;
    let mut first = vec![0u8; FIRST_READ];
    match tls.read(&mut first).await {
        // A TLS alert is how the daemon refuses our certificate; a bare end or
        // reset is a daemon that died or was cut off, worth trying again.
        Err(e) if is_alert(&e) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            RefusedAfterHandshake,
        )),
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed right after the TLS handshake (the daemon may have as many connections from us as it allows)",
        )),
        Err(e) => Err(e),
        Ok(n) => {
            first.truncate(n);
            Ok(ClientConn {
                unread: first,
                position: 0,
                inner: tls,
            })
        }
    }
}

/// Enough for the daemon's HTTP/2 settings frame.
const FIRST_READ: usize = 4096;

/// The daemon answered the end of the handshake with a TLS alert: that is how a
/// TLS 1.3 server refuses a client certificate.
#[derive(Debug, thiserror::Error)]
#[error("the daemon sent a TLS alert right after the handshake")]
struct RefusedAfterHandshake;

fn is_alert(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)))
}

/// A client TLS stream that first replays the bytes [`dial`] read to check the daemon
/// accepted us.
struct ClientConn {
    unread: Vec<u8>,
    position: usize,
    inner: tokio_rustls::client::TlsStream<Throttled<TcpStream>>,
}

impl AsyncRead for ClientConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.position < self.unread.len() {
            let n = buf.remaining().min(self.unread.len() - self.position);
            let start = self.position;
            buf.put_slice(&self.unread[start..start + n]);
            self.position += n;
            if self.position == self.unread.len() {
                self.unread = Vec::new();
                self.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn is_unpinned_key(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure
                )
            )
        })
}

/// Looks for an io::Error matching `pred` in the cause chain; io::Error's own `source`
/// skips its payload, so each one is inspected directly.
fn chain_has(error: &(dyn std::error::Error + 'static), pred: impl Fn(&io::Error) -> bool) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if pred(io) {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && let Some(inner_io) = inner.downcast_ref::<io::Error>()
                && pred(inner_io)
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use std::collections::HashMap;

    use super::*;
    use crate::keys::PrivateKey;
    use crate::tls::{PeerKeys, client_config};

    const TIMEOUT: Duration = Duration::from_secs(10);

    struct Setup {
        addr: SocketAddr,
        server_key: PrivateKey,
        client_key: PrivateKey,
        conns: Pin<Box<Incoming>>,
    }

    /// Peers and limits for tests.
    #[derive(Debug)]
    struct Policy {
        peers: HashMap<PublicKey, String>,
        max_connections: usize,
        max_connections_per_peer: usize,
        handshake_timeout: Duration,
    }

    impl PeerKeys for Policy {
        fn admit(&self, key: &PublicKey, addr: std::net::IpAddr) -> Result<String, Refusal> {
            self.peers.admit(key, addr)
        }
    }

    impl ServerPolicy for Policy {
        fn max_connections(&self) -> usize {
            self.max_connections
        }
        fn max_connections_per_peer(&self) -> usize {
            self.max_connections_per_peer
        }
        fn handshake_timeout(&self) -> Duration {
            self.handshake_timeout
        }
    }

    fn policy(
        key: &PrivateKey,
        max_connections: usize,
        handshake_timeout: Duration,
    ) -> Arc<Policy> {
        Arc::new(Policy {
            peers: HashMap::from([(key.public_key(), "laptop".to_owned())]),
            max_connections,
            max_connections_per_peer: max_connections,
            handshake_timeout,
        })
    }

    async fn setup() -> Setup {
        let server_key = PrivateKey::generate().unwrap();
        let client_key = PrivateKey::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let policy = policy(&client_key, 64, TIMEOUT);
        let tls = ServerTls::new(&server_key, policy.clone()).unwrap();
        let conns = Box::pin(incoming(listener, tls, policy));
        Setup {
            addr,
            server_key,
            client_key,
            conns,
        }
    }

    async fn tls_client(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        TlsConnector::from(config).connect(name, tcp).await
    }

    #[tokio::test]
    async fn allowed_client_reaches_the_server_with_its_peer_id() {
        let mut s = setup().await;
        let config = client_config(&s.client_key, [s.server_key.public_key()]).unwrap();
        let client = tokio::spawn(async move {
            let mut tls = tls_client(s.addr, config).await?;
            tls.write_all(b"ping").await?;
            let mut reply = [0u8; 4];
            tls.read_exact(&mut reply).await?;
            io::Result::Ok(reply)
        });
        let mut conn = s.conns.next().await.unwrap().unwrap();
        assert_eq!(conn.peer_info().peer_id, "laptop");
        assert_eq!(conn.peer_info().key, s.client_key.public_key());
        assert_eq!(conn.connect_info().addr.ip(), s.addr.ip());
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        conn.flush().await.unwrap();
        assert_eq!(&client.await.unwrap().unwrap(), b"pong");
    }

    #[tokio::test]
    async fn refused_connections_do_not_block_later_ones() {
        let mut s = setup().await;
        // Garbage on the port, then a client with an unknown key, then a good client:
        // only the good one may come out of the stream.
        let mut garbage = TcpStream::connect(s.addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let intruder = PrivateKey::generate().unwrap();
        let intruder_config = client_config(&intruder, [s.server_key.public_key()]).unwrap();
        let intruder_result = async {
            let mut tls = tls_client(s.addr, intruder_config).await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut buf = [0u8; 1];
            tls.read_exact(&mut buf).await?;
            io::Result::Ok(())
        }
        .await;
        assert!(intruder_result.is_err(), "intruder got through");
        let mut rest = Vec::new();
        // The server closes the garbage connection rather than leaving it hanging.
        garbage.read_to_end(&mut rest).await.ok();

        let config = client_config(&s.client_key, [s.server_key.public_key()]).unwrap();
        let _client = tls_client(s.addr, config).await.unwrap();
        let conn = s.conns.next().await.unwrap().unwrap();
        assert_eq!(conn.peer_info().peer_id, "laptop");
    }

    #[tokio::test]
    async fn client_pinned_to_another_key_refuses_the_server() {
        let s = setup().await;
        let other = PrivateKey::generate().unwrap();
        let config = client_config(&s.client_key, [other.public_key()]).unwrap();
        let err = tls_client(s.addr, config).await.unwrap_err();
        assert!(is_unpinned_key(&err), "{err}");
    }

    #[tokio::test]
    async fn silent_client_times_out_without_blocking_others() {
        let server_key = PrivateKey::generate().unwrap();
        let client_key = PrivateKey::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let policy = policy(&client_key, 64, Duration::from_millis(200));
        let tls = ServerTls::new(&server_key, policy.clone()).unwrap();
        let mut conns = Box::pin(incoming(listener, tls, policy));
        let mut silent = TcpStream::connect(addr).await.unwrap();

        let config = client_config(&client_key, [server_key.public_key()]).unwrap();
        let _client = tls_client(addr, config).await.unwrap();
        assert_eq!(
            conns.next().await.unwrap().unwrap().peer_info().peer_id,
            "laptop"
        );

        // The server hangs up on the silent client once its handshake time is over.
        let mut buf = Vec::new();
        let n = tokio::time::timeout(TIMEOUT, silent.read_to_end(&mut buf))
            .await
            .expect("server never closed the silent connection");
        assert!(n.is_err() || buf.is_empty());
    }

    #[tokio::test]
    async fn connections_past_the_peer_limit_are_closed_after_their_handshake() {
        let server_key = PrivateKey::generate().unwrap();
        let client_key = PrivateKey::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let policy = Arc::new(Policy {
            max_connections_per_peer: 2,
            ..Arc::into_inner(policy(&client_key, 64, TIMEOUT)).unwrap()
        });
        let tls = ServerTls::new(&server_key, policy.clone()).unwrap();
        let mut conns = Box::pin(incoming(listener, tls, policy));
        let config = client_config(&client_key, [server_key.public_key()]).unwrap();
        let _first_client = tls_client(addr, config.clone()).await.unwrap();
        let first = conns.next().await.unwrap().unwrap();
        let _second_client = tls_client(addr, config.clone()).await.unwrap();
        let _second = conns.next().await.unwrap().unwrap();

        // The third completes its handshake, which names its peer, then is
        // closed cleanly: an end of stream, not the alert of a refused key.
        let mut third = tls_client(addr, config.clone()).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, third.read_to_end(&mut buf))
            .await
            .expect("the third connection was left open");
        assert!(read.is_ok() && buf.is_empty(), "{read:?}");

        // One closed, one more is let in.
        drop(first);
        let _fourth_client = tls_client(addr, config).await.unwrap();
        let fourth = conns.next().await.unwrap().unwrap();
        assert_eq!(fourth.peer_info().peer_id, "laptop");
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_before_their_handshake() {
        let server_key = PrivateKey::generate().unwrap();
        let client_key = PrivateKey::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let policy = policy(&client_key, 1, TIMEOUT);
        let tls = ServerTls::new(&server_key, policy.clone()).unwrap();
        let mut conns = Box::pin(incoming(listener, tls, policy));
        let config = client_config(&client_key, [server_key.public_key()]).unwrap();
        let first_client = tls_client(addr, config.clone()).await.unwrap();
        let first = conns.next().await.unwrap().unwrap();

        // The second connection is closed without a word of TLS.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, second.read_to_end(&mut buf))
            .await
            .expect("the connection past the limit was left open");
        assert!(read.is_err() || buf.is_empty(), "{buf:?}");

        // Once the first is gone (the count drops with it), its place is free again.
        drop((first, first_client));
        let _third = tls_client(addr, config).await.unwrap();
        assert_eq!(
            conns.next().await.unwrap().unwrap().peer_info().peer_id,
            "laptop"
        );
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_accepting() {
        let s = setup().await;
        drop(s.conns);
        // Once the accept loop has seen the receiver go, the listener is closed and
        // connecting is refused; poll until then rather than sleeping a fixed time.
        let refused = tokio::time::timeout(TIMEOUT, async {
            loop {
                match TcpStream::connect(s.addr).await {
                    Err(_) => break,
                    Ok(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await;
        assert!(
            refused.is_ok(),
            "listener still open after the stream was dropped"
        );
    }

    #[tokio::test]
    async fn closed_stream_refuses_connections_at_once() {
        let s = setup().await;
        Pin::into_inner(s.conns).close().await;
        assert!(TcpStream::connect(s.addr).await.is_err());
    }

    async fn serve(s: Setup) -> (SocketAddr, PrivateKey, PrivateKey) {
        let Setup {
            addr,
            server_key,
            client_key,
            conns,
        } = s;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(conns),
        );
        (addr, server_key, client_key)
    }

    async fn call(channel: Channel) -> Result<http::StatusCode, tonic::transport::Error> {
        use tower::ServiceExt;
        let request = http::Request::builder()
            .uri("http://realize/realize.v1.Test/Nothing")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::empty())
            .unwrap();
        let response = channel.oneshot(request).await?;
        Ok(response.status())
    }

    #[tokio::test]
    async fn grpc_channel_over_pinned_tls() {
        let (addr, server_key, client_key) = serve(setup().await).await;
        let config = client_config(&client_key, [server_key.public_key()]).unwrap();
        let channel = connect(&addr.to_string(), config, TIMEOUT, SendLimit::new(None))
            .await
            .unwrap();
        // An unknown method still gets an HTTP 200 with a grpc-status, proving h2 over TLS works.
        assert_eq!(call(channel).await.unwrap(), http::StatusCode::OK);
    }

    #[tokio::test]
    async fn grpc_connect_to_untrusted_server_names_the_problem() {
        let (addr, _server_key, client_key) = serve(setup().await).await;
        let other = PrivateKey::generate().unwrap();
        let config = client_config(&client_key, [other.public_key()]).unwrap();
        let err = connect(&addr.to_string(), config, TIMEOUT, SendLimit::new(None))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::UntrustedServer { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("server at {addr} presented a key not in --peers")
        );
    }

    #[tokio::test]
    async fn grpc_intruder_is_refused_at_connect() {
        let (addr, server_key, _client_key) = serve(setup().await).await;
        let intruder = PrivateKey::generate().unwrap();
        let config = client_config(&intruder, [server_key.public_key()]).unwrap();
        let err = connect(&addr.to_string(), config, TIMEOUT, SendLimit::new(None))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::RefusedByServer { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("daemon at {addr} refused our key: it is not among the daemon's [peers]")
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let key = PrivateKey::generate().unwrap();
        let config = client_config(&key, [key.public_key()]).unwrap();
        let err = connect(&addr.to_string(), config, TIMEOUT, SendLimit::new(None))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Connect { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("cannot connect to {addr}"));
    }
}
