//! End-to-end tests: the real `realized` and `realize` binaries over mutual
//! TLS on loopback, on real files.
#![allow(clippy::unwrap_used)]

mod audit_log;
mod client_config;
mod digest;
mod dist;
mod exit_status;
mod fairness;
mod hardening;
mod lifecycle;
mod moves;
mod observability;
mod otlp_metrics;
mod overlap;
mod peers;
mod python;
mod rejections;
mod resilience;
mod security;
mod selection;
mod throttle;
mod traces;
mod util;
