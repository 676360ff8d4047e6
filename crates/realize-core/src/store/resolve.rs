//! Resolving a path beneath its root through directory file descriptors.
//!
//! Checking each component with `lstat` and then opening the path by name
//! leaves a window: a local user who can write inside the root swaps a
//! directory for a symlink between the check and the open, and the open
//! follows it out of the root. So nothing here looks a name up twice. The
//! parent directory of a path is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, which refuses a symlink anywhere in the path in the
//! same lookup that opens it, or, where the kernel has no `openat2` (before
//! Linux 5.6), by one `openat(O_NOFOLLOW | O_DIRECTORY)` per component, each
//! from the directory the previous one opened. Every operation on the file
//! then names it relative to that descriptor (`openat`, `statat`,
//! `renameat`, `unlinkat`), so a swap after the resolution changes nothing.
//!
//! What a resolution gives a call is a [`Resolved`]: the parent directory
//! held open, the names of the path's two forms in it, how each form is
//! looked at and opened for reading, and the errors that name the path.

use std::cell::OnceCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags, Stat, mkdirat, openat, openat2, statat,
    unlinkat,
};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::path::{DirId, RelPath};
use crate::service::{ByteRange, FileKind, FileStamp};

/// Set once `openat2` answered ENOSYS: the kernel will not grow it while
/// this process runs, so later resolutions go straight to the walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Why a directory beneath the root was not opened.
#[derive(Debug)]
pub(super) enum DirError {
    /// A component does not exist.
    Missing,
    /// The component at this index is a symlink or not a directory.
    NotADirectory(usize),
    Io(io::Error),
}

impl From<DirError> for io::Error {
    fn from(error: DirError) -> Self {
        match error {
            DirError::Missing => io::ErrorKind::NotFound.into(),
            DirError::NotADirectory(_) => {
                io::Error::new(io::ErrorKind::NotADirectory, "a symlink or not a directory")
            }
            DirError::Io(e) => e,
        }
    }
}

/// Opens a root. Symlinks in the root's own path are followed: the operator
/// chose it; only what lies beneath it is the clients'.
pub(super) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `components` names beneath `root` (the root itself
/// if there are none) with `flags` (`PATH` for a directory only used as the
/// base of `*at` calls, `RDONLY` to read its entries), never through a
/// symlink.
pub(super) fn open_dir(
    root: BorrowedFd<'_>,
    components: &[&str],
    flags: OFlags,
) -> Result<OwnedFd, DirError> {
    if components.is_empty() || NO_OPENAT2.load(Ordering::Relaxed) {
        return walk(root, components, flags);
    }
    match openat2(
        root,
        components.join("/"),
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(dir) => Ok(dir),
        // Resolution goes left to right and stops at the first symlink: a
        // missing component had only directories before it.
        Err(Errno::NOENT) => Err(DirError::Missing),
        Err(Errno::NOSYS) => {
            NO_OPENAT2.store(true, Ordering::Relaxed);
            walk(root, components, flags)
        }
        // A symlink or a file in the way (ELOOP, ENOTDIR): the walk names the
        // component. Anything else (a seccomp filter's EPERM, say): the walk
        // is as safe, and answers with its own error.
        Err(_) => walk(root, components, flags),
    }
}

/// [`open_dir`] without `openat2`: one `openat(O_NOFOLLOW | O_DIRECTORY)`
/// per component, from the directory the previous one opened, so no name is
/// looked up twice and none is followed.
pub(super) fn walk(
    root: BorrowedFd<'_>,
    components: &[&str],
    flags: OFlags,
) -> Result<OwnedFd, DirError> {
    let Some((last, parents)) = components.split_last() else {
        return openat(
            root,
            ".",
            flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DirError::Io(e.into()));
    };
    let mut dir: Option<OwnedFd> = None;
    for (index, component) in parents.iter().enumerate() {
        let at = dir.as_ref().map_or(root, AsFd::as_fd);
        dir = Some(open_component(at, component, index, OFlags::PATH)?);
    }
    let at = dir.as_ref().map_or(root, AsFd::as_fd);
    open_component(at, last, parents.len(), flags)
}

/// Opens the directory `name` in `at`, refusing a symlink or a non-directory.
fn open_component(
    at: BorrowedFd<'_>,
    name: &str,
    index: usize,
    flags: OFlags,
) -> Result<OwnedFd, DirError> {
    let flags = flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    openat(at, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::NOENT => DirError::Missing,
        // O_DIRECTORY answers ENOTDIR for a symlink as for a file; O_NOFOLLOW
        // answers ELOOP where the directory check comes second.
        Errno::NOTDIR | Errno::LOOP => DirError::NotADirectory(index),
        e => DirError::Io(e.into()),
    })
}

/// Opens the directory `components` names beneath `root`, creating what is
/// missing (mode 0o777 less the umask, as `create_dir_all`), one component
/// at a time so that each is checked as it is opened.
fn create_dirs(root: BorrowedFd<'_>, components: &[&str]) -> Result<OwnedFd, DirError> {
    let mut dir: Option<OwnedFd> = None;
    for (index, component) in components.iter().enumerate() {
        let at = dir.as_ref().map_or(root, AsFd::as_fd);
        match mkdirat(at, *component, Mode::from(0o777)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(DirError::Io(e.into())),
        }
        dir = Some(open_component(at, component, index, OFlags::PATH)?);
    }
    match dir {
        Some(dir) => Ok(dir),
        None => walk(root, &[], OFlags::PATH),
    }
}

/// Removes the directories `components` names, deepest first, while they
/// are empty; never the root. Each is removed by name from its parent,
/// itself opened beneath the root, and `unlinkat(AT_REMOVEDIR)` removes a
/// directory, never what a symlink points to.
fn remove_empty_dirs(root: BorrowedFd<'_>, components: &[&str]) {
    for depth in (1..=components.len()).rev() {
        let Ok(parent) = open_dir(root, &components[..depth - 1], OFlags::PATH) else {
            break;
        };
        // Fails on the first directory that is not empty, which is the point.
        if unlinkat(&parent, components[depth - 1], AtFlags::REMOVEDIR).is_err() {
            break;
        }
    }
}

/// The stamp of what `statat` found, as [`super::stamp_of`] makes it of
/// an open file's metadata.
pub(super) fn stamp_of_stat(st: &Stat) -> FileStamp {
    // The kernel's fields are never negative nor out of range (nanoseconds
    // stay below 10^9); the fallbacks only keep the conversions total.
    FileStamp {
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime_unix_nanos: st
            .st_mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::try_from(st.st_mtime_nsec).unwrap_or(0)),
        inode: st.st_ino,
    }
}

/// Whether `st` is a regular file's.
pub(super) fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// `statat` of `name` in `dir`, not following a symlink.
pub(super) fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> Result<Stat, Errno> {
    statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// A path resolved beneath its root: the root and the parent directory held
/// open, and the names of the two forms in it (see [`resolve_blocking`]).
#[derive(Debug)]
pub(super) struct Resolved {
    pub(super) dir: String,
    pub(super) path: String,
    root: OwnedFd,
    /// The components of the parent directory, beneath the root.
    parents: Vec<String>,
    /// The parent directory, once it exists.
    parent: OnceCell<OwnedFd>,
    final_name: String,
    pub(super) partial_name: String,
}

/// Resolves `path` beneath `root`: opens the root and the path's parent
/// directory, if it exists; see the module's documentation.
pub(super) fn resolve_blocking(
    root: &Path,
    dir: &DirId,
    path: &RelPath,
) -> Result<Resolved, StoreError> {
    // A vanished root (an unmounted disk, say) must not be recreated by a
    // write: that would put files where nobody expects them.
    let root = open_root(root).map_err(|source| StoreError::RootUnavailable {
        dir: dir.to_string(),
        source,
    })?;
    let components: Vec<&str> = path.components().collect();
    let (name, parents) = components
        .split_last()
        .ok_or_else(|| StoreError::InvalidRequest {
            dir: dir.to_string(),
            path: path.to_string(),
            reason: "empty path".into(),
        })?;
    let mut resolved = Resolved {
        dir: dir.to_string(),
        path: path.to_string(),
        root,
        parents: parents.iter().map(|c| c.to_string()).collect(),
        parent: OnceCell::new(),
        final_name: name.to_string(),
        partial_name: path.partial_name(),
    };
    match open_dir(resolved.root.as_fd(), parents, OFlags::PATH) {
        Ok(parent) => resolved.parent = OnceCell::from(parent),
        // Nothing to find there; a write creates it.
        Err(DirError::Missing) => {}
        Err(e) => return Err(resolved.dir_error(e, "open parent directory")),
    }
    Ok(resolved)
}

impl Resolved {
    pub(super) fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            dir: self.dir.clone(),
            path: self.path.clone(),
            op,
            source,
        }
    }

    pub(super) fn invalid(&self, reason: impl Into<String>) -> StoreError {
        StoreError::InvalidRequest {
            dir: self.dir.clone(),
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    pub(super) fn out_of_range(&self, range: ByteRange, size: u64) -> StoreError {
        StoreError::OutOfRange {
            dir: self.dir.clone(),
            path: self.path.clone(),
            start: range.start,
            end: range.end,
            size,
        }
    }

    pub(super) fn changed(&self, what: &'static str) -> StoreError {
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

    pub(super) fn busy(&self) -> StoreError {
        StoreError::Busy {
            dir: self.dir.clone(),
            path: self.path.clone(),
        }
    }

    pub(super) fn name(&self, kind: FileKind) -> &str {
        match kind {
            FileKind::Final => &self.final_name,
            FileKind::Partial => &self.partial_name,
        }
    }

    /// The stamp of a form if it exists; an error if it is not a regular file.
    pub(super) fn lstat_blocking(&self, kind: FileKind) -> Result<Option<FileStamp>, StoreError> {
        let Some(parent) = self.parent.get() else {
            return Ok(None);
        };
        match lstat_at(parent.as_fd(), self.name(kind)) {
            Ok(st) if is_file(&st) => Ok(Some(stamp_of_stat(&st))),
            Ok(_) => Err(self.not_a_file()),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io("stat")(e.into())),
        }
    }

    /// The form that writes and deltas apply to: partial if present, else final.
    pub(super) fn working_copy(&self) -> Result<Option<FileKind>, StoreError> {
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
    pub(super) fn open_blocking(&self, kind: FileKind) -> Result<std::fs::File, StoreError> {
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

    fn parent_components(&self) -> Vec<&str> {
        self.parents.iter().map(String::as_str).collect()
    }

    /// The parent directory, opened; `NotFound` if it does not exist.
    pub(super) fn parent_dir(&self) -> Result<BorrowedFd<'_>, StoreError> {
        self.parent
            .get()
            .map(AsFd::as_fd)
            .ok_or_else(|| StoreError::NotFound {
                dir: self.dir.clone(),
                path: self.path.clone(),
            })
    }

    /// The parent directory, created beneath the root if it does not exist.
    pub(super) fn parent_dir_or_create(&self) -> Result<BorrowedFd<'_>, StoreError> {
        if let Some(parent) = self.parent.get() {
            return Ok(parent.as_fd());
        }
        let created = create_dirs(self.root.as_fd(), &self.parent_components())
            .map_err(|e| self.dir_error(e, "create parent directories"))?;
        Ok(self.parent.get_or_init(|| created).as_fd())
    }

    /// Removes the parent directories left empty, up to the root.
    pub(super) fn remove_empty_parents(&self) {
        remove_empty_dirs(self.root.as_fd(), &self.parent_components());
    }

    fn dir_error(&self, error: DirError, op: &'static str) -> StoreError {
        match error {
            DirError::NotADirectory(index) => StoreError::NotBeneathRoot {
                dir: self.dir.clone(),
                path: self.path.clone(),
                component: self.parents.get(index).cloned().unwrap_or_default(),
            },
            error => self.io(op)(error.into()),
        }
    }
}

#[cfg(test)]
mod tests;
