//! What every call and handshake consults: the live part of the config, and the calls in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use realize_core::{DirId, LocalStore, PathLocks, Service};
use realize_net::connection::{PeerInfo, ServerPolicy};
use realize_net::keys::PublicKey;
use realize_net::tls::{PeerKeys, Refusal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::budget::{Budgets, PeerBudget};
use crate::config::{Config, DaemonLimits, Peer};
use crate::rate::CallRates;

/// The part of the config that a reload changes while the daemon runs.
///
/// It is replaced whole ([`LiveConfig::replace`]), so a handshake or a call sees one
/// version of it, never a mix of two.
#[derive(Debug)]
pub(crate) struct Live {
    /// Key → peer id: who may connect.
    pub keys: HashMap<PublicKey, String>,
    /// Peer id → what it may do.
    pub peers: BTreeMap<String, Peer>,
    /// The directory ids configured, so a peer's allowlist can tell a directory it may
    /// not access from one that does not exist.
    pub dirs: BTreeSet<DirId>,
    /// The directories served.
    pub service: Arc<dyn Service>,
    /// How long calls may run on after a shutdown request.
    pub grace_period: Duration,
    pub limits: DaemonLimits,
    /// The path locks of the store, carried over to the next version.
    pub locks: PathLocks,
    /// The store of the configured directories, for the stale partial files'
    /// cleaning; `None` when the daemon serves another `Service`.
    pub store: Option<LocalStore>,
}

impl Live {
    pub fn new(
        peers: BTreeMap<String, Peer>,
        dirs: BTreeSet<DirId>,
        service: Arc<dyn Service>,
        grace_period: Duration,
        limits: DaemonLimits,
    ) -> Live {
        Live {
            keys: peers
                .iter()
                .flat_map(|(id, peer)| peer.keys.iter().map(move |key| (key.clone(), id.clone())))
                .collect(),
            peers,
            dirs,
            service,
            grace_period,
            limits,
            locks: PathLocks::default(),
            store: None,
        }
    }

    /// The live state of `config`, whose store queues calls on `locks`: the
    /// same table for every reload, so calls on one path queue together
    /// whichever version of the config admitted them.
    pub fn from_config(config: &Config, locks: PathLocks) -> Live {
        let store = LocalStore::with_locks(config.dirs.clone(), locks.clone());
        Live {
            locks,
            store: Some(store.clone()),
            ..Live::new(
                config.peers.clone(),
                config.dirs.keys().cloned().collect(),
                Arc::new(store),
                config.grace_period,
                config.limits,
            )
        }
    }

    /// Whether `peer` still connects with the key it authenticated with, from an
    /// address it may connect from: a peer removed from the config, or whose key was
    /// removed, or whose networks no longer hold its address, is not.
    pub fn allows(&self, peer: &PeerInfo) -> bool {
        self.admit(&peer.key, peer.addr.ip()).as_ref() == Ok(&peer.peer_id)
    }

    /// The peer id of `key`, if that key may connect from `addr`.
    fn admit(&self, key: &PublicKey, addr: IpAddr) -> Result<String, Refusal> {
        let id = self.keys.get(key).ok_or(Refusal::UnknownKey)?;
        match self.peers.get(id) {
            Some(peer) if peer.may_connect_from(addr) => Ok(id.clone()),
            Some(_) => Err(Refusal::Network { peer: id.clone() }),
            None => Err(Refusal::UnknownKey),
        }
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
    fn admit(&self, key: &PublicKey, addr: IpAddr) -> Result<String, Refusal> {
        self.0.borrow().admit(key, addr)
    }
}

impl ServerPolicy for LiveConfig {
    fn max_connections(&self) -> usize {
        self.0.borrow().limits.max_connections
    }

    fn max_connections_per_peer(&self) -> usize {
        self.0.borrow().limits.peer_share()
    }

    fn handshake_timeout(&self) -> Duration {
        self.0.borrow().limits.handshake_timeout
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
    /// What each peer's calls hold in memory, against `max_memory_per_peer`.
    pub budgets: Budgets,
    /// How many calls each rate-limited peer may still start.
    pub rates: CallRates,
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
    /// The calls running on this connection.
    pub active: Arc<ActiveCalls>,
    /// The memory budget of the peer, shared with its other connections.
    pub budget: Arc<PeerBudget>,
}

/// The calls running on one connection: counted against `max_calls_per_connection`,
/// and watched by the connection's idle timer.
#[derive(Debug)]
pub(crate) struct ActiveCalls(watch::Sender<usize>);

impl Default for ActiveCalls {
    fn default() -> Self {
        ActiveCalls(watch::Sender::new(0))
    }
}

impl ActiveCalls {
    /// Counts one more call until the guard is dropped, unless `max` already run.
    pub fn try_start(self: &Arc<Self>, max: usize) -> Option<ActiveCall> {
        let mut started = false;
        self.0.send_if_modified(|n| {
            started = *n < max;
            if started {
                *n += 1;
            }
            started
        });
        started.then(|| ActiveCall(Arc::clone(self)))
    }

    /// Returns once no call has run on the connection for `idle` (read at each
    /// check, so a reload applies to connections already open).
    pub async fn idle_for(&self, idle: impl Fn() -> Duration) {
        let mut count = self.0.subscribe();
        loop {
            if *count.borrow_and_update() == 0 {
                tokio::select! {
                    () = tokio::time::sleep(idle()) => return,
                    changed = count.changed() => if changed.is_err() { return },
                }
            } else if count.changed().await.is_err() {
                return;
            }
        }
    }
}

/// One call counted in [`ActiveCalls`].
#[derive(Debug)]
pub(crate) struct ActiveCall(Arc<ActiveCalls>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
