//! Writing: data streamed into the partial file (and, for a whole file,
//! verified and finished as it ends), deltas applied, files finished by an
//! fsync and an atomic rename, and small files written whole.

use std::os::unix::fs::FileExt;

use bytes::Bytes;
use futures::StreamExt;
use rustix::fs::{Mode, OFlags, fstat, fsync, openat, renameat};

use super::read::{check_range_size, hash_file, working_bytes};
use super::{AUDIT, LocalStore, Resolved, stamp_of};
use crate::delta;
use crate::digest::{Digest, Hasher};
use crate::error::{ServiceError, StoreError};
use crate::path::{DirId, RelPath};
use crate::service::{ByteRange, ByteStream, ExpectedHash, FileKind};

/// Chunks a write may have waiting for the disk.
const WRITE_QUEUE: usize = 4;

/// Chunks of its data one write holds at most: those queued for the disk,
/// the one being written and the one waiting for room in the queue.
pub const WRITE_BUFFERED_CHUNKS: u64 = (WRITE_QUEUE + 2) as u64;

/// What the async side of a write hands its blocking writer.
enum Piece {
    Chunk(Bytes),
    /// The data has ended: set the file's size.
    End,
    /// The data, the whole file, has ended: check it has this digest, then finish it.
    Finish(Digest),
}

impl LocalStore {
    /// [`Service::write`], or with `expected` [`Service::write_file`]: one
    /// blocking task does every write, fed through a bounded queue, and for a
    /// whole file hashes the bytes as it writes them, so finishing it reads
    /// nothing back.
    ///
    /// [`Service::write`]: crate::Service::write
    /// [`Service::write_file`]: crate::Service::write_file
    pub(super) async fn write_stream(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        mut data: ByteStream,
        expected: Option<ExpectedHash>,
    ) -> Result<u64, ServiceError> {
        let invalid = |reason: String| StoreError::InvalidRequest {
            dir: dir.to_string(),
            path: path.to_string(),
            reason,
        };
        if offset > file_size {
            return Err(
                invalid(format!("offset {offset} is past the file size {file_size}")).into(),
            );
        }
        let _lock = self.exclusive(dir, path).await;
        let whole = expected.is_some();
        let algorithm = expected.as_ref().map(|expected| expected.algorithm);
        let (resolved_tx, resolved) = tokio::sync::oneshot::channel();
        let (pieces_tx, mut pieces) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let writer = self.on_blocking(dir, path, move |r| {
            // Nothing is taken from the data of a path that does not resolve.
            let _ = resolved_tx.send(());
            let Some(first) = pieces.blocking_recv() else {
                return Ok((0, false));
            };
            let past_the_end = || r.invalid(format!("data goes past the file size {file_size}"));
            // The first chunk is checked before the partial file is opened, so a
            // request whose data is refused from the start changes nothing on disk.
            if let Piece::Chunk(chunk) = &first
                && !fits(offset, chunk.len(), file_size)
            {
                return Err(past_the_end());
            }
            let file = r.open_partial_for_write(whole)?;
            let mut hasher = algorithm.map(Hasher::new);
            let mut written = 0u64;
            let mut next = Some(first);
            while let Some(piece) = next.take().or_else(|| pieces.blocking_recv()) {
                match piece {
                    Piece::Chunk(chunk) => {
                        // Within file_size, checked before this chunk's bytes were counted.
                        let at = offset + written;
                        if !fits(at, chunk.len(), file_size) {
                            return Err(past_the_end());
                        }
                        file.write_all_at(&chunk, at).map_err(r.io("write"))?;
                        if let Some(hasher) = &mut hasher {
                            hasher.update(&chunk);
                        }
                        written += chunk.len() as u64;
                    }
                    Piece::End => {
                        file.set_len(file_size).map_err(r.io("set length"))?;
                        break;
                    }
                    Piece::Finish(expected) => {
                        if written != file_size {
                            return Err(r.invalid(format!(
                                "data ended after {written} of the file's {file_size} bytes"
                            )));
                        }
                        if let Some(hasher) = hasher.take() {
                            r.check_hash(expected, hasher.finish())?;
                        }
                        let size = r.make_final(&file, FileKind::Partial)?;
                        log_finished(&r.dir, &r.path, size, Some(expected));
                        return Ok((written, true));
                    }
                }
            }
            // Without End or Finish the caller gave up: what was written stays.
            Ok((written, false))
        });
        let feeding = async move {
            if resolved.await.is_err() {
                // The writer stopped: its error says why.
                return Ok(());
            }
            while let Some(chunk) = data.next().await {
                if pieces_tx.send(Piece::Chunk(chunk?)).await.is_err() {
                    // The writer stopped: its error says why.
                    return Ok(());
                }
            }
            let last = match expected {
                None => Piece::End,
                Some(expected) => match expected.value.await {
                    Ok(hash) => Piece::Finish(hash),
                    Err(_) => {
                        return Err(ServiceError::from(invalid(
                            "the data ended without the digest to check it against: not finished"
                                .into(),
                        )));
                    }
                },
            };
            let _ = pieces_tx.send(last).await;
            Ok(())
        };
        let (fed, written) = futures::join!(feeding, writer);
        fed?;
        let (written, finished) = written?;
        let recorded = &self.inner.metrics;
        recorded.store_written.add(written, &[]);
        if finished {
            recorded.store_finished.add(1, &[]);
        }
        Ok(written)
    }

    /// [`Service::apply_delta`](crate::Service::apply_delta): the delta is
    /// checked and applied in memory, then written under the path's locks.
    pub(super) async fn patch(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        mut delta: ByteStream,
    ) -> Result<u64, ServiceError> {
        let invalid = |reason: String| StoreError::InvalidRequest {
            dir: dir.to_string(),
            path: path.to_string(),
            reason,
        };
        check_range_size(range).map_err(invalid)?;
        if range.end > file_size {
            return Err(invalid(format!(
                "range {}..{} is past the file size {file_size}",
                range.start, range.end
            ))
            .into());
        }
        // The whole delta is checked and applied in memory before anything
        // is written, so a bad delta changes nothing on disk.
        let limit = delta::max_delta_len(range.len());
        let mut buf = Vec::new();
        while let Some(chunk) = delta.next().await {
            let chunk = chunk?;
            if !fits(0, buf.len().saturating_add(chunk.len()), limit) {
                return Err(invalid(format!("delta is longer than {limit} bytes")).into());
            }
            buf.extend_from_slice(&chunk);
        }
        let _lock = self.exclusive(dir, path).await;
        let written = self
            .on_blocking(dir, path, move |r| {
                let (base, base_stamp) = working_bytes(r, range)?;
                let patched =
                    delta::apply(&base, &buf, range.len()).map_err(|e| r.invalid(e.to_string()))?;
                let file = r.open_partial_for_write(false)?;
                // The base was read before the lock was taken, so a bad delta
                // changes nothing on disk; it must still be what is patched.
                let locked = stamp_of(&file.metadata().map_err(r.io("stat"))?);
                if base_stamp.map_or(locked.size != 0, |base| base != locked) {
                    return Err(r.busy());
                }
                file.write_all_at(&patched, range.start)
                    .map_err(r.io("write"))?;
                file.set_len(file_size).map_err(r.io("set length"))?;
                Ok(patched.len() as u64)
            })
            .await?;
        self.inner.metrics.store_written.add(written, &[]);
        Ok(written)
    }

    /// [`Service::finish`](crate::Service::finish).
    pub(super) async fn finish_path(
        &self,
        dir: &DirId,
        path: &RelPath,
        expected: Option<Digest>,
    ) -> Result<(), ServiceError> {
        let _lock = self.exclusive(dir, path).await;
        let finished_partial = self
            .on_blocking(dir, path, move |r| {
                let kind = match r.working_copy()? {
                    Some(kind) => kind,
                    None => {
                        return Err(StoreError::NotFound {
                            dir: r.dir.clone(),
                            path: r.path.clone(),
                        });
                    }
                };
                // Verified and made durable through the same open file, under
                // its write lock, so what is checked is what is renamed.
                let file = r.open_blocking(kind)?;
                r.lock_for_write(&file, kind)?;
                if let Some(expected) = expected {
                    r.check_hash(
                        expected,
                        hash_file(&file, None, expected.algorithm, r)?.hash,
                    )?;
                }
                let size = r.make_final(&file, kind)?;
                if kind == FileKind::Partial {
                    log_finished(&r.dir, &r.path, size, expected);
                }
                Ok(kind == FileKind::Partial)
            })
            .await?;
        if finished_partial {
            self.inner.metrics.store_finished.add(1, &[]);
        }
        Ok(())
    }
}

impl Resolved {
    /// Opens a form for writing, never through a symlink; with `create`, the
    /// parent directories are created first if missing.
    fn open_for_write(&self, kind: FileKind, create: bool) -> Result<std::fs::File, StoreError> {
        let (parent, flags, op) = if create {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            (self.parent_dir_or_create()?, flags, "open partial file")
        } else {
            let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            (self.parent_dir()?, flags, "open final file")
        };
        openat(parent, self.name(kind), flags, Mode::from(0o666))
            .map(std::fs::File::from)
            .map_err(|e| self.io(op)(e.into()))
    }

    /// Renames one form to the other, within the parent directory.
    fn rename(&self, from: FileKind, to: FileKind, op: &'static str) -> Result<(), StoreError> {
        let parent = self.parent_dir()?;
        renameat(parent, self.name(from), parent, self.name(to)).map_err(|e| self.io(op)(e.into()))
    }

    /// Opens the partial file for writing, under its write lock
    /// ([`Resolved::lock_for_write`]), turning the final file into it (or
    /// creating it) if there is none; emptied if `truncate`, once locked.
    fn open_partial_for_write(&self, truncate: bool) -> Result<std::fs::File, StoreError> {
        let file = match self.lstat_blocking(FileKind::Partial)? {
            Some(_) => None,
            None => match self.lstat_blocking(FileKind::Final)? {
                Some(final_stamp) => {
                    // Locked before it is renamed, so a final file another
                    // writer is still finishing is not turned back.
                    let file = self.open_for_write(FileKind::Final, false)?;
                    self.lock_for_write(&file, FileKind::Final)?;
                    self.rename(
                        FileKind::Final,
                        FileKind::Partial,
                        "rename final to partial",
                    )?;
                    tracing::info!(target: AUDIT, dir = %self.dir, path = %self.path, size = final_stamp.size, "overwrite: final file turned back into partial file");
                    Some(file)
                }
                None => None,
            },
        };
        let file = match file {
            Some(file) => file,
            None => {
                // Never opened with O_TRUNC: that would empty a file another
                // writer holds before the lock could refuse this one.
                let file = self.open_for_write(FileKind::Partial, true)?;
                self.lock_for_write(&file, FileKind::Partial)?;
                file
            }
        };
        if truncate {
            file.set_len(0).map_err(self.io("truncate"))?;
        }
        Ok(file)
    }

    /// fsyncs `file`, the open `kind` form of this path, and renames it to
    /// the final name if it is the partial one.
    fn make_final(&self, file: &std::fs::File, kind: FileKind) -> Result<u64, StoreError> {
        let size = self.rename_final(file, kind)?;
        if kind == FileKind::Partial {
            self.sync_parent()?;
        }
        Ok(size)
    }

    /// [`Resolved::make_final`] but for the directory's fsync, which the
    /// caller does, once for many files.
    /// `file` must hold its write lock ([`Resolved::lock_for_write`]).
    fn rename_final(&self, file: &std::fs::File, kind: FileKind) -> Result<u64, StoreError> {
        file.sync_all().map_err(self.io("fsync"))?;
        let size = file.metadata().map_err(self.io("stat"))?.len();
        if kind == FileKind::Partial {
            // What was written and verified is what gets the final name, even
            // if another writer replaced or removed the partial file meanwhile.
            self.check_still_at(file, FileKind::Partial)?;
            self.rename(
                FileKind::Partial,
                FileKind::Final,
                "rename partial to final",
            )?;
        }
        Ok(size)
    }

    /// A rename is only durable once the directory itself is synced.
    pub(super) fn sync_parent(&self) -> Result<(), StoreError> {
        // The descriptor the rename went through is O_PATH, which fsync
        // refuses: the directory is opened again, through it, not by name.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        openat(self.parent_dir()?, ".", flags, Mode::empty())
            .and_then(fsync)
            .map_err(|e| self.io("fsync parent directory")(e.into()))
    }

    /// Device and inode of the parent directory: what tells two paths'
    /// parents apart, whatever names led to them.
    pub(super) fn parent_identity(&self) -> Result<(u64, u64), StoreError> {
        let st =
            fstat(self.parent_dir()?).map_err(|e| self.io("stat parent directory")(e.into()))?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Checks that `actual`, the digest of the file about to be finished, is `expected`.
    fn check_hash(&self, expected: Digest, actual: Digest) -> Result<(), StoreError> {
        if actual == expected {
            Ok(())
        } else {
            Err(StoreError::HashMismatch {
                dir: self.dir.clone(),
                path: self.path.clone(),
                expected,
                actual,
            })
        }
    }
}

/// Writes a whole file into a fresh partial file, checks its digest and
/// renames it; the caller syncs the directory.
pub(super) fn write_whole(r: &Resolved, data: &[u8], expected: Digest) -> Result<u64, StoreError> {
    let file = r.open_partial_for_write(true)?;
    file.write_all_at(data, 0).map_err(r.io("write"))?;
    // The bytes hashed are the bytes just written to this open file, the
    // one renamed: nothing else writes it while this store holds its lock.
    r.check_hash(expected, Digest::of(expected.algorithm, data))?;
    r.rename_final(&file, FileKind::Partial)
}

/// Whether `len` bytes written at `offset` end at or before `end`; a sum
/// that overflows does not fit (offsets and lengths come from peers).
pub(super) fn fits(offset: u64, len: usize, end: u64) -> bool {
    u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .is_some_and(|stop| stop <= end)
}

/// The audit event of a file finished (docs/logging.md).
pub(super) fn log_finished(dir: &str, path: &str, size: u64, digest: Option<Digest>) {
    let digest = digest.map(|d| d.to_string()).unwrap_or_default();
    tracing::info!(target: AUDIT, %dir, %path, size, %digest, "finished");
}
