//! The directory store: named roots on the local filesystem, served as a [`Service`].
//!
//! Every path is validated ([`RelPath`]) before it reaches the filesystem,
//! and resolved without following symlinks, so nothing outside a root is ever
//! read, written or deleted. Writes only ever touch the partial form of a file;
//! the final form appears only through [`Service::finish`]'s atomic rename.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, fstat, fsync, openat, renameat, unlinkat};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

pub use crate::chunks::CHUNK_SIZE;
use crate::chunks::chunked;
use crate::delta::{self, MAX_RANGE};
use crate::digest::Sha256Hash;
use crate::error::{ErrorChain, ServiceError, StoreError};
use crate::metrics::metrics;
use crate::path::{DirId, RelPath, partial_target};
use crate::service::{
    ByteRange, ByteStream, DirInfo, Entry, EntryStream, ExpectedHash, FileKind, FileStamp,
    HashResult, MAX_WHOLE_FILE, Service, ServiceInfo, WholeFile,
};
use resolve::resolve_blocking;

/// Buffer used while hashing.
const HASH_BUFFER: usize = 1024 * 1024;
/// Chunks a read may have ready before the caller takes them.
const READ_QUEUE: usize = 4;
/// Chunks a write may have waiting for the disk.
const WRITE_QUEUE: usize = 4;

/// Bytes one read holds at most, ahead of its caller: the chunks queued and
/// the one being read. What a server budgets for a Read call.
pub const READ_BUFFERED: u64 = ((READ_QUEUE + 1) * CHUNK_SIZE) as u64;
/// Chunks of its data one write holds at most: those queued for the disk,
/// the one being written and the one waiting for room in the queue.
pub const WRITE_BUFFERED_CHUNKS: u64 = (WRITE_QUEUE + 2) as u64;
/// Bytes a Hash or a Finish with a digest holds while it reads the file.
pub const HASH_BUFFERED: u64 = HASH_BUFFER as u64;

/// Directories on the local filesystem, by id.
#[derive(Clone, Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dirs: BTreeMap<DirId, PathBuf>,
    host: String,
    locks: PathLocks,
}

type PathMutex = Arc<tokio::sync::Mutex<()>>;

/// The paths being changed, each with the lock its calls queue on, keyed by
/// root and path. A daemon shares one table between the stores it builds on
/// each reload, so a call admitted before a reload and one admitted after it
/// still queue on the same path.
#[derive(Clone, Debug, Default)]
pub struct PathLocks(Arc<std::sync::Mutex<HashMap<(PathBuf, RelPath), PathMutex>>>);

impl PathLocks {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, RelPath), PathMutex>> {
        // Only lookups, inserts and removals happen under the lock: a panic
        // cannot leave the map half-updated.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A path resolved beneath its root: the root and the parent directory held
/// open, and the names of the two forms in it (see [`resolve`]).
#[derive(Debug)]
struct Resolved {
    dir: String,
    path: String,
    root: OwnedFd,
    /// The components of the parent directory, beneath the root.
    parents: Vec<String>,
    /// The parent directory, once it exists.
    parent: OnceCell<OwnedFd>,
    final_name: String,
    partial_name: String,
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

    fn not_a_file(&self) -> StoreError {
        StoreError::NotAFile {
            dir: self.dir.clone(),
            path: self.path.clone(),
        }
    }

    fn name(&self, kind: FileKind) -> &str {
        match kind {
            FileKind::Final => &self.final_name,
            FileKind::Partial => &self.partial_name,
        }
    }

    /// The stamp of a form if it exists; an error if it is not a regular file.
    fn lstat_blocking(&self, kind: FileKind) -> Result<Option<FileStamp>, StoreError> {
        let Some(parent) = self.parent.get() else {
            return Ok(None);
        };
        match resolve::lstat_at(parent.as_fd(), self.name(kind)) {
            Ok(st) if resolve::is_file(&st) => Ok(Some(resolve::stamp_of_stat(&st))),
            Ok(_) => Err(self.not_a_file()),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io("stat")(e.into())),
        }
    }

    /// The form that writes and deltas apply to: partial if present, else final.
    fn working_copy(&self) -> Result<Option<FileKind>, StoreError> {
        for kind in [FileKind::Partial, FileKind::Final] {
            if self.lstat_blocking(kind)?.is_some() {
                return Ok(Some(kind));
            }
        }
        Ok(None)
    }

    /// Opens a form for reading; only a regular file opens. O_NONBLOCK keeps a
    /// FIFO from blocking the open (it changes nothing for regular files), and
    /// O_NOFOLLOW refuses a symlink.
    fn open_blocking(&self, kind: FileKind) -> Result<std::fs::File, StoreError> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = openat(self.parent_dir()?, self.name(kind), flags, Mode::empty())
            .map(std::fs::File::from)
            .map_err(|e| match e {
                Errno::NOENT => StoreError::NotFound {
                    dir: self.dir.clone(),
                    path: self.path.clone(),
                },
                Errno::LOOP => self.not_a_file(),
                e => self.io("open")(e.into()),
            })?;
        let meta = file.metadata().map_err(self.io("stat"))?;
        if !meta.is_file() {
            return Err(self.not_a_file());
        }
        Ok(file)
    }

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

    fn busy(&self) -> StoreError {
        StoreError::Busy {
            dir: self.dir.clone(),
            path: self.path.clone(),
        }
    }

    /// Takes the write lock of `file`, just opened as the `kind` form, and
    /// checks that it still is the file there. The lock is the file's, not
    /// this store's: another directory id on the same files, another daemon
    /// or another process is refused with [`StoreError::Busy`] rather than
    /// waited for. It is released when `file` is closed.
    fn lock_for_write(&self, file: &std::fs::File, kind: FileKind) -> Result<(), StoreError> {
        use rustix::fs::{FlockOperation, flock};
        // flock(2), not fcntl(F_SETLK): its lock belongs to the open file,
        // so it also stops a second open in this process, and closing another
        // descriptor of the file (a reader's) does not release it.
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => self.check_still_at(file, kind),
            Err(Errno::WOULDBLOCK) => Err(self.busy()),
            Err(e) => Err(self.io("lock")(e.into())),
        }
    }

    /// Whether `file` is still the `kind` form: a writer that opened it just
    /// before another renamed it away must not write into what it became.
    fn check_still_at(&self, file: &std::fs::File, kind: FileKind) -> Result<(), StoreError> {
        let open = file.metadata().map_err(self.io("stat"))?;
        match resolve::lstat_at(self.parent_dir()?, self.name(kind)) {
            Ok(st) if st.st_dev == open.dev() && st.st_ino == open.ino() => Ok(()),
            Ok(_) | Err(Errno::NOENT) => Err(self.busy()),
            Err(e) => Err(self.io("stat")(e.into())),
        }
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
                    tracing::info!(dir = %self.dir, path = %self.path, size = final_stamp.size, "overwrite: final file turned back into partial file");
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
    fn sync_parent(&self) -> Result<(), StoreError> {
        // The descriptor the rename went through is O_PATH, which fsync
        // refuses: the directory is opened again, through it, not by name.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        openat(self.parent_dir()?, ".", flags, Mode::empty())
            .and_then(fsync)
            .map_err(|e| self.io("fsync parent directory")(e.into()))
    }

    /// Device and inode of the parent directory: what tells two paths'
    /// parents apart, whatever names led to them.
    fn parent_identity(&self) -> Result<(u64, u64), StoreError> {
        let st =
            fstat(self.parent_dir()?).map_err(|e| self.io("stat parent directory")(e.into()))?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Checks that `actual`, the SHA-256 of the file about to be finished, is `expected`.
    fn check_hash(&self, expected: Sha256Hash, actual: Sha256Hash) -> Result<(), StoreError> {
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

fn log_finished(dir: &str, path: &str, size: u64, sha256: Option<Sha256Hash>) {
    let sha256 = sha256.map(|h| h.to_hex()).unwrap_or_default();
    tracing::info!(%dir, %path, size, %sha256, "finished");
    metrics().store_finished.add(1, &[]);
}

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

/// SHA-256 of `range` of an open file (the whole file if `None`), and its
/// stamp; a file that changes while it is read is refused.
fn hash_file(
    file: &std::fs::File,
    range: Option<ByteRange>,
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
    let mut hasher = Sha256::new();
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
        hash: Sha256Hash::from_hasher(hasher),
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
fn working_bytes(
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
fn check_range_size(range: ByteRange) -> Result<(), String> {
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

/// Whether `len` bytes written at `offset` end at or before `end`; a sum
/// that overflows does not fit (offsets and lengths come from peers).
fn fits(offset: u64, len: usize, end: u64) -> bool {
    u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .is_some_and(|stop| stop <= end)
}

/// The closest directory above `path` that exists, canonicalized.
fn nearest_existing_ancestor(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute
        .ancestors()
        .skip(1)
        .find_map(|ancestor| std::fs::canonicalize(ancestor).ok())
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

/// Who `root` is: host, device and inode of it and of each directory above
/// it, through symlinks, so two names for one directory are told apart from
/// two directories. An unreadable root has no identity.
fn dir_info_blocking(host: &str, id: &DirId, root: &Path) -> DirInfo {
    let identity = |m: std::fs::Metadata| format!("{host}:{}:{}", m.dev(), m.ino());
    // A root not created yet has no identity, but the directories it would
    // be made in still tell whether it lies inside the other side.
    let (identity_of_root, above) = match std::fs::canonicalize(root) {
        Ok(root) => (
            std::fs::metadata(&root).map(identity).unwrap_or_default(),
            root.parent().map(Path::to_path_buf),
        ),
        Err(_) => (String::new(), nearest_existing_ancestor(root)),
    };
    DirInfo {
        id: id.clone(),
        identity: identity_of_root,
        ancestors: above
            .iter()
            .flat_map(|above| above.ancestors())
            .filter_map(|ancestor| std::fs::metadata(ancestor).ok().map(identity))
            .collect(),
        read_only: false,
    }
}

/// The first two of `dirs` whose roots are one directory or nest, if any:
/// the same file under two ids escapes the per-path locks and confuses
/// whoever lists both. Blocking: it stats every root and its ancestors.
pub fn overlapping_roots<'a>(
    dirs: impl IntoIterator<Item = (&'a DirId, &'a Path)>,
) -> Option<(DirId, DirId)> {
    let host = host_identity();
    let infos: Vec<DirInfo> = dirs
        .into_iter()
        .map(|(id, root)| dir_info_blocking(&host, id, root))
        .collect();
    infos.iter().enumerate().find_map(|(i, a)| {
        infos[i + 1..]
            .iter()
            .find(|b| a.overlaps(b))
            .map(|b| (a.id.clone(), b.id.clone()))
    })
}

impl LocalStore {
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

    /// Waits until no other call of this store changes `path`'s files, so
    /// what one call wrote and hashed is what it renames.
    async fn exclusive(&self, dir: &DirId, path: &RelPath) -> PathLock {
        // An unknown directory fails its call once resolved; its key only
        // has to differ from every served root's.
        let root = self
            .root(dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| PathBuf::from(format!("unknown directory {dir}")));
        let key = (root, path.clone());
        let lock = Arc::clone(self.inner.locks.table().entry(key.clone()).or_default());
        let guard = lock.lock_owned().await;
        PathLock {
            locks: self.inner.locks.clone(),
            key,
            _guard: guard,
        }
    }
}

/// Held while a call changes a path's files; see [`LocalStore::exclusive`].
struct PathLock {
    locks: PathLocks,
    key: (PathBuf, RelPath),
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let mut locks = self.locks.table();
        // The map holds one reference and this guard another: nobody else
        // waits, so the entry goes and the map stays as small as the calls in flight.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 2)
        {
            locks.remove(&self.key);
        }
    }
}

/// Walks a root without following symlinks; what is not a regular file or a
/// directory is skipped with a warning. Each directory is opened beneath the
/// root as a path's parent is ([`resolve::open_dir`]) and its entries are
/// looked at through it, so a directory swapped for a symlink meanwhile is
/// skipped, never listed.
fn walk(dir: &DirId, root: &Path, include_partial: bool) -> Result<Vec<Entry>, StoreError> {
    let list_root = |source: io::Error| StoreError::Io {
        dir: dir.to_string(),
        path: String::new(),
        op: "list root",
        source,
    };
    let root = resolve::open_root(root).map_err(list_root)?;
    let mut entries = Vec::new();
    let mut pending: Vec<Option<RelPath>> = vec![None];
    while let Some(rel) = pending.pop() {
        let components: Vec<&str> = rel.iter().flat_map(RelPath::components).collect();
        let listing = resolve::open_dir(root.as_fd(), &components, OFlags::RDONLY)
            .map_err(io::Error::from)
            .and_then(|fd| Ok(Dir::new(fd)?));
        let mut listing = match listing {
            Ok(listing) => listing,
            Err(source) if rel.is_none() => return Err(list_root(source)),
            Err(e) => {
                tracing::warn!(%dir, path = %rel.as_ref().map(RelPath::as_str).unwrap_or(""), error = %e, "cannot list directory, skipped");
                continue;
            }
        };
        while let Some(item) = listing.read() {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    tracing::warn!(%dir, error = %e, "cannot read directory entry, skipped");
                    continue;
                }
            };
            let Ok(name) = item.file_name().to_str() else {
                tracing::warn!(%dir, name = ?item.file_name(), "file name is not UTF-8, skipped");
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let Ok(st) = listing.fd().and_then(|fd| resolve::lstat_at(fd, name)) else {
                continue;
            };
            let file_type = FileType::from_raw_mode(st.st_mode);
            if file_type == FileType::Directory {
                pending.push(Some(RelPath::join_unchecked(rel.as_ref(), name)));
            } else if file_type == FileType::RegularFile {
                let (kind, name) = match partial_target(name) {
                    Some(target) if include_partial => (FileKind::Partial, target),
                    Some(_) => continue,
                    None => (FileKind::Final, name),
                };
                entries.push(Entry {
                    path: RelPath::join_unchecked(rel.as_ref(), name),
                    kind,
                    stamp: resolve::stamp_of_stat(&st),
                });
            } else {
                let path = RelPath::join_unchecked(rel.as_ref(), name);
                let what = if file_type == FileType::Symlink {
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
        let store = self.clone();
        let dirs = tokio::task::spawn_blocking(move || {
            store
                .dirs()
                .map(|(id, root)| dir_info_blocking(&store.inner.host, id, root))
                .collect()
        })
        .await
        .map_err(|source| StoreError::Task {
            dir: self
                .dirs()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            source,
        })?;
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
    ) -> Result<(ByteStream, ExpectedHash), ServiceError> {
        let (sender, expected) = tokio::sync::oneshot::channel();
        let data = self
            .read_stream(dir, path, 0, Some(stamp.size), Some(stamp), Some(sender))
            .await?;
        Ok((data, expected))
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

    async fn diff(
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

    async fn apply_delta(
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
        metrics().store_written.add(written, &[]);
        Ok(written)
    }

    async fn hash(
        &self,
        dir: &DirId,
        path: &RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
    ) -> Result<HashResult, ServiceError> {
        Ok(self
            .on_blocking(dir, path, move |r| {
                hash_file(&r.open_blocking(kind)?, range, r)
            })
            .await?)
    }

    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        expected: Option<Sha256Hash>,
    ) -> Result<(), ServiceError> {
        let _lock = self.exclusive(dir, path).await;
        self.on_blocking(dir, path, move |r| {
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
                r.check_hash(expected, hash_file(&file, None, r)?.hash)?;
            }
            let size = r.make_final(&file, kind)?;
            if kind == FileKind::Partial {
                log_finished(&r.dir, &r.path, size, expected);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        Ok(self
            .on_blocking(dir, path, move |r| r.delete_blocking(if_stamp))
            .await?)
    }

    async fn read_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<WholeFile, ServiceError>> {
        let items = files.to_vec();
        let paths: Vec<RelPath> = files.iter().map(|(path, _)| path.clone()).collect();
        let read = self
            .on_blocking_each(dir, items, |r, stamp: FileStamp| {
                if stamp.size > MAX_WHOLE_FILE {
                    return Err(r.invalid(format!(
                        "{} bytes is too large to read whole (at most {MAX_WHOLE_FILE})",
                        stamp.size
                    )));
                }
                read_whole(r, stamp)
            })
            .await;
        read.into_iter()
            .zip(paths)
            .map(|(result, path)| result.map(|(data, sha256)| WholeFile { path, data, sha256 }))
            .collect()
    }

    async fn write_files(
        &self,
        dir: &DirId,
        files: Vec<WholeFile>,
    ) -> Vec<Result<u64, ServiceError>> {
        // Locked in path order, so two batches sharing paths cannot each
        // hold one the other waits for.
        let mut paths: Vec<&RelPath> = files.iter().map(|f| &f.path).collect();
        paths.sort();
        paths.dedup();
        let mut locks = Vec::with_capacity(paths.len());
        for path in paths {
            locks.push(self.exclusive(dir, path).await);
        }
        let count = files.len();
        let Ok(root) = self.root(dir).map(Path::to_path_buf) else {
            let unknown = || StoreError::UnknownDir {
                dir: dir.to_string(),
            };
            return files.iter().map(|_| Err(unknown().into())).collect();
        };
        let (task_dir, dir, span) = (dir.to_string(), dir.clone(), tracing::Span::current());
        let written = tokio::task::spawn_blocking(move || {
            span.in_scope(|| write_whole_files(&root, &dir, files))
        })
        .await;
        drop(locks);
        match written {
            Ok(results) => results
                .into_iter()
                .map(|result| {
                    let size = result?;
                    metrics().store_written.add(size, &[]);
                    Ok(size)
                })
                .collect(),
            Err(source) => task_failed(&task_dir, count, &source),
        }
    }

    async fn delete_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        let items = files.to_vec();
        self.on_blocking_each(dir, items, |r, stamp| r.delete_blocking(Some(stamp)))
            .await
    }
}

impl LocalStore {
    /// [`Service::read`]; with `hash`, the SHA-256 of what was read is sent
    /// there once all of it is read and the file did not change meanwhile.
    ///
    /// One blocking task opens the file and reads it all, a bounded queue
    /// ahead of the caller: a trip to the blocking pool per chunk costs more
    /// than the read itself. It hashes each chunk as it reads it, while the
    /// bytes are in this core's cache.
    async fn read_stream(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
        hash: Option<tokio::sync::oneshot::Sender<Sha256Hash>>,
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
            let mut hasher = hash.as_ref().map(|_| Sha256::new());
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
                let _ = hash.send(Sha256Hash::from_hasher(hasher));
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
}

/// The batches of [`Service::read_files`], [`Service::write_files`] and
/// [`Service::delete_files`]: each in one trip to the blocking pool.
impl LocalStore {
    /// Runs `op` on each of `paths`, resolved, in one blocking task.
    async fn on_blocking_each<I: Send + 'static, T: Send + 'static>(
        &self,
        dir: &DirId,
        items: Vec<(RelPath, I)>,
        op: impl Fn(&Resolved, I) -> Result<T, StoreError> + Send + 'static,
    ) -> Vec<Result<T, ServiceError>> {
        let count = items.len();
        let unknown = || StoreError::UnknownDir {
            dir: dir.to_string(),
        };
        let Ok(root) = self.root(dir).map(Path::to_path_buf) else {
            return (0..count).map(|_| Err(unknown().into())).collect();
        };
        let (task_dir, dir, span) = (dir.to_string(), dir.clone(), tracing::Span::current());
        let done = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                items
                    .into_iter()
                    .map(|(path, item)| {
                        resolve_blocking(&root, &dir, &path).and_then(|r| op(&r, item))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await;
        match done {
            Ok(results) => results
                .into_iter()
                .map(|result| result.map_err(Into::into))
                .collect(),
            Err(source) => task_failed(&task_dir, count, &source),
        }
    }
}

/// The results of `count` files whose blocking task failed (it panicked).
fn task_failed<T>(
    dir: &str,
    count: usize,
    source: &tokio::task::JoinError,
) -> Vec<Result<T, ServiceError>> {
    (0..count)
        .map(|_| {
            Err(ServiceError::Protocol(format!(
                "{dir}: background task failed: {source}"
            )))
        })
        .collect()
}

/// Reads a whole small final file that must have `stamp`, and hashes it.
fn read_whole(r: &Resolved, stamp: FileStamp) -> Result<(Bytes, Sha256Hash), StoreError> {
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
    let hash = Sha256Hash::of(&data);
    Ok((Bytes::from(data), hash))
}

/// Writes a whole file into a fresh partial file, checks its SHA-256 and
/// renames it; the caller syncs the directory.
fn write_whole(r: &Resolved, data: &[u8], expected: Sha256Hash) -> Result<u64, StoreError> {
    let file = r.open_partial_for_write(true)?;
    file.write_all_at(data, 0).map_err(r.io("write"))?;
    // The bytes hashed are the bytes just written to this open file, the
    // one renamed: nothing else writes it while this store holds its lock.
    r.check_hash(expected, Sha256Hash::of(data))?;
    r.rename_final(&file, FileKind::Partial)
}

/// See [`Service::write_files`]. Each directory is synced once, after the
/// renames of its files and before any of them is reported finished.
fn write_whole_files(
    root: &Path,
    dir: &DirId,
    files: Vec<WholeFile>,
) -> Vec<Result<u64, StoreError>> {
    // One resolution is kept per directory, with its descriptors, for the
    // fsync; the others are closed once their file is written, so a batch
    // holds no more descriptors than it has directories.
    let mut parents: Vec<Resolved> = Vec::new();
    let mut parent_index: HashMap<(u64, u64), usize> = HashMap::new();
    let mut renamed: Vec<(usize, RelPath, usize, u64, Sha256Hash)> = Vec::new();
    let mut results: Vec<Result<u64, StoreError>> = files
        .into_iter()
        .enumerate()
        .map(|(index, file)| {
            let r = resolve_blocking(root, dir, &file.path)?;
            let size = write_whole(&r, &file.data, file.sha256)?;
            let parent = *parent_index.entry(r.parent_identity()?).or_insert_with(|| {
                parents.push(r);
                parents.len() - 1
            });
            renamed.push((index, file.path, parent, size, file.sha256));
            Ok(size)
        })
        .collect();
    let synced: Vec<Result<(), String>> = parents
        .iter()
        .map(|r| r.sync_parent().map_err(|e| ErrorChain(&e).to_string()))
        .collect();
    for (index, path, parent, size, sha256) in renamed {
        match &synced[parent] {
            Ok(()) => log_finished(dir.as_str(), path.as_str(), size, Some(sha256)),
            Err(cause) => {
                results[index] = Err(StoreError::Io {
                    dir: dir.to_string(),
                    path: path.to_string(),
                    op: "fsync parent directory",
                    source: io::Error::other(cause.clone()),
                })
            }
        }
    }
    results
}

/// What the async side of a write hands its blocking writer.
enum Piece {
    Chunk(Bytes),
    /// The data has ended: set the file's size.
    End,
    /// The data, the whole file, has ended: check it has this SHA-256, then finish it.
    Finish(Sha256Hash),
}

impl LocalStore {
    /// [`Service::write`], or with `expected` [`Service::write_file`]: one
    /// blocking task does every write, fed through a bounded queue, and for a
    /// whole file hashes the bytes as it writes them, so finishing it reads
    /// nothing back.
    async fn write_stream(
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
        let (resolved_tx, resolved) = tokio::sync::oneshot::channel();
        let (pieces_tx, mut pieces) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let writer = self.on_blocking(dir, path, move |r| {
            // Nothing is taken from the data of a path that does not resolve.
            let _ = resolved_tx.send(());
            let Some(first) = pieces.blocking_recv() else {
                return Ok(0);
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
            let mut hasher = whole.then(Sha256::new);
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
                            r.check_hash(expected, Sha256Hash::from_hasher(hasher))?;
                        }
                        let size = r.make_final(&file, FileKind::Partial)?;
                        log_finished(&r.dir, &r.path, size, Some(expected));
                        break;
                    }
                }
            }
            // Without End or Finish the caller gave up: what was written stays.
            Ok(written)
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
                Some(expected) => match expected.await {
                    Ok(hash) => Piece::Finish(hash),
                    Err(_) => {
                        return Err(ServiceError::from(invalid(
                            "the data ended without the SHA-256 to check it against: not finished"
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
        let written = written?;
        metrics().store_written.add(written, &[]);
        Ok(written)
    }
}

impl Resolved {
    /// See [`Service::delete`]; all of it in one trip to the blocking pool.
    fn delete_blocking(&self, if_stamp: Option<FileStamp>) -> Result<(), StoreError> {
        // Both forms are checked before either goes: a symlink, FIFO or
        // device in the way is refused like every other call refuses it,
        // and nothing is removed.
        let final_meta = self.lstat_blocking(FileKind::Final)?;
        // A stamped delete is a source's, after its final file was verified
        // at the destination: a partial form beside it was never verified,
        // and may be a user's file that only looks like one, so it stays.
        let partial_meta = match if_stamp {
            Some(_) => None,
            None => self.lstat_blocking(FileKind::Partial)?,
        };
        if let Some(expected) = if_stamp
            && final_meta.is_some_and(|stamp| stamp != expected)
        {
            return Err(self.changed("differs from the version that was verified"));
        }
        for (kind, meta) in [
            (FileKind::Final, final_meta),
            (FileKind::Partial, partial_meta),
        ] {
            let Some(meta) = meta else { continue };
            let size = meta.size;
            match unlinkat(self.parent_dir()?, self.name(kind), AtFlags::empty()) {
                Ok(()) => {
                    tracing::info!(dir = %self.dir, path = %self.path, ?kind, size, "deleted");
                    if kind == FileKind::Final {
                        metrics().store_deleted.add(1, &[]);
                    }
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(self.io("remove file")(e.into())),
            }
        }
        self.remove_empty_parents();
        Ok(())
    }
}

mod resolve;
mod stale;
#[cfg(test)]
mod tests;
