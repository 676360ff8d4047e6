//! Typed errors of the store, of services and of moves, with the status
//! code each maps to, and how an error prints with its causes.

use std::io;

use crate::digest::{Digest, DigestAlgorithm};
use crate::path::{DirId, InvalidDirId, InvalidPath, RelPath};

/// The category of an error, as the gRPC status codes name them, so that
/// the transport can map errors both ways without realize-core knowing gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The operation was cancelled, by the caller or a shutdown.
    Cancelled,
    /// An error of no other category.
    Unknown,
    /// The request is malformed: a bad directory id, path, range or size.
    InvalidArgument,
    /// The deadline passed before the call completed.
    DeadlineExceeded,
    /// The directory or file does not exist.
    NotFound,
    /// What the call would create already exists.
    AlreadyExists,
    /// The caller may not do this (filesystem permissions, or a daemon's access rules).
    PermissionDenied,
    /// Out of space, quota, memory or call budget; may succeed later.
    ResourceExhausted,
    /// The files are not in the state the call needs (changed, hash mismatch, not a regular file); retrying as is fails again.
    FailedPrecondition,
    /// A conflict with another writer of the same file; worth a retry.
    Aborted,
    /// A range past the end of a file.
    OutOfRange,
    /// The service does not implement the call.
    Unimplemented,
    /// A bug or broken invariant on the side that answered.
    Internal,
    /// The service cannot be reached or its directory is unavailable; worth a retry.
    Unavailable,
    /// Data was lost or corrupted.
    DataLoss,
    /// The caller could not be authenticated.
    Unauthenticated,
}

/// An error of [`crate::LocalStore`]: every variant names the directory
/// and, where there is one, the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    /// The directory id is not valid.
    InvalidDirId(#[from] InvalidDirId),
    #[error("{dir}: {source}")]
    /// The path is not valid.
    InvalidPath {
        /// The directory id.
        dir: String,
        #[source]
        /// Why the path was refused.
        source: InvalidPath,
    },
    #[error("unknown directory {dir}")]
    /// No root is configured for this directory id.
    UnknownDir {
        /// The directory id.
        dir: String,
    },
    #[error("{dir}: root directory is unavailable")]
    /// The root of the directory cannot be opened.
    RootUnavailable {
        /// The directory id.
        dir: String,
        #[source]
        /// Why it cannot be opened.
        source: io::Error,
    },
    #[error("{dir}/{path}: not found")]
    /// The file does not exist.
    NotFound {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
    },
    #[error("{dir}/{path}: not a regular file")]
    /// The path names something other than a regular file.
    NotAFile {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
    },
    #[error("{dir}/{path}: goes through a symlink or non-directory at {component:?}")]
    /// The path goes through a symlink or something that is not a directory.
    NotBeneathRoot {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
        /// The component that is not a directory.
        component: String,
    },
    #[error("{dir}/{path}: range {start}..{end} is past the end of the file ({size} bytes)")]
    /// The range asked for goes past the end of the file.
    OutOfRange {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
        /// Size of the file.
        size: u64,
    },
    #[error("{dir}/{path}: {reason}")]
    /// The request makes no sense for this file (a size or range that cannot be).
    InvalidRequest {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
        /// What is wrong.
        reason: String,
    },
    #[error("{dir}/{path}: file changed ({what})")]
    /// The file changed while the call used it.
    Changed {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
        /// What changed.
        what: &'static str,
    },
    /// Another writer holds the file's write lock: a call on another
    /// directory id for the same files, another daemon or another process.
    #[error("{dir}/{path}: being written by another client")]
    Busy {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
    },
    #[error("{dir}/{path}: digest is {actual}, expected {expected}")]
    /// The file's digest is not the one expected: nothing was finished.
    HashMismatch {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
        /// The digest expected.
        expected: Digest,
        /// The digest of the file.
        actual: Digest,
    },
    #[error("{dir}/{path}: {op} failed")]
    /// A filesystem operation failed.
    Io {
        /// The directory id.
        dir: String,
        /// The path beneath the root.
        path: String,
        /// The operation that failed.
        op: &'static str,
        #[source]
        /// The error of the operation.
        source: io::Error,
    },
    #[error("{dir}: background task failed")]
    /// The blocking task doing the call's I/O failed (it panicked).
    Task {
        /// The directory id.
        dir: String,
        #[source]
        /// How the task failed.
        source: tokio::task::JoinError,
    },
}

impl StoreError {
    /// The category of the error, which a daemon sends as the gRPC status code.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::InvalidDirId(_)
            | StoreError::InvalidPath { .. }
            | StoreError::UnknownDir { .. }
            | StoreError::NotBeneathRoot { .. }
            | StoreError::InvalidRequest { .. } => ErrorCode::InvalidArgument,
            StoreError::NotFound { .. } => ErrorCode::NotFound,
            StoreError::NotAFile { .. }
            | StoreError::Changed { .. }
            | StoreError::HashMismatch { .. } => ErrorCode::FailedPrecondition,
            StoreError::OutOfRange { .. } => ErrorCode::OutOfRange,
            // A conflict that ends when the other writer does: worth a retry.
            StoreError::Busy { .. } => ErrorCode::Aborted,
            StoreError::RootUnavailable { .. } => ErrorCode::Unavailable,
            StoreError::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                    ErrorCode::ResourceExhausted
                }
                // A name too long for the filesystem is the caller's mistake.
                io::ErrorKind::InvalidFilename => ErrorCode::InvalidArgument,
                // A path that names a directory, or goes through a file: the
                // disk is not in the state the call needs.
                io::ErrorKind::IsADirectory
                | io::ErrorKind::NotADirectory
                | io::ErrorKind::DirectoryNotEmpty => ErrorCode::FailedPrecondition,
                _ => ErrorCode::Internal,
            },
            StoreError::Task { .. } => ErrorCode::Internal,
        }
    }
}

/// The error of a [`crate::Service`] call, local or remote.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The in-process store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The remote service answered with an error status.
    #[error("{message}")]
    Remote {
        /// The status code of the answer.
        code: ErrorCode,
        /// The message of the answer.
        message: String,
    },
    /// The call could not reach the remote service, or the connection broke.
    #[error("{context}")]
    Transport {
        /// What was being done.
        context: String,
        #[source]
        /// The transport error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The remote service answered something that breaks the contract.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ServiceError {
    /// The category of the error: the store's, the remote's, or Unavailable for a transport failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Store(e) => e.code(),
            ServiceError::Remote { code, .. } => *code,
            ServiceError::Transport { .. } => ErrorCode::Unavailable,
            ServiceError::Protocol(_) => ErrorCode::Internal,
        }
    }
}

/// Which end of a move an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The side files are moved from.
    Source,
    /// The side files are moved to.
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Why a move, or the move of one file, failed.
///
/// Errors of one file do not repeat its directory and path in their
/// message: they are always reported with them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MoveError {
    #[error("{side}")]
    /// A call to one side failed.
    Service {
        /// The side whose call failed.
        side: Side,
        #[source]
        /// The error of the call.
        source: ServiceError,
    },
    #[error("{side} does not serve directory {dir}")]
    /// A side does not serve a directory of the move.
    MissingDir {
        /// The side that lacks it.
        side: Side,
        /// The directory.
        dir: DirId,
    },
    #[error(
        "{dir}: source and destination are the same directory or one contains the other, refusing to move"
    )]
    /// The two sides serve the same directory, or one contains the other.
    Overlap {
        /// The directory.
        dir: DirId,
    },
    #[error("{side} gives read-only access to {dir}: {consequence}, refusing to move", consequence = match side {
        Side::Source => "no file could be deleted from it",
        Side::Destination => "no file could be written to it",
    })]
    /// A side gives the caller read-only access to a directory of the move.
    ReadOnly {
        /// The read-only side.
        side: Side,
        /// The directory.
        dir: DirId,
    },
    #[error(
        "{side} cannot verify with {digest} (it supports {}), refusing to move",
        names(supported)
    )]
    /// A side cannot take the digest asked for ([`MoveOptions::digest`](crate::MoveOptions::digest)).
    UnsupportedDigest {
        /// The side that refused.
        side: Side,
        /// The digest asked for.
        digest: DigestAlgorithm,
        /// The digests that side takes.
        supported: Vec<DigestAlgorithm>,
    },
    #[error(
        "no digest both sides support (source: {}; destination: {}), refusing to move",
        names(source_digests),
        names(destination_digests)
    )]
    /// The two sides have no digest in common.
    NoCommonDigest {
        /// The digests the source takes.
        source_digests: Vec<DigestAlgorithm>,
        /// The digests the destination takes.
        destination_digests: Vec<DigestAlgorithm>,
    },
    #[error(
        "destination hash {destination_hash} does not match source hash {source_hash}, source kept"
    )]
    /// The destination's digest differs from the source's: the source is kept.
    HashMismatch {
        /// The directory.
        dir: DirId,
        /// The file.
        path: RelPath,
        /// The source's digest.
        source_hash: Digest,
        /// The destination's digest.
        destination_hash: Digest,
    },
    #[error("source changed while being moved, not deleted")]
    /// The source changed while it was moved: it is not deleted.
    SourceChanged {
        /// The directory.
        dir: DirId,
        /// The file.
        path: RelPath,
    },
    #[error("move cancelled")]
    /// The move was stopped before it could compare the two sides.
    Cancelled,
}

/// `blake3, sha256`, or `none`.
fn names(digests: &[DigestAlgorithm]) -> String {
    if digests.is_empty() {
        return "none".into();
    }
    let names: Vec<&str> = digests.iter().map(|d| d.name()).collect();
    names.join(", ")
}

impl MoveError {
    pub(crate) fn source(source: ServiceError) -> Self {
        MoveError::Service {
            side: Side::Source,
            source,
        }
    }

    pub(crate) fn destination(source: ServiceError) -> Self {
        MoveError::Service {
            side: Side::Destination,
            source,
        }
    }
}

/// Displays an error and its causes on one line: `a: b: c`.
///
/// A cause that says exactly what the previous one said is skipped: an
/// `io::Error` wrapping another prints the same text twice otherwise.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if text != previous {
                write!(f, ": {text}")?;
                previous = text;
            }
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that displays as its cause, like tonic's connection errors.
    #[derive(Debug)]
    struct SaysLikeItsCause(std::io::Error);

    impl std::fmt::Display for SaysLikeItsCause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl std::error::Error for SaysLikeItsCause {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_chain_prints_each_cause_once() {
        let error = MoveError::Service {
            side: Side::Destination,
            source: ServiceError::Transport {
                context: "connection to the daemon failed".into(),
                source: Box::new(SaysLikeItsCause(std::io::Error::other("disk on fire"))),
            },
        };
        assert_eq!(
            ErrorChain(&error).to_string(),
            "destination: connection to the daemon failed: disk on fire"
        );
    }
}
