//! Who may change a path's files. Calls of one store queue on a lock per
//! path, in memory; a writer also holds an exclusive `flock` of the open
//! file, which refuses another directory id on the same files, another
//! daemon or another process as [`StoreError::Busy`].

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::io::Errno;

use super::{LocalStore, Resolved, resolve};
use crate::error::StoreError;
use crate::path::{DirId, RelPath};
use crate::service::FileKind;

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

impl LocalStore {
    /// Waits until no other call of this store changes `path`'s files, so
    /// what one call wrote and hashed is what it renames.
    pub(super) async fn exclusive(&self, dir: &DirId, path: &RelPath) -> PathLock {
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
pub(super) struct PathLock {
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

impl Resolved {
    /// Takes the write lock of `file`, just opened as the `kind` form, and
    /// checks that it still is the file there. The lock is the file's, not
    /// this store's: another directory id on the same files, another daemon
    /// or another process is refused with [`StoreError::Busy`] rather than
    /// waited for. It is released when `file` is closed.
    pub(super) fn lock_for_write(
        &self,
        file: &std::fs::File,
        kind: FileKind,
    ) -> Result<(), StoreError> {
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
    pub(super) fn check_still_at(
        &self,
        file: &std::fs::File,
        kind: FileKind,
    ) -> Result<(), StoreError> {
        let open = file.metadata().map_err(self.io("stat"))?;
        match resolve::lstat_at(self.parent_dir()?, self.name(kind)) {
            Ok(st) if st.st_dev == open.dev() && st.st_ino == open.ino() => Ok(()),
            Ok(_) | Err(Errno::NOENT) => Err(self.busy()),
            Err(e) => Err(self.io("stat")(e.into())),
        }
    }
}
