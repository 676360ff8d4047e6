//! The directory store: named roots on the local filesystem, served as a [`Service`].
//!
//! Every path is validated ([`RelPath`]) before it reaches the filesystem,
//! and resolved without following symlinks, so nothing outside a root is ever
//! read, written or deleted. Writes only ever touch the partial form of a file;
//! the final form appears only through [`Service::finish`]'s atomic rename.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream};
use sha2::{Digest, Sha256};
use tokio::fs::{self, File};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, SeekFrom};

use crate::delta::{self, MAX_RANGE};
use crate::error::{ServiceError, StoreError};
use crate::hash::Sha256Hash;
use crate::metrics::metrics;
use crate::path::{DirId, RelPath, partial_target};
use crate::service::{
    ByteRange, ByteStream, DirInfo, Entry, EntryStream, FileKind, FileStamp, HashResult, Service,
    ServiceInfo,
};

/// Size of the chunks Read and Diff stream out.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Buffer used while hashing.
const HASH_BUFFER: usize = 1024 * 1024;

/// Directories on the local filesystem, by id.
#[derive(Clone, Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dirs: BTreeMap<DirId, PathBuf>,
    host: String,
}

/// Where the two forms of a path live on disk.
#[derive(Clone, Debug)]
struct Resolved {
    dir: String,
    path: String,
    root: PathBuf,
    parent: PathBuf,
    final_path: PathBuf,
    partial_path: PathBuf,
}

impl Resolved {
    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            dir: self.dir.clone(),
            path: self.path.clone(),
            op,
            source,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> StoreError {
        StoreError::InvalidRequest {
            dir: self.dir.clone(),
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn out_of_range(&self, range: ByteRange, size: u64) -> StoreError {
        StoreError::OutOfRange {
            dir: self.dir.clone(),
            path: self.path.clone(),
            start: range.start,
            end: range.end,
            size,
        }
    }

    fn changed(&self, what: &'static str) -> StoreError {
        StoreError::Changed {
            dir: self.dir.clone(),
            path: self.path.clone(),
            what,
        }
    }

    fn form(&self, kind: FileKind) -> &Path {
        match kind {
            FileKind::Final => &self.final_path,
            FileKind::Partial => &self.partial_path,
        }
    }

    /// Runs `op` on the blocking pool, in the caller's span: one trip for a
    /// whole sequence of syscalls, which with small files is most of the cost.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Resolved) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (resolved, span) = (self.clone(), tracing::Span::current());
        tokio::task::spawn_blocking(move || span.in_scope(|| op(&resolved)))
            .await
            .map_err(|source| StoreError::Task {
                dir: self.dir.clone(),
                source,
            })?
    }

    /// The metadata of a form if it exists; an error if it is not a regular file.
    fn lstat_blocking(&self, kind: FileKind) -> Result<Option<std::fs::Metadata>, StoreError> {
        match std::fs::symlink_metadata(self.form(kind)) {
            Ok(m) if m.is_file() => Ok(Some(m)),
            Ok(_) => Err(StoreError::NotAFile {
                dir: self.dir.clone(),
                path: self.path.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("stat")(e)),
        }
    }

    /// The form that writes and deltas apply to: partial if present, else final.
    async fn working_copy(&self) -> Result<Option<(FileKind, u64)>, StoreError> {
        self.blocking(|r| {
            for kind in [FileKind::Partial, FileKind::Final] {
                if let Some(m) = r.lstat_blocking(kind)? {
                    return Ok(Some((kind, m.len())));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Opens a form for reading; only a regular file opens. O_NONBLOCK keeps a
    /// FIFO from blocking the open (it changes nothing for regular files), and
    /// O_NOFOLLOW refuses a symlink.
    fn open_blocking(&self, kind: FileKind) -> Result<std::fs::File, StoreError> {
        let not_a_file = || StoreError::NotAFile {
            dir: self.dir.clone(),
            path: self.path.clone(),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.form(kind))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::NotFound {
                    dir: self.dir.clone(),
                    path: self.path.clone(),
                },
                _ if e.raw_os_error() == Some(libc::ELOOP) => not_a_file(),
                _ => self.io("open")(e),
            })?;
        let meta = file.metadata().map_err(self.io("stat"))?;
        if !meta.is_file() {
            return Err(not_a_file());
        }
        Ok(file)
    }

    async fn open(&self, kind: FileKind) -> Result<File, StoreError> {
        self.blocking(move |r| r.open_blocking(kind))
            .await
            .map(File::from_std)
    }

    /// Opens the partial file for writing, turning the final file into it
    /// (or creating it) if there is none.
    async fn open_partial_for_write(&self) -> Result<File, StoreError> {
        self.blocking(|r| {
            if r.lstat_blocking(FileKind::Partial)?.is_none() {
                if let Some(final_meta) = r.lstat_blocking(FileKind::Final)? {
                    std::fs::rename(&r.final_path, &r.partial_path)
                        .map_err(r.io("rename final to partial"))?;
                    tracing::info!(dir = %r.dir, path = %r.path, size = final_meta.len(), "overwrite: final file turned back into partial file");
                } else {
                    std::fs::create_dir_all(&r.parent)
                        .map_err(r.io("create parent directories"))?;
                }
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&r.partial_path)
                .map_err(r.io("open partial file"))
        })
        .await
        .map(File::from_std)
    }
}

fn stamp_of(m: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        size: m.len(),
        mtime_unix_nanos: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        inode: m.ino(),
    }
}

/// Reads until `buf` holds `len` bytes or the file ends.
async fn read_up_to(file: &mut File, buf: &mut BytesMut, len: usize) -> io::Result<()> {
    buf.reserve(len.saturating_sub(buf.len()));
    while buf.len() < len {
        let mut limited = (&mut *file).take((len - buf.len()) as u64);
        if limited.read_buf(buf).await? == 0 {
            break;
        }
    }
    Ok(())
}

/// SHA-256 of `range` of an open file (the whole file if `None`), and its
/// stamp; a file that changes while it is read is refused.
async fn hash_file(
    file: &mut File,
    range: Option<ByteRange>,
    r: &Resolved,
) -> Result<HashResult, StoreError> {
    let before = stamp_of(&file.metadata().await.map_err(r.io("stat"))?);
    let range = range.unwrap_or(ByteRange::new(0, before.size));
    if range.start > range.end {
        return Err(r.invalid("range ends before it starts"));
    }
    if range.end > before.size {
        return Err(r.out_of_range(range, before.size));
    }
    file.seek(SeekFrom::Start(range.start))
        .await
        .map_err(r.io("seek"))?;
    let mut hasher = Sha256::new();
    let mut remaining = range.len();
    let mut buf = BytesMut::with_capacity(HASH_BUFFER);
    while remaining > 0 {
        buf.clear();
        let want = remaining.min(HASH_BUFFER as u64) as usize;
        read_up_to(file, &mut buf, want)
            .await
            .map_err(r.io("read"))?;
        if buf.is_empty() {
            return Err(r.changed("shrank while being hashed"));
        }
        hasher.update(&buf);
        remaining -= buf.len() as u64;
    }
    let after = stamp_of(&file.metadata().await.map_err(r.io("stat"))?);
    if before != after {
        return Err(r.changed("modified while being hashed"));
    }
    Ok(HashResult {
        hash: Sha256Hash::from_hasher(hasher),
        stamp: before,
    })
}

/// Reads exactly `range` of `file`, which must hold it.
async fn read_range(
    file: &mut File,
    range: ByteRange,
    r: &Resolved,
) -> Result<Vec<u8>, StoreError> {
    let len = usize::try_from(range.len()).map_err(|_| r.invalid("range too large"))?;
    file.seek(SeekFrom::Start(range.start))
        .await
        .map_err(r.io("seek"))?;
    let mut buf = BytesMut::with_capacity(len);
    read_up_to(file, &mut buf, len)
        .await
        .map_err(r.io("read"))?;
    if buf.len() != len {
        return Err(r.changed("shrank while being read"));
    }
    Ok(buf.to_vec())
}

fn check_range_size(range: ByteRange, r: &Resolved) -> Result<(), StoreError> {
    if range.start > range.end {
        return Err(r.invalid(format!(
            "range {}..{} ends before it starts",
            range.start, range.end
        )));
    }
    if range.len() > MAX_RANGE {
        return Err(r.invalid(format!(
            "range {}..{} is longer than {MAX_RANGE} bytes",
            range.start, range.end
        )));
    }
    Ok(())
}

/// Splits an in-memory buffer into a stream of chunks.
fn chunked(data: Vec<u8>) -> ByteStream {
    let data = Bytes::from(data);
    let chunks: Vec<_> = (0..data.len())
        .step_by(CHUNK_SIZE)
        .map(|start| Ok(data.slice(start..(start + CHUNK_SIZE).min(data.len()))))
        .collect();
    stream::iter(chunks).boxed()
}

/// Identifies this machine, so two services can tell they share a disk.
fn host_identity() -> String {
    ["/etc/machine-id", "/proc/sys/kernel/random/boot_id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

impl LocalStore {
    pub fn new(dirs: impl IntoIterator<Item = (DirId, PathBuf)>) -> Self {
        LocalStore {
            inner: Arc::new(Inner {
                dirs: dirs.into_iter().collect(),
                host: host_identity(),
            }),
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

    /// Maps a path to its two forms on disk, refusing any parent component
    /// that is a symlink or not a directory, so nothing resolves outside the root.
    async fn resolve(&self, dir: &DirId, path: &RelPath) -> Result<Resolved, StoreError> {
        let root = self.root(dir)?.to_path_buf();
        let (dir, path) = (dir.clone(), path.clone());
        let task_dir = dir.to_string();
        // One trip to the blocking pool for all the stats, not one per
        // component: with small files, those trips are most of the cost.
        tokio::task::spawn_blocking(move || resolve_blocking(root, &dir, &path))
            .await
            .map_err(|source| StoreError::Task {
                dir: task_dir,
                source,
            })?
    }
}

/// See [`LocalStore::resolve`].
fn resolve_blocking(root: PathBuf, dir: &DirId, path: &RelPath) -> Result<Resolved, StoreError> {
    // A vanished root (an unmounted disk, say) must not be recreated by a
    // write: that would put files where nobody expects them.
    match std::fs::metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::RootUnavailable {
                dir: dir.to_string(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Err(source) => {
            return Err(StoreError::RootUnavailable {
                dir: dir.to_string(),
                source,
            });
        }
    }
    let mut parent = root.clone();
    let components: Vec<&str> = path.components().collect();
    let (name, parents) = components
        .split_last()
        .ok_or_else(|| StoreError::InvalidRequest {
            dir: dir.to_string(),
            path: path.to_string(),
            reason: "empty path".into(),
        })?;
    let mut missing = false;
    for component in parents {
        parent.push(component);
        if missing {
            continue;
        }
        match std::fs::symlink_metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::NotBeneathRoot {
                    dir: dir.to_string(),
                    path: path.to_string(),
                    component: component.to_string(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = true,
            Err(source) => {
                return Err(StoreError::Io {
                    dir: dir.to_string(),
                    path: path.to_string(),
                    op: "stat parent directory",
                    source,
                });
            }
        }
    }
    Ok(Resolved {
        dir: dir.to_string(),
        path: path.to_string(),
        root,
        final_path: parent.join(name),
        partial_path: parent.join(path.partial_name()),
        parent,
    })
}

/// Walks a root without following symlinks; what is not a regular file or a
/// directory is skipped with a warning.
fn walk(dir: &DirId, root: &Path, include_partial: bool) -> Result<Vec<Entry>, StoreError> {
    let mut entries = Vec::new();
    let mut pending: Vec<(PathBuf, Option<RelPath>)> = vec![(root.to_path_buf(), None)];
    while let Some((fs_dir, rel)) = pending.pop() {
        let read_dir = match std::fs::read_dir(&fs_dir) {
            Ok(rd) => rd,
            Err(source) if rel.is_none() => {
                return Err(StoreError::Io {
                    dir: dir.to_string(),
                    path: String::new(),
                    op: "list root",
                    source,
                });
            }
            Err(e) => {
                tracing::warn!(%dir, path = %rel.as_ref().map(RelPath::as_str).unwrap_or(""), error = %e, "cannot list directory, skipped");
                continue;
            }
        };
        for item in read_dir {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    tracing::warn!(%dir, error = %e, "cannot read directory entry, skipped");
                    continue;
                }
            };
            let file_name = item.file_name();
            let Some(name) = file_name.to_str() else {
                tracing::warn!(%dir, name = ?file_name, "file name is not UTF-8, skipped");
                continue;
            };
            let Ok(file_type) = item.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                pending.push((
                    item.path(),
                    Some(RelPath::join_unchecked(rel.as_ref(), name)),
                ));
            } else if file_type.is_file() {
                let Ok(meta) = item.metadata() else {
                    continue;
                };
                let (kind, name) = match partial_target(name) {
                    Some(target) if include_partial => (FileKind::Partial, target),
                    Some(_) => continue,
                    None => (FileKind::Final, name),
                };
                entries.push(Entry {
                    path: RelPath::join_unchecked(rel.as_ref(), name),
                    kind,
                    stamp: stamp_of(&meta),
                });
            } else {
                let path = RelPath::join_unchecked(rel.as_ref(), name);
                let what = if file_type.is_symlink() {
                    "symlink"
                } else {
                    "special file"
                };
                tracing::warn!(%dir, %path, "{what} skipped: only regular files move");
            }
        }
    }
    entries.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then((a.kind == FileKind::Partial).cmp(&(b.kind == FileKind::Partial)))
    });
    Ok(entries)
}

#[async_trait]
impl Service for LocalStore {
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        let mut dirs = Vec::new();
        for (id, root) in &self.inner.dirs {
            let identity =
                |m: std::fs::Metadata| format!("{}:{}:{}", self.inner.host, m.dev(), m.ino());
            // An unreadable root has no identity; listing it will fail anyway.
            let Ok(root) = fs::canonicalize(root).await else {
                dirs.push(DirInfo {
                    id: id.clone(),
                    identity: String::new(),
                    ancestors: Vec::new(),
                });
                continue;
            };
            let mut ancestors = Vec::new();
            for ancestor in root.ancestors().skip(1) {
                if let Ok(m) = fs::metadata(ancestor).await {
                    ancestors.push(identity(m));
                }
            }
            dirs.push(DirInfo {
                id: id.clone(),
                identity: fs::metadata(&root).await.map(identity).unwrap_or_default(),
                ancestors,
            });
        }
        Ok(ServiceInfo {
            version: crate::VERSION.to_string(),
            dirs,
        })
    }

    async fn list(&self, dir: &DirId, include_partial: bool) -> Result<EntryStream, ServiceError> {
        let root = self.root(dir)?.to_path_buf();
        let dir = dir.clone();
        let task_dir = dir.clone();
        let entries = tokio::task::spawn_blocking(move || walk(&task_dir, &root, include_partial))
            .await
            .map_err(|source| StoreError::Task {
                dir: dir.to_string(),
                source,
            })??;
        Ok(stream::iter(entries.into_iter().map(Ok)).boxed())
    }

    async fn read(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
    ) -> Result<ByteStream, ServiceError> {
        let r = self.resolve(dir, path).await?;
        let mut file = r.open(FileKind::Final).await?;
        let size = file.metadata().await.map_err(r.io("stat"))?.len();
        let end = match length {
            Some(len) => offset.saturating_add(len),
            None => size.max(offset),
        };
        if end > size {
            return Err(r.out_of_range(ByteRange::new(offset, end), size).into());
        }
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(r.io("seek"))?;
        let r = Arc::new(r);
        let chunks = stream::try_unfold((file, end - offset), move |(mut file, remaining)| {
            let r = Arc::clone(&r);
            async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = remaining.min(CHUNK_SIZE as u64) as usize;
                let mut buf = BytesMut::new();
                read_up_to(&mut file, &mut buf, want)
                    .await
                    .map_err(r.io("read"))?;
                if buf.is_empty() {
                    return Err(r.changed("shrank while being read").into());
                }
                let len = buf.len() as u64;
                Ok(Some((buf.freeze(), (file, remaining - len))))
            }
        });
        Ok(chunks.boxed())
    }

    async fn write(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        mut data: ByteStream,
    ) -> Result<u64, ServiceError> {
        let r = self.resolve(dir, path).await?;
        if offset > file_size {
            return Err(r
                .invalid(format!("offset {offset} is past the file size {file_size}"))
                .into());
        }
        // The first chunk is checked before the partial file is opened, so a request
        // whose data is refused from the start changes nothing on disk.
        let first = data.next().await.transpose()?;
        if let Some(chunk) = &first
            && offset + chunk.len() as u64 > file_size
        {
            return Err(r
                .invalid(format!("data goes past the file size {file_size}"))
                .into());
        }
        // A stream that has ended must not be polled again: the handler's streams
        // panic if they are.
        let mut data = match first {
            Some(chunk) => stream::once(async { Ok(chunk) }).chain(data).boxed(),
            None => stream::empty().boxed(),
        };
        let mut file = r.open_partial_for_write().await?;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(r.io("seek"))?;
        let mut written = 0u64;
        let copied: Result<(), ServiceError> = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                if offset + written + chunk.len() as u64 > file_size {
                    return Err(r
                        .invalid(format!("data goes past the file size {file_size}"))
                        .into());
                }
                file.write_all(&chunk).await.map_err(r.io("write"))?;
                written += chunk.len() as u64;
            }
            Ok(())
        }
        .await;
        // tokio writes in the background: flush even when aborting, so what was
        // written is on the file before the next call touches it.
        let flushed = file.flush().await.map_err(r.io("write"));
        copied?;
        flushed?;
        file.set_len(file_size).await.map_err(r.io("set length"))?;
        file.flush().await.map_err(r.io("write"))?;
        metrics().store_written.add(written, &[]);
        Ok(written)
    }

    async fn signature(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        block_size: u32,
    ) -> Result<Bytes, ServiceError> {
        let r = self.resolve(dir, path).await?;
        check_range_size(range, &r)?;
        delta::check_block_size(block_size).map_err(|e| r.invalid(e.to_string()))?;
        let base = match r.working_copy().await? {
            Some((kind, len)) if range.start < len => {
                let mut file = r.open(kind).await?;
                read_range(
                    &mut file,
                    ByteRange::new(range.start, range.end.min(len)),
                    &r,
                )
                .await?
            }
            _ => Vec::new(),
        };
        let signature = tokio::task::spawn_blocking(move || delta::signature(&base, block_size))
            .await
            .map_err(|source| StoreError::Task {
                dir: dir.to_string(),
                source,
            })?
            .map_err(|e| r.invalid(e.to_string()))?;
        Ok(signature.into())
    }

    async fn diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        let r = self.resolve(dir, path).await?;
        check_range_size(range, &r)?;
        let mut file = r.open(FileKind::Final).await?;
        let size = file.metadata().await.map_err(r.io("stat"))?.len();
        if range.end > size {
            return Err(r.out_of_range(range, size).into());
        }
        let data = read_range(&mut file, range, &r).await?;
        let delta = tokio::task::spawn_blocking(move || delta::diff(signature.to_vec(), &data))
            .await
            .map_err(|source| StoreError::Task {
                dir: dir.to_string(),
                source,
            })?
            .map_err(|e| r.invalid(e.to_string()))?;
        Ok(chunked(delta))
    }

    async fn apply_delta(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        mut delta: ByteStream,
    ) -> Result<u64, ServiceError> {
        let r = self.resolve(dir, path).await?;
        check_range_size(range, &r)?;
        if range.end > file_size {
            return Err(r
                .invalid(format!(
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
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(r
                    .invalid(format!("delta is longer than {limit} bytes"))
                    .into());
            }
            buf.extend_from_slice(&chunk);
        }
        let base = match r.working_copy().await? {
            Some((kind, len)) if range.start < len => {
                let mut file = r.open(kind).await?;
                read_range(
                    &mut file,
                    ByteRange::new(range.start, range.end.min(len)),
                    &r,
                )
                .await?
            }
            _ => Vec::new(),
        };
        let expected = range.len();
        let patched = tokio::task::spawn_blocking(move || delta::apply(&base, &buf, expected))
            .await
            .map_err(|source| StoreError::Task {
                dir: dir.to_string(),
                source,
            })?
            .map_err(|e| r.invalid(e.to_string()))?;
        let mut file = r.open_partial_for_write().await?;
        file.seek(SeekFrom::Start(range.start))
            .await
            .map_err(r.io("seek"))?;
        file.write_all(&patched).await.map_err(r.io("write"))?;
        file.set_len(file_size).await.map_err(r.io("set length"))?;
        file.flush().await.map_err(r.io("write"))?;
        metrics().store_written.add(patched.len() as u64, &[]);
        Ok(patched.len() as u64)
    }

    async fn hash(
        &self,
        dir: &DirId,
        path: &RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
    ) -> Result<HashResult, ServiceError> {
        let r = self.resolve(dir, path).await?;
        let mut file = r.open(kind).await?;
        Ok(hash_file(&mut file, range, &r).await?)
    }

    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        expected: Option<Sha256Hash>,
    ) -> Result<(), ServiceError> {
        let r = self.resolve(dir, path).await?;
        let (kind, file) = r
            .blocking(|r| {
                for kind in [FileKind::Partial, FileKind::Final] {
                    if r.lstat_blocking(kind)?.is_some() {
                        return Ok((kind, r.open_blocking(kind)?));
                    }
                }
                Err(StoreError::NotFound {
                    dir: r.dir.clone(),
                    path: r.path.clone(),
                })
            })
            .await?;
        let mut file = File::from_std(file);
        // Verified and made durable through the same open file, so what is
        // checked is what is renamed.
        if let Some(expected) = expected {
            let actual = hash_file(&mut file, None, &r).await?.hash;
            if actual != expected {
                return Err(StoreError::HashMismatch {
                    dir: r.dir,
                    path: r.path,
                    expected,
                    actual,
                }
                .into());
            }
        }
        let file = file.into_std().await;
        let size = r
            .blocking(move |r| {
                file.sync_all().map_err(r.io("fsync"))?;
                let size = file.metadata().map_err(r.io("stat"))?.len();
                if kind == FileKind::Partial {
                    std::fs::rename(&r.partial_path, &r.final_path)
                        .map_err(r.io("rename partial to final"))?;
                    // The rename is only durable once the directory itself is synced.
                    std::fs::File::open(&r.parent)
                        .and_then(|d| d.sync_all())
                        .map_err(r.io("fsync parent directory"))?;
                }
                Ok(size)
            })
            .await?;
        if kind == FileKind::Partial {
            let sha256 = expected.map(|h| h.to_hex()).unwrap_or_default();
            tracing::info!(dir = %r.dir, path = %r.path, size, %sha256, "finished");
            metrics().store_finished.add(1, &[]);
        }
        Ok(())
    }

    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        let r = self.resolve(dir, path).await?;
        Ok(r.blocking(move |r| r.delete_blocking(if_stamp)).await?)
    }
}

impl Resolved {
    /// See [`Service::delete`]; all of it in one trip to the blocking pool.
    fn delete_blocking(&self, if_stamp: Option<FileStamp>) -> Result<(), StoreError> {
        if let Some(expected) = if_stamp
            && let Some(meta) = self.lstat_blocking(FileKind::Final)?
            && stamp_of(&meta) != expected
        {
            return Err(self.changed("differs from the version that was verified"));
        }
        for kind in [FileKind::Final, FileKind::Partial] {
            // For the audit line only: whatever is there goes, a symlink included.
            let size = std::fs::symlink_metadata(self.form(kind))
                .ok()
                .map(|m| m.len());
            match std::fs::remove_file(self.form(kind)) {
                Ok(()) => {
                    tracing::info!(dir = %self.dir, path = %self.path, ?kind, size, "deleted");
                    if kind == FileKind::Final {
                        metrics().store_deleted.add(1, &[]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("remove file")(e)),
            }
        }
        let mut dir_path = self.parent.as_path();
        while dir_path != self.root && dir_path.starts_with(&self.root) {
            // Fails on the first directory that is not empty, which is the point.
            if std::fs::remove_dir(dir_path).is_err() {
                break;
            }
            match dir_path.parent() {
                Some(parent) => dir_path = parent,
                None => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
