//! The move's instruments, made from OpenTelemetry's global meter: no-ops
//! unless the program installed a meter provider.

use std::sync::OnceLock;

use opentelemetry::metrics::Counter;

pub(crate) struct MoveMetrics {
    pub files_moved: Counter<u64>,
    pub files_failed: Counter<u64>,
    pub files_interrupted: Counter<u64>,
    pub bytes_moved: Counter<u64>,
    pub delta_saved: Counter<u64>,
    pub store_written: Counter<u64>,
    pub store_finished: Counter<u64>,
    pub store_deleted: Counter<u64>,
}

pub(crate) fn metrics() -> &'static MoveMetrics {
    static METRICS: OnceLock<MoveMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("realize");
        MoveMetrics {
            files_moved: meter
                .u64_counter("realize.files.moved")
                .with_description("files verified at the destination and deleted from the source")
                .build(),
            files_failed: meter
                .u64_counter("realize.files.failed")
                .with_description("files that failed to move; their sources are kept")
                .build(),
            files_interrupted: meter
                .u64_counter("realize.files.interrupted")
                .with_description("files left unmoved by a stop")
                .build(),
            bytes_moved: meter
                .u64_counter("realize.moved")
                .with_unit("By")
                .with_description("size of the files moved")
                .build(),
            delta_saved: meter
                .u64_counter("realize.delta.saved")
                .with_unit("By")
                .with_description(
                    "bytes not sent because the destination already had them (equal ranges, deltas)",
                )
                .build(),
            store_written: meter
                .u64_counter("realize.store.written")
                .with_unit("By")
                .with_description("bytes written into partial files by this process's store")
                .build(),
            store_finished: meter
                .u64_counter("realize.store.finished")
                .with_description("partial files made final (fsynced and renamed) by this process's store")
                .build(),
            store_deleted: meter
                .u64_counter("realize.store.deleted")
                .with_description("files deleted by this process's store")
                .build(),
        }
    })
}
