//! Partial files left behind by moves that failed or were abandoned: a
//! daemon removes them once nobody has written them for `partial_max_age`,
//! so a disk filled by a failed move does not stay full.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, flock, openat, unlinkat};
use rustix::io::Errno;

use super::walk::walk;
use super::{LocalStore, Resolved};
use crate::error::StoreError;
use crate::path::{DirId, RelPath};
use crate::service::FileKind;

impl LocalStore {
    /// Removes every partial file not modified for `max_age`, each under
    /// its path's lock, and logs each removal as an audit event. A partial
    /// file being written (its write lock taken) is left. Returns how many
    /// were removed; a directory that cannot be walked is logged and skipped.
    pub async fn remove_stale_partials(&self, max_age: Duration) -> usize {
        let dirs: Vec<(DirId, std::path::PathBuf)> = self
            .dirs()
            .map(|(id, root)| (id.clone(), root.to_path_buf()))
            .collect();
        let mut removed = 0;
        for (dir, root) in dirs {
            let task_dir = dir.clone();
            let walked = tokio::task::spawn_blocking(move || walk(&task_dir, &root, None, true))
                .await
                .map_err(|e| e.to_string())
                .and_then(|walked| walked.map_err(|e| e.to_string()));
            let entries = match walked {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(%dir, %error, "cannot look for stale partial files");
                    continue;
                }
            };
            for entry in entries.into_iter().filter(|e| e.kind == FileKind::Partial) {
                if self.remove_if_stale(&dir, &entry.path, max_age).await {
                    removed += 1;
                }
            }
        }
        removed
    }

    async fn remove_if_stale(&self, dir: &DirId, path: &RelPath, max_age: Duration) -> bool {
        let _lock = self.exclusive(dir, path).await;
        let removed = self
            .on_blocking(dir, path, move |r| r.remove_partial_if_stale(max_age))
            .await;
        match removed {
            Ok(removed) => removed,
            Err(e) => {
                tracing::warn!(%dir, %path, error = %e, "cannot remove a stale partial file");
                false
            }
        }
    }
}

impl Resolved {
    fn remove_partial_if_stale(&self, max_age: Duration) -> Result<bool, StoreError> {
        let Some(stamp) = self.lstat_blocking(FileKind::Partial)? else {
            return Ok(false);
        };
        // A modification time before 1970 counts as 1970: long ago either way.
        let modified =
            UNIX_EPOCH + Duration::from_nanos(u64::try_from(stamp.mtime_unix_nanos).unwrap_or(0));
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        if age < max_age {
            return Ok(false);
        }
        // A writer holds the file's lock for as long as it writes: a file
        // idle that long but locked is resumed by someone right now.
        let parent = self.parent_dir()?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = openat(parent, &self.partial_name, flags, Mode::empty())
            .map(std::fs::File::from)
            .map_err(|e| self.io("open")(e.into()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(self.io("lock")(e.into())),
        }
        self.check_still_at(&file, FileKind::Partial)?;
        unlinkat(parent, &self.partial_name, AtFlags::empty())
            .map_err(|e| self.io("remove stale partial file")(e.into()))?;
        tracing::info!(
            dir = %self.dir,
            path = %self.path,
            size = stamp.size,
            idle_secs = age.as_secs(),
            "stale partial file removed"
        );
        Ok(true)
    }
}
