//! Metrics over OTLP: with `--otlp-endpoint`, `realized` exports its
//! instruments periodically and `realize` at exit, to a collector that needs
//! no Prometheus scrape.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use tempfile::TempDir;

use crate::util::*;

/// One data point as the collector last received it: service, metric name
/// and attributes (sorted `key=value`), to its value.
type Points = BTreeMap<(String, String, Vec<String>), f64>;

/// An OTLP/gRPC metrics collector that keeps the latest value of every point.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Points>>);

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(attributes: &[KeyValue]) -> Vec<String> {
    let mut pairs: Vec<String> = attributes
        .iter()
        .map(|a| {
            let value = a.value.as_ref().and_then(|v| v.value.as_ref());
            format!("{}={}", a.key, text(value))
        })
        .collect();
    pairs.sort();
    pairs
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut points = self.0.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let numbers = match metric.data {
                    Some(Data::Sum(sum)) => sum.data_points,
                    Some(Data::Gauge(gauge)) => gauge.data_points,
                    Some(Data::Histogram(histogram)) => {
                        for point in histogram.data_points {
                            let key = (
                                service.clone(),
                                metric.name.clone(),
                                attributes(&point.attributes),
                            );
                            points.insert(key, point.count as f64);
                        }
                        continue;
                    }
                    _ => continue,
                };
                for point in numbers {
                    let value = match point.value {
                        Some(number_data_point::Value::AsInt(n)) => n as f64,
                        Some(number_data_point::Value::AsDouble(x)) => x,
                        None => continue,
                    };
                    let key = (
                        service.clone(),
                        metric.name.clone(),
                        attributes(&point.attributes),
                    );
                    points.insert(key, value);
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    fn get(&self, service: &str, name: &str, attributes: &[&str]) -> Option<f64> {
        let key = (
            service.to_string(),
            name.to_string(),
            attributes.iter().map(|a| a.to_string()).collect(),
        );
        self.0.lock().unwrap().get(&key).copied()
    }

    /// Waits for a point to reach `expected`: the daemon exports on its own
    /// schedule, and the collector is the only witness of it.
    async fn expect(&self, service: &str, name: &str, attributes: &[&str], expected: f64) {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if self.get(service, name, attributes) == Some(expected) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{service} {name} {attributes:?} never reached {expected}: {:#?}",
            self.0.lock().unwrap()
        );
    }
}

#[tokio::test]
async fn both_binaries_export_their_metrics_to_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let sizes = [300_000usize, 2_000];
    for (i, size) in sizes.iter().enumerate() {
        write_file(&src, &format!("f{i}"), &random_bytes(i as u64, *size));
    }
    let total: usize = sizes.iter().sum();
    let daemon_endpoint = endpoint.clone();
    let mut daemon = Daemon::start_with(work.path(), &[("d", &dst)], &client, |config| {
        config.args = vec!["--otlp-endpoint".into(), daemon_endpoint];
        // The standard variable of the periodic reader (60 s by default).
        config.env = vec![("OTEL_METRIC_EXPORT_INTERVAL".into(), "200".into())];
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

    // realize exported once, at its exit.
    let realize = "realize";
    let version = concat!("version=", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        collector.get(realize, "realize.files.moved", &[]),
        Some(2.0)
    );
    assert_eq!(
        collector.get(realize, "realize.files.failed", &[]),
        Some(0.0)
    );
    assert_eq!(
        collector.get(realize, "realize.moved", &[]),
        Some(total as f64)
    );
    assert_eq!(
        collector.get(realize, "realize.build_info", &["binary=realize", version]),
        Some(1.0)
    );
    // The daemon exports while it runs: these arrive before it stops.
    let realized = "realized";
    collector
        .expect(realized, "realize.store.written", &[], total as f64)
        .await;
    collector
        .expect(realized, "realize.store.finished", &[], 2.0)
        .await;
    collector
        .expect(
            realized,
            "realize.rpc.calls",
            &["code=Ok", "method=Write", "side=server"],
            1.0,
        )
        .await;
    collector
        .expect(
            realized,
            "realize.rpc.duration",
            &["method=Write", "side=server"],
            1.0,
        )
        .await;
    collector
        .expect(
            realized,
            "realize.build_info",
            &["binary=realized", version],
            1.0,
        )
        .await;
    daemon.signal(rustix::process::Signal::TERM);
    assert!(daemon.wait_exit().await.success());
    server.abort();
}
