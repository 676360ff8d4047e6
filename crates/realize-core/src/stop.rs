//! How a running move is told to stop: softly, hard, or before a deadline it cannot make.

use std::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The stop signals of one move, shared by whoever may stop it (signal
/// handlers, a deadline timer) and [`crate::move_files`].
///
/// Clones share the signals: keep one for the move, hand others out.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use realize_core::{DirId, LocalStore, Move, Stop};
///
/// # let (from, to) = (tempfile::tempdir()?, tempfile::tempdir()?);
/// # std::fs::write(from.path().join("a"), "a")?;
/// # let dir = DirId::new("d")?;
/// # let src = LocalStore::new([(dir.clone(), from.path().to_path_buf())]);
/// # let dst = LocalStore::new([(dir.clone(), to.path().to_path_buf())]);
/// let stop = Stop::new();
/// // Whoever decides to stop (here, before the move starts) holds a clone.
/// let handle = stop.clone();
/// handle.soft();
/// let summary = Move::new(&src, &dst).dirs([dir]).stop(&stop).run().await?;
/// // Soft: no file started, so none moved and the source is intact.
/// assert_eq!(summary.files_moved, 0);
/// assert!(from.path().join("a").exists());
/// assert!(stop.is_stopping() && !stop.is_interrupted());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Stop {
    /// Files in flight are interrupted; implies `no_new_files`.
    interrupt: CancellationToken,
    /// No file starts any more.
    no_new_files: CancellationToken,
    /// A file that cannot finish by then at the rate measured so far does
    /// not start.
    predict_deadline: Option<Instant>,
}

impl Default for Stop {
    fn default() -> Self {
        let interrupt = CancellationToken::new();
        Stop {
            no_new_files: interrupt.child_token(),
            interrupt,
            predict_deadline: None,
        }
    }
}

impl Stop {
    /// A stop that has not been signalled, with no deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Files that cannot finish before `deadline`, at the rate measured so
    /// far in this move, will not start.
    pub fn with_predicted_deadline(mut self, deadline: Instant) -> Self {
        self.predict_deadline = Some(deadline);
        self
    }

    /// Start no new file; let those in flight finish.
    pub fn soft(&self) {
        self.no_new_files.cancel();
    }

    /// Start no new file and interrupt those in flight, leaving their
    /// partial files to be resumed.
    pub fn hard(&self) {
        self.interrupt.cancel();
    }

    /// Whether new files may still start.
    pub fn is_stopping(&self) -> bool {
        self.no_new_files.is_cancelled()
    }

    /// Whether files in flight are being interrupted.
    pub fn is_interrupted(&self) -> bool {
        self.interrupt.is_cancelled()
    }

    /// Completes on a hard stop.
    pub fn interrupted(&self) -> WaitForCancellationFuture<'_> {
        self.interrupt.cancelled()
    }

    /// Completes on any stop.
    pub fn stopping(&self) -> WaitForCancellationFuture<'_> {
        self.no_new_files.cancelled()
    }

    pub(crate) fn predicted_deadline(&self) -> Option<Instant> {
        self.predict_deadline
    }
}
