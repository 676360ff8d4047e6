//! How a running move is told to stop: softly, hard, or before a deadline it cannot make.

use std::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The stop signals of one move, shared by whoever may stop it (signal
/// handlers, a deadline timer) and [`crate::move_files`].
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
