//! The `Service` trait: what the move algorithm needs from each side.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::digest::{Digest, DigestAlgorithm};
use crate::error::{ServiceError, StoreError};
use crate::path::{DirId, RelPath};

mod wrapped;

pub use wrapped::{Call, Filter, Method, Wrapped};

/// Chunks of file or delta bytes, streamed so no call holds a whole file.
pub type ByteStream = BoxStream<'static, Result<Bytes, ServiceError>>;
/// Entries of a directory listing, sorted by path.
pub type EntryStream = BoxStream<'static, Result<Entry, ServiceError>>;
/// The digest a whole file must have: its algorithm, known from the start so
/// the writer hashes with it as it writes, and its value, known only once
/// the data has streamed by (dropped unsent when the data could not be
/// vouched for).
#[derive(Debug)]
pub struct ExpectedHash {
    /// The hash the writer takes as it writes.
    pub algorithm: DigestAlgorithm,
    /// The digest, once the data has all gone by.
    pub value: tokio::sync::oneshot::Receiver<Digest>,
}

impl ExpectedHash {
    /// A digest known before the data is sent.
    pub fn known(digest: Digest) -> Self {
        let (sender, value) = tokio::sync::oneshot::channel();
        let _ = sender.send(digest);
        ExpectedHash {
            algorithm: digest.algorithm,
            value,
        }
    }
}

/// Half-open byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte of the range.
    pub end: u64,
}

impl ByteRange {
    /// The range `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        ByteRange { start, end }
    }

    /// Bytes in the range; 0 if `end` is before `start`.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which form of a file: `NAME` or `.NAME.part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The final file, `NAME`.
    Final,
    /// The partial file, `.NAME.part`, which writes go to until it is finished.
    Partial,
}

/// One version of a file: if any field changes, the file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, in nanoseconds since the Unix epoch.
    pub mtime_unix_nanos: i64,
    /// Inode number, so a file replaced by another of the same size and time is told apart.
    pub inode: u64,
}

/// A file in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The path of the file; for a partial file, that of its final form.
    pub path: RelPath,
    /// Which form of the file this is.
    pub kind: FileKind,
    /// Its version.
    pub stamp: FileStamp,
}

/// The digest of a file or range, and the file's stamp while it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashResult {
    /// Digest of the bytes read.
    pub hash: Digest,
    /// The stamp of the file while it was read; unchanged from start to end.
    pub stamp: FileStamp,
}

/// A directory a service serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirInfo {
    /// The directory id.
    pub id: DirId,
    /// Host, device and inode of the root, to detect a move onto itself.
    pub identity: String,
    /// Identities of the directories above the root, to detect a move into
    /// a directory inside the source, or out of one inside the destination.
    pub ancestors: Vec<String>,
    /// The caller may only read this directory: a move can neither finish
    /// files into it nor delete its sources.
    pub read_only: bool,
}

impl DirInfo {
    /// Whether the two roots are one directory or one is inside the other,
    /// as far as their identities tell (an unknown identity overlaps nothing).
    pub fn overlaps(&self, other: &DirInfo) -> bool {
        !self.identity.is_empty()
            && (self.identity == other.identity
                || self.ancestors.contains(&other.identity)
                || other.ancestors.contains(&self.identity))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// What a service is and serves: [`Service::info`]'s answer.
pub struct ServiceInfo {
    /// Version of realize the service runs.
    pub version: String,
    /// The directories it serves to the caller.
    pub dirs: Vec<DirInfo>,
    /// The digests this service can take and check.
    pub digests: Vec<DigestAlgorithm>,
}

/// A small file held whole in memory, with the digest of its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeFile {
    /// The path of the file.
    pub path: RelPath,
    /// Its bytes.
    pub data: Bytes,
    /// Digest of `data`.
    pub digest: Digest,
}

/// Files at most this large may be read and written whole, in batches
/// ([`Service::read_files`], [`Service::write_files`]).
pub const MAX_WHOLE_FILE: u64 = 256 * 1024;

/// One side of a move: a local store or a remote daemon.
///
/// Writes go to the partial form `.NAME.part`; the "working copy" of a path
/// is its partial file if there is one, else its final file.
///
/// A service that wraps another must forward every method, the provided
/// ones included (`read_hashed`, `read_files`, `write_files`,
/// `delete_files`): one left to its default still works, but through the
/// per-file calls, losing what the inner service does better (one
/// directory fsync per batch, hashing as it reads). Wrap with [`Wrapped`]
/// and a [`Filter`] rather than by hand: it forwards them all, and its test
/// fails when a method is added here and not to [`Method`].
#[async_trait]
pub trait Service: Send + Sync + std::fmt::Debug {
    /// The version of the service and the directories it serves, with their identities.
    async fn info(&self) -> Result<ServiceInfo, ServiceError>;

    /// Regular files under `dir`, or only under its subdirectory `prefix`,
    /// sorted by path (relative to `dir`'s root, the prefix included);
    /// partial files only if asked. A `prefix` that does not exist lists
    /// nothing; one that is not a directory is an error.
    async fn list(
        &self,
        dir: &DirId,
        prefix: Option<&RelPath>,
        include_partial: bool,
    ) -> Result<EntryStream, ServiceError>;

    /// Bytes of the final file from `offset`, up to `length` or the end.
    /// The stream fails (FailedPrecondition) if the file changes while it is
    /// read, or, with `if_stamp`, if the file opened does not have that stamp.
    async fn read(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError>;

    /// The whole final file, as [`Service::read`] with `if_stamp`, and the
    /// digest of its bytes taken with `algorithm`, sent once all of them have been read without an
    /// error (dropped unsent otherwise). By default the stream is hashed as
    /// it goes by; a store hashes what it reads as it reads it. The hash
    /// vouches for the file, not for what the caller took of the stream.
    async fn read_hashed(
        &self,
        dir: &DirId,
        path: &RelPath,
        stamp: FileStamp,
        algorithm: DigestAlgorithm,
    ) -> Result<(ByteStream, ExpectedHash), ServiceError> {
        let data = self
            .read(dir, path, 0, Some(stamp.size), Some(stamp))
            .await?;
        Ok(crate::digest::hash_stream(data, stamp.size, algorithm))
    }

    /// Writes `data` at `offset` of the partial file (turning a final file
    /// into a partial one first), then sets its size to `file_size`. An error
    /// from `data` aborts the write and is returned as is.
    async fn write(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        data: ByteStream,
    ) -> Result<u64, ServiceError>;

    /// Writes a whole file and finishes it, in one call: `data` is the file
    /// from its first byte to `file_size`, written into a fresh partial file
    /// (a final file is turned into it first) and hashed as it is written
    /// with `expected`'s algorithm. Once `data` has ended, the file is
    /// checked to have the digest `expected` resolves to, then fsynced and renamed as by
    /// [`Service::finish`]. If `expected` is dropped unsent, if `data` fails
    /// or ends short, or if the hashes differ, nothing is renamed: the
    /// partial file keeps what was written (and the hashes differing is a
    /// FailedPrecondition).
    async fn write_file(
        &self,
        dir: &DirId,
        path: &RelPath,
        file_size: u64,
        data: ByteStream,
        expected: ExpectedHash,
    ) -> Result<u64, ServiceError>;

    /// rsync signature of `range` of the working copy; whatever part of the
    /// range is missing is treated as empty.
    async fn signature(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        block_size: u32,
    ) -> Result<Bytes, ServiceError>;

    /// Delta turning the signed bytes into `range` of the final file.
    async fn diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError>;

    /// Applies a delta from [`Service::diff`] to `range` of the working copy
    /// (which becomes partial), then sets its size to `file_size`.
    async fn apply_delta(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        delta: ByteStream,
    ) -> Result<u64, ServiceError>;

    /// Digest of the given form of the file, or of a range of it.
    async fn hash(
        &self,
        dir: &DirId,
        path: &RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
        algorithm: DigestAlgorithm,
    ) -> Result<HashResult, ServiceError>;

    /// fsyncs the partial file and renames it to its final name (fsyncs an
    /// existing final file if there is no partial one). With `expected`, the
    /// file is first checked to have that digest, else nothing happens and
    /// the call fails (FailedPrecondition).
    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        expected: Option<Digest>,
    ) -> Result<(), ServiceError>;

    /// Removes both forms and the parent directories left empty. With
    /// `if_stamp`, refuses if the final file no longer has that stamp.
    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError>;

    /// Reads whole final files of at most [`MAX_WHOLE_FILE`] bytes, each of
    /// which must have the stamp given, and hashes them with `algorithm`;
    /// one result per file, in order. By default, one [`Service::read`] per
    /// file.
    async fn read_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
        algorithm: DigestAlgorithm,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        futures::future::join_all(files.iter().map(|(path, stamp)| async move {
            // The size comes from the caller (a peer, through the daemon):
            // it is checked before it sizes any buffer.
            let capacity = usize::try_from(stamp.size)
                .ok()
                .filter(|_| stamp.size <= MAX_WHOLE_FILE)
                .ok_or_else(|| {
                    ServiceError::from(StoreError::InvalidRequest {
                        dir: dir.to_string(),
                        path: path.to_string(),
                        reason: format!(
                            "{} bytes is too large to read whole (at most {MAX_WHOLE_FILE})",
                            stamp.size
                        ),
                    })
                })?;
            let mut data = self
                .read(dir, path, 0, Some(stamp.size), Some(*stamp))
                .await?;
            let mut whole = bytes::BytesMut::with_capacity(capacity);
            while let Some(chunk) = data.next().await {
                whole.extend_from_slice(&chunk?);
            }
            let data = whole.freeze();
            Ok(WholeFile {
                path: path.clone(),
                digest: Digest::of(algorithm, &data),
                data,
            })
        }))
        .await
    }

    /// [`Service::write_file`] of each file, the data given whole; one
    /// result per file, in order. By default, one call per file.
    async fn write_files(
        &self,
        dir: &DirId,
        files: Vec<WholeFile>,
    ) -> Vec<Result<u64, ServiceError>> {
        futures::future::join_all(files.into_iter().map(|file| async move {
            let expected = ExpectedHash::known(file.digest);
            let size = file.data.len() as u64;
            let data = futures::stream::once(async { Ok(file.data) }).boxed();
            self.write_file(dir, &file.path, size, data, expected).await
        }))
        .await
    }

    /// [`Service::delete`] of each file, if it still has the stamp given;
    /// one result per file, in order. By default, one call per file.
    async fn delete_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        futures::future::join_all(
            files
                .iter()
                .map(|(path, stamp)| self.delete(dir, path, Some(*stamp))),
        )
        .await
    }
}
