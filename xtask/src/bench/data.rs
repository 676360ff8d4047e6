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

/// A set's files at a scale: `--scale 1` is the set as documented, smaller
/// scales keep its kind (a few big files, many tiny ones, a spread) with less data.
#[derive(Debug, Clone, Copy)]
struct Shape {
    files: u64,
    /// Size of every file (large, small) or the largest size (mixed).
    size: u64,
    dirs: u64,
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

    fn shape(self, scale: f64) -> Shape {
        let scaled = |n: u64, min: u64| ((n as f64 * scale).round() as u64).max(min);
        match self {
            DataSet::Large => Shape {
                files: 4,
                size: scaled(256 * MIB, 4 * KIB),
                dirs: 1,
            },
            DataSet::Small => {
                let files = scaled(10_000, 1);
                Shape {
                    files,
                    size: 4 * KIB,
                    dirs: files.min(100),
                }
            }
            DataSet::Mixed => Shape {
                files: scaled(200, 1),
                size: scaled(32 * MIB, KIB),
                dirs: 7,
            },
        }
    }

    pub fn describe(self, scale: f64) -> String {
        let shape = self.shape(scale);
        match self {
            DataSet::Large => format!("{} × {}", shape.files, size(shape.size)),
            DataSet::Small => format!(
                "{} × {} in {} directories",
                thousands(shape.files),
                size(shape.size),
                shape.dirs
            ),
            DataSet::Mixed => format!(
                "{} files, 1 KiB–{}, log-uniform",
                shape.files,
                size(shape.size)
            ),
        }
    }

    /// Writes the set at `scale` under `root`; returns the number of files and bytes.
    pub fn generate(self, root: &Path, scale: f64) -> anyhow::Result<(u64, u64)> {
        let mut rng = Rng::new(0xBE7C_0000 + self as u64);
        let shape = self.shape(scale);
        let files: Vec<(String, u64)> = match self {
            DataSet::Large => (0..shape.files)
                .map(|i| (format!("large-{i}.bin"), shape.size))
                .collect(),
            DataSet::Small => (0..shape.files)
                .map(|i| {
                    let rel = format!("dir{:02}/file{i:05}.bin", i % shape.dirs);
                    (rel, shape.size)
                })
                .collect(),
            DataSet::Mixed => (0..shape.files)
                .map(|i| {
                    let size = rng.log_uniform(KIB, shape.size);
                    (format!("sub{}/mixed{i:03}.bin", i % shape.dirs), size)
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

/// A size in the largest binary unit that keeps it at least 1, such as "256 MiB".
fn size(bytes: u64) -> String {
    let (value, unit) = if bytes >= MIB {
        (bytes as f64 / MIB as f64, "MiB")
    } else if bytes >= KIB {
        (bytes as f64 / KIB as f64, "KiB")
    } else {
        (bytes as f64, "bytes")
    };
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// 10000 as "10,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
