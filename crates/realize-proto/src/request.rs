//! Requests as the daemon serves them and the client makes them: each
//! validated from its message (`TryFrom<pb::…>`, failing with
//! [`DecodeError`]) and made into it (`From<…> for pb::…`).

use bytes::Bytes;
use realize_core::{ByteRange, Digest, DigestAlgorithm, DirId, FileKind, FileStamp, RelPath};

use crate::values::{algorithm_value, digest, digest_algorithm, dir_id, file_kind, target};
use crate::{DecodeError, pb};

mod batch;
mod stream;

pub use batch::{FileRefs, Files, HashedFiles, MAX_FILES_PER_CALL, Named, ReadFiles, WriteFile};
pub use stream::{ApplyDeltaHeader, ClientStream, MAX_CHUNK, WriteHeader, WritePiece};

/// A range the request must have.
fn required_range(range: Option<pb::ByteRange>) -> Result<ByteRange, DecodeError> {
    range
        .map(ByteRange::from)
        .ok_or(DecodeError::Missing("range"))
}

/// List: the files of `dir`, or of its subtree `prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List {
    /// The directory.
    pub dir: DirId,
    /// Only the subtree below this path; `None`: the whole directory.
    pub prefix: Option<RelPath>,
    /// Whether partial files are listed too.
    pub include_partial: bool,
}

impl TryFrom<pb::ListRequest> for List {
    type Error = DecodeError;
    fn try_from(m: pb::ListRequest) -> Result<Self, DecodeError> {
        let (dir, prefix) = match m.prefix.as_str() {
            "" => (dir_id(&m.dir)?, None),
            prefix => {
                let (dir, prefix) = target(&m.dir, prefix)?;
                (dir, Some(prefix))
            }
        };
        Ok(List {
            dir,
            prefix,
            include_partial: m.include_partial,
        })
    }
}

impl From<List> for pb::ListRequest {
    fn from(r: List) -> Self {
        pb::ListRequest {
            dir: r.dir.to_string(),
            include_partial: r.include_partial,
            prefix: r.prefix.map(|p| p.to_string()).unwrap_or_default(),
        }
    }
}

/// Read: bytes of a final file, from `offset`, up to its end without a `length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// The offset given.
    pub offset: u64,
    /// Bytes to read at most; `None`: to the end.
    pub length: Option<u64>,
    /// The stamp the file must still have, if any.
    pub if_stamp: Option<FileStamp>,
}

impl TryFrom<pb::ReadRequest> for Read {
    type Error = DecodeError;
    fn try_from(m: pb::ReadRequest) -> Result<Self, DecodeError> {
        let (dir, path) = target(&m.dir, &m.path)?;
        Ok(Read {
            dir,
            path,
            offset: m.offset,
            length: m.length,
            if_stamp: m.if_stamp.map(Into::into),
        })
    }
}

impl From<Read> for pb::ReadRequest {
    fn from(r: Read) -> Self {
        pb::ReadRequest {
            dir: r.dir.to_string(),
            path: r.path.to_string(),
            offset: r.offset,
            length: r.length,
            if_stamp: r.if_stamp.map(Into::into),
        }
    }
}

/// Signature: the rsync signature of a range of the working copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// The byte range.
    pub range: ByteRange,
    /// rsync block size.
    pub block_size: u32,
}

/// Diff: the delta that turns the signed bytes into a range of the final file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// The byte range.
    pub range: ByteRange,
    /// The signature of the bytes the destination has.
    pub signature: Bytes,
}

/// Both ways for the requests about a range of a file (which they must
/// name) with one field more, taken as it is.
macro_rules! ranged_request {
    ($($request:ident($message:ident).$field:ident),*) => {$(
        impl TryFrom<pb::$message> for $request {
            type Error = DecodeError;
            fn try_from(m: pb::$message) -> Result<Self, DecodeError> {
                let (dir, path) = target(&m.dir, &m.path)?;
                let range = required_range(m.range)?;
                Ok($request { dir, path, range, $field: m.$field })
            }
        }

        impl From<$request> for pb::$message {
            fn from(r: $request) -> Self {
                pb::$message {
                    dir: r.dir.to_string(),
                    path: r.path.to_string(),
                    range: Some(r.range.into()),
                    $field: r.$field,
                }
            }
        }
    )*};
}

ranged_request!(
    Signature(SignatureRequest).block_size,
    Diff(DiffRequest).signature
);

/// Hash: the digest of one form of a file, or of a range of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hash {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// Which form of the file.
    pub kind: FileKind,
    /// The byte range.
    pub range: Option<ByteRange>,
    /// The hash to take.
    pub algorithm: DigestAlgorithm,
}

impl TryFrom<pb::HashRequest> for Hash {
    type Error = DecodeError;
    fn try_from(m: pb::HashRequest) -> Result<Self, DecodeError> {
        let (dir, path) = target(&m.dir, &m.path)?;
        Ok(Hash {
            dir,
            path,
            kind: file_kind(m.kind)?,
            range: m.range.map(ByteRange::from),
            algorithm: digest_algorithm("algorithm", m.algorithm)?,
        })
    }
}

impl From<Hash> for pb::HashRequest {
    fn from(r: Hash) -> Self {
        pb::HashRequest {
            dir: r.dir.to_string(),
            path: r.path.to_string(),
            range: r.range.map(Into::into),
            kind: pb::FileKind::from(r.kind).into(),
            algorithm: algorithm_value(r.algorithm),
        }
    }
}

/// Finish: the partial file fsynced and renamed, checked first against the
/// digest the caller verified, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// The digest the file must have, if checked before finishing.
    pub verified: Option<Digest>,
}

impl TryFrom<pb::FinishRequest> for Finish {
    type Error = DecodeError;
    fn try_from(m: pb::FinishRequest) -> Result<Self, DecodeError> {
        let (dir, path) = target(&m.dir, &m.path)?;
        if !m.legacy_sha256.is_empty() {
            return Err(DecodeError::Invalid {
                field: "legacy_sha256",
                reason: "a client older than 0.1.0 sends its digest here: upgrade it".into(),
            });
        }
        let verified = match m.digest {
            None => None,
            Some(d) => Some(digest(&dir, &path, Some(d))?),
        };
        Ok(Finish {
            dir,
            path,
            verified,
        })
    }
}

impl From<Finish> for pb::FinishRequest {
    fn from(r: Finish) -> Self {
        pb::FinishRequest {
            dir: r.dir.to_string(),
            path: r.path.to_string(),
            digest: r.verified.map(Into::into),
            legacy_sha256: Default::default(),
        }
    }
}

/// Delete: both forms of a file, the final one only if it still has `if_stamp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// The stamp the file must still have, if any.
    pub if_stamp: Option<FileStamp>,
}

impl TryFrom<pb::DeleteRequest> for Delete {
    type Error = DecodeError;
    fn try_from(m: pb::DeleteRequest) -> Result<Self, DecodeError> {
        let (dir, path) = target(&m.dir, &m.path)?;
        Ok(Delete {
            dir,
            path,
            if_stamp: m.if_stamp.map(Into::into),
        })
    }
}

impl From<Delete> for pb::DeleteRequest {
    fn from(r: Delete) -> Self {
        pb::DeleteRequest {
            dir: r.dir.to_string(),
            path: r.path.to_string(),
            if_stamp: r.if_stamp.map(Into::into),
        }
    }
}

/// Info: the daemon's version and the directories the caller may access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info;

impl From<pb::InfoRequest> for Info {
    fn from(_: pb::InfoRequest) -> Self {
        Info
    }
}

impl From<Info> for pb::InfoRequest {
    fn from(_: Info) -> Self {
        pb::InfoRequest {}
    }
}

/// Configure: the limit on what the daemon sends on this connection
/// (`None`: no limit). The daemon checks the rate against its own bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Configure {
    /// Bytes per second; `None`: no limit.
    pub send_limit: Option<u64>,
}

impl From<pb::ConfigureRequest> for Configure {
    fn from(m: pb::ConfigureRequest) -> Self {
        Configure {
            send_limit: m.send_limit,
        }
    }
}

impl From<Configure> for pb::ConfigureRequest {
    fn from(r: Configure) -> Self {
        pb::ConfigureRequest {
            send_limit: r.send_limit,
        }
    }
}
