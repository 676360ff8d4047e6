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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryFutureExt, TryStreamExt, future, stream};
use tracing::Instrument;

use crate::delta;
use crate::error::{ErrorCode, ServiceError};
use crate::hash::Sha256Hash;
use crate::metrics::metrics;
use crate::path::{DirId, RelPath};
use crate::progress::{FileProgress, Phase, Progress};
use crate::service::{ByteRange, ByteStream, Entry, FileKind, FileStamp, MAX_WHOLE_FILE, Service};
use crate::stop::Stop;

/// Files below this size do not count against `MoveOptions::parallel`.
const SMALL_FILE: u64 = 1024 * 1024;
/// How many files may be in flight for each of `MoveOptions::parallel`,
/// when they are small.
const SMALL_FILES_PER_SLOT: usize = 8;

/// Tuning of a move.
#[derive(Clone, Debug)]
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
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            parallel: 4,
            range_size: 8 * 1024 * 1024,
            block_size: 4096,
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

    /// The options with every field in the range the stores accept, so an
    /// embedding program cannot make a move loop (range 0) or always fail.
    fn clamped(&self) -> MoveOptions {
        let block_size = self
            .block_size
            .clamp(delta::MIN_BLOCK_SIZE, delta::MAX_BLOCK_SIZE);
        MoveOptions {
            parallel: self.parallel.max(1),
            range_size: self
                .range_size
                .clamp(u64::from(block_size), delta::MAX_RANGE),
            block_size,
        }
    }
}

/// Which end of a move an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Why a move, or the move of one file, failed.
///
/// Errors of one file do not repeat its directory and path in their
/// message: they are always reported with them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MoveError {
    #[error("{side}")]
    Service {
        side: Side,
        #[source]
        source: ServiceError,
    },
    #[error("{side} does not serve directory {dir}")]
    MissingDir { side: Side, dir: DirId },
    #[error(
        "{dir}: source and destination are the same directory or one contains the other, refusing to move"
    )]
    Overlap { dir: DirId },
    #[error("{side} gives read-only access to {dir}: {consequence}, refusing to move", consequence = match side {
        Side::Source => "no file could be deleted from it",
        Side::Destination => "no file could be written to it",
    })]
    ReadOnly { side: Side, dir: DirId },
    #[error(
        "destination hash {destination_hash} does not match source hash {source_hash}, source kept"
    )]
    HashMismatch {
        dir: DirId,
        path: RelPath,
        source_hash: Sha256Hash,
        destination_hash: Sha256Hash,
    },
    #[error("source changed while being moved, not deleted")]
    SourceChanged { dir: DirId, path: RelPath },
    #[error("move cancelled")]
    Cancelled,
}

impl MoveError {
    fn source(source: ServiceError) -> Self {
        MoveError::Service {
            side: Side::Source,
            source,
        }
    }

    fn destination(source: ServiceError) -> Self {
        MoveError::Service {
            side: Side::Destination,
            source,
        }
    }
}

/// A file, or a whole directory, that could not be moved.
#[derive(Debug)]
pub struct Failure {
    pub dir: DirId,
    pub path: Option<RelPath>,
    pub error: MoveError,
}

/// What a move did.
#[derive(Debug, Default)]
pub struct MoveSummary {
    pub files_moved: u64,
    pub files_failed: u64,
    /// Files left unmoved because the move was cancelled: those in flight
    /// (their partial files stay resumable) and those not started.
    pub files_interrupted: u64,
    /// Regular files the source has under a partial file's name
    /// (`.NAME.part`): never moved, since a partial file is never a source.
    pub files_skipped: u64,
    /// Size of the files moved.
    pub bytes_moved: u64,
    /// File, delta and signature bytes that crossed between the two sides.
    pub bytes_sent: u64,
    /// Every file or directory that failed, in the order they failed.
    pub failures: Vec<Failure>,
}

/// A file to move: its listing on the source and what the destination has.
struct Job<'a> {
    dir: &'a DirId,
    entry: Entry,
    state: DestinationState,
}

/// Moves every file of `dirs` from `src` to `dst`, reporting to `progress`.
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
    dirs: &[DirId],
    options: &MoveOptions,
    progress: &dyn Progress,
    stop: &Stop,
) -> Result<MoveSummary, MoveError> {
    tokio::select! {
        checked = check_distinct(src, dst, dirs) => checked?,
        () = stop.interrupted() => return Err(MoveError::Cancelled),
    }
    let options = &options.clamped();
    let mut summary = MoveSummary::default();
    let mut jobs = Vec::new();
    for dir in dirs {
        progress.listing(dir);
        let listing = list_dir(src, dst, dir).instrument(tracing::info_span!("dir", %dir));
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
                        move_batch(src, dst, jobs, progress, stop, meter)
                            .instrument(span)
                            .await
                    }
                }
            }
        })
        .buffer_unordered(options.files_in_flight())
        .flat_map(stream::iter);
    let recorded = metrics();
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

/// A file moved on its own, or small new files moved together.
enum Work<'a> {
    One(Job<'a>),
    Batch(Vec<Job<'a>>),
}

/// How long a hard stop waits for a batch the destination is writing: a
/// batch is at most [`BATCH_BYTES`], and an interrupted run must still end
/// within about two seconds.
const BATCH_GRACE: std::time::Duration = std::time::Duration::from_millis(700);

/// Files in a batch at most, and their bytes together.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 * 1024 * 1024;

/// Groups the small files the destination has in no form into batches of
/// one directory each; every other file moves on its own.
fn batched(jobs: Vec<Job<'_>>) -> Vec<Work<'_>> {
    let mut work = Vec::new();
    let mut batch: Vec<Job<'_>> = Vec::new();
    let mut batch_bytes = 0;
    for job in jobs {
        let whole = job.entry.stamp.size <= MAX_WHOLE_FILE
            && job.state.partial_stamp.is_none()
            && job.state.final_stamp.is_none();
        if !whole {
            work.push(Work::One(job));
            continue;
        }
        let fits = batch.first().is_none_or(|first| first.dir == job.dir)
            && batch.len() < BATCH_FILES
            && batch_bytes + job.entry.stamp.size <= BATCH_BYTES;
        if !fits {
            work.push(Work::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += job.entry.stamp.size;
        batch.push(job);
    }
    if !batch.is_empty() {
        work.push(Work::Batch(batch));
    }
    work
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
        let moving = move_file(src, dst, job.dir, &job.entry, job.state, options, &file);
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

/// Moves small new files together: read and hashed in one call to the
/// source, written, verified and finished in one call to the destination,
/// deleted in one call to the source, in the order of the invariant.
async fn move_batch<'a>(
    src: &dyn Service,
    dst: &dyn Service,
    jobs: Vec<Job<'a>>,
    progress: &dyn Progress,
    stop: &Stop,
    meter: &Meter,
) -> Vec<(Job<'a>, Outcome)> {
    let total: u64 = jobs.iter().map(|job| job.entry.stamp.size).sum();
    if stop.is_stopping() || !meter.can_finish(total, stop) {
        return jobs
            .into_iter()
            .map(|job| (job, Outcome::Interrupted))
            .collect();
    }
    let Some(dir) = jobs.first().map(|job| job.dir) else {
        return Vec::new();
    };
    let files: Vec<FileTracker> = jobs
        .iter()
        .map(|job| {
            let file = FileTracker::new(
                progress.file(job.dir, &job.entry.path, job.entry.stamp.size),
                Arc::clone(&meter.sent),
            );
            file.phase(Phase::Copying);
            file
        })
        .collect();
    let mut outcomes: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();
    let listed: Vec<(RelPath, FileStamp)> = jobs
        .iter()
        .map(|job| (job.entry.path.clone(), job.entry.stamp))
        .collect();
    let copying = async {
        let read = src.read_files(dir, &listed).await;
        let mut sending = Vec::new();
        let mut sent_index = Vec::new();
        for (index, result) in read.into_iter().enumerate() {
            match result {
                Ok(file) => {
                    sent_index.push(index);
                    sending.push(file);
                }
                Err(error) => {
                    let job = &jobs[index];
                    outcomes[index] = Some(Outcome::Failed(source_error(
                        job.dir,
                        &job.entry.path,
                        error,
                    )));
                }
            }
        }
        let hashes: Vec<Sha256Hash> = sending.iter().map(|file| file.sha256).collect();
        let written = dst.write_files(dir, sending).await;
        let mut written_index = Vec::new();
        for ((index, result), source_hash) in sent_index.into_iter().zip(written).zip(hashes) {
            match result {
                Ok(bytes) => {
                    meter.sent.fetch_add(bytes, Ordering::Relaxed);
                    files[index].progress.bytes(bytes);
                    written_index.push((index, bytes, source_hash));
                }
                Err(error) => {
                    let job = &jobs[index];
                    let error =
                        finish_error(dst, job.dir, &job.entry.path, error, source_hash).await;
                    outcomes[index] = Some(Outcome::Failed(error));
                }
            }
        }
        written_index
    };
    let written = {
        // Pinned here, so the borrows it holds end with this block.
        tokio::pin!(copying);
        tokio::select! {
            written = &mut copying => written,
            // The destination goes on with a batch it has taken whatever the
            // move does (its blocking task, or the daemon's call): its answer,
            // if it comes soon, says which files are complete there, so they
            // are reported, and their sources deleted, as moved. Past the grace,
            // nothing is deleted: the next run finds those files identical at
            // the destination and only deletes their sources.
            () = stop.interrupted() => tokio::time::timeout(BATCH_GRACE, copying)
                .await
                .unwrap_or_default(),
        }
    };
    let deleting: Vec<(RelPath, FileStamp)> = written
        .iter()
        .map(|&(index, ..)| {
            files[index].phase(Phase::Deleting);
            listed[index].clone()
        })
        .collect();
    // Not cut by a stop: each file is verified at the destination already.
    let deleted = src.delete_files(dir, &deleting).await;
    for ((index, bytes, source_hash), result) in written.into_iter().zip(deleted) {
        let job = &jobs[index];
        outcomes[index] = Some(match result {
            Ok(()) => {
                tracing::info!(dir = %job.dir, path = %job.entry.path, size = bytes, bytes_sent = bytes, sha256 = %source_hash, "moved");
                Outcome::Moved(bytes)
            }
            Err(error) => Outcome::Failed(source_error(job.dir, &job.entry.path, error)),
        });
    }
    jobs.into_iter()
        .zip(outcomes)
        .zip(files)
        .map(|((job, outcome), file)| {
            let outcome = outcome.unwrap_or(Outcome::Interrupted);
            match &outcome {
                Outcome::Moved(_) => file.progress.moved(),
                Outcome::Failed(error) => {
                    tracing::error!(dir = %job.dir, path = %job.entry.path, error = %ErrorChain(error), "file not moved");
                    file.progress.failed(error);
                }
                Outcome::Interrupted => {
                    tracing::info!(dir = %job.dir, path = %job.entry.path, "file interrupted");
                    file.progress.interrupted();
                }
            }
            (job, outcome)
        })
        .collect()
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
    source_hash: Sha256Hash,
) -> MoveError {
    if error.code() == ErrorCode::FailedPrecondition
        && let Ok(destination) = dst.hash(dir, path, FileKind::Partial, None).await
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

enum Outcome {
    Moved(u64),
    Failed(MoveError),
    Interrupted,
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

/// Refuses to move a directory onto itself, which would delete the only
/// copy, or into or out of a directory it contains, where files would land
/// on source files not yet moved; and a directory either side lacks.
///
/// [`move_files`] runs it before anything else; a caller that must prepare
/// a side first (create a local destination) runs it before that, so a
/// refused move changes nothing.
pub async fn check_distinct(
    src: &dyn Service,
    dst: &dyn Service,
    dirs: &[DirId],
) -> Result<(), MoveError> {
    let (src_info, dst_info) = future::try_join(
        src.info().map_err(MoveError::source),
        dst.info().map_err(MoveError::destination),
    )
    .await?;
    for dir in dirs {
        let find = |info: &crate::ServiceInfo, side| {
            info.dirs
                .iter()
                .find(|d| &d.id == dir)
                .cloned()
                .ok_or_else(|| MoveError::MissingDir {
                    side,
                    dir: dir.clone(),
                })
        };
        let src_dir = find(&src_info, Side::Source)?;
        let dst_dir = find(&dst_info, Side::Destination)?;
        if src_dir.overlaps(&dst_dir) {
            return Err(MoveError::Overlap { dir: dir.clone() });
        }
        for (side, info) in [(Side::Source, &src_dir), (Side::Destination, &dst_dir)] {
            if info.read_only {
                return Err(MoveError::ReadOnly {
                    side,
                    dir: dir.clone(),
                });
            }
        }
    }
    Ok(())
}

/// How many times a file's destination is listed again when another client
/// changes it under the move (see [`move_file`]).
const DESTINATION_LOOKS: u32 = 3;

/// What the destination has at `path` now.
async fn destination_state(
    dst: &dyn Service,
    dir: &DirId,
    path: &RelPath,
) -> Result<DestinationState, MoveError> {
    let entries = async { dst.list(dir, true).await?.try_collect::<Vec<_>>().await }
        .await
        .map_err(MoveError::destination)?;
    Ok(destination_states(entries).remove(path).unwrap_or_default())
}

/// The forms of each path of a destination's listing.
fn destination_states(entries: Vec<Entry>) -> HashMap<RelPath, DestinationState> {
    let mut destination: HashMap<RelPath, DestinationState> = HashMap::new();
    for entry in entries {
        let state = destination.entry(entry.path).or_default();
        match entry.kind {
            FileKind::Final => state.final_stamp = Some(entry.stamp),
            FileKind::Partial => state.partial_stamp = Some(entry.stamp),
        }
    }
    destination
}

/// The forms of a path present on the destination.
#[derive(Clone, Copy, Debug, Default)]
struct DestinationState {
    final_stamp: Option<FileStamp>,
    partial_stamp: Option<FileStamp>,
}

/// What a directory's listing gives the move.
struct Listed<'a> {
    jobs: Vec<Job<'a>>,
    /// Source files named like partial files, as they are named on disk.
    skipped: Vec<RelPath>,
}

/// Lists a directory on both sides and pairs each source file with what
/// the destination has at its path.
async fn list_dir<'a>(
    src: &dyn Service,
    dst: &dyn Service,
    dir: &'a DirId,
) -> Result<Listed<'a>, MoveError> {
    // The source's partial files are listed only to be reported: a file
    // that silently stays behind would look moved to whoever ran the move.
    let (src_entries, dst_entries) = future::try_join(
        async { src.list(dir, true).await?.try_collect::<Vec<_>>().await }
            .map_err(MoveError::source),
        async { dst.list(dir, true).await?.try_collect::<Vec<_>>().await }
            .map_err(MoveError::destination),
    )
    .await?;
    let mut destination = destination_states(dst_entries);
    let (finals, partials): (Vec<_>, Vec<_>) = src_entries
        .into_iter()
        .partition(|e| e.kind == FileKind::Final);
    Ok(Listed {
        jobs: finals
            .into_iter()
            .map(|entry| Job {
                dir,
                state: destination.remove(&entry.path).unwrap_or_default(),
                entry,
            })
            .collect(),
        skipped: partials.iter().map(|e| e.path.partial_path()).collect(),
    })
}

/// Moves one file; returns the bytes sent between the sides.
async fn move_file(
    src: &dyn Service,
    dst: &dyn Service,
    dir: &DirId,
    entry: &Entry,
    state: DestinationState,
    options: &MoveOptions,
    file: &FileTracker,
) -> Result<u64, MoveError> {
    let path = &entry.path;
    let size = entry.stamp.size;
    let transfer = Transfer {
        src,
        dst,
        dir,
        path,
        size,
        options,
        file,
    };
    let mut state = state;
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
                state = destination_state(dst, dir, path).await?;
            }
            transferred => break transferred?,
        }
    };
    file.phase(Phase::Deleting);
    src.delete(dir, path, Some(entry.stamp))
        .await
        .map_err(|e| transfer.source_error(e))?;
    tracing::info!(size, bytes_sent = sent, sha256 = %source_hash, "moved");
    Ok(sent)
}

impl Transfer<'_> {
    /// Copies a file the destination has in no form, hashing it on its way,
    /// and has the destination check and finish it in the same call: one
    /// read of the source, one write of the destination, nothing read back.
    /// Returns the source's SHA-256 and the bytes sent.
    async fn whole_file(&self, stamp: FileStamp) -> Result<(Sha256Hash, u64), MoveError> {
        if self.size > 0 {
            self.file.phase(Phase::Copying);
        }
        let (data, source_hash) = self
            .src
            .read_hashed(self.dir, self.path, stamp)
            .await
            .map_err(|e| self.source_error(e))?;
        let file = self.file.clone();
        let data = on_end(data, move || file.phase(Phase::Checking));
        // Counted as the destination takes them.
        let (data, relay) = Relay::new(data, self.file, true);
        // The source's hash goes on to the destination, and is kept for the
        // log and for a mismatch's error; never sent if the data failed.
        let (expected_tx, expected) = tokio::sync::oneshot::channel();
        let kept = OnceLock::new();
        let forwarding = async {
            if let Ok(hash) = source_hash.await {
                let _ = kept.set(hash);
                let _ = expected_tx.send(hash);
            }
        };
        let writing = self
            .dst
            .write_file(self.dir, self.path, self.size, data, expected);
        let ((), written) = future::join(forwarding, writing).await;
        match (written, kept.get().copied()) {
            (Ok(_), Some(source_hash)) => Ok((source_hash, relay.bytes())),
            (Ok(_), None) => Err(MoveError::destination(ServiceError::Protocol(
                "finished the file without waiting for its SHA-256".into(),
            ))),
            (Err(e), _) if relay.source_failed() => Err(self.source_error(e)),
            (Err(e), Some(source_hash)) => Err(self.finish_error(e, source_hash).await),
            (Err(e), None) => Err(MoveError::destination(e)),
        }
    }

    /// Brings the destination's partial or final file to the source's
    /// content, sending only what differs, then has it checked and finished.
    /// Returns the source's SHA-256 and the bytes sent.
    async fn resume(
        &self,
        entry: &Entry,
        state: DestinationState,
    ) -> Result<(Sha256Hash, u64), MoveError> {
        let (src, dst, dir, path, size) = (self.src, self.dst, self.dir, self.path, self.size);
        let source_hash = async {
            let result = src
                .hash(dir, path, FileKind::Final, None)
                .await
                .map_err(MoveError::source)?;
            if result.stamp != entry.stamp {
                return Err(MoveError::SourceChanged {
                    dir: dir.clone(),
                    path: path.clone(),
                });
            }
            Ok(result.hash)
        };
        let destination = async {
            // A final file of the same size may already be identical: compare
            // hashes before sending anything.
            if state.partial_stamp.is_none()
                && let Some(final_stamp) = state.final_stamp
                && final_stamp.size == size
            {
                self.file.phase(Phase::Hashing);
                let result = dst
                    .hash(dir, path, FileKind::Final, None)
                    .await
                    .map_err(MoveError::destination)?;
                return Ok((Some(result.hash), 0));
            }
            let working = match (state.partial_stamp, state.final_stamp) {
                (Some(partial), _) => Some((FileKind::Partial, partial.size)),
                (None, Some(final_stamp)) => Some((FileKind::Final, final_stamp.size)),
                (None, None) => None,
            };
            Ok((None, self.run(working).await?))
        };
        let (source_hash, (existing_hash, mut sent)) =
            future::try_join(source_hash, destination).await?;
        // An identical final file needs no check beyond the hashes just compared.
        let expected = match existing_hash {
            Some(hash) if hash == source_hash => None,
            Some(_) => {
                tracing::info!(size, "destination differs from source, overwriting it");
                sent += self.run(Some((FileKind::Final, size))).await?;
                Some(source_hash)
            }
            None => Some(source_hash),
        };
        if expected.is_some() {
            self.file.phase(Phase::Checking);
        }
        // The destination checks its SHA-256 against the source's on disk,
        // then fsyncs and renames, in one call.
        if let Err(error) = dst.finish(dir, path, expected).await {
            return Err(self.finish_error(error, source_hash).await);
        }
        Ok((source_hash, sent))
    }

    fn source_error(&self, error: ServiceError) -> MoveError {
        source_error(self.dir, self.path, error)
    }

    async fn finish_error(&self, error: ServiceError, source_hash: Sha256Hash) -> MoveError {
        finish_error(self.dst, self.dir, self.path, error, source_hash).await
    }
}

/// `data`, with `ended` called once the destination has taken its last byte.
fn on_end(data: ByteStream, ended: impl FnOnce() + Send + 'static) -> ByteStream {
    stream::unfold((data, Some(ended)), |(mut data, ended)| async move {
        match data.next().await {
            Some(item) => Some((item, (data, ended))),
            None => {
                if let Some(ended) = ended {
                    ended();
                }
                None
            }
        }
    })
    .boxed()
}

/// Brings the destination's partial file to the source's content.
struct Transfer<'a> {
    src: &'a dyn Service,
    dst: &'a dyn Service,
    dir: &'a DirId,
    path: &'a RelPath,
    size: u64,
    options: &'a MoveOptions,
    file: &'a FileTracker,
}

impl Transfer<'_> {
    /// `working` is the destination's working copy (form and length) if it
    /// has one. Returns the bytes sent.
    async fn run(&self, working: Option<(FileKind, u64)>) -> Result<u64, MoveError> {
        let (mut kind, base_len) = working.unwrap_or((FileKind::Partial, 0));
        let mut sent = 0;
        let mut offset = 0;
        if base_len > 0 && self.size > 0 {
            self.file.phase(Phase::Hashing);
        }
        // Ranges stop at the end of what the destination has, so its whole
        // length is compared and the rest is streamed, resumable chunk by chunk.
        while offset < self.size.min(base_len) {
            let end = (offset + self.options.range_size)
                .min(self.size)
                .min(base_len);
            let range = ByteRange::new(offset, end);
            let (source, destination) = future::try_join(
                self.src
                    .hash(self.dir, self.path, FileKind::Final, Some(range))
                    .map_err(MoveError::source),
                self.dst
                    .hash(self.dir, self.path, kind, Some(range))
                    .map_err(MoveError::destination),
            )
            .await?;
            if destination.hash == source.hash {
                metrics().delta_saved.add(range.len(), &[]);
            } else {
                self.file.phase(Phase::Copying);
                let patch_sent = self.patch(range, source.hash).await?;
                metrics()
                    .delta_saved
                    .add(range.len().saturating_sub(patch_sent), &[]);
                sent += patch_sent;
                kind = FileKind::Partial;
            }
            self.file.progress.bytes(range.len());
            offset = range.end;
        }
        // Always called, even with nothing left to copy: it also sets the
        // partial file's final size and turns a final file into a partial one.
        let rest = ByteRange::new(offset, self.size);
        if !rest.is_empty() {
            self.file.phase(Phase::Copying);
        }
        sent += self.copy_range(rest, true).await?;
        tracing::debug!(bytes_sent = sent, resumed_from = base_len, "transfer done");
        Ok(sent)
    }

    /// Patches one range with an rsync delta, checks it by SHA-256, and
    /// falls back to copying the range if the delta did not reproduce it.
    async fn patch(&self, range: ByteRange, expected: Sha256Hash) -> Result<u64, MoveError> {
        let signature = self
            .dst
            .signature(self.dir, self.path, range, self.options.block_size)
            .await
            .map_err(MoveError::destination)?;
        let signature_len = signature.len() as u64;
        let delta = self
            .src
            .diff(self.dir, self.path, range, signature)
            .await
            .map_err(MoveError::source)?;
        let (delta, relay) = Relay::new(delta, self.file, false);
        self.dst
            .apply_delta(self.dir, self.path, range, self.size, delta)
            .await
            .map_err(|e| relay.error(e))?;
        let mut sent = signature_len + relay.bytes();
        let patched = self
            .dst
            .hash(self.dir, self.path, FileKind::Partial, Some(range))
            .await
            .map_err(MoveError::destination)?;
        if patched.hash != expected {
            tracing::warn!(
                start = range.start,
                end = range.end,
                "delta did not reproduce the range, copying it"
            );
            sent += self.copy_range(range, false).await?;
        }
        Ok(sent)
    }

    /// Copies `range` of the source and sets the destination's size; the
    /// bytes are reported to the file's progress if `report`.
    async fn copy_range(&self, range: ByteRange, report: bool) -> Result<u64, MoveError> {
        let data = self
            .src
            .read(self.dir, self.path, range.start, Some(range.len()), None)
            .await
            .map_err(MoveError::source)?;
        let (data, relay) = Relay::new(data, self.file, report);
        self.dst
            .write(self.dir, self.path, range.start, self.size, data)
            .await
            .map_err(|e| relay.error(e))?;
        Ok(relay.bytes())
    }
}

/// Counts the bytes relayed from the source to the destination, and
/// remembers whether the source failed, so an error is blamed on the right side.
struct Relay {
    bytes: Arc<AtomicU64>,
    source_failed: Arc<AtomicBool>,
}

impl Relay {
    /// Wraps `stream` of `file`; each chunk is also reported to the file's
    /// progress if `report`.
    fn new(stream: ByteStream, file: &FileTracker, report: bool) -> (ByteStream, Relay) {
        let relay = Relay {
            bytes: Arc::default(),
            source_failed: Arc::default(),
        };
        let (bytes, source_failed) = (Arc::clone(&relay.bytes), Arc::clone(&relay.source_failed));
        let sent = Arc::clone(&file.sent);
        let progress = report.then(|| Arc::clone(&file.progress));
        let stream = stream
            .inspect(move |item| match item {
                Ok(chunk) => {
                    bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if let Some(progress) = &progress {
                        progress.bytes(chunk.len() as u64);
                    }
                }
                Err(_) => source_failed.store(true, Ordering::Relaxed),
            })
            .boxed();
        (stream, relay)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn source_failed(&self) -> bool {
        self.source_failed.load(Ordering::Relaxed)
    }

    fn error(&self, error: ServiceError) -> MoveError {
        if self.source_failed() {
            MoveError::source(error)
        } else {
            MoveError::destination(error)
        }
    }
}

/// Displays an error and its causes on one line: `a: b: c`.
///
/// A cause that says exactly what the previous one said is skipped: an
/// `io::Error` wrapping another prints the same text twice otherwise.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if text != previous {
                write!(f, ": {text}")?;
                previous = text;
            }
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
