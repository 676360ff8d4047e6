//! The client's side: one dialled, mutually authenticated connection to a daemon as a
//! gRPC channel, with the reasons it can fail told apart.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::is_unpinned_key;
use crate::keys::SERVER_NAME;
use crate::throttle::{SendLimit, Throttled};

/// Why the client could not open a channel to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server address {addr:?}")]
    /// The address is not a valid URI.
    InvalidAddress {
        /// The address.
        addr: String,
        #[source]
        /// The cause.
        source: tonic::transport::Error,
    },
    #[error("server at {addr} presented a key not in --peers")]
    /// The daemon presented a key that is not pinned.
    UntrustedServer {
        /// The address.
        addr: String,
        #[source]
        /// The cause.
        source: tonic::transport::Error,
    },
    #[error("daemon at {addr} refused our key: it is not among the daemon's [peers]")]
    /// The daemon refused this client's key.
    RefusedByServer {
        /// The address.
        addr: String,
        #[source]
        /// The cause.
        source: tonic::transport::Error,
    },
    #[error("timed out connecting to {addr} after {after:?}")]
    /// No connection within the connect timeout.
    TimedOut {
        /// The address.
        addr: String,
        /// How long it waited.
        after: Duration,
        #[source]
        /// The cause.
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {addr}")]
    /// The connection failed otherwise (refused, unreachable, broken handshake).
    Connect {
        /// The address.
        addr: String,
        #[source]
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// Opens a gRPC channel to the daemon at `addr` (`host:port`) over mutual TLS.
///
/// With TLS 1.3 the server checks the client's key after the client considers the
/// handshake done, so `dial` waits for the daemon's first bytes: a daemon that does
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
    let mut tls = connector
        .connect(
            name,
            send_limit.wrap_observed(tcp, std::sync::Arc::new(crate::metrics::Wire)),
        )
        .await?;
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
