//! realize-net: the transport between realize and its daemons.
//!
//! [`keys`] reads and writes ed25519 keys and the self-signed certificates
//! made from them; [`tls`] builds rustls configurations that trust exactly
//! the pinned keys (no certificate authority); [`connection`] turns a TCP
//! listener into a stream of authenticated connections for tonic and dials
//! daemons; [`remote`] implements realize-core's `Service` over gRPC;
//! [`telemetry`] sets up the binaries' logs, traces and metrics exports
//! (for binaries only: it installs global providers).
//!
//! This crate moves bytes and never decides what moves: the algorithm is
//! realize-core's, and it does not know whether a side is remote.
//!
//! The transport's instruments ([`metrics`]), like realize-core's, are made
//! from OpenTelemetry's global meter provider, a no-op unless the program
//! installs one.
//!
//! A program that talks to a daemon connects with
//! [`connection::connect`] and moves through [`remote::RemoteService`]:
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::time::Duration;
//!
//! use realize_core::{DirId, LocalStore, Move, SendLimit};
//! use realize_net::keys::{PrivateKey, PublicKey};
//!
//! let key = PrivateKey::load(Path::new("client.key"))?;
//! let daemon_keys = PublicKey::load_all(Path::new("daemon.pub"))?;
//! let tls = realize_net::tls::client_config(&key, daemon_keys)?;
//! let channel = realize_net::connection::connect(
//!     "backup.example:8443",
//!     tls,
//!     Duration::from_secs(10),
//!     SendLimit::new(None),
//! )
//! .await?;
//! let daemon = realize_net::remote::RemoteService::new(channel);
//! let photos = DirId::new("photos")?;
//! let local = LocalStore::new([(photos.clone(), "/home/me/photos".into())]);
//! let summary = Move::new(&local, &daemon).dirs([photos]).run().await?;
//! println!("{} files moved", summary.files_moved);
//! # Ok(())
//! # }
//! ```
//!
//! `realize-daemon`'s `in_process` example runs the same against a daemon
//! served in-process.

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
