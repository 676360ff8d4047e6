//! [`Move`], the entry point that reads at the call site: each setting named, the rest left to defaults.

use super::Subtree;
use super::{MoveOptions, MoveSummary, move_files};
use crate::error::MoveError;
use crate::progress::{NoProgress, Progress};
use crate::service::Service;
use crate::stop::Stop;

/// A move of directories from one [`Service`] to another, set up by
/// name, then [`run`](Move::run).
///
/// Without [`dirs`](Move::dirs), nothing moves; without
/// [`options`](Move::options), [`MoveOptions::default`]; without
/// [`progress`](Move::progress), nothing is reported; without
/// [`stop`](Move::stop), the move runs until every file is done.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use realize_core::{DirId, LocalStore, Move, MoveOptions, Stop};
///
/// let (from, to) = (tempfile::tempdir()?, tempfile::tempdir()?);
/// std::fs::write(from.path().join("report.txt"), "quarterly numbers")?;
/// let docs = DirId::new("docs")?;
/// let src = LocalStore::new([(docs.clone(), from.path().to_path_buf())]);
/// let dst = LocalStore::new([(docs.clone(), to.path().to_path_buf())]);
///
/// let mut options = MoveOptions::default();
/// options.parallel = 2;
/// let stop = Stop::new();
/// let summary = Move::new(&src, &dst)
///     .dirs([docs])
///     .options(options)
///     .stop(&stop)
///     .run()
///     .await?;
///
/// assert_eq!(summary.files_moved, 1);
/// assert!(summary.failures.is_empty());
/// assert_eq!(std::fs::read(to.path().join("report.txt"))?, b"quarterly numbers");
/// assert!(!from.path().join("report.txt").exists());
/// # Ok(())
/// # }
/// ```
#[must_use = "a move does nothing until it is run"]
pub struct Move<'a> {
    src: &'a dyn Service,
    dst: &'a dyn Service,
    dirs: Vec<Subtree>,
    options: MoveOptions,
    progress: &'a dyn Progress,
    stop: Option<&'a Stop>,
    meter: Option<opentelemetry::metrics::Meter>,
}

impl std::fmt::Debug for Move<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Move")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("dirs", &self.dirs)
            .field("options", &self.options)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl<'a> Move<'a> {
    /// A move from `src` to `dst` of no directory yet.
    pub fn new(src: &'a dyn Service, dst: &'a dyn Service) -> Self {
        Move {
            src,
            dst,
            dirs: Vec::new(),
            options: MoveOptions::default(),
            progress: &NoProgress,
            stop: None,
            meter: None,
        }
    }

    /// Adds directories to move, whole ([`DirId`](crate::DirId)) or a subtree of one
    /// ([`Subtree`]); both sides must serve each of them.
    pub fn dirs(mut self, dirs: impl IntoIterator<Item = impl Into<Subtree>>) -> Self {
        self.dirs.extend(dirs.into_iter().map(Into::into));
        self
    }

    /// How the move is tuned (files in flight, delta ranges).
    pub fn options(mut self, options: MoveOptions) -> Self {
        self.options = options;
        self
    }

    /// Records the move's instruments with `meter` rather than
    /// OpenTelemetry's global meter provider (see [`MoveOptions::meter`]),
    /// whatever [`options`](Move::options) says.
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Where the move reports what it does.
    pub fn progress(mut self, progress: &'a dyn Progress) -> Self {
        self.progress = progress;
        self
    }

    /// How the move is told to stop, softly or hard (see [`Stop`]).
    pub fn stop(mut self, stop: &'a Stop) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Runs the move; see [`move_files`], which this calls, for what
    /// fails the whole move and what only one file.
    pub async fn run(self) -> Result<MoveSummary, MoveError> {
        let never = Stop::new();
        let stop = self.stop.unwrap_or(&never);
        let mut options = self.options;
        if let Some(meter) = self.meter {
            options.meter = Some(meter);
        }
        move_files(
            self.src,
            self.dst,
            &self.dirs,
            &options,
            self.progress,
            stop,
        )
        .await
    }
}
