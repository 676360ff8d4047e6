//! The directory store: named roots on the local filesystem, served as a [`Service`].
//!
//! Every path is validated ([`RelPath`]) before it reaches the filesystem,
//! and resolved without following symlinks, so nothing outside a root is ever
//! read, written or deleted. Writes only ever touch the partial form of a file;
//! the final form appears only through [`Service::finish`]'s atomic rename.
//!
//! This file holds the store and its dispatch to the blocking pool; each
//! call's work is in the file named for its job.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::{Digest, DigestAlgorithm};
use crate::error::{ServiceError, StoreError};
use crate::metrics::StoreMetrics;
use crate::path::{DirId, RelPath};
use crate::service::{
    ByteRange, ByteStream, EntryStream, ExpectedHash, FileKind, FileStamp, HashResult, Service,
    ServiceInfo, WholeFile,
};

mod batch;
mod delete;
mod locks;
mod read;
mod resolve;
mod stale;
mod walk;
mod write;

pub use locks::PathLocks;
pub use read::{HASH_BUFFERED, READ_BUFFERED};
pub use walk::overlapping_roots;
pub use write::WRITE_BUFFERED_CHUNKS;

use read::hash_file;
use resolve::{Resolved, resolve_blocking};
use walk::host_identity;

/// The target of the store's audit events (docs/logging.md), whichever of
/// its files emits them: what operators filter and search the log on.
const AUDIT: &str = module_path!();

/// Directories on the local filesystem, by id.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::TryStreamExt;
/// use realize_core::{DirId, LocalStore, Service};
///
/// let root = tempfile::tempdir()?;
/// std::fs::write(root.path().join("notes.txt"), "hello")?;
/// let notes = DirId::new("notes")?;
/// let store = LocalStore::new([(notes.clone(), root.path().to_path_buf())]);
///
/// let entries: Vec<_> = store.list(&notes, None, false).await?.try_collect().await?;
/// assert_eq!(entries[0].path.as_str(), "notes.txt");
/// assert_eq!(entries[0].stamp.size, 5);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dirs: BTreeMap<DirId, PathBuf>,
    host: String,
    locks: PathLocks,
    metrics: Arc<StoreMetrics>,
}

impl LocalStore {
    /// A store serving each `(id, root)` of `dirs`; roots are opened at each call, so one missing now fails only the calls on it.
    pub fn new(dirs: impl IntoIterator<Item = (DirId, PathBuf)>) -> Self {
        Self::with_locks(dirs, PathLocks::default())
    }

    /// A store whose calls queue on `locks`, shared with other stores of
    /// the same directories (see [`PathLocks`]).
    pub fn with_locks(dirs: impl IntoIterator<Item = (DirId, PathBuf)>, locks: PathLocks) -> Self {
        LocalStore {
            inner: Arc::new(Inner {
                dirs: dirs.into_iter().collect(),
                host: host_identity(),
                locks,
                metrics: StoreMetrics::global(),
            }),
        }
    }

    /// The same store, recording its instruments (bytes written, files
    /// finished and deleted) with `meter` instead of OpenTelemetry's global
    /// meter provider.
    pub fn with_meter(self, meter: &opentelemetry::metrics::Meter) -> Self {
        LocalStore {
            inner: Arc::new(Inner {
                dirs: self.inner.dirs.clone(),
                host: self.inner.host.clone(),
                locks: self.inner.locks.clone(),
                metrics: Arc::new(StoreMetrics::new(meter)),
            }),
        }
    }

    /// Counts a final file deleted, if one was.
    fn count_deleted(&self, final_deleted: bool) {
        if final_deleted {
            self.inner.metrics.store_deleted.add(1, &[]);
        }
    }

    /// The directories served, with their roots.
    pub fn dirs(&self) -> impl Iterator<Item = (&DirId, &Path)> {
        self.inner
            .dirs
            .iter()
            .map(|(id, root)| (id, root.as_path()))
    }

    fn root(&self, dir: &DirId) -> Result<&Path, StoreError> {
        self.inner
            .dirs
            .get(dir)
            .map(PathBuf::as_path)
            .ok_or_else(|| StoreError::UnknownDir {
                dir: dir.to_string(),
            })
    }

    /// Resolves `path` to its two forms on disk ([`resolve_blocking`]) and
    /// runs `op` on them, in one trip to the blocking pool and in the
    /// caller's span: with small files, those trips are most of the cost.
    /// The task starts at once; the future only waits for it.
    fn on_blocking<T: Send + 'static>(
        &self,
        dir: &DirId,
        path: &RelPath,
        op: impl FnOnce(&Resolved) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let (dir, path, span) = (dir.clone(), path.clone(), tracing::Span::current());
        let task_dir = dir.to_string();
        let task = self.root(&dir).map(|root| {
            let root = root.to_path_buf();
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| op(&resolve_blocking(&root, &dir, &path)?))
            })
        });
        async move {
            task?.await.map_err(|source| StoreError::Task {
                dir: task_dir,
                source,
            })?
        }
    }
}

/// The stamp of an open file: what tells one version of it from another.
fn stamp_of(m: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        size: m.len(),
        mtime_unix_nanos: m
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec()),
        inode: m.ino(),
    }
}

#[async_trait]
impl Service for LocalStore {
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        self.service_info().await
    }

    async fn list(
        &self,
        dir: &DirId,
        prefix: Option<&RelPath>,
        include_partial: bool,
    ) -> Result<EntryStream, ServiceError> {
        self.list_entries(dir, prefix, include_partial).await
    }

    async fn read(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError> {
        self.read_stream(dir, path, offset, length, if_stamp, None)
            .await
    }

    async fn read_hashed(
        &self,
        dir: &DirId,
        path: &RelPath,
        stamp: FileStamp,
        algorithm: DigestAlgorithm,
    ) -> Result<(ByteStream, ExpectedHash), ServiceError> {
        let (sender, value) = tokio::sync::oneshot::channel();
        let hash = Some((algorithm, sender));
        let data = self
            .read_stream(dir, path, 0, Some(stamp.size), Some(stamp), hash)
            .await?;
        Ok((data, ExpectedHash { algorithm, value }))
    }

    async fn write(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        data: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.write_stream(dir, path, offset, file_size, data, None)
            .await
    }

    async fn write_file(
        &self,
        dir: &DirId,
        path: &RelPath,
        file_size: u64,
        data: ByteStream,
        expected: ExpectedHash,
    ) -> Result<u64, ServiceError> {
        self.write_stream(dir, path, 0, file_size, data, Some(expected))
            .await
    }

    async fn signature(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        block_size: u32,
    ) -> Result<Bytes, ServiceError> {
        self.make_signature(dir, path, range, block_size).await
    }

    async fn diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        self.make_diff(dir, path, range, signature).await
    }

    async fn apply_delta(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        delta: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.patch(dir, path, range, file_size, delta).await
    }

    async fn hash(
        &self,
        dir: &DirId,
        path: &RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
        algorithm: DigestAlgorithm,
    ) -> Result<HashResult, ServiceError> {
        Ok(self
            .on_blocking(dir, path, move |r| {
                hash_file(&r.open_blocking(kind)?, range, algorithm, r)
            })
            .await?)
    }

    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        expected: Option<Digest>,
    ) -> Result<(), ServiceError> {
        self.finish_path(dir, path, expected).await
    }

    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        let final_deleted = self
            .on_blocking(dir, path, move |r| r.delete_blocking(if_stamp))
            .await?;
        self.count_deleted(final_deleted);
        Ok(())
    }

    async fn read_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
        algorithm: DigestAlgorithm,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        self.read_batch(dir, files, algorithm).await
    }

    async fn write_files(
        &self,
        dir: &DirId,
        files: Vec<WholeFile>,
    ) -> Vec<Result<u64, ServiceError>> {
        self.write_batch(dir, files).await
    }

    async fn delete_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        self.delete_batch(dir, files).await
    }
}

#[cfg(test)]
mod tests;
