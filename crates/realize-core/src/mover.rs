//! The move algorithm: copy what the destination lacks, verify, then delete the source.
//!
//! For each file, in this order and never another:
//! 1. bring the destination's partial file to the source's content, sending
//!    only what differs (ranges whose hashes already match are skipped, the
//!    others are patched with an rsync delta, bytes past the end are copied);
//! 2. check that the SHA-256 of the destination equals the source's, and
//!    that the source still has the stamp it was listed with;
//! 3. `finish` the destination (fsync, atomic rename);
//! 4. only then delete the source, if it still has that stamp.
//!
//! Any failure before step 4 leaves the source untouched, so at every
//! instant one complete, verified copy exists.
//!
//! A file the destination has in no form is read once: its bytes are hashed
//! on their way and the destination hashes what it writes, so steps 1 to 3
//! are one call ([`Service::write_file`]), and small ones go in batches
//! ([`Service::read_files`], [`Service::write_files`],
//! [`Service::delete_files`]), in the same order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryFutureExt, TryStreamExt, future, stream};
use tracing::Instrument;

use crate::delta;
use crate::digest::{Digest, DigestAlgorithm};
use crate::error::{ErrorChain, ErrorCode, ServiceError};
pub use crate::error::{MoveError, Side};
use crate::metrics::MoveMetrics;
use crate::path::{DirId, RelPath};
use crate::progress::{FileProgress, Phase, Progress};
use crate::service::{
    ByteRange, ByteStream, Entry, ExpectedHash, FileKind, FileStamp, MAX_WHOLE_FILE, Service,
};
use crate::stop::Stop;

mod batch;
mod builder;
mod listing;
mod plan;
mod rules;
mod subtree;
mod transfer;

use batch::{Work, batched, move_batch};
pub use builder::Move;
pub use listing::check_move;
use listing::{DESTINATION_LOOKS, DestinationState, destination_state, list_dir};
pub use plan::{Plan, Planned};
pub use rules::{FilterRules, InvalidRule, Rule};
pub use subtree::Subtree;
use transfer::Transfer;

/// Files below this size do not count against `MoveOptions::parallel`.
const SMALL_FILE: u64 = 1024 * 1024;
/// How many files may be in flight for each of `MoveOptions::parallel`,
/// when they are small.
const SMALL_FILES_PER_SLOT: usize = 8;

/// Tuning of a move; fields may be added, so start from [`MoveOptions::default`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MoveOptions {
    /// Files of 1 MiB or more in flight at once; smaller files may be up to
    /// eight times as many, except with 1, which moves one file at a time;
    /// and batches of small new files in flight at once.
    pub parallel: usize,
    /// Bytes compared, diffed and patched at a time when resuming; bounds
    /// the memory a delta needs on each side.
    pub range_size: u64,
    /// rsync block size of the signatures.
    pub block_size: u32,
    /// The digest that verifies each file; `None`: the first of
    /// [`DigestAlgorithm::PREFERRED`] both sides support.
    pub digest: Option<DigestAlgorithm>,
    /// Which files are moved, by their path relative to the moved root (a
    /// sub-path's root for a sub-path move); the others stay at the source.
    pub filter: FilterRules,
    /// Change nothing on either side: list, compare, and report each
    /// file's [`Plan`] (`Progress::planned`) and their count
    /// ([`MoveSummary::planned`]) instead of moving it.
    pub dry_run: bool,
    /// Where the move's instruments (files moved, failed, interrupted,
    /// bytes moved, bytes a resume did not send) are recorded; `None`:
    /// OpenTelemetry's global meter provider, which records nothing unless
    /// the program installed one.
    pub meter: Option<opentelemetry::metrics::Meter>,
    /// The instruments made from `meter`, once per move.
    recorded: Option<Arc<MoveMetrics>>,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            parallel: 4,
            range_size: 8 * 1024 * 1024,
            block_size: 4096,
            digest: None,
            filter: FilterRules::default(),
            dry_run: false,
            meter: None,
            recorded: None,
        }
    }
}

impl MoveOptions {
    /// How many files may be in flight; `parallel` 1 means one at a time.
    fn files_in_flight(&self) -> usize {
        match self.parallel {
            1 => 1,
            n => n * SMALL_FILES_PER_SLOT,
        }
    }

    /// The digest of this move, once [`check_move`] has chosen it.
    fn algorithm(&self) -> DigestAlgorithm {
        self.digest.unwrap_or(DigestAlgorithm::PREFERRED[0])
    }

    /// The instruments this move records to.
    fn recorded(&self) -> Arc<MoveMetrics> {
        self.recorded.clone().unwrap_or_else(MoveMetrics::global)
    }

    /// The options with every field in the range the stores accept, so an
    /// embedding program cannot make a move loop (range 0) or always fail,
    /// and with the digest both sides agreed on.
    fn clamped(&self, digest: DigestAlgorithm) -> MoveOptions {
        let block_size = self
            .block_size
            .clamp(delta::MIN_BLOCK_SIZE, delta::MAX_BLOCK_SIZE);
        MoveOptions {
            parallel: self.parallel.max(1),
            range_size: self
                .range_size
                .clamp(u64::from(block_size), delta::MAX_RANGE),
            block_size,
            digest: Some(digest),
            filter: self.filter.clone(),
            dry_run: self.dry_run,
            meter: self.meter.clone(),
            recorded: Some(match &self.meter {
                Some(meter) => Arc::new(MoveMetrics::new(meter)),
                None => MoveMetrics::global(),
            }),
        }
    }
}

/// A file, or a whole directory, that could not be moved.
#[derive(Debug)]
#[non_exhaustive]
pub struct Failure {
    /// The directory.
    pub dir: DirId,
    /// The file, or `None` when the whole directory failed (it could not be listed).
    pub path: Option<RelPath>,
    /// Why.
    pub error: MoveError,
}

/// What a move did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct MoveSummary {
    /// Files verified at the destination and deleted from the source.
    pub files_moved: u64,
    /// Files that failed; their sources are intact (see [`MoveSummary::failures`]).
    pub files_failed: u64,
    /// Files left unmoved because the move was cancelled: those in flight
    /// (their partial files stay resumable) and those not started.
    pub files_interrupted: u64,
    /// Regular files the source has under a partial file's name
    /// (`.NAME.part`): never moved, since a partial file is never a source.
    pub files_skipped: u64,
    /// Source files the rules (`MoveOptions::filter`) leave where they are.
    pub files_excluded: u64,
    /// With [`MoveOptions::dry_run`], what the move would have done.
    pub planned: Planned,
    /// Size of the files moved.
    pub bytes_moved: u64,
    /// File, delta and signature bytes that crossed between the two sides.
    pub bytes_sent: u64,
    /// Every file or directory that failed, in the order they failed.
    pub failures: Vec<Failure>,
}

/// A file to move: its listing on the source, where it goes on the
/// destination and what the destination has there.
struct Job<'a> {
    dir: &'a DirId,
    entry: Entry,
    /// The destination's path, `entry.path` but for a sub-path move.
    target: RelPath,
    /// The destination's subtree, listed again when it changes under the move.
    dst_prefix: Option<&'a RelPath>,
    state: DestinationState,
}

/// What became of one file.
enum Outcome {
    Moved(u64),
    Failed(MoveError),
    Interrupted,
}

/// The bytes sent so far in a move and since when, for predicting whether
/// a file can finish before a deadline.
struct Meter {
    started: Instant,
    sent: Arc<AtomicU64>,
}

impl Meter {
    fn new() -> Self {
        Meter {
            started: Instant::now(),
            sent: Arc::default(),
        }
    }

    /// Whether a file of `size` bytes can be sent before the stop's
    /// predicted deadline; true when there is none or nothing is measured yet.
    fn can_finish(&self, size: u64, stop: &Stop) -> bool {
        let Some(deadline) = stop.predicted_deadline() else {
            return true;
        };
        let sent = self.sent.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        if sent == 0 || elapsed <= 0.0 {
            return true;
        }
        let needed = Duration::from_secs_f64(size as f64 * elapsed / sent as f64);
        let fits = Instant::now() + needed <= deadline;
        if !fits {
            tracing::info!(
                size,
                ?needed,
                "not started: cannot finish before the deadline"
            );
        }
        fits
    }
}

/// A file's progress, with the phase it was last told, so it is told of
/// each change once.
#[derive(Clone)]
struct FileTracker {
    progress: Arc<dyn FileProgress>,
    phase: Arc<Mutex<Option<Phase>>>,
    /// The move's count of bytes sent, fed by every relay of this file.
    sent: Arc<AtomicU64>,
}

impl FileTracker {
    fn new(progress: Arc<dyn FileProgress>, sent: Arc<AtomicU64>) -> Self {
        FileTracker {
            progress,
            phase: Arc::default(),
            sent,
        }
    }

    fn phase(&self, phase: Phase) {
        let mut current = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if *current != Some(phase) {
            *current = Some(phase);
            self.progress.phase(phase);
        }
    }
}

/// Moves every file of `roots` (directory ids, or subtrees of them: see
/// [`Subtree`]) from `src` to `dst`, reporting to `progress`.
///
/// Fails as a whole only if the two sides cannot be compared (an `info`
/// call fails, a directory is missing, both sides overlap) or the move is
/// interrupted before that check is done. A file or directory that fails is
/// reported, recorded in [`MoveSummary::failures`], and the others go on.
///
/// After [`Stop::soft`], no new file starts; after [`Stop::hard`], the
/// files in flight also stop where they are: their sources are intact and
/// their partial files are resumed by the next run. Files that do not move
/// because of a stop are counted as interrupted.
pub async fn move_files(
    src: &dyn Service,
    dst: &dyn Service,
    roots: &[Subtree],
    options: &MoveOptions,
    progress: &dyn Progress,
    stop: &Stop,
) -> Result<MoveSummary, MoveError> {
    let dirs: Vec<DirId> = roots.iter().map(|root| root.dir.clone()).collect();
    let digest = tokio::select! {
        checked = check_move(src, dst, &dirs, options.digest) => checked?,
        () = stop.interrupted() => return Err(MoveError::Cancelled),
    };
    let options = &options.clamped(digest);
    let mut summary = MoveSummary::default();
    let mut jobs = Vec::new();
    for root in roots {
        let dir = &root.dir;
        progress.listing(dir);
        let listing =
            list_dir(src, dst, root, options).instrument(tracing::info_span!("dir", %dir));
        let listed = tokio::select! {
            listed = listing => listed,
            () = stop.interrupted() => return Ok(summary),
        };
        match listed {
            Ok(listed) => {
                for path in listed.skipped {
                    tracing::warn!(%dir, %path, "named like a partial file, not moved");
                    progress.skipped(dir, &path);
                    summary.files_skipped += 1;
                }
                for path in listed.excluded {
                    tracing::debug!(%dir, %path, "excluded by the rules, not moved");
                    progress.excluded(dir, &path);
                    summary.files_excluded += 1;
                }
                jobs.extend(listed.jobs);
            }
            Err(error) => {
                tracing::error!(%dir, error = %ErrorChain(&error), "cannot list directory");
                progress.dir_failed(dir, &error);
                summary.failures.push(Failure {
                    dir: dir.clone(),
                    path: None,
                    error,
                });
            }
        }
    }
    progress.totals(
        jobs.len() as u64,
        jobs.iter().map(|job| job.entry.stamp.size).sum(),
    );
    if options.dry_run {
        plan::plan_jobs(src, dst, jobs, options, progress, stop, &mut summary).await;
        return Ok(summary);
    }
    let meter = Meter::new();
    // `parallel` bounds the large files in flight; small ones are bound by
    // round trips, not bandwidth, so many more of them may go at once.
    let large_files = tokio::sync::Semaphore::new(options.parallel);
    // A batch holds its files whole: `parallel` bounds them too.
    let batches = tokio::sync::Semaphore::new(options.parallel);
    let mut results = stream::iter(batched(jobs))
        .map(|work| {
            let (meter, large_files, batches) = (&meter, &large_files, &batches);
            async move {
                match work {
                    Work::One(job) => vec![
                        move_one(src, dst, job, options, progress, stop, meter, large_files).await,
                    ],
                    Work::Batch(jobs) => {
                        let _permit = tokio::select! {
                            permit = batches.acquire() => permit.ok(),
                            () = stop.stopping() => None,
                        };
                        let span =
                            tracing::info_span!("batch", dir = %jobs[0].dir, files = jobs.len());
                        move_batch(src, dst, jobs, options, progress, stop, meter)
                            .instrument(span)
                            .await
                    }
                }
            }
        })
        .buffer_unordered(options.files_in_flight())
        .flat_map(stream::iter);
    let recorded = options.recorded();
    // Each outcome is reported from the start, at 0 until it happens, so a
    // run without failures still says so and a first failure is an increase.
    for counter in [
        &recorded.files_moved,
        &recorded.files_failed,
        &recorded.files_interrupted,
        &recorded.bytes_moved,
        &recorded.delta_saved,
    ] {
        counter.add(0, &[]);
    }
    while let Some((job, outcome)) = results.next().await {
        match outcome {
            Outcome::Moved(sent) => {
                summary.files_moved += 1;
                summary.bytes_moved += job.entry.stamp.size;
                summary.bytes_sent += sent;
                recorded.files_moved.add(1, &[]);
                recorded.bytes_moved.add(job.entry.stamp.size, &[]);
            }
            Outcome::Failed(error) => {
                recorded.files_failed.add(1, &[]);
                summary.files_failed += 1;
                summary.failures.push(Failure {
                    dir: job.dir.clone(),
                    path: Some(job.entry.path),
                    error,
                });
            }
            Outcome::Interrupted => {
                recorded.files_interrupted.add(1, &[]);
                summary.files_interrupted += 1;
            }
        }
    }
    Ok(summary)
}

/// Moves one file, reported as it goes; `large_files` bounds the large ones in flight.
#[allow(clippy::too_many_arguments)]
async fn move_one<'a>(
    src: &dyn Service,
    dst: &dyn Service,
    job: Job<'a>,
    options: &MoveOptions,
    progress: &dyn Progress,
    stop: &Stop,
    meter: &Meter,
    large_files: &tokio::sync::Semaphore,
) -> (Job<'a>, Outcome) {
    let span = tracing::info_span!("file", dir = %job.dir, path = %job.entry.path);
    async move {
        let _permit = if job.entry.stamp.size >= SMALL_FILE {
            tokio::select! {
                permit = large_files.acquire() => permit.ok(),
                () = stop.stopping() => None,
            }
        } else {
            None
        };
        if stop.is_stopping() || !meter.can_finish(job.entry.stamp.size, stop) {
            return (job, Outcome::Interrupted);
        }
        let file = FileTracker::new(
            progress.file(job.dir, &job.entry.path, job.entry.stamp.size),
            Arc::clone(&meter.sent),
        );
        let moving = move_file(src, dst, &job, options, &file);
        let outcome = tokio::select! {
            moved = moving => match moved {
                Ok(sent) => {
                    file.progress.moved();
                    Outcome::Moved(sent)
                }
                Err(error) => {
                    tracing::error!(error = %ErrorChain(&error), "file not moved");
                    file.progress.failed(&error);
                    Outcome::Failed(error)
                }
            },
            () = stop.interrupted() => {
                tracing::info!("file interrupted");
                file.progress.interrupted();
                Outcome::Interrupted
            }
        };
        (job, outcome)
    }
    .instrument(span)
    .await
}

/// Moves one file; returns the bytes sent between the sides.
async fn move_file(
    src: &dyn Service,
    dst: &dyn Service,
    job: &Job<'_>,
    options: &MoveOptions,
    file: &FileTracker,
) -> Result<u64, MoveError> {
    let (dir, entry) = (job.dir, &job.entry);
    let path = &entry.path;
    let size = entry.stamp.size;
    let transfer = Transfer {
        src,
        dst,
        dir,
        path,
        target: &job.target,
        size,
        options,
        file,
    };
    let mut state = job.state;
    let mut looks = 0;
    let (source_hash, sent) = loop {
        let transferred = if state.partial_stamp.is_none() && state.final_stamp.is_none() {
            transfer.whole_file(entry.stamp).await
        } else {
            transfer.resume(entry, state).await
        };
        match transferred {
            // Another client finished or removed the form listed: look again
            // and start from what is there now.
            Err(MoveError::Service {
                side: Side::Destination,
                source,
            }) if source.code() == ErrorCode::NotFound && looks < DESTINATION_LOOKS => {
                looks += 1;
                tracing::info!(error = %ErrorChain(&source), "destination changed while being moved, looking again");
                state = destination_state(dst, dir, job.dst_prefix, &job.target).await?;
            }
            transferred => break transferred?,
        }
    };
    file.phase(Phase::Deleting);
    src.delete(dir, path, Some(entry.stamp))
        .await
        .map_err(|e| transfer.source_error(e))?;
    tracing::info!(size, bytes_sent = sent, digest = %source_hash, "moved");
    Ok(sent)
}

/// A source error; FailedPrecondition means the source is not the version
/// listed any more.
fn source_error(dir: &DirId, path: &RelPath, error: ServiceError) -> MoveError {
    match error.code() {
        ErrorCode::FailedPrecondition => MoveError::SourceChanged {
            dir: dir.clone(),
            path: path.clone(),
        },
        _ => MoveError::source(error),
    }
}

/// The error of a destination that would not finish a file: a hash
/// mismatch names both hashes.
async fn finish_error(
    dst: &dyn Service,
    dir: &DirId,
    path: &RelPath,
    error: ServiceError,
    source_hash: Digest,
) -> MoveError {
    if error.code() == ErrorCode::FailedPrecondition
        && let Ok(destination) = dst
            .hash(dir, path, FileKind::Partial, None, source_hash.algorithm)
            .await
        && destination.hash != source_hash
    {
        return MoveError::HashMismatch {
            dir: dir.clone(),
            path: path.clone(),
            source_hash,
            destination_hash: destination.hash,
        };
    }
    MoveError::destination(error)
}

#[cfg(test)]
mod tests;
