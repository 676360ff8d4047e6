use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::transport::Channel;
use tonic::transport::server::Connected;

use super::*;
use crate::keys::{PrivateKey, PublicKey, SERVER_NAME};
use crate::throttle::SendLimit;
use crate::tls::{PeerKeys, Refusal, ServerTls, client_config};

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

fn policy(key: &PrivateKey, max_connections: usize, handshake_timeout: Duration) -> Arc<Policy> {
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
