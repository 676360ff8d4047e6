//! realize-daemon: `realized`, which serves named directories over gRPC on
//! mutually authenticated TLS.
//!
//! [`config`] reads and validates the TOML config, [`server`] adapts
//! realize-core's `Service` to the gRPC contract, and [`run`] serves it until
//! told to stop, reloading the config when asked ([`Control`]). The binary
//! (`main.rs`) only parses flags, sets up logging, turns signals into
//! [`Control`] events and maps the [`Exit`] to an exit code.
//!
//! The daemon never decides what moves: it answers calls, and every write
//! goes through realize-core's `LocalStore`, which only touches partial
//! files until `Finish`. Its lifecycle (in-flight calls, connections, the
//! phases of a shutdown) is in [`lifecycle`]; start reading at [`run`].

mod budget;
pub mod config;
mod connections;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod lifecycle;
mod limits;
pub mod logging;
mod rate;
pub mod server;
mod stall;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{FutureExt, Stream};
use realize_core::{PathLocks, Service};
use realize_net::keys::{KeyError, PrivateKey, PublicKey};
use realize_net::tls::TlsError;
use tokio::net::TcpListener;

use crate::config::{ConfigError, ConfigSource, DEFAULT_GRACE_PERIOD, DaemonLimits, Peer};
pub use crate::lifecycle::{Control, Exit};
use crate::lifecycle::{Controls, Server};
use crate::logging::{LogFilter, LogFilterError};
use crate::state::Live;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load private key")]
    Key(#[from] KeyError),
    #[error("cannot set up TLS")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Log(#[from] LogFilterError),
    #[error("cannot listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot tell which address the listener is bound to")]
    LocalAddr(#[source] std::io::Error),
}

/// Loads and checks the config, binds, then serves until a [`Control::Shutdown`]
/// (or the end of `controls`) and shuts down gracefully; [`Control::Reload`] reads
/// the config file again.
///
/// Nothing is bound before the config is known to be good. `log`, when given,
/// is set from the config's `log_level` now and at each reload.
pub async fn run(
    source: ConfigSource,
    log: Option<LogFilter>,
    controls: impl Stream<Item = Control>,
) -> Result<Exit, DaemonError> {
    let mut config = source.load()?;
    let key = PrivateKey::load(&config.privkey)?;
    config.check_roots()?;
    if let Some(log) = &log {
        log.apply(log.parse(config.log_level.as_deref())?)?;
    }
    let listener =
        TcpListener::bind(&config.address)
            .await
            .map_err(|source| DaemonError::Bind {
                address: config.address.clone(),
                source,
            })?;
    let server = Server::start(
        listener,
        &key,
        Live::from_config(&config, PathLocks::default()),
    )
    .await?;
    let mut controls = Controls::new(controls);
    while let Some(Control::Reload) = controls.next().await {
        server.reload(&source, &mut config, log.as_ref());
    }
    Ok(server.shutdown(&mut controls).await)
}

/// Serves `service` on `listener` to the given peers until `shutdown` completes,
/// then shuts down gracefully with the default grace period. For programs and
/// tests that bring their own [`Service`]; there is no config to reload, every
/// peer may do everything, and the limits are the defaults.
pub async fn serve(
    listener: TcpListener,
    key: &PrivateKey,
    peers: &BTreeMap<String, PublicKey>,
    service: Arc<dyn Service>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Exit, DaemonError> {
    let peers = peers
        .iter()
        .map(|(id, key)| (id.clone(), Peer::full(key.clone())))
        .collect();
    let live = Live::new(
        peers,
        Default::default(),
        service,
        DEFAULT_GRACE_PERIOD,
        DaemonLimits::default(),
    );
    let server = Server::start(listener, key, live).await?;
    let mut controls = Controls::new(shutdown.map(|()| Control::Shutdown).into_stream());
    // The one event is the shutdown request.
    controls.next().await;
    Ok(server.shutdown(&mut controls).await)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures::stream;

    use super::*;

    /// A config serving `root` as `d` to one peer, on an ephemeral port.
    fn source(work: &Path, root: &Path) -> ConfigSource {
        let key = PrivateKey::generate().unwrap();
        let peer = PrivateKey::generate().unwrap().public_key();
        std::fs::write(work.join("daemon.key"), key.to_pem()).unwrap();
        let path = work.join("daemon.toml");
        std::fs::write(
            &path,
            format!(
                "address = \"127.0.0.1:0\"\nprivkey = \"daemon.key\"\n[dirs]\nd = {root:?}\n[peers.p]\npublic_key = \"\"\"{}\"\"\"\n",
                peer.to_pem()
            ),
        )
        .unwrap();
        ConfigSource {
            path,
            address: None,
            privkey: None,
        }
    }

    #[tokio::test]
    async fn controls_drive_reloads_and_the_shutdown() {
        let work = tempfile::tempdir().unwrap();
        let source = source(work.path(), work.path());
        let controls = stream::iter([Control::Reload, Control::Reload, Control::Shutdown]);
        assert_eq!(run(source, None, controls).await.unwrap(), Exit::Clean);
    }

    #[tokio::test]
    async fn the_end_of_the_controls_shuts_down() {
        let work = tempfile::tempdir().unwrap();
        let source = source(work.path(), work.path());
        assert_eq!(
            run(source, None, stream::empty()).await.unwrap(),
            Exit::Clean
        );
    }

    #[tokio::test]
    async fn a_missing_root_stops_the_start() {
        let work = tempfile::tempdir().unwrap();
        let source = source(work.path(), &work.path().join("missing"));
        let err = run(source, None, stream::pending()).await.unwrap_err();
        assert!(
            matches!(err, DaemonError::Config(ConfigError::Root { .. })),
            "{err:?}"
        );
    }
}
