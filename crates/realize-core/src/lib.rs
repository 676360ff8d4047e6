//! realize-core: the domain of realize, with no network and no protobuf.
//!
//! It holds the rules that keep files safe: path validation ([`path`]), the
//! directory store with its partial and final files ([`store`]), digests
//! ([`digest`]) and rsync-style deltas ([`delta`]), the [`Service`] trait
//! the move algorithm talks to, the move algorithm itself ([`mover`]) and
//! what it reports while it runs ([`progress`]).
//!
//! This crate must never open a socket or see a protobuf type: a remote
//! daemon reaches the algorithm through realize-net's implementation of
//! [`Service`], and a local path through [`LocalStore`].
//!
//! Start reading at [`mover::move_files`].

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

pub use digest::Sha256Hash;
pub use error::{ErrorChain, ErrorCode, MoveError, ServiceError, Side, StoreError};
pub use mover::{Failure, Move, MoveOptions, MoveSummary, check_distinct, move_files};
pub use path::{DirId, InvalidDirId, InvalidPath, RelPath, partial_target};
pub use progress::{FileProgress, NoProgress, Phase, Progress};
pub use service::{
    ByteRange, ByteStream, Call, DirInfo, Entry, EntryStream, ExpectedHash, FileKind, FileStamp,
    Filter, HashResult, MAX_WHOLE_FILE, Method, Service, ServiceInfo, WholeFile, Wrapped,
};
pub use stop::Stop;
pub use store::{LocalStore, PathLocks, overlapping_roots};

/// What one call of a [`LocalStore`] holds in memory at most, for a server
/// that budgets the memory of its callers (realize-daemon does).
pub mod limits {
    pub use crate::chunks::CHUNK_SIZE;
    pub use crate::delta::{MAX_BLOCK_SIZE, MAX_RANGE, MIN_BLOCK_SIZE, max_delta_len};
    pub use crate::store::{HASH_BUFFERED, READ_BUFFERED, WRITE_BUFFERED_CHUNKS};
}

/// The version every realize binary and daemon reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
