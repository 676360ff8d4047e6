//! What the tests of every crate share (feature `testing`): seeded random
//! data, file trees made and compared, and [`Faulty`], a store that injects
//! faults.
//!
//! Helpers that make a tree panic on error, as a failed test should; those
//! the xtask runs also use return the error, naming the path.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::{Digest, DigestAlgorithm, Hasher};

mod faulty;

pub use faulty::{Fault, Faulty};

/// xorshift64*: seedable and fast, enough for incompressible data and random choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`: the same seed, the same numbers.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A size between `min` and `max` whose logarithm is uniform.
    pub fn log_uniform(&mut self, min: u64, max: u64) -> u64 {
        let (lo, hi) = ((min as f64).ln(), (max as f64).ln());
        (lo + (hi - lo) * self.unit()).exp().round() as u64
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes, different for each seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    Rng::new(seed).fill(&mut data);
    data
}

/// The error of `path`, with its name, for callers that report it.
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |error| io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Writes `data` to `root/rel`, creating its directories.
pub fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The bytes of the file `rel` beneath `root`; panics if it cannot be read.
pub fn read_file(root: &Path, rel: &str) -> Vec<u8> {
    let path = root.join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether anything, even a dangling symlink, is at `root/rel`.
pub fn exists(root: &Path, rel: &str) -> bool {
    root.join(rel).symlink_metadata().is_ok()
}

/// Every path under `root`, files and directories, relative and sorted.
pub fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let items = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for item in items {
            let item = item.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let path = item.path();
            out.push(relative(root, &path));
            if item.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Every file under `root` (anything but a directory) by `/`-separated
/// relative path, with its size; none if `root` does not exist.
pub fn list_files(root: &Path) -> io::Result<BTreeMap<String, u64>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir).map_err(at(dir))? {
            let entry = entry.map_err(at(dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(at(&path))?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.insert(relative(root, &path), meta.len());
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out)?;
    }
    Ok(out)
}

/// The SHA-256 of `data`: what the tests that need one digest use.
pub fn sha256(data: &[u8]) -> Digest {
    Digest::of(DigestAlgorithm::Sha256, data)
}

/// The SHA-256 of the file at `path`, read in chunks.
pub fn sha256_file(path: &Path) -> io::Result<Digest> {
    let mut file = std::fs::File::open(path).map_err(at(path))?;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(at(path))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// Every file under `root` with its SHA-256: what a test compares before
/// and after a move.
pub fn manifest(root: &Path) -> BTreeMap<String, Digest> {
    let files = list_files(root).unwrap_or_else(|e| panic!("{e}"));
    files
        .into_keys()
        .map(|rel| {
            let hash = sha256_file(&root.join(&rel)).unwrap_or_else(|e| panic!("{e}"));
            (rel, hash)
        })
        .collect()
}

/// Writes `size` bytes from `rng` to `path`, creating its directory.
pub fn write_random(path: &Path, size: u64, rng: &mut Rng) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(at(parent))?;
    }
    let mut file = io::BufWriter::new(std::fs::File::create(path).map_err(at(path))?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).map_err(at(path))?;
        left -= n as u64;
    }
    file.flush().map_err(at(path))
}
