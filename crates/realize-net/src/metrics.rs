//! Metrics: the transport's instruments, build info, the standard process
//! metrics, and their export in Prometheus text format (served on `/metrics`,
//! or pushed to a Pushgateway) and over OTLP.
//!
//! Instruments are made from OpenTelemetry's global meter, so libraries
//! record without knowing whether anything exports: until a binary calls
//! [`Exporter::install`], they are no-ops.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

/// Call latencies, in seconds, from a local hash to a long transfer.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

fn meter() -> Meter {
    opentelemetry::global::meter("realize")
}

/// The transport's instruments.
pub(crate) struct NetMetrics {
    pub rpc_calls: Counter<u64>,
    pub rpc_in_flight: UpDownCounter<i64>,
    pub rpc_duration: Histogram<f64>,
    pub wire_sent: Counter<u64>,
    pub wire_received: Counter<u64>,
    pub connections_open: UpDownCounter<i64>,
    pub handshakes_refused: Counter<u64>,
    pub throttle_limit: Gauge<u64>,
    pub throttle_wait: Counter<f64>,
}

pub(crate) fn net() -> &'static NetMetrics {
    static METRICS: OnceLock<NetMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meter();
        NetMetrics {
            rpc_calls: meter
                .u64_counter("realize.rpc.calls")
                .with_description("gRPC calls, by side, method and status code")
                .build(),
            rpc_in_flight: meter
                .i64_up_down_counter("realize.rpc.in_flight")
                .with_description("gRPC calls running, by side and method")
                .build(),
            rpc_duration: meter
                .f64_histogram("realize.rpc.duration")
                .with_unit("s")
                .with_description("time to answer a gRPC call (to the first response for streams)")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            wire_sent: meter
                .u64_counter("realize.wire.sent")
                .with_unit("By")
                .with_description("bytes written to peer connections, TLS included")
                .build(),
            wire_received: meter
                .u64_counter("realize.wire.received")
                .with_unit("By")
                .with_description("bytes read from peer connections, TLS included")
                .build(),
            connections_open: meter
                .i64_up_down_counter("realize.connections.open")
                .with_description("authenticated connections open, by peer id")
                .build(),
            handshakes_refused: meter
                .u64_counter("realize.tls.handshakes.refused")
                .with_description("TLS handshakes refused, by reason")
                .build(),
            throttle_limit: meter
                .u64_gauge("realize.throttle.limit")
                .with_unit("By/s")
                .with_description("send limit in force (0: none), by scope")
                .build(),
            throttle_wait: meter
                .f64_counter("realize.throttle.wait")
                .with_unit("s")
                .with_description("time writes spent waiting on a send limit")
                .build(),
        }
    })
}

/// Which end of a call this process is.
#[derive(Clone, Copy, Debug)]
pub enum RpcSide {
    Client,
    Server,
}

impl RpcSide {
    fn as_str(self) -> &'static str {
        match self {
            RpcSide::Client => "client",
            RpcSide::Server => "server",
        }
    }
}

/// One gRPC call being measured: counted in flight until [`RpcCall::finish`]
/// (or drop, which counts it as cancelled).
#[derive(Debug)]
pub struct RpcCall {
    side: RpcSide,
    method: &'static str,
    started: Instant,
    done: bool,
}

impl RpcCall {
    pub fn start(side: RpcSide, method: &'static str) -> Self {
        net().rpc_in_flight.add(1, &Self::labels(side, method));
        RpcCall {
            side,
            method,
            started: Instant::now(),
            done: false,
        }
    }

    fn labels(side: RpcSide, method: &'static str) -> [KeyValue; 2] {
        [
            KeyValue::new("side", side.as_str()),
            KeyValue::new("method", method),
        ]
    }

    /// Records the call's outcome; `code` is the gRPC status code name
    /// (`Ok`, `NotFound`, ...).
    pub fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        let metrics = net();
        let labels = Self::labels(self.side, self.method);
        metrics.rpc_in_flight.add(-1, &labels);
        metrics
            .rpc_duration
            .record(self.started.elapsed().as_secs_f64(), &labels);
        let [side, method] = labels;
        metrics.rpc_calls.add(
            1,
            &[side, method, KeyValue::new("code", format!("{code:?}"))],
        );
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
    }
}

/// Records a send limit in force (`None`: no limit, recorded as 0).
pub fn record_limit(limit: Option<u64>, labels: &[KeyValue]) {
    net().throttle_limit.record(limit.unwrap_or(0), labels);
}

/// What `realize_build_info` says about this program, and the service name
/// its metrics carry over OTLP.
#[derive(Clone, Copy, Debug)]
pub struct Build {
    /// `realize` or `realized`.
    pub binary: &'static str,
    /// The binary's version (its `CARGO_PKG_VERSION`).
    pub version: &'static str,
}

/// Registers `realize_build_info{version, binary} 1`, the Prometheus
/// convention for joining a version onto other series.
fn register_build_info(meter: &Meter, build: Build) {
    let labels = [
        KeyValue::new("version", build.version),
        KeyValue::new("binary", build.binary),
    ];
    meter
        .u64_observable_gauge("realize.build_info")
        .with_description("always 1; the labels say which binary and version this is")
        .with_callback(move |observer| observer.observe(1, &labels))
        .build();
}

/// Registers the standard `process_*` metrics every Prometheus client
/// exports (CPU, memory, file descriptors, start time, threads), under their
/// standard names so community dashboards and alerts work on them.
#[cfg(target_os = "linux")]
fn register_process_metrics(registry: &prometheus::Registry) -> Result<(), MetricsError> {
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(MetricsError::Process)
}

/// The prometheus crate reads these from /proc, which only Linux has.
#[cfg(not(target_os = "linux"))]
fn register_process_metrics(_: &prometheus::Registry) -> Result<(), MetricsError> {
    Ok(())
}

/// Why metrics could not be set up, served or pushed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("cannot set up the Prometheus exporter")]
    Exporter(#[source] opentelemetry_sdk::error::OTelSdkError),
    #[error("cannot register the process metrics")]
    Process(#[source] prometheus::Error),
    #[error("cannot export metrics to {endpoint}")]
    Otlp {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot encode metrics")]
    Encode(#[source] prometheus::Error),
    #[error("invalid Pushgateway URL {url:?}: {reason}")]
    PushUrl { url: String, reason: String },
    #[error("cannot push metrics to {url}")]
    Push {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Pushgateway at {url} answered {status}")]
    PushStatus { url: String, status: StatusCode },
}

/// The process's meter provider, exporting to a Prometheus registry.
#[derive(Clone, Debug)]
pub struct Exporter {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

impl Exporter {
    /// Installs the global meter provider; call once, before anything is
    /// measured. With `otlp_endpoint` (an OTLP/gRPC collector), the same
    /// instruments are also exported there periodically (every 60 s, or
    /// `OTEL_METRIC_EXPORT_INTERVAL` milliseconds) and at [`Exporter::shutdown`];
    /// that needs a tokio runtime entered, which must outlive the exporter.
    pub fn install(build: Build, otlp_endpoint: Option<&str>) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        register_process_metrics(&registry)?;
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(MetricsError::Exporter)?;
        let mut provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(Resource::builder().with_service_name(build.binary).build());
        if let Some(endpoint) = otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|source| MetricsError::Otlp {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
            provider = provider.with_reader(PeriodicReader::builder(exporter).build());
        }
        let provider = provider.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        register_build_info(&meter(), build);
        Ok(Exporter { registry, provider })
    }

    /// Every metric, in Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(MetricsError::Encode)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Flushes and stops the provider, so nothing is lost at exit; with OTLP
    /// this blocks on the last export, so call it from a blocking thread
    /// while the runtime still runs.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot shut the metrics provider down");
        }
    }

    /// Serves `GET /metrics` on `listener` until `shutdown` completes: other
    /// paths get 404, other methods 405.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics server cannot accept");
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let exporter = self.clone();
            let service = hyper::service::service_fn(move |request| {
                let exporter = exporter.clone();
                async move { Ok::<_, Infallible>(exporter.answer(&request)) }
            });
            connections.spawn(async move {
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%addr, error = %e, "metrics connection failed");
                }
            });
        }
        connections.close();
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<http_body_util::Full<Bytes>> {
        let (status, body) = match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => match self.render() {
                Ok(text) => (StatusCode::OK, text),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string()),
            _ => (
                StatusCode::NOT_FOUND,
                "not found: try /metrics\n".to_string(),
            ),
        };
        let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if status == StatusCode::OK {
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
        }
        response
    }

    /// Pushes every metric once to the Pushgateway at `url` (http only),
    /// grouped under `job` and `instance`; replaces what that group held.
    pub async fn push(
        &self,
        url: &str,
        job: &str,
        instance: &str,
        timeout: Duration,
    ) -> Result<(), MetricsError> {
        let target = push_url(url, job, instance)?;
        let body = self.render()?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        let request = Request::builder()
            .method(Method::PUT)
            .uri(&target)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| MetricsError::PushUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| MetricsError::Push {
            url: url.to_string(),
            source,
        };
        let response = tokio::time::timeout(timeout, client.request(request))
            .await
            .map_err(|e| failed(Box::new(e)))?
            .map_err(|e| failed(Box::new(e)))?;
        if !response.status().is_success() {
            return Err(MetricsError::PushStatus {
                url: url.to_string(),
                status: response.status(),
            });
        }
        Ok(())
    }
}

/// `URL/metrics/job/JOB/instance/INSTANCE`, with the labels percent-encoded.
fn push_url(url: &str, job: &str, instance: &str) -> Result<http::Uri, MetricsError> {
    let invalid = |reason: &str| MetricsError::PushUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if !url.starts_with("http://") {
        return Err(invalid("only http:// is supported"));
    }
    if job.is_empty() || instance.is_empty() {
        return Err(invalid("the job and instance labels must not be empty"));
    }
    format!(
        "{}/metrics/job/{}/instance/{}",
        url.trim_end_matches('/'),
        encode_label(job),
        encode_label(instance)
    )
    .parse()
    .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode_label(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Counts a connection open for `peer` until dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    labels: Arc<[KeyValue; 1]>,
}

impl OpenConnection {
    pub(crate) fn new(peer: &str) -> Self {
        let labels = Arc::new([KeyValue::new("peer", peer.to_string())]);
        net().connections_open.add(1, labels.as_slice());
        OpenConnection { labels }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        net().connections_open.add(-1, self.labels.as_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushgateway_urls() {
        assert_eq!(
            push_url("http://127.0.0.1:9091/", "realize", "laptop 1")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9091/metrics/job/realize/instance/laptop%201"
        );
        assert!(push_url("https://gw:9091", "j", "i").is_err());
        assert!(push_url("http://gw:9091", "", "i").is_err());
    }
}
