//! `cargo xtask fuzz [--seconds N]`: runs each cargo-fuzz target in `fuzz/` for a
//! bounded time, from its seeds in `fuzz/seeds/`, and reports the executions run and
//! the crashes found.
//!
//! Not part of `cargo xtask ci`: it needs a nightly toolchain and cargo-fuzz,
//! and its value grows with time spent, which CI runs cannot give it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// The targets, in `fuzz/fuzz_targets/`.
const TARGETS: [&str; 3] = ["path", "config", "handlers"];

/// What one target's run found.
struct Outcome {
    target: &'static str,
    executions: u64,
    per_second: u64,
    crashed: bool,
}

pub fn fuzz(root: &Path, seconds: u64) -> anyhow::Result<()> {
    let fuzz_dir = root.join("fuzz");
    let target_dir = root.join("target/fuzz");
    let mut outcomes = Vec::new();
    for target in TARGETS {
        // libFuzzer adds what it finds to the first corpus directory only: the
        // seeds kept in the repository are read, never grown.
        let corpus = target_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        eprintln!("$ cargo +nightly fuzz run {target} (for {seconds}s)");
        // No sanitizer: the workspace forbids unsafe code, so AddressSanitizer would
        // mostly slow the search down; panics and aborts are what we look for.
        let output = Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                "--target-dir",
            ])
            .arg(&target_dir)
            .arg(target)
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
                "-rss_limit_mb=4096",
                // An input that runs this long is a hang (as a WriteFiles call cut
                // in a message prefix once was in the harness): report it as found.
                "-timeout=30",
            ])
            .current_dir(&fuzz_dir)
            .output()
            .with_context(
                || "cannot run cargo +nightly fuzz (install it: cargo install cargo-fuzz)",
            )?;
        let log = String::from_utf8_lossy(&output.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|n| n.trim().parse().ok())
        };
        let executions = stat("stat::number_of_executed_units:");
        let crashed = !output.status.success();
        if crashed {
            eprintln!("{log}");
        }
        let Some(executions) = executions.or(crashed.then_some(0)) else {
            bail!("cargo fuzz run {target} printed no statistics:\n{log}");
        };
        outcomes.push(Outcome {
            target,
            executions,
            per_second: stat("stat::average_exec_per_sec:").unwrap_or(0),
            crashed,
        });
    }
    println!("| target | seconds | executions | executions/s | crashes |");
    println!("|---|---|---|---|---|");
    for o in &outcomes {
        let crashes = if o.crashed {
            "1 (see fuzz/artifacts/)"
        } else {
            "0"
        };
        println!(
            "| {} | {seconds} | {} | {} | {crashes} |",
            o.target, o.executions, o.per_second
        );
    }
    if outcomes.iter().any(|o| o.crashed) {
        bail!("fuzzing found a crash");
    }
    Ok(())
}
