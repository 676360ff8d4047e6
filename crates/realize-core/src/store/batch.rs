//! The batches of [`Service::read_files`], [`Service::write_files`] and
//! [`Service::delete_files`]: each in one trip to the blocking pool.
//!
//! [`Service::read_files`]: crate::Service::read_files
//! [`Service::write_files`]: crate::Service::write_files
//! [`Service::delete_files`]: crate::Service::delete_files

use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::read::read_whole;
use super::write::{log_finished, write_whole};
use super::{LocalStore, Resolved, resolve_blocking};
use crate::digest::{Digest, DigestAlgorithm};
use crate::error::{ErrorChain, ServiceError, StoreError};
use crate::path::{DirId, RelPath};
use crate::service::{FileStamp, MAX_WHOLE_FILE, WholeFile};

impl LocalStore {
    /// [`Service::read_files`](crate::Service::read_files).
    pub(super) async fn read_batch(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
        algorithm: DigestAlgorithm,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        let items = files.to_vec();
        let paths: Vec<RelPath> = files.iter().map(|(path, _)| path.clone()).collect();
        let read = self
            .on_blocking_each(dir, items, move |r, stamp: FileStamp| {
                if stamp.size > MAX_WHOLE_FILE {
                    return Err(r.invalid(format!(
                        "{} bytes is too large to read whole (at most {MAX_WHOLE_FILE})",
                        stamp.size
                    )));
                }
                read_whole(r, stamp, algorithm)
            })
            .await;
        read.into_iter()
            .zip(paths)
            .map(|(result, path)| result.map(|(data, digest)| WholeFile { path, data, digest }))
            .collect()
    }

    /// [`Service::write_files`](crate::Service::write_files): every path
    /// locked, then one blocking task.
    pub(super) async fn write_batch(
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
                    // A file answered Ok was renamed and its directory synced.
                    self.inner.metrics.store_written.add(size, &[]);
                    self.inner.metrics.store_finished.add(1, &[]);
                    Ok(size)
                })
                .collect(),
            Err(source) => task_failed(&task_dir, count, &source),
        }
    }

    /// [`Service::delete_files`](crate::Service::delete_files).
    pub(super) async fn delete_batch(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        let items = files.to_vec();
        let deleted = self
            .on_blocking_each(dir, items, |r, stamp| r.delete_blocking(Some(stamp)))
            .await;
        deleted
            .into_iter()
            .map(|result| result.map(|final_deleted| self.count_deleted(final_deleted)))
            .collect()
    }

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

/// The blocking part of [`LocalStore::write_batch`]. Each directory is
/// synced once, after the renames of its files and before any of them is
/// reported finished.
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
    let mut renamed: Vec<(usize, RelPath, usize, u64, Digest)> = Vec::new();
    let mut results: Vec<Result<u64, StoreError>> = files
        .into_iter()
        .enumerate()
        .map(|(index, file)| {
            let r = resolve_blocking(root, dir, &file.path)?;
            let size = write_whole(&r, &file.data, file.digest)?;
            let parent = *parent_index.entry(r.parent_identity()?).or_insert_with(|| {
                parents.push(r);
                parents.len() - 1
            });
            renamed.push((index, file.path, parent, size, file.digest));
            Ok(size)
        })
        .collect();
    let synced: Vec<Result<(), String>> = parents
        .iter()
        .map(|r| r.sync_parent().map_err(|e| ErrorChain(&e).to_string()))
        .collect();
    for (index, path, parent, size, digest) in renamed {
        match &synced[parent] {
            Ok(()) => log_finished(dir.as_str(), path.as_str(), size, Some(digest)),
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
