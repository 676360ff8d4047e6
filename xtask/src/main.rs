//! `cargo xtask`: the project's automation, in Rust rather than shell scripts.
//!
//! - `cargo xtask library`: the docs without a warning, the examples run, a
//!   downstream crate built on realize-core's root re-exports, `cargo package`.
//! - `cargo xtask ci`: what CI runs: formatting, clippy, every test, `library`, and a
//!   short chaos run.
//! - `cargo xtask demo`: a five-minute tour in one command: keys, a daemon on
//!   loopback, and a verified move into it.
//! - `cargo xtask dist`: the release binaries, man pages, shell completions
//!   and the systemd unit, in target/dist/.
//! - `cargo xtask bench`: realize against rsync, rclone and cp, resume,
//!   memory and RPC latency, written to docs/benchmarks.md and its chart.
//! - `cargo xtask bench throttle`: how closely moves keep to `--throttle-up`
//!   and `--throttle-down`, written to docs/bench-throttle.md.
//! - `cargo xtask chaos`: moves under injected faults, checking the invariant;
//!   `cargo xtask chaos --load [--duration 2m]`: the soak, sixteen clients
//!   into one daemon under reloads, cut connections and kills (not in `ci`).
//! - `cargo xtask fuzz [--seconds N]`: each fuzz target in `fuzz/` for N
//!   seconds (default 60), with the executions and crashes of each (needs
//!   nightly and cargo-fuzz; not part of `ci`).

mod bench;
mod chaos;
mod dist;
mod fixture;
mod fuzz;
mod library;
mod proxy;
mod tidy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "realize's automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// What CI runs: fmt --check, clippy -D warnings, all tests, `library`, chaos --iterations 5.
    Ci,
    /// realize as a library: docs without warnings, the examples run, a
    /// downstream crate built on the root re-exports, the crates packaged.
    Library,
    /// Builds, makes keys, starts a daemon on loopback and moves a sample tree into it.
    Demo,
    /// Release binaries, man pages, completions and the systemd unit in target/dist/.
    Dist,
    /// Benchmarks with the release binaries, on tmpfs and loopback.
    Bench(bench::Options),
    /// Runs each fuzz target (needs nightly and cargo-fuzz).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Moves under injected faults; fails if any file is lost or corrupt.
    Chaos {
        /// Moves to run, one fault each.
        #[arg(long, default_value_t = 50)]
        iterations: u32,
        /// Seed of the data and of the fault moments, to reproduce a run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the figures to docs/reliability.md (with --load, its
        /// "Soak under load" section only).
        #[arg(long)]
        doc: bool,
        /// The soak instead: concurrent clients moving into one daemon under
        /// reloads, cuts and kills for --duration.
        #[arg(long, conflicts_with = "iterations")]
        load: bool,
        /// How long the soak injects faults and starts moves, e.g. 90s, 2m.
        #[arg(long, requires = "load", value_parser = chaos::load::parse_duration, default_value = "2m")]
        duration: std::time::Duration,
        /// Concurrent clients of the soak, each with its own key.
        #[arg(long, requires = "load", default_value_t = chaos::load::CLIENTS)]
        clients: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Ci => ci(&root),
        Task::Demo => demo(),
        Task::Library => library::library(&root),
        Task::Dist => dist::dist(&root),
        Task::Fuzz { seconds } => fuzz::fuzz(&root, seconds),
        Task::Bench(options) => bench::bench(&root, &options),
        Task::Chaos {
            load: true,
            duration,
            clients,
            seed,
            doc,
            ..
        } => chaos::load::load(
            &root,
            &chaos::load::Options {
                duration,
                clients,
                seed,
                write_doc: doc,
            },
        ),
        Task::Chaos {
            iterations,
            seed,
            doc,
            ..
        } => chaos::chaos(
            &root,
            &chaos::Options {
                iterations,
                seed,
                write_doc: doc,
            },
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The CPU's model name, to describe the machine next to measured figures.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn ci(root: &Path) -> anyhow::Result<()> {
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let (passed, failed) = cargo_test()?;
    library::library(root)?;
    // A short run: every kind of fault at least once, in about a minute.
    chaos::chaos(
        root,
        &chaos::Options {
            iterations: 5,
            seed: 1,
            write_doc: false,
        },
    )?;
    // Last, so whoever reads the end of the log sees what the tests did.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// `cargo test --workspace`, its output passed through, and the passed and
/// failed counts of all its test binaries added up.
fn cargo_test() -> anyhow::Result<(u64, u64)> {
    eprintln!("$ cargo test --workspace");
    let mut child = Command::new("cargo")
        .args(["test", "--workspace"])
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        // "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
        if let Some(counts) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                counts
                    .split(';')
                    .find_map(|part| part.trim().strip_suffix(what))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test --workspace failed: {status} ({passed} passed, {failed} failed)");
    }
    Ok((passed, failed))
}

fn demo() -> anyhow::Result<()> {
    run("cargo", &["build", "--workspace", "--bins"])?;
    let bin = fixture::target_dir(&workspace_root()).join("debug");
    let demo = std::env::temp_dir().join(format!("realize-demo-{}", std::process::id()));
    let (src, dst) = (demo.join("laptop/photos"), demo.join("server/photos"));
    for (rel, size) in [
        ("2024/beach.jpg", 3_000_000),
        ("2024/sunset.jpg", 1_500_000),
        ("notes.txt", 42),
    ] {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().context("no parent")?)?;
        std::fs::write(
            &path,
            (0..size)
                .map(|i: u32| (i * 31 % 251) as u8)
                .collect::<Vec<_>>(),
        )?;
    }
    std::fs::create_dir_all(&dst)?;
    for name in ["laptop", "server"] {
        let prefix = demo.join(name).join(name);
        let status = Command::new(bin.join("realize"))
            .args(["keygen", "--out"])
            .arg(&prefix)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("realize keygen failed");
        }
    }
    let config = demo.join("server/realized.toml");
    std::fs::write(
        &config,
        "address = \"127.0.0.1:0\"\nprivkey = \"server.key\"\n[dirs]\nphotos = \"photos\"\n[peers.laptop]\npublic_key_file = \"../laptop/laptop.pub.pem\"\n",
    )?;
    eprintln!("\n$ realized --config {}", config.display());
    let mut daemon = Command::new(bin.join("realized"))
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start realized")?;
    let stderr = daemon.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            bail!("realized exited before listening");
        };
        let line = line?;
        eprintln!("  {line}");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    // Keep draining the daemon's log so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("  {line}");
        }
    });
    let args = [
        "--src-path".into(),
        src.clone().into_os_string(),
        "--dst-addr".into(),
        addr.into(),
        "--privkey".into(),
        demo.join("laptop/laptop.key").into_os_string(),
        "--peers".into(),
        demo.join("server/server.pub.pem").into_os_string(),
        "photos".into(),
    ];
    eprintln!(
        "\n$ realize {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = Command::new(bin.join("realize")).args(&args).status()?;
    daemon.kill()?;
    daemon.wait()?;
    eprintln!("\nfiles now under {}:", dst.display());
    run("find", &[&dst.to_string_lossy(), "-type", "f"])?;
    if !status.success() {
        bail!("the demo move failed");
    }
    eprintln!(
        "\nthe demo lives in {}; remove it when done",
        demo.display()
    );
    Ok(())
}
