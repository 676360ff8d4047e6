//! The benchmark's data sets, made from fixed seeds so every run moves the same bytes.

use std::path::Path;

use realize_core::testing::{Rng, write_random};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataSet {
    /// 4 × 256 MiB.
    Large,
    /// 10,000 × 4 KiB in 100 directories.
    Small,
    /// About 200 files of 1 KiB to 32 MiB, log-uniform sizes.
    Mixed,
}

impl DataSet {
    pub const ALL: [DataSet; 3] = [DataSet::Large, DataSet::Small, DataSet::Mixed];

    pub fn name(self) -> &'static str {
        match self {
            DataSet::Large => "large",
            DataSet::Small => "small",
            DataSet::Mixed => "mixed",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DataSet::Large => "4 × 256 MiB",
            DataSet::Small => "10,000 × 4 KiB in 100 directories",
            DataSet::Mixed => "200 files, 1 KiB–32 MiB, log-uniform",
        }
    }

    /// Writes the set under `root`; returns the number of files and bytes.
    pub fn generate(self, root: &Path) -> anyhow::Result<(u64, u64)> {
        let mut rng = Rng::new(0xBE7C_0000 + self as u64);
        let files: Vec<(String, u64)> = match self {
            DataSet::Large => (0..4)
                .map(|i| (format!("large-{i}.bin"), 256 * MIB))
                .collect(),
            DataSet::Small => (0..10_000)
                .map(|i| (format!("dir{:02}/file{i:05}.bin", i % 100), 4 * KIB))
                .collect(),
            DataSet::Mixed => (0..200)
                .map(|i| {
                    let size = rng.log_uniform(KIB, 32 * MIB);
                    (format!("sub{}/mixed{i:03}.bin", i % 7), size)
                })
                .collect(),
        };
        let mut bytes = 0;
        for (rel, size) in &files {
            write_random(&root.join(rel), *size, &mut rng)?;
            bytes += size;
        }
        Ok((files.len() as u64, bytes))
    }
}
