//! The instruments of moves and stores, made from the `Meter` the program
//! passes ([`Move::meter`](crate::Move::meter),
//! [`LocalStore::with_meter`](crate::LocalStore::with_meter)), or else from
//! OpenTelemetry's global meter provider, a no-op unless the program
//! installed one.

use std::sync::{Arc, OnceLock};

use opentelemetry::metrics::{Counter, Meter};

/// What a move records.
pub(crate) struct MoveMetrics {
    pub files_moved: Counter<u64>,
    pub files_failed: Counter<u64>,
    pub files_interrupted: Counter<u64>,
    pub bytes_moved: Counter<u64>,
    pub delta_saved: Counter<u64>,
}

impl MoveMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
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
        }
    }

    /// The global meter provider's, made once.
    pub(crate) fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<MoveMetrics>> = OnceLock::new();
        Arc::clone(GLOBAL.get_or_init(|| Arc::new(MoveMetrics::new(&global_meter()))))
    }
}

impl std::fmt::Debug for MoveMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MoveMetrics")
    }
}

/// What a store records.
pub(crate) struct StoreMetrics {
    pub store_written: Counter<u64>,
    pub store_finished: Counter<u64>,
    pub store_deleted: Counter<u64>,
}

impl StoreMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        StoreMetrics {
            store_written: meter
                .u64_counter("realize.store.written")
                .with_unit("By")
                .with_description("bytes written into partial files by this process's store")
                .build(),
            store_finished: meter
                .u64_counter("realize.store.finished")
                .with_description(
                    "partial files made final (fsynced and renamed) by this process's store",
                )
                .build(),
            store_deleted: meter
                .u64_counter("realize.store.deleted")
                .with_description("files deleted by this process's store")
                .build(),
        }
    }

    /// The global meter provider's, made once.
    pub(crate) fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<StoreMetrics>> = OnceLock::new();
        Arc::clone(GLOBAL.get_or_init(|| Arc::new(StoreMetrics::new(&global_meter()))))
    }
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

fn global_meter() -> Meter {
    opentelemetry::global::meter("realize")
}
