//! A dry run: what each listed file would become, found with calls that
//! only read (List, and Hash where a final file of the same size may
//! already be the same), so neither side changes.

use super::*;

/// What a move would do to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Copied: the destination has no final file there (or only a partial
    /// one, which would be resumed).
    Move,
    /// Copied over the destination's different final file.
    Overwrite,
    /// The destination's final file is already the same: nothing copied,
    /// only the source deleted.
    Identical,
}

/// What a dry run found, file by file counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    /// Files the destination lacks in any form.
    pub moved: u64,
    /// Files whose destination differs or is partial.
    pub overwritten: u64,
    /// Files the destination already has, identical.
    pub identical: u64,
    /// Size of the files the move would take from the source, all three kinds.
    pub bytes: u64,
}

impl Planned {
    /// The files the move would take from the source.
    pub fn files(&self) -> u64 {
        self.moved + self.overwritten + self.identical
    }
}

/// Plans every job, several at a time, and tells `progress` of each; a file
/// that cannot be compared is a failure, as it would be in a real move.
pub(super) async fn plan_jobs(
    src: &dyn Service,
    dst: &dyn Service,
    jobs: Vec<Job<'_>>,
    options: &MoveOptions,
    progress: &dyn Progress,
    stop: &Stop,
    summary: &mut MoveSummary,
) {
    let mut planned = stream::iter(jobs)
        .map(|job| async move {
            let plan = plan_one(src, dst, &job, options.algorithm()).await;
            (job, plan)
        })
        .buffer_unordered(options.files_in_flight());
    loop {
        let next = tokio::select! {
            next = planned.next() => next,
            () = stop.interrupted() => return,
        };
        let Some((job, plan)) = next else { return };
        let size = job.entry.stamp.size;
        match plan {
            Ok(plan) => {
                progress.planned(job.dir, &job.entry.path, size, plan);
                let counted = &mut summary.planned;
                counted.bytes += size;
                *match plan {
                    Plan::Move => &mut counted.moved,
                    Plan::Overwrite => &mut counted.overwritten,
                    Plan::Identical => &mut counted.identical,
                } += 1;
            }
            Err(error) => {
                progress.file(job.dir, &job.entry.path, size).failed(&error);
                summary.files_failed += 1;
                summary.failures.push(Failure {
                    dir: job.dir.clone(),
                    path: Some(job.entry.path),
                    error,
                });
            }
        }
    }
}

async fn plan_one(
    src: &dyn Service,
    dst: &dyn Service,
    job: &Job<'_>,
    algorithm: DigestAlgorithm,
) -> Result<Plan, MoveError> {
    let (dir, path, stamp) = (job.dir, &job.entry.path, job.entry.stamp);
    match (job.state.partial_stamp, job.state.final_stamp) {
        (_, None) => Ok(Plan::Move),
        (Some(_), Some(_)) => Ok(Plan::Overwrite),
        (None, Some(existing)) if existing.size != stamp.size => Ok(Plan::Overwrite),
        (None, Some(_)) => {
            let (source, destination) = future::try_join(
                src.hash(dir, path, FileKind::Final, None, algorithm)
                    .map_err(|e| source_error(dir, path, e)),
                dst.hash(dir, &job.target, FileKind::Final, None, algorithm)
                    .map_err(MoveError::destination),
            )
            .await?;
            if source.stamp != stamp {
                return Err(MoveError::SourceChanged {
                    dir: dir.clone(),
                    path: path.clone(),
                });
            }
            Ok(if source.hash == destination.hash {
                Plan::Identical
            } else {
                Plan::Overwrite
            })
        }
    }
}
