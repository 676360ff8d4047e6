//! realize-net: the transport between realize and its daemons.
//!
//! [`keys`] reads and writes ed25519 keys and the self-signed certificates
//! made from them; [`tls`] builds rustls configurations that trust exactly
//! the pinned keys (no certificate authority); [`connection`] turns a TCP
//! listener into a stream of authenticated connections for tonic and dials
//! daemons; [`remote`] implements realize-core's `Service` over gRPC;
//! [`telemetry`] sets up the binaries' logs, traces and metrics exports.
//!
//! This crate moves bytes and never decides what moves: the algorithm is
//! realize-core's, and it does not know whether a side is remote.

#![warn(missing_docs)]

pub mod connection;
pub mod keys;
pub mod metrics;
pub mod remote;
pub mod retry;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod traces;
