//! What a move takes from a directory id: all of it, or one subtree of it,
//! and where that lands on the destination.

use crate::path::{DirId, RelPath};

/// A directory id, or a subtree of it, moved into the destination's root
/// or a subtree of it.
///
/// Paths map as rclone's `move SRC DST` does: the *contents* of the source
/// root go into the destination root. A file at `source/REST` lands at
/// `destination/REST`, for the same directory id on both sides:
///
/// | source     | destination | `photos/2024/a.jpg` lands at |
/// |------------|-------------|------------------------------|
/// | —          | —           | `photos/2024/a.jpg`          |
/// | `2024`     | —           | `photos/a.jpg`               |
/// | —          | `2024`      | `photos/2024/2024/a.jpg`     |
/// | `2024`     | `old/2024`  | `photos/old/2024/a.jpg`      |
///
/// Only the subtree is listed on either side, so what lies outside it is
/// neither moved nor looked at. The source's directories left empty are
/// removed, the subtree's root included, but never the directory id's root.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subtree {
    /// The directory id, served by both sides.
    pub dir: DirId,
    /// The source's subtree; `None`: the whole directory.
    pub source: Option<RelPath>,
    /// The destination's subtree; `None`: the whole directory.
    pub destination: Option<RelPath>,
}

impl From<DirId> for Subtree {
    /// The whole directory, on both sides.
    fn from(dir: DirId) -> Self {
        Subtree {
            dir,
            source: None,
            destination: None,
        }
    }
}

impl Subtree {
    /// The path of a listed source file relative to the moved root, which
    /// filters match; `None` for a path outside the source's subtree, which
    /// a listing of it never gives.
    pub(super) fn relative(&self, source_path: &RelPath) -> Option<RelPath> {
        source_path.below(self.source.as_ref())
    }

    /// Where a file at `relative` (to the moved root) lands on the destination.
    pub(super) fn target(&self, relative: &RelPath) -> RelPath {
        relative.under(self.destination.as_ref())
    }
}
