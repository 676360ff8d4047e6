//! What every call and handshake consults: the live part of the config, and the calls in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use realize_core::{LocalStore, Service};
use realize_net::connection::PeerInfo;
use realize_net::keys::PublicKey;
use realize_net::tls::PeerKeys;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;

/// The part of the config that a reload changes while the daemon runs.
///
/// It is replaced whole ([`LiveConfig::replace`]), so a handshake or a call sees one
/// version of it, never a mix of two.
#[derive(Debug)]
pub(crate) struct Live {
    /// Key → peer id: who may connect.
    pub peers: HashMap<PublicKey, String>,
    /// The directories served.
    pub service: Arc<dyn Service>,
    /// How long calls may run on after a shutdown request.
    pub grace_period: Duration,
}

impl Live {
    pub fn new(
        peers: &BTreeMap<String, PublicKey>,
        service: Arc<dyn Service>,
        grace_period: Duration,
    ) -> Live {
        Live {
            peers: peers
                .iter()
                .map(|(id, key)| (key.clone(), id.clone()))
                .collect(),
            service,
            grace_period,
        }
    }

    pub fn from_config(config: &Config) -> Live {
        let store = LocalStore::new(config.dirs.clone());
        Live::new(&config.peers, Arc::new(store), config.grace_period)
    }

    /// Whether `peer` still connects with the key it authenticated with: a peer
    /// removed from the config, or given another key, is not.
    pub fn allows(&self, peer: &PeerInfo) -> bool {
        self.peers.get(&peer.key) == Some(&peer.peer_id)
    }
}

/// The current [`Live`] config, shared by the TLS verifier, the handshake and every call.
#[derive(Debug)]
pub(crate) struct LiveConfig(watch::Sender<Arc<Live>>);

impl LiveConfig {
    pub fn new(live: Live) -> Self {
        LiveConfig(watch::Sender::new(Arc::new(live)))
    }

    pub fn current(&self) -> Arc<Live> {
        Arc::clone(&self.0.borrow())
    }

    /// Swaps in a new version; calls already running keep the one they started with.
    pub fn replace(&self, live: Live) {
        self.0.send_replace(Arc::new(live));
    }
}

impl PeerKeys for LiveConfig {
    fn peer_id(&self, key: &PublicKey) -> Option<String> {
        self.0.borrow().peers.get(key).cloned()
    }
}

/// The calls in flight.
///
/// hyper runs each call (request and response) as a task of its own, and it spawns them
/// through [`CallExecutor`] onto `tracker`, so shutdown can count them and wait for them.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    pub tracker: TaskTracker,
    /// Fired when the grace period is over; each connection's call token is a child.
    pub cancel: CancellationToken,
    /// Set when shutdown starts: calls from then on are refused as Unavailable.
    shutting_down: AtomicBool,
}

impl Calls {
    pub fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Once closed, the tracker's `wait` returns as soon as no call runs.
        self.tracker.close();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Runs hyper's per-call tasks on the [`Calls`] tracker, each until it ends or its
/// connection gives up on it (`reset`).
#[derive(Clone, Debug)]
pub(crate) struct CallExecutor {
    pub tracker: TaskTracker,
    /// Drops the connection's call tasks, which makes HTTP/2 reset their streams.
    pub reset: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for CallExecutor
where
    F: Future + Send + 'static,
{
    fn execute(&self, call: F) {
        let reset = self.reset.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    biased;
                    _ = call => {}
                    () = reset.cancelled() => tracing::warn!("call reset: its response could not be sent"),
                }
            }
            // hyper spawns from inside the connection's task: keep its span.
            .in_current_span(),
        );
    }
}

/// What a call knows of its connection; the request extensions carry it to the handler.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionContext {
    pub peer: PeerInfo,
    /// Cancels the calls of this connection: a child of [`Calls::cancel`], also fired
    /// alone when the peer is removed from the config.
    pub cancel: CancellationToken,
}
