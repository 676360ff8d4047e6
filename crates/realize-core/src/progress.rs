//! What a move reports while it runs: the `Progress` trait and its no-op implementation.
//!
//! Modelled on ripgrep's `Sink`: every method has a default that does
//! nothing, so an implementation overrides only what it shows.

use std::sync::Arc;

use crate::error::MoveError;
use crate::mover::Plan;
use crate::path::{DirId, RelPath};

/// What is happening to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Comparing what the destination already has with the source, by hash.
    Hashing,
    /// Sending bytes or deltas to the destination.
    Copying,
    /// Verifying that the destination's hash equals the source's.
    Checking,
    /// Deleting the verified source.
    Deleting,
}

/// Receives the events of a whole move.
///
/// Only [`Progress::file`] is required; the other methods do nothing unless
/// overridden. A progress that counts the files moved:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use realize_core::{DirId, FileProgress, Progress, RelPath};
///
/// #[derive(Default)]
/// struct Counter(Arc<AtomicU64>);
///
/// struct OneFile(Arc<AtomicU64>);
///
/// impl Progress for Counter {
///     fn totals(&self, files: u64, bytes: u64) {
///         println!("{files} files, {bytes} bytes to move");
///     }
///
///     fn file(&self, _dir: &DirId, _path: &RelPath, _size: u64) -> Arc<dyn FileProgress> {
///         Arc::new(OneFile(self.0.clone()))
///     }
/// }
///
/// impl FileProgress for OneFile {
///     fn moved(&self) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (from, to) = (tempfile::tempdir()?, tempfile::tempdir()?);
/// # std::fs::write(from.path().join("a"), "a")?;
/// # let dir = DirId::new("d")?;
/// # let src = realize_core::LocalStore::new([(dir.clone(), from.path().to_path_buf())]);
/// # let dst = realize_core::LocalStore::new([(dir.clone(), to.path().to_path_buf())]);
/// let counter = Counter::default();
/// realize_core::Move::new(&src, &dst).dirs([dir]).progress(&counter).run().await?;
/// assert_eq!(counter.0.load(Ordering::Relaxed), 1);
/// # Ok(())
/// # }
/// ```
pub trait Progress: Send + Sync {
    /// The files of `dir` are being listed on both sides.
    fn listing(&self, _dir: &DirId) {}

    /// A directory could not be moved at all (listing failed).
    fn dir_failed(&self, _dir: &DirId, _error: &MoveError) {}

    /// A regular file of the source is named like a partial file
    /// (`path` is its name on disk, `.NAME.part`), so it is not moved.
    fn skipped(&self, _dir: &DirId, _path: &RelPath) {}

    /// A source file the move's rules exclude: it stays where it is.
    fn excluded(&self, _dir: &DirId, _path: &RelPath) {}

    /// In a dry run, what the move would do to a source file.
    fn planned(&self, _dir: &DirId, _path: &RelPath, _size: u64, _plan: Plan) {}

    /// The totals, once every directory is listed.
    fn totals(&self, _files: u64, _bytes: u64) {}

    /// A file starts moving; the object returned receives its events.
    fn file(&self, dir: &DirId, path: &RelPath, size: u64) -> Arc<dyn FileProgress>;
}

/// Receives the events of one file. Shared with the streams that carry its
/// bytes, so every method takes `&self`.
pub trait FileProgress: Send + Sync {
    /// Enters a new phase; called only when the phase changes.
    fn phase(&self, _phase: Phase) {}

    /// `bytes` more of the file are at the destination (copied, patched, or
    /// found identical).
    fn bytes(&self, _bytes: u64) {}

    /// Verified at the destination and deleted from the source.
    fn moved(&self) {}

    /// Failed; the source is kept.
    fn failed(&self, _error: &MoveError) {}

    /// Stopped by cancellation; the source is kept and the destination's
    /// partial file can be resumed.
    fn interrupted(&self) {}
}

/// For callers that want no progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn file(&self, _dir: &DirId, _path: &RelPath, _size: u64) -> Arc<dyn FileProgress> {
        Arc::new(NoProgress)
    }
}

impl FileProgress for NoProgress {}

#[cfg(test)]
mod tests;
