//! Typed errors of the store and of services, with the status code each maps to.

use std::io;

use crate::path::{InvalidDirId, InvalidPath};

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
        expected: crate::hash::Sha256Hash,
        actual: crate::hash::Sha256Hash,
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
