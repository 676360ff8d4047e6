//! The client-streaming requests, Write and ApplyDelta: a header first,
//! then data (and for a whole-file Write, the digest it must have).

use bytes::Bytes;
use realize_core::{ByteRange, Digest, DigestAlgorithm, DirId, RelPath};

use super::required_range;
use crate::values::{algorithm_value, digest, digest_algorithm, target};
use crate::{DecodeError, pb};

use pb::apply_delta_request::Message as DeltaMessage;
use pb::write_request::Message as WriteMessage;

/// The largest data chunk a Write or ApplyDelta may carry (SPEC §4: chunks
/// are 64 KiB to 1 MiB); the daemon's `max_message_size` bounds it too,
/// this says what the protocol means.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// The message type of a client stream whose first message is its header.
pub trait ClientStream: Sized {
    /// The header, validated.
    type Header;
    /// The header this first message is, or why it is refused.
    fn into_header(self) -> Result<Self::Header, DecodeError>;
}

/// Write: data at `offset` of the partial file, which ends `file_size` long.
/// A whole-file write starts at 0 and ends with the file's digest, taken
/// with the algorithm `whole_file` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteHeader {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// The offset given.
    pub offset: u64,
    /// The size the file was given.
    pub file_size: u64,
    /// With an algorithm: the data is the whole file, hashed with it as
    /// written and finished at its end.
    pub whole_file: Option<DigestAlgorithm>,
}

/// What follows a Write's header: data, then for a whole-file write the
/// digest the file must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WritePiece {
    /// Bytes of the file, in order.
    Data(Bytes),
    /// The digest the whole file must have: the last message.
    Finish(Digest),
}

/// ApplyDelta: a delta from Diff, applied to a range of the working copy,
/// which ends `file_size` long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyDeltaHeader {
    /// The directory.
    pub dir: DirId,
    /// The path.
    pub path: RelPath,
    /// The byte range.
    pub range: ByteRange,
    /// The size the file was given.
    pub file_size: u64,
}

impl TryFrom<pb::WriteHeader> for WriteHeader {
    type Error = DecodeError;
    fn try_from(m: pb::WriteHeader) -> Result<Self, DecodeError> {
        let (dir, path) = target(&m.dir, &m.path)?;
        if m.whole_file && m.offset != 0 {
            return Err(DecodeError::WholeFileOffset {
                dir,
                path,
                offset: m.offset,
            });
        }
        let whole_file = match m.whole_file {
            true => Some(digest_algorithm("digest_algorithm", m.digest_algorithm)?),
            false => None,
        };
        Ok(WriteHeader {
            dir,
            path,
            offset: m.offset,
            file_size: m.file_size,
            whole_file,
        })
    }
}

impl From<WriteHeader> for pb::WriteRequest {
    fn from(h: WriteHeader) -> Self {
        WriteMessage::Header(pb::WriteHeader {
            dir: h.dir.to_string(),
            path: h.path.to_string(),
            offset: h.offset,
            file_size: h.file_size,
            whole_file: h.whole_file.is_some(),
            digest_algorithm: h.whole_file.map(algorithm_value).unwrap_or_default(),
        })
        .into()
    }
}

impl From<WritePiece> for pb::WriteRequest {
    fn from(piece: WritePiece) -> Self {
        match piece {
            WritePiece::Data(chunk) => WriteMessage::Data(chunk),
            WritePiece::Finish(hash) => WriteMessage::Finish(pb::WriteFinish {
                digest: Some(hash.into()),
            }),
        }
        .into()
    }
}

impl pb::WriteRequest {
    /// A message after the header of a Write that is not whole-file: data.
    pub fn into_data(self, header: &WriteHeader) -> Result<Bytes, DecodeError> {
        let (dir, path) = (&header.dir, &header.path);
        match self.message {
            Some(WriteMessage::Data(chunk)) => chunk_of(dir, path, chunk),
            _ => Err(unexpected(dir, path, "data")),
        }
    }

    /// A message after the header of a whole-file Write: data, or its finish.
    pub fn into_piece(self, header: &WriteHeader) -> Result<WritePiece, DecodeError> {
        let (dir, path) = (&header.dir, &header.path);
        match self.message {
            Some(WriteMessage::Data(chunk)) => chunk_of(dir, path, chunk).map(WritePiece::Data),
            Some(WriteMessage::Finish(finish)) => {
                let digest = digest(dir, path, finish.digest)?;
                if Some(digest.algorithm) != header.whole_file {
                    return Err(DecodeError::Invalid {
                        field: "finish.digest.algorithm",
                        reason: format!(
                            "{} is not the header's digest_algorithm",
                            digest.algorithm
                        ),
                    });
                }
                Ok(WritePiece::Finish(digest))
            }
            _ => Err(unexpected(dir, path, "data or finish")),
        }
    }
}

impl TryFrom<pb::ApplyDeltaHeader> for ApplyDeltaHeader {
    type Error = DecodeError;
    fn try_from(m: pb::ApplyDeltaHeader) -> Result<Self, DecodeError> {
        let (dir, path) = target(&m.dir, &m.path)?;
        let range = required_range(m.range)?;
        let file_size = m.file_size;
        Ok(ApplyDeltaHeader {
            dir,
            path,
            range,
            file_size,
        })
    }
}

impl From<ApplyDeltaHeader> for pb::ApplyDeltaRequest {
    fn from(h: ApplyDeltaHeader) -> Self {
        DeltaMessage::Header(pb::ApplyDeltaHeader {
            dir: h.dir.to_string(),
            path: h.path.to_string(),
            range: Some(h.range.into()),
            file_size: h.file_size,
        })
        .into()
    }
}

/// A message of delta bytes.
impl From<Bytes> for pb::ApplyDeltaRequest {
    fn from(delta: Bytes) -> Self {
        DeltaMessage::Delta(delta).into()
    }
}

impl pb::ApplyDeltaRequest {
    /// A message after `header`: delta bytes.
    pub fn into_delta(self, header: &ApplyDeltaHeader) -> Result<Bytes, DecodeError> {
        match self.message {
            Some(DeltaMessage::Delta(chunk)) => chunk_of(&header.dir, &header.path, chunk),
            _ => Err(unexpected(&header.dir, &header.path, "data")),
        }
    }
}

impl From<WriteMessage> for pb::WriteRequest {
    fn from(message: WriteMessage) -> Self {
        pb::WriteRequest {
            message: Some(message),
        }
    }
}

impl From<DeltaMessage> for pb::ApplyDeltaRequest {
    fn from(message: DeltaMessage) -> Self {
        pb::ApplyDeltaRequest {
            message: Some(message),
        }
    }
}

impl ClientStream for pb::WriteRequest {
    type Header = WriteHeader;
    fn into_header(self) -> Result<WriteHeader, DecodeError> {
        match self.message {
            Some(WriteMessage::Header(header)) => header.try_into(),
            _ => Err(DecodeError::NoHeader),
        }
    }
}

impl ClientStream for pb::ApplyDeltaRequest {
    type Header = ApplyDeltaHeader;
    fn into_header(self) -> Result<ApplyDeltaHeader, DecodeError> {
        match self.message {
            Some(DeltaMessage::Header(header)) => header.try_into(),
            _ => Err(DecodeError::NoHeader),
        }
    }
}

/// A chunk of a stream's data, at most [`MAX_CHUNK`] bytes.
fn chunk_of(dir: &DirId, path: &RelPath, chunk: Bytes) -> Result<Bytes, DecodeError> {
    if chunk.len() > MAX_CHUNK {
        return Err(DecodeError::ChunkTooLarge {
            dir: dir.clone(),
            path: path.clone(),
            len: chunk.len(),
        });
    }
    Ok(chunk)
}

fn unexpected(dir: &DirId, path: &RelPath, expected: &'static str) -> DecodeError {
    DecodeError::Unexpected {
        dir: dir.clone(),
        path: path.clone(),
        expected,
    }
}
