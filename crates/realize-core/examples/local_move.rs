//! Moves a directory tree into another, printing each file, with Ctrl-C as a soft stop.
//!
//! `cargo run -p realize-core --example local_move -- FROM TO` moves FROM's
//! files into TO; without arguments it moves a small tree between two
//! temporary directories. Either way it then checks the outcome: every
//! file at the destination with the digest it had, the source empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use realize_core::{
    Digest, DigestAlgorithm, DirId, FileProgress, LocalStore, Move, MoveError, Phase, Progress,
    RelPath, Stop,
};

/// Prints a line per file and per phase.
struct Printer;

impl Progress for Printer {
    fn totals(&self, files: u64, bytes: u64) {
        println!("{files} files, {bytes} bytes to move");
    }

    fn file(&self, _dir: &DirId, path: &RelPath, size: u64) -> Arc<dyn FileProgress> {
        Arc::new(FilePrinter(format!("{path} ({size} bytes)")))
    }
}

struct FilePrinter(String);

impl FileProgress for FilePrinter {
    fn phase(&self, phase: Phase) {
        println!("{}: {phase:?}", self.0);
    }

    fn moved(&self) {
        println!("{}: moved", self.0);
    }

    fn failed(&self, error: &MoveError) {
        println!("{}: failed: {error}", self.0);
    }
}

/// Every file beneath `root`, by path, with its SHA-256.
fn digests(root: &Path) -> std::io::Result<BTreeMap<PathBuf, Digest>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let digest = Digest::of(DigestAlgorithm::Blake3, &std::fs::read(&path)?);
                found.insert(
                    path.strip_prefix(root).unwrap_or(&path).to_path_buf(),
                    digest,
                );
            }
        }
    }
    Ok(found)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let scratch = tempfile::tempdir()?;
    let (from, to) = match args.as_slice() {
        [from, to] => (from.clone(), to.clone()),
        [] => {
            let (from, to) = (scratch.path().join("from"), scratch.path().join("to"));
            std::fs::create_dir_all(from.join("a/b"))?;
            std::fs::create_dir(&to)?;
            std::fs::write(from.join("top.txt"), "at the top")?;
            std::fs::write(from.join("a/b/deep.bin"), vec![7u8; 3 * 1024 * 1024])?;
            (from, to)
        }
        _ => return Err("usage: local_move [FROM TO]".into()),
    };
    let before = digests(&from)?;

    let dir = DirId::new("tree")?;
    let src = LocalStore::new([(dir.clone(), from.clone())]);
    let dst = LocalStore::new([(dir.clone(), to.clone())]);
    let stop = Stop::new();
    // The first Ctrl-C lets the files in flight finish; the next ends the program.
    let soft = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            println!("stopping once the files in flight are moved");
            soft.soft();
        }
    });
    let summary = Move::new(&src, &dst)
        .dirs([dir])
        .progress(&Printer)
        .stop(&stop)
        .run()
        .await?;
    println!(
        "{} moved, {} failed, {} interrupted",
        summary.files_moved, summary.files_failed, summary.files_interrupted
    );
    if stop.is_stopping() {
        return Ok(());
    }
    let after = digests(&to)?;
    assert_eq!(after, before, "the destination has every file, unchanged");
    assert!(digests(&from)?.is_empty(), "the source is empty");
    println!(
        "checked: {} files at the destination with their digests, source empty",
        after.len()
    );
    Ok(())
}
