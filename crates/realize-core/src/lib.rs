//! realize-core: move files between two directories, local or remote, and never lose one.
//!
//! This crate is the domain of realize, with no network and no protobuf.
//! A program that embeds it moves files from one [`Service`] to another:
//! [`LocalStore`] serves directories of the local filesystem, and
//! realize-net's `RemoteService` serves a daemon's (`realized`) over gRPC
//! and mutual TLS. The move algorithm does not know which kind it has.
//!
//! # A move in five lines
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use realize_core::{DirId, LocalStore, Move};
//!
//! # let (from, to) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! # std::fs::create_dir(from.path().join("2024"))?;
//! # std::fs::write(from.path().join("2024/photo.jpg"), [0xff, 0xd8, 0xff])?;
//! let photos = DirId::new("photos")?;
//! let src = LocalStore::new([(photos.clone(), from.path().to_path_buf())]);
//! let dst = LocalStore::new([(photos.clone(), to.path().to_path_buf())]);
//! let summary = Move::new(&src, &dst).dirs([photos]).run().await?;
//! assert_eq!((summary.files_moved, summary.files_failed), (1, 0));
//! # assert!(to.path().join("2024/photo.jpg").exists());
//! # assert!(!from.path().join("2024/photo.jpg").exists());
//! # Ok(())
//! # }
//! ```
//!
//! # Services and the invariant
//!
//! A [`Service`] is one side of a move: directories named by a [`DirId`]
//! (each maps to a root on its host), files named by a [`RelPath`] beneath
//! them. Every path is validated before any filesystem call, and a
//! [`LocalStore`] resolves it without following symlinks, so nothing outside
//! a root is ever touched. Writes only go to a partial file, `.NAME.part`,
//! which becomes `NAME` by an fsync and an atomic rename.
//!
//! [`Move`] (or [`move_files`]) moves each file in this order and never
//! another: the destination's partial file is brought to the source's
//! content (only what differs is sent); its digest (BLAKE3, or SHA-256 when a side takes only that; see
//! [`DigestAlgorithm`]) is checked against the source's; it is fsynced and renamed; only then is the source deleted, if
//! it has not changed meanwhile. A failure at any step before the last
//! leaves the source untouched: at every instant one complete, verified
//! copy of each file exists. A move interrupted (or failed) is resumed by
//! running it again.
//!
//! # Runtime
//!
//! Everything here is async and needs a [Tokio](https://tokio.rs) runtime,
//! either flavour: a multi-thread runtime, or a current-thread one (the
//! examples in these docs use one). A [`LocalStore`] does its filesystem
//! work on Tokio's blocking pool, and hashing of large files in tasks of its
//! own, so the runtime must have its blocking pool (every runtime built by
//! `#[tokio::main]` or `tokio::runtime::Builder` has). Calls must be made
//! from within the runtime (`Runtime::block_on`, or a task of it).
//!
//! # Progress, stopping and the summary
//!
//! A move reports to a [`Progress`] (every method but
//! [`Progress::file`] has a default that does nothing; [`NoProgress`]
//! reports nothing). It is stopped through a [`Stop`]: [`Stop::soft`] starts
//! no new file and lets those in flight finish, [`Stop::hard`] interrupts
//! them too (their partial files are resumed by the next run). Dropping the
//! future of a move also stops it where it is, safely, but counts nothing.
//! The [`MoveSummary`] says how many files moved, failed or were
//! interrupted, and lists each [`Failure`].
//!
//! # Errors
//!
//! A move fails as a whole ([`MoveError`]) only when the two sides cannot
//! be compared: a side does not serve a directory, one is read-only, the two
//! overlap, or an `info` call fails. A file that fails is reported and
//! recorded, and the others go on. The error of a call is a
//! [`ServiceError`] ([`StoreError`] for a [`LocalStore`]); each maps to an
//! [`ErrorCode`], named like the gRPC status codes, which is what a daemon
//! sends and what tells a retry worth making (`Unavailable`, `Aborted`,
//! `ResourceExhausted`) from one that fails again (`FailedPrecondition`,
//! `InvalidArgument`, `NotFound`). [`ErrorChain`] prints an error with its
//! causes on one line.
//!
//! # Wrapping a service
//!
//! To add behaviour to a service (a rate limit, a fault, a count), wrap it
//! in [`Wrapped`] with a [`Filter`]: it forwards every method of the trait
//! to the inner service and lets the filter see each [`Call`] and the data
//! going in and out; [`Throttle`] is such a filter. A wrapper written by
//! hand must forward every method, the provided ones included:
//! [`Service::read_hashed`], [`Service::read_files`],
//! [`Service::write_files`] and [`Service::delete_files`] have per-file
//! defaults (one `read`, `write_file` or `delete` per file) that still work
//! but lose what the inner service does better (hashing as it reads, one
//! directory fsync per batch). The other methods are required.
//!
//! # Throttling
//!
//! A [`SendLimit`] is a byte rate shared by whatever it slows and changeable
//! while they run; [`ThrottledService`] holds the data written into a
//! service to it, which is how a move between two local directories is
//! throttled; realize-net wraps its sockets with the same limit.
//!
//! # Metrics and globals
//!
//! The move and the store count what they do (files moved, failed and
//! interrupted, bytes moved and saved by deltas, bytes written, files
//! finished and deleted) with OpenTelemetry instruments made from the
//! `Meter` the program passes ([`Move::meter`], [`LocalStore::with_meter`],
//! [`MoveOptions::meter`]), or else from the global meter provider,
//! `opentelemetry::global::meter("realize")`. That provider is a no-op
//! unless the program installs one, so an embedder that does nothing
//! records nothing and pays almost nothing. This crate
//! installs no global subscriber, provider or signal handler: it logs
//! through `tracing`, to whatever subscriber the program installed.
//!
//! This crate never opens a socket or sees a protobuf type.

#![warn(missing_docs)]

mod chunks;
mod delta;
mod digest;
mod error;
mod metrics;
mod mover;
mod path;
mod progress;
mod service;
mod stop;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod throttle;

pub use digest::{Digest, DigestAlgorithm, Hasher, UnknownDigest};
pub use error::{ErrorChain, ErrorCode, MoveError, ServiceError, Side, StoreError};
pub use mover::{
    Failure, FilterRules, InvalidRule, Move, MoveOptions, MoveSummary, Plan, Planned, Rule,
    Subtree, check_move, move_files,
};
pub use path::{DirId, InvalidDirId, InvalidPath, RelPath, partial_target};
pub use progress::{FileProgress, NoProgress, Phase, Progress};
pub use service::{
    ByteRange, ByteStream, Call, DirInfo, Entry, EntryStream, ExpectedHash, FileKind, FileStamp,
    Filter, HashResult, MAX_WHOLE_FILE, Method, Service, ServiceInfo, WholeFile, Wrapped,
};
pub use stop::Stop;
pub use store::{LocalStore, PathLocks, overlapping_roots};
pub use throttle::{
    MAX_RATE, RateError, SendLimit, Throttle, Throttled, ThrottledService, Traffic, check_rate,
    parse_rate,
};

/// What one call of a [`LocalStore`] holds in memory at most, for a server
/// that budgets the memory of its callers (realize-daemon does).
pub mod limits {
    pub use crate::chunks::CHUNK_SIZE;
    pub use crate::delta::{MAX_BLOCK_SIZE, MAX_RANGE, MIN_BLOCK_SIZE, max_delta_len};
    pub use crate::store::{HASH_BUFFERED, READ_BUFFERED, WRITE_BUFFERED_CHUNKS};
}

/// The version every realize binary and daemon reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
