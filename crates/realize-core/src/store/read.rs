//! Reading: a file's bytes streamed out, its ranges for signatures and
//! diffs, its digest, and small files read whole.

use std::io;

use bytes::Bytes;
use futures::{StreamExt, stream};

use super::{LocalStore, Resolved, stamp_of};
use crate::chunks::{CHUNK_SIZE, chunked};
use crate::delta::{self, MAX_RANGE};
use crate::digest::{Digest, DigestAlgorithm, Hasher};
use crate::error::{ServiceError, StoreError};
use crate::path::{DirId, RelPath};
use crate::service::{ByteRange, ByteStream, FileKind, FileStamp, HashResult};

/// Buffer used while hashing.
const HASH_BUFFER: usize = 1024 * 1024;
/// Chunks a read may have ready before the caller takes them.
const READ_QUEUE: usize = 4;

/// Bytes one read holds at most, ahead of its caller: the chunks queued and
/// the one being read. What a server budgets for a Read call.
pub const READ_BUFFERED: u64 = ((READ_QUEUE + 1) * CHUNK_SIZE) as u64;
/// Bytes a Hash or a Finish with a digest holds while it reads the file.
pub const HASH_BUFFERED: u64 = HASH_BUFFER as u64;

impl LocalStore {
    /// [`Service::read`](crate::Service::read); with `hash`, the digest of
    /// what was read, taken with its algorithm, is sent there once all of it is read and the file did
    /// not change meanwhile.
    ///
    /// One blocking task opens the file and reads it all, a bounded queue
    /// ahead of the caller: a trip to the blocking pool per chunk costs more
    /// than the read itself. It hashes each chunk as it reads it, while the
    /// bytes are in this core's cache.
    pub(super) async fn read_stream(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
        hash: Option<(DigestAlgorithm, tokio::sync::oneshot::Sender<Digest>)>,
    ) -> Result<ByteStream, ServiceError> {
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (chunks_tx, chunks) = tokio::sync::mpsc::channel(READ_QUEUE);
        let producer = self.on_blocking(dir, path, move |r| {
            let file = r.open_blocking(FileKind::Final)?;
            let before = stamp_of(&file.metadata().map_err(r.io("stat"))?);
            if if_stamp.is_some_and(|stamp| stamp != before) {
                return Err(r.changed("differs from the version listed"));
            }
            let end = match length {
                Some(len) => offset.saturating_add(len),
                None => before.size.max(offset),
            };
            if end > before.size {
                return Err(r.out_of_range(ByteRange::new(offset, end), before.size));
            }
            if opened_tx.send(()).is_err() {
                return Ok(());
            }
            let (mut hasher, hash) = hash
                .map(|(algorithm, hash)| (Hasher::new(algorithm), hash))
                .unzip();
            let mut position = offset;
            while position < end {
                let want = (end - position).min(CHUNK_SIZE as u64) as usize;
                let mut buf = Vec::new();
                let chunk = match read_up_to(&file, position, &mut buf, want) {
                    Ok(()) if buf.is_empty() => Err(r.changed("shrank while being read")),
                    Ok(()) => {
                        if let Some(hasher) = &mut hasher {
                            hasher.update(&buf);
                        }
                        Ok(Bytes::from(buf))
                    }
                    Err(e) => Err(r.io("read")(e)),
                };
                let failed = chunk.is_err();
                position += chunk.as_ref().map_or(0, |c| c.len() as u64);
                if chunks_tx.blocking_send(chunk.map_err(Into::into)).is_err() || failed {
                    return Ok(());
                }
            }
            // Whoever hashes these bytes must know they are one version of the file.
            let after = file.metadata().map(|m| stamp_of(&m));
            if after.as_ref().ok() != Some(&before) {
                let _ = chunks_tx.blocking_send(Err(r.changed("modified while being read").into()));
            } else if let (Some(hash), Some(hasher)) = (hash, hasher) {
                let _ = hash.send(hasher.finish());
            }
            Ok(())
        });
        if opened.await.is_err() {
            // The producer stopped before the first chunk: its error says why.
            producer.await?;
        }
        Ok(stream::unfold(chunks, |mut chunks| async move {
            chunks.recv().await.map(|chunk| (chunk, chunks))
        })
        .boxed())
    }

    /// [`Service::signature`](crate::Service::signature) of the working copy.
    pub(super) async fn make_signature(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        block_size: u32,
    ) -> Result<Bytes, ServiceError> {
        let signature = self
            .on_blocking(dir, path, move |r| {
                check_range_size(range).map_err(|e| r.invalid(e))?;
                delta::check_block_size(block_size).map_err(|e| r.invalid(e.to_string()))?;
                let (base, _) = working_bytes(r, range)?;
                delta::signature(&base, block_size).map_err(|e| r.invalid(e.to_string()))
            })
            .await?;
        Ok(signature.into())
    }

    /// [`Service::diff`](crate::Service::diff) of the final file against a
    /// signature.
    pub(super) async fn make_diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        let delta = self
            .on_blocking(dir, path, move |r| {
                check_range_size(range).map_err(|e| r.invalid(e))?;
                let file = r.open_blocking(FileKind::Final)?;
                let size = file.metadata().map_err(r.io("stat"))?.len();
                if range.end > size {
                    return Err(r.out_of_range(range, size));
                }
                let data = read_range(&file, range, r)?;
                delta::diff(signature.to_vec(), &data).map_err(|e| r.invalid(e.to_string()))
            })
            .await?;
        Ok(chunked(delta))
    }
}

/// Reads from `offset` until `buf` holds `len` bytes or the file ends.
fn read_up_to(file: &std::fs::File, offset: u64, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    use std::io::{Read, Seek};
    buf.clear();
    buf.reserve_exact(len);
    // A File reads into the buffer's spare capacity as it is: nothing is
    // zeroed first, unlike a read into an initialised slice.
    let mut file = file;
    file.seek(io::SeekFrom::Start(offset))?;
    file.take(len as u64).read_to_end(buf)?;
    Ok(())
}

/// Digest of `range` of an open file (the whole file if `None`), and its
/// stamp; a file that changes while it is read is refused.
pub(super) fn hash_file(
    file: &std::fs::File,
    range: Option<ByteRange>,
    algorithm: DigestAlgorithm,
    r: &Resolved,
) -> Result<HashResult, StoreError> {
    let before = stamp_of(&file.metadata().map_err(r.io("stat"))?);
    let range = range.unwrap_or(ByteRange::new(0, before.size));
    if range.start > range.end {
        return Err(r.invalid("range ends before it starts"));
    }
    if range.end > before.size {
        return Err(r.out_of_range(range, before.size));
    }
    let mut hasher = Hasher::new(algorithm);
    let mut offset = range.start;
    let mut buf = Vec::with_capacity(HASH_BUFFER);
    while offset < range.end {
        let want = (range.end - offset).min(HASH_BUFFER as u64) as usize;
        read_up_to(file, offset, &mut buf, want).map_err(r.io("read"))?;
        if buf.is_empty() {
            return Err(r.changed("shrank while being hashed"));
        }
        hasher.update(&buf);
        offset += buf.len() as u64;
    }
    let after = stamp_of(&file.metadata().map_err(r.io("stat"))?);
    if before != after {
        return Err(r.changed("modified while being hashed"));
    }
    Ok(HashResult {
        hash: hasher.finish(),
        stamp: before,
    })
}

/// Reads exactly `range` of `file`, which must hold it.
fn read_range(file: &std::fs::File, range: ByteRange, r: &Resolved) -> Result<Vec<u8>, StoreError> {
    let len = usize::try_from(range.len()).map_err(|_| r.invalid("range too large"))?;
    let mut buf = Vec::new();
    read_up_to(file, range.start, &mut buf, len).map_err(r.io("read"))?;
    if buf.len() != len {
        return Err(r.changed("shrank while being read"));
    }
    Ok(buf)
}

/// The working copy's bytes in `range`, as far as it has them: what a
/// signature is made of and a delta applies to; with the stamp of the file
/// they were read from, if there is one.
pub(super) fn working_bytes(
    r: &Resolved,
    range: ByteRange,
) -> Result<(Vec<u8>, Option<FileStamp>), StoreError> {
    let Some(kind) = r.working_copy()? else {
        return Ok((Vec::new(), None));
    };
    let file = r.open_blocking(kind)?;
    let stamp = stamp_of(&file.metadata().map_err(r.io("stat"))?);
    let bytes = if range.start < stamp.size {
        read_range(
            &file,
            ByteRange::new(range.start, range.end.min(stamp.size)),
            r,
        )?
    } else {
        Vec::new()
    };
    Ok((bytes, Some(stamp)))
}

/// Why a range is refused for a signature, a diff or a delta, if it is.
pub(super) fn check_range_size(range: ByteRange) -> Result<(), String> {
    if range.start > range.end {
        return Err(format!(
            "range {}..{} ends before it starts",
            range.start, range.end
        ));
    }
    if range.len() > MAX_RANGE {
        return Err(format!(
            "range {}..{} is longer than {MAX_RANGE} bytes",
            range.start, range.end
        ));
    }
    Ok(())
}

/// Reads a whole small final file that must have `stamp`, and hashes it.
pub(super) fn read_whole(
    r: &Resolved,
    stamp: FileStamp,
    algorithm: DigestAlgorithm,
) -> Result<(Bytes, Digest), StoreError> {
    let file = r.open_blocking(FileKind::Final)?;
    let before = stamp_of(&file.metadata().map_err(r.io("stat"))?);
    if before != stamp {
        return Err(r.changed("differs from the version listed"));
    }
    let data = read_range(&file, ByteRange::new(0, stamp.size), r)?;
    let after = stamp_of(&file.metadata().map_err(r.io("stat"))?);
    if after != before {
        return Err(r.changed("modified while being read"));
    }
    let hash = Digest::of(algorithm, &data);
    Ok((Bytes::from(data), hash))
}
