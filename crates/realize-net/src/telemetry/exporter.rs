//! The process's meter provider, read as Prometheus text (served on
//! `/metrics`, or pushed) and, with an OTLP endpoint, exported periodically.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

use super::{Build, TelemetryError, otlp};
use crate::metrics::meter;

/// The process's meter provider, exporting to a Prometheus registry.
#[derive(Clone, Debug)]
pub(super) struct Exporter {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

impl Exporter {
    /// Installs the global meter provider; call once, before anything is
    /// measured. With `otlp_endpoint` (an OTLP/gRPC collector), the same
    /// instruments are also exported there periodically (every 60 s, or
    /// `OTEL_METRIC_EXPORT_INTERVAL` milliseconds) and at [`Exporter::shutdown`];
    /// that needs a tokio runtime entered, which must outlive the exporter.
    pub(super) fn install(
        build: Build,
        otlp_endpoint: Option<&str>,
    ) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        register_process_metrics(&registry)?;
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(TelemetryError::Exporter)?;
        let mut provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(Resource::builder().with_service_name(build.binary).build());
        if let Some(endpoint) = otlp_endpoint {
            provider = provider.with_reader(otlp::metrics(endpoint)?);
        }
        let provider = provider.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        register_build_info(&meter(), build);
        Ok(Exporter { registry, provider })
    }

    /// Every metric, in Prometheus text format.
    pub(super) fn render(&self) -> Result<String, TelemetryError> {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(TelemetryError::Encode)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Flushes and stops the provider, so nothing is lost at exit; with OTLP
    /// this blocks on the last export, so call it from a blocking thread
    /// while the runtime still runs.
    pub(super) fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot shut the metrics provider down");
        }
    }

    /// Serves `GET /metrics` on `listener` until `shutdown` completes: other
    /// paths get 404, other methods 405.
    pub(super) async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
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
                http::HeaderValue::from_static(TEXT_FORMAT),
            );
        }
        response
    }
}

/// The content type of Prometheus text, served and pushed.
pub(super) const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

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
fn register_process_metrics(registry: &prometheus::Registry) -> Result<(), TelemetryError> {
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(TelemetryError::Process)
}

/// The prometheus crate reads these from /proc, which only Linux has.
#[cfg(not(target_os = "linux"))]
fn register_process_metrics(_: &prometheus::Registry) -> Result<(), TelemetryError> {
    Ok(())
}
