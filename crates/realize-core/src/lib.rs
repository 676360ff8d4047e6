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

mod chunks;
pub mod delta;
pub mod digest;
pub mod error;
mod metrics;
pub mod mover;
pub mod path;
pub mod progress;
pub mod service;
pub mod stop;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use digest::Sha256Hash;
pub use error::{ErrorChain, ErrorCode, MoveError, ServiceError, Side, StoreError};
pub use mover::{
    FilterRules, InvalidRule, MoveOptions, MoveSummary, Plan, Planned, Rule, Subtree,
    check_distinct, move_files,
};
pub use path::{DirId, RelPath};
pub use progress::{FileProgress, NoProgress, Phase, Progress};
pub use service::{
    ByteRange, ByteStream, Call, DirInfo, Entry, EntryStream, ExpectedHash, FileKind, FileStamp,
    Filter, HashResult, MAX_WHOLE_FILE, Method, Service, ServiceInfo, WholeFile, Wrapped,
};
pub use stop::Stop;
pub use store::{LocalStore, PathLocks};

/// The version every realize binary and daemon reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
