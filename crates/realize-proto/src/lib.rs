//! realize-proto: the generated realize.v1 gRPC code and its conversions to
//! realize-core types; nothing else.
//!
//! Generated types are reached through [`pb`], never glob-imported, so the
//! wire layer stays visible wherever it is used. Conversions from the wire
//! validate every field (directory ids, paths, hashes) and fail with
//! [`WireError`], which maps to InvalidArgument.

/// The generated realize.v1 messages, client and server.
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations)]
    tonic::include_proto!("realize.v1");
}

use realize_core::ErrorChain;
use realize_core::path::{InvalidDirId, InvalidPath};
use realize_core::{
    ByteRange, DirId, DirInfo, Entry, ErrorCode, FileKind, FileStamp, HashResult, RelPath,
    ServiceError, ServiceInfo, Sha256Hash,
};

/// A message that does not satisfy the contract.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error(transparent)]
    DirId(#[from] InvalidDirId),
    #[error(transparent)]
    Path(#[from] InvalidPath),
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub fn dir_id(dir: &str) -> Result<DirId, WireError> {
    Ok(DirId::new(dir)?)
}

pub fn rel_path(path: &str) -> Result<RelPath, WireError> {
    Ok(RelPath::new(path)?)
}

impl From<ByteRange> for pb::ByteRange {
    fn from(r: ByteRange) -> Self {
        pb::ByteRange {
            start: r.start,
            end: r.end,
        }
    }
}

impl From<pb::ByteRange> for ByteRange {
    fn from(r: pb::ByteRange) -> Self {
        ByteRange::new(r.start, r.end)
    }
}

impl From<FileKind> for pb::FileKind {
    fn from(kind: FileKind) -> Self {
        match kind {
            FileKind::Final => pb::FileKind::Final,
            FileKind::Partial => pb::FileKind::Partial,
        }
    }
}

impl From<pb::FileKind> for FileKind {
    fn from(kind: pb::FileKind) -> Self {
        match kind {
            pb::FileKind::Final => FileKind::Final,
            pb::FileKind::Partial => FileKind::Partial,
        }
    }
}

/// Reads a `FileKind` enum field, rejecting unknown values.
pub fn file_kind(value: i32) -> Result<FileKind, WireError> {
    pb::FileKind::try_from(value)
        .map(FileKind::from)
        .map_err(|_| WireError::Invalid {
            field: "kind",
            reason: format!("unknown file kind {value}"),
        })
}

impl From<FileStamp> for pb::FileStamp {
    fn from(s: FileStamp) -> Self {
        pb::FileStamp {
            size: s.size,
            mtime_unix_nanos: s.mtime_unix_nanos,
            inode: s.inode,
        }
    }
}

impl From<pb::FileStamp> for FileStamp {
    fn from(s: pb::FileStamp) -> Self {
        FileStamp {
            size: s.size,
            mtime_unix_nanos: s.mtime_unix_nanos,
            inode: s.inode,
        }
    }
}

impl From<Entry> for pb::ListResponse {
    fn from(e: Entry) -> Self {
        pb::ListResponse {
            path: e.path.to_string(),
            kind: pb::FileKind::from(e.kind).into(),
            stamp: Some(e.stamp.into()),
        }
    }
}

impl TryFrom<pb::ListResponse> for Entry {
    type Error = WireError;
    fn try_from(e: pb::ListResponse) -> Result<Self, WireError> {
        Ok(Entry {
            path: rel_path(&e.path)?,
            kind: file_kind(e.kind)?,
            stamp: e.stamp.ok_or(WireError::Missing("stamp"))?.into(),
        })
    }
}

impl From<HashResult> for pb::HashResponse {
    fn from(h: HashResult) -> Self {
        pb::HashResponse {
            sha256: h.hash.0.to_vec().into(),
            stamp: Some(h.stamp.into()),
        }
    }
}

impl TryFrom<pb::HashResponse> for HashResult {
    type Error = WireError;
    fn try_from(h: pb::HashResponse) -> Result<Self, WireError> {
        Ok(HashResult {
            hash: Sha256Hash::from_slice(&h.sha256).ok_or(WireError::Invalid {
                field: "sha256",
                reason: format!("{} bytes instead of 32", h.sha256.len()),
            })?,
            stamp: h.stamp.ok_or(WireError::Missing("stamp"))?.into(),
        })
    }
}

impl From<ServiceInfo> for pb::InfoResponse {
    fn from(info: ServiceInfo) -> Self {
        pb::InfoResponse {
            send_limit: None,
            version: info.version,
            dirs: info
                .dirs
                .into_iter()
                .map(|d| pb::DirInfo {
                    id: d.id.to_string(),
                    identity: d.identity,
                    ancestors: d.ancestors,
                    read_only: d.read_only,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::InfoResponse> for ServiceInfo {
    type Error = WireError;
    fn try_from(info: pb::InfoResponse) -> Result<Self, WireError> {
        Ok(ServiceInfo {
            version: info.version,
            dirs: info
                .dirs
                .into_iter()
                .map(|d| {
                    Ok(DirInfo {
                        id: dir_id(&d.id)?,
                        identity: d.identity,
                        ancestors: d.ancestors,
                        read_only: d.read_only,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        })
    }
}

/// The gRPC status of a service error: its code and its whole cause chain as message.
pub fn status_from_error(error: &ServiceError) -> tonic::Status {
    tonic::Status::new(grpc_code(error.code()), ErrorChain(error).to_string())
}

/// The service error a gRPC status stands for: a status the peer sent is
/// [`ServiceError::Remote`]; one the client made up because the connection
/// failed carries its cause and becomes [`ServiceError::Transport`].
pub fn error_from_status(status: tonic::Status) -> ServiceError {
    if std::error::Error::source(&status).is_some() {
        return ServiceError::Transport {
            context: "connection to the daemon failed".to_string(),
            source: Box::new(TransportCause(status)),
        };
    }
    ServiceError::Remote {
        code: error_code(status.code()),
        message: status.message().to_string(),
    }
}

/// The service error for a client's request stream that failed as the
/// daemon read it. The status's code is kept (ResourceExhausted for a
/// message past the daemon's limit, Cancelled for a client that went away):
/// it must not become Unavailable, which clients retry, since the same
/// request would fail the same way again.
pub fn error_from_request_stream(status: tonic::Status) -> ServiceError {
    ServiceError::Remote {
        code: error_code(status.code()),
        message: status.message().to_string(),
    }
}

/// A client-side status, shown by its message and causes rather than by
/// tonic's verbose `Display`.
#[derive(Debug)]
struct TransportCause(tonic::Status);

impl std::fmt::Display for TransportCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for TransportCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::Cancelled => tonic::Code::Cancelled,
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorCode::Aborted => tonic::Code::Aborted,
        ErrorCode::OutOfRange => tonic::Code::OutOfRange,
        ErrorCode::Unimplemented => tonic::Code::Unimplemented,
        ErrorCode::Internal => tonic::Code::Internal,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::DataLoss => tonic::Code::DataLoss,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        _ => tonic::Code::Unknown,
    }
}

pub fn error_code(code: tonic::Code) -> ErrorCode {
    match code {
        tonic::Code::Cancelled => ErrorCode::Cancelled,
        tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
        tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        tonic::Code::NotFound => ErrorCode::NotFound,
        tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
        tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
        tonic::Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        tonic::Code::Aborted => ErrorCode::Aborted,
        tonic::Code::OutOfRange => ErrorCode::OutOfRange,
        tonic::Code::Unimplemented => ErrorCode::Unimplemented,
        tonic::Code::Internal => ErrorCode::Internal,
        tonic::Code::Unavailable => ErrorCode::Unavailable,
        tonic::Code::DataLoss => ErrorCode::DataLoss,
        tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
        _ => ErrorCode::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_paths_are_refused() {
        let entry = Entry {
            path: RelPath::new("a/b.txt").unwrap(),
            kind: FileKind::Partial,
            stamp: FileStamp {
                size: 3,
                mtime_unix_nanos: -5,
                inode: 7,
            },
        };
        let wire = pb::ListResponse::from(entry.clone());
        assert_eq!(Entry::try_from(wire.clone()).unwrap(), entry);
        let bad = pb::ListResponse {
            path: "../etc/passwd".into(),
            ..wire
        };
        assert!(matches!(Entry::try_from(bad), Err(WireError::Path(_))));
    }

    #[test]
    fn short_hash_is_refused() {
        let wire = pb::HashResponse {
            sha256: vec![1, 2, 3].into(),
            stamp: Some(pb::FileStamp::default()),
        };
        assert!(HashResult::try_from(wire).is_err());
    }
}
