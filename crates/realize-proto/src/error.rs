//! [`DecodeError`], the one error of a message that breaks the contract.

use realize_core::{DirId, RelPath};
use realize_core::{InvalidDirId, InvalidPath};

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
    /// A directory id.
    DirId(#[from] InvalidDirId),
    /// A path in an answer.
    #[error(transparent)]
    Path(#[from] InvalidPath),
    /// A path in a request, said with its directory.
    #[error("{dir}: {source}")]
    PathIn {
        /// The directory.
        dir: DirId,
        #[source]
        /// The cause.
        source: InvalidPath,
    },
    #[error("missing field {0}")]
    /// A required field is absent.
    Missing(&'static str),
    #[error("invalid field {field}: {reason}")]
    /// A field has a value the contract refuses.
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    #[error("{dir}/{path}: a digest must be 32 bytes, got {len}")]
    /// A digest in a request that is not 32 bytes.
    Digest {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
        /// The length found.
        len: usize,
    },
    /// A digest in an answer of the daemon.
    #[error("{dir}/{path}: a digest of {len} bytes")]
    AnswerDigest {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
        /// The length found.
        len: usize,
    },
    #[error("{dir}/{path}: a whole-file write starts at offset 0, not {offset}")]
    /// A whole-file write that does not start at offset 0.
    WholeFileOffset {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
        /// The offset given.
        offset: u64,
    },
    #[error("{dir}: {count} files in one call, at most {MAX_FILES_PER_CALL}")]
    /// A batch call naming too many files.
    TooManyFiles {
        /// The directory.
        dir: DirId,
        /// How many files it named.
        count: usize,
    },
    #[error("{dir}/{path}: no stamp")]
    /// A file of a batch call without its stamp.
    NoStamp {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
    },
    #[error("first message must be a header")]
    /// A client stream whose first message is not its header.
    NoHeader,
    #[error("empty request stream")]
    /// A client stream without any message.
    EmptyStream,
    #[error("{dir}/{path}: expected {expected} after the header")]
    /// A message of the wrong kind after a stream's header.
    Unexpected {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
        /// What was expected instead.
        expected: &'static str,
    },
    #[error("{dir}/{path}: data chunk of {len} bytes is larger than {MAX_CHUNK} bytes")]
    /// A data message larger than [`crate::request::MAX_CHUNK`].
    ChunkTooLarge {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
        /// The length found.
        len: usize,
    },
    /// A whole file's data longer than the size it was given.
    #[error("{dir}/{path}: data goes past the file size {file_size}")]
    PastSize {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
        /// The size the file was given.
        file_size: u64,
    },
    /// A whole file's data shorter than the size it was given.
    #[error("{dir}/{path}: data ended after {len} of the file's {file_size} bytes")]
    Short {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
        /// The length found.
        len: u64,
        /// The size the file was given.
        file_size: u64,
    },
    /// A whole file whose data ended without its SHA-256.
    #[error("{dir}/{path}: the data ended without the SHA-256 to check it against: not finished")]
    NoDigest {
        /// The directory.
        dir: DirId,
        /// The path.
        path: RelPath,
    },
}

/// A conversion that cannot fail is a decoding that cannot fail, so that
/// one bound (`DecodeError: From<T::Error>`) covers both.
impl From<std::convert::Infallible> for DecodeError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
