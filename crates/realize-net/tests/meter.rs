//! An embedding program's own meter receives the instruments of a move and
//! of its stores, and OpenTelemetry's global provider is not needed for it.

use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use realize_core::{DirId, LocalStore, Move};

/// The value of the first sample of `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn a_move_records_to_the_meter_it_is_given() {
    let registry = prometheus::Registry::new();
    let reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        .scope_info_enabled(false)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let provider = SdkMeterProvider::builder().with_reader(reader).build();
    let meter = provider.meter("embedder");

    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(src.path().join("a.txt"), b"first").unwrap();
    std::fs::write(src.path().join("b.txt"), vec![7u8; 300_000]).unwrap();
    let dir = DirId::new("d").unwrap();
    let store = |root: &std::path::Path| {
        LocalStore::new([(dir.clone(), root.to_path_buf())]).with_meter(&meter)
    };
    let (from, to) = (store(src.path()), store(dst.path()));
    let summary = Move::new(&from, &to)
        .dirs([dir.clone()])
        .meter(meter.clone())
        .run()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.files_moved, 2);

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sample(&text, "realize_files_moved_total"),
        Some(2),
        "{text}"
    );
    assert_eq!(
        sample(&text, "realize_moved_bytes_total"),
        Some(300_005),
        "{text}"
    );
    assert_eq!(
        sample(&text, "realize_store_finished_total"),
        Some(2),
        "{text}"
    );
    assert_eq!(
        sample(&text, "realize_store_deleted_total"),
        Some(2),
        "{text}"
    );
    assert_eq!(
        sample(&text, "realize_store_written_bytes_total"),
        Some(300_005),
        "{text}"
    );
}
