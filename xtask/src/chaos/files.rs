//! Sets of files for the fault runs and the soak: generated with seeded
//! sizes and content, and checked against their SHA-256 on both sides.

use std::collections::BTreeMap;
use std::path::Path;

use realize_core::Digest;
use realize_core::testing::{Rng, list_files, sha256_file, write_random};

/// A generated set: how many files, and their size range (log-uniform).
#[derive(Debug, Clone, Copy)]
pub(super) struct SetShape {
    pub files: usize,
    pub min_size: u64,
    pub max_size: u64,
}

/// What the checks of files found; shared by the fault runs and the soak (`load`).
#[derive(Debug, Default)]
pub(super) struct Checks {
    pub file_checks: u64,
    pub lost: u64,
    pub corrupt: u64,
    pub stray_partials: u64,
    /// Files left on the source, or unexpected on the destination, after the completing run.
    pub misplaced: u64,
    /// One line per violation, with what is needed to reproduce it.
    pub findings: Vec<String>,
}

impl Checks {
    pub fn broken(&self) -> bool {
        self.lost + self.corrupt + self.stray_partials + self.misplaced > 0
    }

    pub fn finding(&mut self, what: String) {
        eprintln!("  FINDING {what}");
        self.findings.push(what);
    }

    /// Adds what another run of checks found.
    pub fn absorb(&mut self, other: Checks) {
        self.file_checks += other.file_checks;
        self.lost += other.lost;
        self.corrupt += other.corrupt;
        self.stray_partials += other.stray_partials;
        self.misplaced += other.misplaced;
        self.findings.extend(other.findings);
    }
}

/// A fresh set of `shape.files` files under `root`, some nested; returns each
/// file's SHA-256 and the total size.
pub(super) fn generate(
    root: &Path,
    seed: u64,
    shape: SetShape,
) -> anyhow::Result<(BTreeMap<String, Digest>, u64)> {
    let mut rng = Rng::new(seed);
    let mut total = 0;
    let mut manifest = BTreeMap::new();
    for i in 0..shape.files {
        let rel = match rng.below(3) {
            0 => format!("f{i:03}.bin"),
            1 => format!("d{}/f{i:03}.bin", rng.below(4)),
            _ => format!("d{}/e{}/f{i:03}.bin", rng.below(4), rng.below(3)),
        };
        let size = rng.log_uniform(shape.min_size, shape.max_size);
        let path = root.join(&rel);
        write_random(&path, size, &mut rng)?;
        manifest.insert(rel, sha256_file(&path)?);
        total += size;
    }
    Ok((manifest, total))
}

/// Checks every file of `manifest` on both sides. `finished` says the move
/// has completed: then each file must be on the destination only, and no
/// partial file may remain.
pub(super) fn check(
    checks: &mut Checks,
    label: &str,
    src: &Path,
    dst: &Path,
    manifest: &BTreeMap<String, Digest>,
    finished: bool,
) -> anyhow::Result<()> {
    let (src_files, dst_files) = (list_files(src)?, list_files(dst)?);
    let finding = |checks: &mut Checks, what: String| checks.finding(format!("{label}: {what}"));
    for (rel, expected) in manifest {
        checks.file_checks += 1;
        let mut intact = 0;
        for (side, root, files) in [
            ("source", src, &src_files),
            ("destination", dst, &dst_files),
        ] {
            if !files.contains_key(rel) {
                continue;
            }
            if sha256_file(&root.join(rel))? == *expected {
                intact += 1;
            } else {
                checks.corrupt += 1;
                finding(checks, format!("{side} file {rel} is corrupt"));
            }
        }
        if intact == 0 {
            checks.lost += 1;
            finding(checks, format!("{rel} has no intact copy left"));
        } else if finished && !dst_files.contains_key(rel) {
            checks.misplaced += 1;
            finding(checks, format!("{rel} was not moved"));
        } else if finished && src_files.contains_key(rel) {
            checks.misplaced += 1;
            finding(
                checks,
                format!("{rel} is still on the source after the move"),
            );
        }
    }
    for (side, files) in [("source", &src_files), ("destination", &dst_files)] {
        for rel in files.keys().filter(|rel| !manifest.contains_key(*rel)) {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let partial = name.starts_with('.') && name.ends_with(".part");
            if partial && side == "source" {
                // realize writes only to the destination.
                checks.stray_partials += 1;
                finding(checks, format!("partial file {rel} on the source"));
            } else if partial && finished {
                checks.stray_partials += 1;
                finding(checks, format!("stray partial file {rel} after the move"));
            } else if !partial {
                checks.misplaced += 1;
                finding(checks, format!("unexpected {side} file {rel}"));
            }
        }
    }
    Ok(())
}
