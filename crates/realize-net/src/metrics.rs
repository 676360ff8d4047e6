//! The transport's instruments: RPC calls, wire bytes, connections, refused
//! handshakes and throttling.
//!
//! Instruments are made from OpenTelemetry's global meter, so libraries
//! record without knowing whether anything exports: until a binary starts
//! its [`crate::telemetry`], they are no-ops.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};

/// Call latencies, in seconds, from a local hash to a long transfer.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// The meter every instrument of realize is made from.
pub(crate) fn meter() -> Meter {
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
    /// This process made the call.
    Client,
    /// This process serves the call.
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
    /// Counts a call of `method` as started, in flight until it is finished or dropped.
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

/// Counts a connection's wire bytes and the waits its send limit imposes.
#[derive(Debug)]
pub(crate) struct Wire;

impl realize_core::Traffic for Wire {
    fn received(&self, bytes: usize) {
        net().wire_received.add(bytes as u64, &[]);
    }

    fn sent(&self, bytes: usize, wait: std::time::Duration) {
        let metrics = net();
        metrics.wire_sent.add(bytes as u64, &[]);
        if !wait.is_zero() {
            metrics.throttle_wait.add(wait.as_secs_f64(), &[]);
        }
    }
}
