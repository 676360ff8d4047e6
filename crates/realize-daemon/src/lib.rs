//! realize-daemon: `realized`, which serves named directories over gRPC on
//! mutually authenticated TLS.
//!
//! [`config`] reads and validates the TOML config, [`server`] adapts
//! realize-core's `Service` to the gRPC contract, and [`serve`] runs it on a
//! listener until told to stop. The binary (`main.rs`) only parses flags,
//! sets up logging and calls [`run`].
//!
//! The daemon never decides what moves: it answers calls, and every write
//! goes through realize-core's `LocalStore`, which only touches partial
//! files until `Finish`.

pub mod config;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use realize_core::{LocalStore, Service};
use realize_net::keys::{KeyError, PrivateKey, PublicKey};
use realize_net::tls::TlsError;
use realize_proto::pb::realize_server::RealizeServer;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load private key")]
    Key(#[from] KeyError),
    #[error("cannot set up TLS")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Loads the key, checks the roots, binds, then serves until `shutdown`
/// completes. Nothing is bound before the config is known to be good.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let key = PrivateKey::load(&config.privkey)?;
    config.check_roots()?;
    let listener =
        TcpListener::bind(&config.address)
            .await
            .map_err(|source| DaemonError::Bind {
                address: config.address.clone(),
                source,
            })?;
    let store = LocalStore::new(config.dirs.clone());
    serve(listener, &key, &config.peers, Arc::new(store), shutdown).await
}

/// Serves `service` on `listener` to the given peers until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    key: &PrivateKey,
    peers: &BTreeMap<String, PublicKey>,
    service: Arc<dyn Service>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let local_addr: Option<SocketAddr> = listener.local_addr().ok();
    let tls = realize_net::tls::server_config(key, peers.values().cloned())?;
    let peer_ids: HashMap<PublicKey, String> = peers
        .iter()
        .map(|(id, key)| (key.clone(), id.clone()))
        .collect();
    let incoming =
        realize_net::connection::incoming(listener, tls, Arc::new(peer_ids), HANDSHAKE_TIMEOUT);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RealizeServer<server::Handler>>()
        .await;
    if let Some(addr) = local_addr {
        // Tests and scripts wait for this line: the port is bound and serving.
        tracing::info!(%addr, peers = peers.len(), "listening on {addr}");
    }
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RealizeServer::new(server::Handler::new(service)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(DaemonError::Serve)
}
