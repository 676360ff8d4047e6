//! Traces across hosts: `realize` and `realized` export to one OTLP
//! collector, and the daemon's call spans join the trace of the move.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tempfile::TempDir;

use crate::util::*;

/// A span as the collector received it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// An OTLP/gRPC trace collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn a_move_and_the_daemon_calls_it_causes_form_one_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    // Larger than a batched file, so it moves in a span of its own.
    write_file(&src, "traced.bin", &random_bytes(1, 300_000));
    let daemon_endpoint = endpoint.clone();
    let mut daemon = Daemon::start_with(work.path(), &[("d", &dst)], &client, |config| {
        config.args = vec!["--otlp-endpoint".into(), daemon_endpoint];
    })
    .await;
    let mut args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    args.extend(["--otlp-endpoint".into(), endpoint.into()]);
    let output = realize(&os(&args)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    // A clean shutdown flushes the daemon's spans; realize flushed on exit.
    daemon.signal(rustix::process::Signal::TERM);
    assert!(daemon.wait_exit().await.success());
    server.abort();

    let spans = collector.0.lock().unwrap().clone();
    let file_span = spans
        .iter()
        .find(|s| s.service == "realize" && s.name == "file")
        .unwrap_or_else(|| panic!("no file span from realize: {spans:#?}"));
    let call = spans
        .iter()
        .filter(|s| s.service == "realized" && s.name == "rpc")
        .find(|s| s.trace_id == file_span.trace_id)
        .unwrap_or_else(|| panic!("no daemon call in the move's trace: {spans:#?}"));
    assert_eq!(
        call.parent_span_id, file_span.span_id,
        "the daemon's call is a child of the file it moved"
    );
}
