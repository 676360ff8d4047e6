//! Small new files moved together: read and hashed in one source call,
//! written, verified and finished in one destination call, deleted in one
//! source call, in the order of the invariant.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;

/// A file moved on its own, or small new files moved together.
pub(super) enum Work<'a> {
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
pub(super) fn batched(jobs: Vec<Job<'_>>) -> Vec<Work<'_>> {
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

/// Moves small new files together: read and hashed in one call to the
/// source, written, verified and finished in one call to the destination,
/// deleted in one call to the source, in the order of the invariant.
pub(super) async fn move_batch<'a>(
    src: &dyn Service,
    dst: &dyn Service,
    jobs: Vec<Job<'a>>,
    options: &MoveOptions,
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
        let read = src.read_files(dir, &listed, options.algorithm()).await;
        let mut sending = Vec::new();
        let mut sent_index = Vec::new();
        for (index, result) in read.into_iter().enumerate() {
            match result {
                Ok(mut file) => {
                    sent_index.push(index);
                    file.path = jobs[index].target.clone();
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
        let hashes: Vec<Digest> = sending.iter().map(|file| file.digest).collect();
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
                    let error = finish_error(dst, job.dir, &job.target, error, source_hash).await;
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
                tracing::info!(dir = %job.dir, path = %job.entry.path, size = bytes, bytes_sent = bytes, digest = %source_hash, "moved");
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
