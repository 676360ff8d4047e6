//! Traces: spans exported over OTLP, and the W3C trace context carried in
//! gRPC metadata, so a `realize` run and the daemon calls it causes form one trace.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}")]
pub struct TraceError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The process's tracer provider; [`TraceExport::shutdown`] sends what is left.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// A `tracing` layer that exports every span to the OTLP/gRPC collector at
    /// `endpoint` as `service`. Must be called inside the tokio runtime, which
    /// must outlive the export (the exporter runs its calls on it).
    pub fn otlp<S>(
        endpoint: &str,
        service: &'static str,
    ) -> Result<(impl tracing_subscriber::Layer<S> + use<S>, TraceExport), TraceError>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| TraceError {
                endpoint: endpoint.to_string(),
                source,
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("realize"));
        Ok((layer, TraceExport { provider }))
    }

    /// Exports the spans still buffered; blocking, so call it from a
    /// blocking thread while the runtime still runs.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot flush the traces");
        }
    }
}

/// Adds the current span's trace context to a request's metadata
/// (`traceparent`, `tracestate`); nothing without a propagator installed.
pub fn inject(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataCarrier(metadata));
    });
}

/// Makes `span` a child of the trace context a request carries, if any.
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataReader(metadata))
    });
    // Only an error if the subscriber has no OpenTelemetry layer: no trace to continue.
    let _ = span.set_parent(context);
}

struct MetadataCarrier<'a>(&'a mut MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataReader<'a>(&'a MetadataMap);

impl Extractor for MetadataReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|entry| match entry {
                KeyAndValueRef::Ascii(key, _) => Some(key.as_str()),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}
