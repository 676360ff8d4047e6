//! Telemetry: what the binaries say about themselves and how it leaves the
//! process: log lines on stderr ([`log_layer`]), spans and metrics over OTLP,
//! metrics as Prometheus text on `/metrics` or pushed to a Pushgateway.
//!
//! Both binaries set it up with [`init`] and end it with [`Telemetry::finish`].
//! What is measured is not here: the transport's instruments are in
//! [`crate::metrics`], the trace context of each call in [`crate::traces`].
//!
//! **For binaries only.** [`init`] installs the global tracing subscriber
//! and [`Telemetry::start`] the global meter provider: a library, or a
//! program that embeds realize with telemetry of its own, must not call
//! them. Nothing else in realize-net (or realize-core) installs a global
//! subscriber, provider or signal handler.

use http::StatusCode;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Subscriber;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

mod exporter;
mod logs;
mod otlp;
mod pushgateway;

use exporter::Exporter;
pub use logs::{LogFormat, log_layer};
pub use pushgateway::Pushgateway;

/// What `realize_build_info` says about this program, and the service name
/// its spans and metrics carry over OTLP.
#[derive(Clone, Copy, Debug)]
pub struct Build {
    /// `realize` or `realized`.
    pub binary: &'static str,
    /// The binary's version (its `CARGO_PKG_VERSION`).
    pub version: &'static str,
}

/// What a binary exports, from its flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Name and version of the binary.
    pub build: Build,
    /// `HOST:PORT` to serve Prometheus text on, at `/metrics`.
    pub metrics_addr: Option<String>,
    /// Where the metrics are pushed once, at [`Telemetry::finish`].
    pub pushgateway: Option<Pushgateway>,
    /// An OTLP/gRPC collector that receives the spans and the metrics.
    pub otlp_endpoint: Option<String>,
    /// Spans are exported from this level whatever the log filter says;
    /// with `None`, the subscriber's own filters decide for them too.
    pub trace_level: Option<LevelFilter>,
}

impl Settings {
    fn wants_metrics(&self) -> bool {
        self.metrics_addr.is_some() || self.pushgateway.is_some() || self.otlp_endpoint.is_some()
    }
}

/// Why telemetry could not be set up, served or pushed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    #[error("cannot install the log subscriber")]
    /// A global subscriber was already installed.
    Subscriber(#[source] TryInitError),
    #[error("cannot export traces to {endpoint}")]
    /// The span exporter could not be built.
    Traces {
        /// The endpoint.
        endpoint: String,
        #[source]
        /// The cause.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot set up the Prometheus exporter")]
    /// The Prometheus exporter could not be built.
    Exporter(#[source] opentelemetry_sdk::error::OTelSdkError),
    #[error("cannot register the process metrics")]
    /// The process collector could not be registered.
    Process(#[source] prometheus::Error),
    #[error("cannot export metrics to {endpoint}")]
    /// The OTLP metrics exporter could not be built.
    Otlp {
        /// The endpoint.
        endpoint: String,
        #[source]
        /// The cause.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot serve metrics on {addr}")]
    /// The metrics address cannot be bound.
    Serve {
        /// The address.
        addr: String,
        #[source]
        /// The cause.
        source: std::io::Error,
    },
    #[error("cannot encode metrics")]
    /// The metrics could not be encoded as Prometheus text.
    Encode(#[source] prometheus::Error),
    #[error("invalid Pushgateway URL {url:?}: {reason}")]
    /// The Pushgateway URL is not valid.
    PushUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    #[error("cannot push metrics to {url}")]
    /// The push failed.
    Push {
        /// The URL.
        url: String,
        #[source]
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Pushgateway at {url} answered {status}")]
    /// The Pushgateway refused the push.
    PushStatus {
        /// The URL.
        url: String,
        /// Its HTTP status.
        status: StatusCode,
    },
}

/// Installs `subscriber` (the binary's logs) as the global one, with the
/// export of spans when `settings` name an OTLP collector.
///
/// The metrics come later, with [`Telemetry::start`]. The OTLP exporters
/// make their connections on `runtime`, which must outlive the returned
/// guard.
pub fn init<S>(
    settings: Settings,
    subscriber: S,
    runtime: &tokio::runtime::Handle,
) -> Result<Telemetry, TelemetryError>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync + 'static,
{
    let _runtime = runtime.enter();
    let traces = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let (layer, provider) = otlp::spans(endpoint, settings.build.binary)?;
            match settings.trace_level {
                Some(level) => subscriber.with(layer.with_filter(level)).try_init(),
                None => subscriber.with(layer).try_init(),
            }
            .map_err(TelemetryError::Subscriber)?;
            Some(provider)
        }
        None => {
            subscriber.try_init().map_err(TelemetryError::Subscriber)?;
            None
        }
    };
    Ok(Telemetry {
        settings,
        traces,
        metrics: None,
        server: None,
    })
}

/// The telemetry of the process, from [`init`] to [`Telemetry::finish`].
///
/// Dropped unfinished (an early exit), it still flushes the exports, blocking:
/// drop it outside async code, while the runtime runs. A process that must
/// exit at once calls `std::process::exit` with it alive, and waits for nothing.
#[derive(Debug)]
pub struct Telemetry {
    settings: Settings,
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    metrics: Option<Exporter>,
    /// Stops the `/metrics` server when dropped.
    server: Option<DropGuard>,
}

impl Telemetry {
    /// Installs the metrics the settings ask for and serves them on
    /// `/metrics`; call it before anything is measured (instruments made
    /// earlier measure nothing), and after the signal handlers are installed,
    /// since it binds a port.
    pub async fn start(&mut self) -> Result<(), TelemetryError> {
        if !self.settings.wants_metrics() {
            return Ok(());
        }
        let exporter =
            Exporter::install(self.settings.build, self.settings.otlp_endpoint.as_deref())?;
        self.metrics = Some(exporter.clone());
        if let Some(addr) = &self.settings.metrics_addr {
            let failed = |source| TelemetryError::Serve {
                addr: addr.clone(),
                source,
            };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
            tracing::info!(addr = %listener.local_addr().map_err(failed)?, "serving metrics on /metrics");
            let stop = CancellationToken::new();
            let until = stop.clone().cancelled_owned();
            tokio::spawn(async move { exporter.serve(listener, until).await });
            self.server = Some(stop.drop_guard());
        }
        Ok(())
    }

    /// Stops serving `/metrics`, pushes the metrics to the Pushgateway if
    /// there is one, then sends what is left of the spans and metrics over
    /// OTLP. Returns how the push went.
    pub async fn finish(&mut self) -> Result<(), TelemetryError> {
        self.server = None;
        let pushed = match (&self.metrics, &self.settings.pushgateway) {
            (Some(exporter), Some(gateway)) => gateway.push(exporter).await,
            _ => Ok(()),
        };
        let (metrics, traces) = (self.metrics.take(), self.traces.take());
        // Blocking, and the exports need this runtime: on a blocking thread.
        let _ = tokio::task::spawn_blocking(move || flush(metrics, traces)).await;
        pushed
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        flush(self.metrics.take(), self.traces.take());
    }
}

/// Shuts the providers down, which exports what they still hold; blocks on
/// the collector with OTLP.
fn flush(metrics: Option<Exporter>, traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>) {
    if let Some(metrics) = metrics {
        metrics.shutdown();
    }
    if let Some(traces) = traces
        && let Err(e) = traces.shutdown()
    {
        tracing::warn!(error = %e, "cannot flush the traces");
    }
}
