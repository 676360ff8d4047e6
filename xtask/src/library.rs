//! `cargo xtask library`: realize as a library: its docs build without a
//! warning, its examples run and check their outcome, a crate outside the
//! workspace moves a tree through realize-core's root re-exports alone, and
//! the crates package.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::run;

pub(crate) fn library(root: &Path) -> anyhow::Result<()> {
    docs()?;
    examples()?;
    downstream(root)?;
    package()
}

/// Every public item documented, every intra-doc link resolved.
fn docs() -> anyhow::Result<()> {
    eprintln!("$ RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps --workspace");
    check(
        Command::new("cargo")
            .args(["doc", "--no-deps", "--workspace"])
            .env("RUSTDOCFLAGS", "-D warnings"),
        "cargo doc",
    )
}

/// The examples that need nothing but loopback run, and each checks its
/// outcome; remote_move needs a daemon of its own, so it is only built.
fn examples() -> anyhow::Result<()> {
    run(
        "cargo",
        &[
            "build",
            "-p",
            "realize-core",
            "-p",
            "realize-net",
            "-p",
            "realize-daemon",
            "--examples",
        ],
    )?;
    run(
        "cargo",
        &["run", "-p", "realize-core", "--example", "local_move"],
    )?;
    run(
        "cargo",
        &["run", "-p", "realize-daemon", "--example", "in_process"],
    )
}

/// A crate of its own, depending on realize-core by path, that moves a tree
/// with a custom `Progress` through the root re-exports only: a change
/// that breaks them fails here. Built offline, on the workspace's lock file
/// and target directory, so it needs no network and little time.
fn downstream(root: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot make a directory for the downstream crate")?;
    let core = root.join("crates/realize-core");
    std::fs::create_dir(dir.path().join("src"))?;
    std::fs::write(
        dir.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"downstream\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [dependencies]\nrealize-core = {{ path = {core:?} }}\n\
             tokio = {{ version = \"1\", features = [\"macros\", \"rt\"] }}\n\
             tempfile = \"3\"\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(dir.path().join("src/main.rs"), DOWNSTREAM_MAIN)?;
    std::fs::copy(root.join("Cargo.lock"), dir.path().join("Cargo.lock"))
        .context("cannot copy Cargo.lock")?;
    eprintln!(
        "$ cargo run --offline (downstream crate in {})",
        dir.path().display()
    );
    check(
        Command::new("cargo")
            .args(["run", "--offline", "--quiet"])
            .current_dir(dir.path())
            .env("CARGO_TARGET_DIR", root.join("target")),
        "the downstream crate",
    )
}

/// `cargo package` of every crate but xtask, without building each package
/// again: the workspace's own builds and tests have.
fn package() -> anyhow::Result<()> {
    run(
        "cargo",
        &[
            "package",
            "--workspace",
            "--exclude",
            "xtask",
            "--no-verify",
            "--allow-dirty",
        ],
    )
}

fn check(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

const DOWNSTREAM_MAIN: &str = r#"//! Moves a tree with a custom Progress, through realize-core's root re-exports only.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use realize_core::{DirId, FileProgress, LocalStore, Move, MoveOptions, Progress, RelPath, Digest, DigestAlgorithm, Stop};

#[derive(Default)]
struct Count(Arc<AtomicU64>);

struct Moved(Arc<AtomicU64>);

impl Progress for Count {
    fn file(&self, _dir: &DirId, _path: &RelPath, _size: u64) -> Arc<dyn FileProgress> {
        Arc::new(Moved(self.0.clone()))
    }
}

impl FileProgress for Moved {
    fn moved(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (from, to) = (tempfile::tempdir()?, tempfile::tempdir()?);
    std::fs::create_dir_all(from.path().join("x/y"))?;
    let files = [("one", vec![1u8; 100]), ("x/two", vec![2u8; 300_000]), ("x/y/three", vec![3u8; 2 << 20])];
    for (name, data) in &files {
        std::fs::write(from.path().join(name), data)?;
    }
    let dir = DirId::new("tree")?;
    let src = LocalStore::new([(dir.clone(), from.path().to_path_buf())]);
    let dst = LocalStore::new([(dir.clone(), to.path().to_path_buf())]);
    let progress = Count::default();
    let stop = Stop::new();
    let mut options = MoveOptions::default();
    options.parallel = 2;
    let summary = Move::new(&src, &dst).dirs([dir]).options(options).progress(&progress).stop(&stop).run().await?;
    assert_eq!(summary.files_moved, 3, "{:?}", summary.failures);
    assert_eq!(progress.0.load(Ordering::Relaxed), 3);
    for (name, data) in &files {
        assert_eq!(Digest::of(DigestAlgorithm::Blake3, &std::fs::read(to.path().join(name))?), Digest::of(DigestAlgorithm::Blake3, data));
        assert!(!from.path().join(name).exists());
    }
    println!("downstream: 3 files moved through the root re-exports");
    Ok(())
}
"#;
