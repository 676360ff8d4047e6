//! Deleting: both forms of a path checked, then removed, and the parent
//! directories left empty with them.

use rustix::fs::{AtFlags, unlinkat};
use rustix::io::Errno;

use super::{AUDIT, Resolved};
use crate::error::StoreError;
use crate::service::{FileKind, FileStamp};

impl Resolved {
    /// See [`Service::delete`](crate::Service::delete); all of it in one
    /// trip to the blocking pool. Returns whether a final file was deleted.
    pub(super) fn delete_blocking(&self, if_stamp: Option<FileStamp>) -> Result<bool, StoreError> {
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
        let mut final_deleted = false;
        for (kind, meta) in [
            (FileKind::Final, final_meta),
            (FileKind::Partial, partial_meta),
        ] {
            let Some(meta) = meta else { continue };
            let size = meta.size;
            match unlinkat(self.parent_dir()?, self.name(kind), AtFlags::empty()) {
                Ok(()) => {
                    tracing::info!(target: AUDIT, dir = %self.dir, path = %self.path, ?kind, size, "deleted");
                    final_deleted |= kind == FileKind::Final;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(self.io("remove file")(e.into())),
            }
        }
        self.remove_empty_parents();
        Ok(final_deleted)
    }
}
