//! OTLP/gRPC export of spans and metrics to an OpenTelemetry collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

use super::TelemetryError;

/// A `tracing` layer that exports every span to the collector at `endpoint`
/// as `service`, and its provider, whose shutdown sends what is left; the
/// trace context of calls is propagated from then on ([`crate::traces`]).
/// Must be called inside the tokio runtime, which must outlive the export
/// (the exporter runs its calls on it).
pub(super) fn spans<S>(
    endpoint: &str,
    service: &'static str,
) -> Result<
    (
        impl tracing_subscriber::Layer<S> + use<S>,
        SdkTracerProvider,
    ),
    TelemetryError,
>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Traces {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("realize"));
    Ok((layer, provider))
}

/// A reader that exports the meter provider's instruments to the collector
/// at `endpoint` periodically and at shutdown; same runtime needs as [`spans`].
pub(super) fn metrics(
    endpoint: &str,
) -> Result<PeriodicReader<opentelemetry_otlp::MetricExporter>, TelemetryError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Otlp {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(PeriodicReader::builder(exporter).build())
}
