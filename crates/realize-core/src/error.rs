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
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// An error of [`crate::LocalStore`]: every variant names the directory
/// and, where there is one, the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    InvalidDirId(#[from] InvalidDirId),
    #[error("{dir}: {source}")]
    InvalidPath {
        dir: String,
        #[source]
        source: InvalidPath,
    },
    #[error("unknown directory {dir}")]
    UnknownDir { dir: String },
    #[error("{dir}: root directory is unavailable")]
    RootUnavailable {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("{dir}/{path}: not found")]
    NotFound { dir: String, path: String },
    #[error("{dir}/{path}: not a regular file")]
    NotAFile { dir: String, path: String },
    #[error("{dir}/{path}: goes through a symlink or non-directory at {component:?}")]
    NotBeneathRoot {
        dir: String,
        path: String,
        component: String,
    },
    #[error("{dir}/{path}: range {start}..{end} is past the end of the file ({size} bytes)")]
    OutOfRange {
        dir: String,
        path: String,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("{dir}/{path}: {reason}")]
    InvalidRequest {
        dir: String,
        path: String,
        reason: String,
    },
    #[error("{dir}/{path}: file changed ({what})")]
    Changed {
        dir: String,
        path: String,
        what: &'static str,
    },
    /// Another writer holds the file's write lock: a call on another
    /// directory id for the same files, another daemon or another process.
    #[error("{dir}/{path}: being written by another client")]
    Busy { dir: String, path: String },
    #[error("{dir}/{path}: SHA-256 is {actual}, expected {expected}")]
    HashMismatch {
        dir: String,
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{dir}/{path}: {op} failed")]
    Io {
        dir: String,
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{dir}: background task failed")]
    Task {
        dir: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StoreError {
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
    Remote { code: ErrorCode, message: String },
    /// The call could not reach the remote service, or the connection broke.
    #[error("{context}")]
    Transport {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The remote service answered something that breaks the contract.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ServiceError {
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
    Source,
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
    Service {
        side: Side,
        #[source]
        source: ServiceError,
    },
    #[error("{side} does not serve directory {dir}")]
    MissingDir { side: Side, dir: DirId },
    #[error(
        "{dir}: source and destination are the same directory or one contains the other, refusing to move"
    )]
    Overlap { dir: DirId },
    #[error("{side} gives read-only access to {dir}: {consequence}, refusing to move", consequence = match side {
        Side::Source => "no file could be deleted from it",
        Side::Destination => "no file could be written to it",
    })]
    ReadOnly { side: Side, dir: DirId },
    #[error(
        "{side} cannot verify with {digest} (it supports {}), refusing to move",
        names(supported)
    )]
    UnsupportedDigest {
        side: Side,
        digest: DigestAlgorithm,
        supported: Vec<DigestAlgorithm>,
    },
    #[error(
        "no digest both sides support (source: {}; destination: {}), refusing to move",
        names(source_digests),
        names(destination_digests)
    )]
    NoCommonDigest {
        source_digests: Vec<DigestAlgorithm>,
        destination_digests: Vec<DigestAlgorithm>,
    },
    #[error(
        "destination hash {destination_hash} does not match source hash {source_hash}, source kept"
    )]
    HashMismatch {
        dir: DirId,
        path: RelPath,
        source_hash: Digest,
        destination_hash: Digest,
    },
    #[error("source changed while being moved, not deleted")]
    SourceChanged { dir: DirId, path: RelPath },
    #[error("move cancelled")]
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
