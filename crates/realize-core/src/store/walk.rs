//! What the store serves: each root walked into a listing, and who each
//! root is (host, device and inode), so two sides can tell they overlap.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use futures::{StreamExt, stream};
use rustix::fs::{Dir, FileType, OFlags};

use super::{LocalStore, resolve};
use crate::digest::DigestAlgorithm;
use crate::error::{ServiceError, StoreError};
use crate::path::{DirId, RelPath, partial_target};
use crate::service::{DirInfo, Entry, EntryStream, FileKind, ServiceInfo};

impl LocalStore {
    /// [`Service::info`](crate::Service::info): the roots' identities,
    /// taken in the blocking pool.
    pub(super) async fn service_info(&self) -> Result<ServiceInfo, ServiceError> {
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
            digests: DigestAlgorithm::PREFERRED.to_vec(),
        })
    }

    /// [`Service::list`](crate::Service::list): the root, or the subtree
    /// `prefix` of it, walked in the blocking pool.
    pub(super) async fn list_entries(
        &self,
        dir: &DirId,
        prefix: Option<&RelPath>,
        include_partial: bool,
    ) -> Result<EntryStream, ServiceError> {
        let root = self.root(dir)?.to_path_buf();
        let dir = dir.clone();
        let task_dir = dir.clone();
        let prefix = prefix.cloned();
        let entries = tokio::task::spawn_blocking(move || {
            walk(&task_dir, &root, prefix.as_ref(), include_partial)
        })
        .await
        .map_err(|source| StoreError::Task {
            dir: dir.to_string(),
            source,
        })??;
        Ok(stream::iter(entries.into_iter().map(Ok)).boxed())
    }
}

/// Walks a root, or the subtree `prefix` of it, without following symlinks;
/// what is not a regular file or a directory is skipped with a warning. Each
/// directory is opened beneath the root as a path's parent is
/// ([`resolve::open_dir`]) and its entries are looked at through it, so a
/// directory swapped for a symlink meanwhile is skipped, never listed.
///
/// A prefix that does not exist has no files; one that is a file, or goes
/// through a symlink or a file, is refused: the caller named a directory.
pub(super) fn walk(
    dir: &DirId,
    root: &Path,
    prefix: Option<&RelPath>,
    include_partial: bool,
) -> Result<Vec<Entry>, StoreError> {
    let list_root = |source: io::Error| StoreError::Io {
        dir: dir.to_string(),
        path: prefix.map(RelPath::to_string).unwrap_or_default(),
        op: "list root",
        source,
    };
    let root = resolve::open_root(root).map_err(list_root)?;
    let mut entries = Vec::new();
    let mut pending: Vec<Option<RelPath>> = vec![prefix.cloned()];
    while let Some(rel) = pending.pop() {
        let components: Vec<&str> = rel.iter().flat_map(RelPath::components).collect();
        let listing = match resolve::open_dir(root.as_fd(), &components, OFlags::RDONLY) {
            Err(resolve::DirError::Missing) if rel.is_some() && rel.as_ref() == prefix => {
                return Ok(Vec::new());
            }
            opened => opened
                .map_err(io::Error::from)
                .and_then(|fd| Ok(Dir::new(fd)?)),
        };
        let mut listing = match listing {
            Ok(listing) => listing,
            Err(source) if rel.as_ref() == prefix => return Err(list_root(source)),
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

/// Identifies this machine, so two services can tell they share a disk.
pub(super) fn host_identity() -> String {
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

/// The closest directory above `path` that exists, canonicalized.
fn nearest_existing_ancestor(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute
        .ancestors()
        .skip(1)
        .find_map(|ancestor| std::fs::canonicalize(ancestor).ok())
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
