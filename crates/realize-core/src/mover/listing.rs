//! What both sides serve and hold: the checks that can refuse a move, and
//! each directory's listing paired with what the destination has.

use std::collections::HashMap;

use super::*;

/// Refuses to move a directory onto itself, which would delete the only
/// copy, or into or out of a directory it contains, where files would land
/// on source files not yet moved; a directory either side lacks or only
/// lets the caller read; and a digest (`wanted`) one side cannot take.
/// Returns the digest of the move: `wanted`, else the first of
/// [`DigestAlgorithm::PREFERRED`] both sides support.
///
/// [`move_files`] runs it before anything else; a caller that must prepare
/// a side first (create a local destination) runs it before that, so a
/// refused move changes nothing.
pub async fn check_move(
    src: &dyn Service,
    dst: &dyn Service,
    dirs: &[DirId],
    wanted: Option<DigestAlgorithm>,
) -> Result<DigestAlgorithm, MoveError> {
    let (src_info, dst_info) = future::try_join(
        src.info().map_err(MoveError::source),
        dst.info().map_err(MoveError::destination),
    )
    .await?;
    let digest = choose_digest(wanted, &src_info, &dst_info)?;
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
    Ok(digest)
}

/// `wanted` if both sides take it, else the preferred digest both take.
pub(super) fn choose_digest(
    wanted: Option<DigestAlgorithm>,
    src: &crate::ServiceInfo,
    dst: &crate::ServiceInfo,
) -> Result<DigestAlgorithm, MoveError> {
    let sides = [(Side::Source, src), (Side::Destination, dst)];
    if let Some(digest) = wanted {
        return match sides
            .iter()
            .find(|(_, info)| !info.digests.contains(&digest))
        {
            Some(&(side, info)) => Err(MoveError::UnsupportedDigest {
                side,
                digest,
                supported: info.digests.clone(),
            }),
            None => Ok(digest),
        };
    }
    DigestAlgorithm::PREFERRED
        .into_iter()
        .find(|digest| sides.iter().all(|(_, info)| info.digests.contains(digest)))
        .ok_or_else(|| MoveError::NoCommonDigest {
            source_digests: src.digests.clone(),
            destination_digests: dst.digests.clone(),
        })
}

/// The forms of a path present on the destination.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DestinationState {
    pub(super) final_stamp: Option<FileStamp>,
    pub(super) partial_stamp: Option<FileStamp>,
}

/// What a directory's listing gives the move.
pub(super) struct Listed<'a> {
    pub(super) jobs: Vec<Job<'a>>,
    /// Source files named like partial files, as they are named on disk.
    pub(super) skipped: Vec<RelPath>,
    /// Source files the rules exclude.
    pub(super) excluded: Vec<RelPath>,
}

/// How many times a file's destination is listed again when another client
/// changes it under the move (see [`move_file`]).
pub(super) const DESTINATION_LOOKS: u32 = 3;

/// What the destination has at `path` now, listing the subtree `prefix` it is in.
pub(super) async fn destination_state(
    dst: &dyn Service,
    dir: &DirId,
    prefix: Option<&RelPath>,
    path: &RelPath,
) -> Result<DestinationState, MoveError> {
    let entries = async {
        dst.list(dir, prefix, true)
            .await?
            .try_collect::<Vec<_>>()
            .await
    }
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

/// Lists a directory, or the subtree of it `root` names, on both sides and
/// pairs each source file with what the destination has where it lands.
pub(super) async fn list_dir<'a>(
    src: &dyn Service,
    dst: &dyn Service,
    root: &'a Subtree,
    options: &MoveOptions,
) -> Result<Listed<'a>, MoveError> {
    let dir = &root.dir;
    // The source's partial files are listed only to be reported: a file
    // that silently stays behind would look moved to whoever ran the move.
    let (src_entries, dst_entries) = future::try_join(
        async {
            src.list(dir, root.source.as_ref(), true)
                .await?
                .try_collect::<Vec<_>>()
                .await
        }
        .map_err(MoveError::source),
        async {
            let listing = async {
                dst.list(dir, root.destination.as_ref(), true)
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            };
            match listing.await {
                // A dry run creates no destination: one not there yet has
                // no files.
                Err(e) if options.dry_run && e.code() == ErrorCode::NotFound => Ok(Vec::new()),
                listed => listed,
            }
        }
        .map_err(MoveError::destination),
    )
    .await?;
    let mut destination = destination_states(dst_entries);
    let (finals, partials): (Vec<_>, Vec<_>) = src_entries
        .into_iter()
        .partition(|e| e.kind == FileKind::Final);
    let mut jobs = Vec::with_capacity(finals.len());
    let mut excluded = Vec::new();
    for entry in finals {
        let Some(relative) = root.relative(&entry.path) else {
            return Err(MoveError::source(ServiceError::Protocol(format!(
                "listed {dir}/{} outside the subtree asked for",
                entry.path
            ))));
        };
        if !options.filter.includes(&relative) {
            excluded.push(entry.path);
            continue;
        }
        let target = root.target(&relative);
        jobs.push(Job {
            dir,
            state: destination.remove(&target).unwrap_or_default(),
            dst_prefix: root.destination.as_ref(),
            target,
            entry,
        });
    }
    Ok(Listed {
        jobs,
        excluded,
        skipped: partials.iter().map(|e| e.path.partial_path()).collect(),
    })
}
