//! The running daemon: serving, reloading its config, and shutting down in phases.
//!
//! The owner (main.rs, or a test) drives it with [`Control`] events; nothing here
//! knows about OS signals, so all of it runs in-process too.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use realize_core::ErrorChain;
use realize_net::connection::Incoming;
use realize_net::keys::PrivateKey;
use realize_proto::pb::realize_server::RealizeServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::DaemonError;
use crate::config::{Config, ConfigSource};
use crate::connections::{Connections, Services};
use crate::logging::LogFilter;
use crate::server::Handler;
use crate::state::{Calls, Live, LiveConfig};

/// How long cancelled calls may take to end once their connections are closed; the
/// calls left then (a Finish or Delete stuck on the disk) make the shutdown fail.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon's owner asks of it; main.rs turns signals into these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Shut down gracefully (SIGTERM, SIGINT); a second one during the shutdown
    /// ends it at once.
    Shutdown,
    /// Read the config file again (SIGHUP).
    Reload,
}

/// How the daemon ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Exit {
    /// Every phase of the shutdown went through.
    Clean,
    /// A cleanup step failed; the log says which.
    CleanupFailed,
    /// A second shutdown request cut the shutdown short.
    Forced,
}

/// The owner's events, and whether they have ended (which is not a request).
pub(crate) struct Controls<S> {
    stream: Pin<Box<S>>,
    ended: bool,
}

impl<S: Stream<Item = Control>> Controls<S> {
    pub fn new(stream: S) -> Self {
        Controls {
            stream: Box::pin(stream),
            ended: false,
        }
    }

    /// The next event; `None` once they have ended (and at once on every later call).
    pub async fn next(&mut self) -> Option<Control> {
        if self.ended {
            return None;
        }
        let next = self.stream.next().await;
        self.ended = next.is_none();
        next
    }

    /// Runs one shutdown phase; `None` if a second shutdown request came first.
    async fn unless_forced<T>(&mut self, phase: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(phase);
        loop {
            tokio::select! {
                biased;
                output = &mut phase => return Some(output),
                control = self.stream.next(), if !self.ended => match control {
                    Some(Control::Shutdown) => {
                        tracing::warn!("shutdown: second request, exiting at once");
                        return None;
                    }
                    Some(Control::Reload) => tracing::warn!("reload ignored: shutting down"),
                    None => self.ended = true,
                },
            }
        }
    }
}

/// A daemon serving on its listener.
pub(crate) struct Server {
    /// The address actually bound, which the config's `address` may only describe
    /// (port 0, a host name).
    listening_on: String,
    live: Arc<LiveConfig>,
    calls: Arc<Calls>,
    connections: Arc<Connections>,
    health: HealthReporter,
    stop_accepting: CancellationToken,
    accept: JoinHandle<Incoming>,
    /// Removes stale partial files; stopped with the server.
    _cleaning: tokio_util::task::AbortOnDropHandle<()>,
}

impl Server {
    /// Starts accepting connections on `listener` and serving `live`.
    pub async fn start(
        listener: TcpListener,
        key: &PrivateKey,
        live: Live,
    ) -> Result<Server, DaemonError> {
        let listening_on = listener
            .local_addr()
            .map_err(DaemonError::LocalAddr)?
            .to_string();
        let peers = live.peers.len();
        // The reload series start at 0 now rather than at the first reload.
        reloads();
        let live = Arc::new(LiveConfig::new(live));
        let tls = realize_net::tls::ServerTls::new(key, live.clone())?;
        let incoming = realize_net::connection::incoming(listener, tls, live.clone());
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<RealizeServer<Handler>>().await;
        let calls = Arc::new(Calls::default());
        let services = Services {
            health: Routes::new(health_service),
            handler: Handler::new(Arc::clone(&live), Arc::clone(&calls)),
        };
        let connections = Arc::new(Connections::default());
        let stop_accepting = CancellationToken::new();
        let accept = tokio::spawn(accept(
            incoming,
            stop_accepting.clone(),
            services,
            Arc::clone(&connections),
            Arc::clone(&calls),
            Arc::clone(&live),
        ));
        // Tests and scripts wait for this line: the port is bound and serving.
        tracing::info!(addr = %listening_on, peers, "listening on {listening_on}");
        let cleaning = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            remove_stale_partials(Arc::clone(&live)),
        ));
        Ok(Server {
            listening_on,
            live,
            calls,
            connections,
            health,
            stop_accepting,
            accept,
            _cleaning: cleaning,
        })
    }

    /// Reads the config again and applies it whole, or logs why not and keeps the
    /// current one. `current` is the config in force, updated when the new one applies.
    pub fn reload(&self, source: &ConfigSource, current: &mut Config, log: Option<&LogFilter>) {
        tracing::info!(path = %source.path.display(), "reload: reading the config file");
        let mut new = match source.load().and_then(|new| {
            new.check_roots()?;
            Ok(new)
        }) {
            Ok(new) => new,
            Err(e) => {
                reloads().add(1, &[KeyValue::new("outcome", "rejected")]);
                tracing::error!(
                    "reload failed, keeping the current config: {}",
                    ErrorChain(&e)
                );
                return;
            }
        };
        let filter = match log.map(|log| log.parse(new.log_level.as_deref())) {
            Some(Ok(filter)) => Some(filter),
            Some(Err(e)) => {
                reloads().add(1, &[KeyValue::new("outcome", "rejected")]);
                tracing::error!(
                    "reload failed, keeping the current config: {}",
                    ErrorChain(&e)
                );
                return;
            }
            None => None,
        };
        // The socket and the TLS identity are set up once; changing them means
        // replacing the listener under open connections, which a restart does cleanly.
        if new.address != current.address {
            tracing::warn!(
                "reload: address changed from {} to {}: it takes effect at the next restart, still listening on {}",
                current.address,
                new.address,
                self.listening_on
            );
            new.address = current.address.clone();
        }
        if new.privkey != current.privkey {
            tracing::warn!(
                "reload: privkey changed from {} to {}: it takes effect at the next restart",
                current.privkey.display(),
                new.privkey.display()
            );
            new.privkey = current.privkey.clone();
        }

        let locks = self.live.current().locks.clone();
        self.live.replace(Live::from_config(&new, locks));
        if let (Some(log), Some(filter)) = (log, filter)
            && let Err(e) = log.apply(filter)
        {
            // Only possible if the subscriber is gone, when nothing logs anyway.
            tracing::error!("reload: {}", ErrorChain(&e));
        }
        let closed = self.connections.close_removed_peers(&self.live.current());
        tracing::info!(
            dirs = ?new.dirs.keys().map(|d| d.as_str()).collect::<Vec<_>>(),
            peers = ?new.peers.keys().collect::<Vec<_>>(),
            grace_period = %humantime::format_duration(new.grace_period),
            closed_connections = closed,
            "reload: config applied"
        );
        reloads().add(1, &[KeyValue::new("outcome", "applied")]);
        *current = new;
    }

    /// Shuts down in phases, each logged: stop accepting, let calls finish within the
    /// grace period, cancel the rest, close the connections. A second shutdown request
    /// during any phase ends it at once.
    pub async fn shutdown<S: Stream<Item = Control>>(self, controls: &mut Controls<S>) -> Exit {
        let mut failed = false;
        let grace = self.live.current().grace_period;

        // 1. Refuse new calls and new connections.
        self.calls.start_shutdown();
        self.health
            .set_not_serving::<RealizeServer<Handler>>()
            .await;
        // "" is the server as a whole in the health protocol.
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.stop_accepting.cancel();
        match controls.unless_forced(self.accept).await {
            None => return Exit::Forced,
            Some(Ok(incoming)) => incoming.close().await,
            Some(Err(e)) => {
                tracing::error!(error = %e, "shutdown: the accept task failed");
                failed = true;
            }
        }
        tracing::info!(
            calls = self.calls.tracker.len(),
            grace_period = %humantime::format_duration(grace),
            "shutdown: stopped accepting connections, waiting for the calls in flight"
        );

        // 2. Let the calls in flight finish, then cancel what is left.
        let waited = tokio::time::timeout(grace, self.calls.tracker.wait());
        match controls.unless_forced(waited).await {
            None => return Exit::Forced,
            Some(Ok(())) => tracing::info!("shutdown: all calls finished"),
            Some(Err(_)) => {
                tracing::info!(
                    calls = self.calls.tracker.len(),
                    "shutdown: grace period over, cancelling the calls left"
                );
                self.calls.cancel.cancel();
            }
        }

        // 3. Close the connections: the cancelled calls send their status, then the
        // connection ends with GOAWAY and TLS close_notify.
        tracing::info!(
            connections = self.connections.count(),
            "shutdown: closing connections"
        );
        match controls.unless_forced(self.connections.close_all()).await {
            None => return Exit::Forced,
            Some(0) => tracing::info!("shutdown: connections closed"),
            Some(dropped) => tracing::warn!(
                dropped,
                "shutdown: connections closed, some dropped without a clean close"
            ),
        }

        // 4. With their connections gone, cancelled calls end at once; one still
        // running is stuck (on the disk, say) and the process exits under it.
        let ended = tokio::time::timeout(CANCEL_TIMEOUT, self.calls.tracker.wait());
        match controls.unless_forced(ended).await {
            None => return Exit::Forced,
            Some(Ok(())) => {}
            Some(Err(_)) => {
                tracing::error!(
                    calls = self.calls.tracker.len(),
                    "shutdown: calls still running {} after cancellation",
                    humantime::format_duration(CANCEL_TIMEOUT)
                );
                failed = true;
            }
        }

        // Logs are written unbuffered, so nothing is left to flush.
        if failed {
            tracing::error!("shutdown finished with errors");
            Exit::CleanupFailed
        } else {
            tracing::info!("shutdown complete");
            Exit::Clean
        }
    }
}

/// Hands each authenticated connection to [`Connections`] until told to stop; returns
/// the incoming stream so the caller can close the listener and know it is closed.
async fn accept(
    mut incoming: Incoming,
    stop: CancellationToken,
    services: Services,
    connections: Arc<Connections>,
    calls: Arc<Calls>,
    live: Arc<LiveConfig>,
) -> Incoming {
    loop {
        tokio::select! {
            () = stop.cancelled() => return incoming,
            next = incoming.next() => match next {
                Some(Ok(conn)) => connections.serve(conn, &services, &calls, &live),
                // realize-net logs and drops failed connections itself, so this only
                // logs what its type allows.
                Some(Err(e)) => tracing::warn!(error = %e, "accept failed"),
                // Only ends once closed, which this task does itself.
                None => return incoming,
            },
        }
    }
}

/// Config reloads, by outcome (`applied` or `rejected`).
fn reloads() -> &'static Counter<u64> {
    static RELOADS: OnceLock<Counter<u64>> = OnceLock::new();
    RELOADS.get_or_init(|| {
        let reloads = opentelemetry::global::meter("realize")
            .u64_counter("realize.config.reloads")
            .with_description("config reloads (SIGHUP), by outcome")
            .build();
        // Both series exist from the start at 0, so that the first rejected
        // reload is an increase Prometheus (and the alert on it) can see.
        for outcome in ["applied", "rejected"] {
            reloads.add(0, &[KeyValue::new("outcome", outcome)]);
        }
        reloads
    })
}

/// Removes the partial files of the live config's directories that nobody
/// has written for `partial_max_age`: at start, then every
/// `partial_max_age` (at least a minute apart, at most an hour), reading the
/// limit again each time so a reload applies.
async fn remove_stale_partials(live: Arc<LiveConfig>) {
    const MIN_PERIOD: Duration = Duration::from_secs(60);
    const MAX_PERIOD: Duration = Duration::from_secs(3600);
    loop {
        let current = live.current();
        let period = match (&current.store, current.limits.partial_max_age) {
            (Some(store), Some(max_age)) => {
                let removed = store.remove_stale_partials(max_age).await;
                if removed > 0 {
                    tracing::info!(removed, "stale partial files removed");
                }
                max_age.clamp(MIN_PERIOD, MAX_PERIOD)
            }
            _ => MAX_PERIOD,
        };
        drop(current);
        tokio::time::sleep(period).await;
    }
}
