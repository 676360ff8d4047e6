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
