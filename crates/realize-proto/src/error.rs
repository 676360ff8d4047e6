//! [`DecodeError`], the one error of a message that breaks the contract.

use realize_core::{InvalidDirId, InvalidPath};
use realize_core::{DirId, RelPath};

use crate::request::{MAX_CHUNK, MAX_FILES_PER_CALL};

/// A message that breaks the contract, or a request about to become one.
///
/// Sent by a client, it is refused with InvalidArgument and this message
/// ([`From<DecodeError> for tonic::Status`](crate::status)); sent by a
/// daemon, it is a protocol error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    DirId(#[from] InvalidDirId),
    /// A path in an answer.
    #[error(transparent)]
    Path(#[from] InvalidPath),
    /// A path in a request, said with its directory.
    #[error("{dir}: {source}")]
    PathIn {
        dir: DirId,
        #[source]
        source: InvalidPath,
    },
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{dir}/{path}: sha256 must be 32 bytes, got {len}")]
    Digest {
        dir: DirId,
        path: RelPath,
        len: usize,
    },
    /// A digest in an answer of the daemon.
    #[error("{dir}/{path}: SHA-256 of {len} bytes")]
    AnswerDigest {
        dir: DirId,
        path: RelPath,
        len: usize,
    },
    #[error("{dir}/{path}: a whole-file write starts at offset 0, not {offset}")]
    WholeFileOffset {
        dir: DirId,
        path: RelPath,
        offset: u64,
    },
    #[error("{dir}: {count} files in one call, at most {MAX_FILES_PER_CALL}")]
    TooManyFiles { dir: DirId, count: usize },
    #[error("{dir}/{path}: no stamp")]
    NoStamp { dir: DirId, path: RelPath },
    #[error("first message must be a header")]
    NoHeader,
    #[error("empty request stream")]
    EmptyStream,
    #[error("{dir}/{path}: expected {expected} after the header")]
    Unexpected {
        dir: DirId,
        path: RelPath,
        expected: &'static str,
    },
    #[error("{dir}/{path}: data chunk of {len} bytes is larger than {MAX_CHUNK} bytes")]
    ChunkTooLarge {
        dir: DirId,
        path: RelPath,
        len: usize,
    },
    /// A whole file's data longer than the size it was given.
    #[error("{dir}/{path}: data goes past the file size {file_size}")]
    PastSize {
        dir: DirId,
        path: RelPath,
        file_size: u64,
    },
    /// A whole file's data shorter than the size it was given.
    #[error("{dir}/{path}: data ended after {len} of the file's {file_size} bytes")]
    Short {
        dir: DirId,
        path: RelPath,
        len: u64,
        file_size: u64,
    },
    /// A whole file whose data ended without its SHA-256.
    #[error("{dir}/{path}: the data ended without the SHA-256 to check it against: not finished")]
    NoDigest { dir: DirId, path: RelPath },
}

/// A conversion that cannot fail is a decoding that cannot fail, so that
/// one bound (`DecodeError: From<T::Error>`) covers both.
impl From<std::convert::Infallible> for DecodeError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
