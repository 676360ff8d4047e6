//! The W3C trace context carried in gRPC metadata, so a `realize` run and the
//! daemon calls it causes form one trace; the spans are exported by
//! [`crate::telemetry`].

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
