//! `cargo xtask bench`: realize against rsync, rclone and cp on the same data in the same run; resume, memory and RPC latency; written to docs/benchmarks.md and docs/benchmarks.png.

mod chart;
mod data;
mod report;
mod rpc;
mod throttle;
mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use realize_core::testing::{Rng, list_files, sha256_file, write_random};

use crate::fixture::{
    Binaries, Daemon, Keys, clear_dir, peak_rss, reset_copy, scratch, target_dir,
};
use crate::proxy::Proxy;
use crate::run;
pub use data::DataSet;
use tools::{Servers, Tool};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Options {
    #[command(subcommand)]
    only: Option<Only>,
    /// Timed runs of each tool on each data set.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Data sets to time, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    sets: Vec<DataSet>,
    /// Seconds rclone may take on the small set, which it moves one slow
    /// request after another; it runs once there.
    #[arg(long, default_value_t = 60)]
    rclone_small_cap: u64,
    /// Print the figures without writing docs/.
    #[arg(long)]
    no_doc: bool,
    /// Time realize against rsync only, and print their medians without
    /// measuring memory, resume or latency: a check while optimising.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Only {
    /// Throttle accuracy only, written to docs/bench-throttle.md.
    Throttle,
}

/// What one tool did on one data set.
#[derive(Debug, Clone)]
pub struct Timings {
    pub tool: Tool,
    pub times: Vec<Duration>,
    /// Set when the run was stopped at the cap: how long it ran and how
    /// many files had arrived by then.
    pub capped: Option<(Duration, usize)>,
}

#[derive(Debug, Clone)]
pub struct SetResult {
    pub set: DataSet,
    pub files: u64,
    pub bytes: u64,
    pub timings: Vec<Timings>,
    pub memory: Memory,
}

/// Peak resident memory while moving a set with realize, each process fresh.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub daemon_idle: u64,
    pub daemon: u64,
    pub command: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Resume {
    pub size: u64,
    /// A partial file holding exactly the first half.
    pub prepared_sent: u64,
    pub prepared_wire: u64,
    /// A move interrupted by SIGINT once its partial file reached half the
    /// size: how big the partial file was, and what the resume sent.
    pub interrupted_partial: u64,
    pub interrupted_sent: u64,
    pub interrupted_wire: u64,
}

pub fn bench(root: &Path, options: &Options) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        // Benchmarks measure optimised code, the data generator and the RPC
        // load client included: build everything in release and run again from there.
        run("cargo", &["build", "--workspace", "--bins", "--release"])?;
        let status = Command::new(target_dir(root).join("release/xtask"))
            .args(std::env::args_os().skip(1))
            .status()
            .context("cannot run the release xtask")?;
        if !status.success() {
            bail!("the benchmark failed: {status}");
        }
        return Ok(());
    }
    // A no-op after the build above, but keeps `cargo run --release -p xtask` honest.
    let bins = Binaries::build(root, true)?;
    if let Some(Only::Throttle) = options.only {
        return throttle::throttle(root, bins);
    }
    tools::install_missing()?;
    let work = scratch("bench")?;
    if options.quick {
        let result = quick(options, &bins, &work);
        let _ = std::fs::remove_dir_all(&work);
        return result;
    }
    let result = measure(options, &bins, &work);
    let _ = std::fs::remove_dir_all(&work);
    let (sets, resume, latency) = result?;
    let doc = report::markdown(&sets, &resume, &latency, options.runs)?;
    println!("{doc}");
    if !options.no_doc {
        let path = root.join("docs/benchmarks.md");
        std::fs::write(&path, &doc).with_context(|| format!("cannot write {}", path.display()))?;
        let png = root.join("docs/benchmarks.png");
        chart::draw(
            &png,
            "Throughput by tool and data set (median of the runs; higher is better)",
            &report::panels(&sets),
        )?;
        eprintln!("wrote {} and {}", path.display(), png.display());
    }
    Ok(())
}

type Measured = (Vec<SetResult>, Resume, Vec<rpc::Row>);

/// The data sets asked for, all by default.
fn chosen_sets(options: &Options) -> Vec<DataSet> {
    if options.sets.is_empty() {
        DataSet::ALL.to_vec()
    } else {
        options.sets.clone()
    }
}

/// The directories a set is generated in, moved from and moved to.
struct Dirs {
    pristine: PathBuf,
    src: PathBuf,
    dst: PathBuf,
}

impl Dirs {
    fn create(work: &Path) -> anyhow::Result<Dirs> {
        let dirs = Dirs {
            pristine: work.join("pristine"),
            src: work.join("src"),
            dst: work.join("dst"),
        };
        for dir in [&dirs.pristine, &dirs.src, &dirs.dst] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(dirs)
    }

    fn clear(&self) -> anyhow::Result<()> {
        for dir in [&self.pristine, &self.src, &self.dst] {
            clear_dir(dir)?;
        }
        Ok(())
    }
}

fn measure(options: &Options, bins: &Binaries, work: &Path) -> anyhow::Result<Measured> {
    let keys = Keys::generate(bins, work)?;
    let dirs = Dirs::create(work)?;
    let mut servers = Servers::start(bins, &keys, work, &dirs.dst)?;
    let mut results = Vec::new();
    for set in chosen_sets(options) {
        let (files, bytes, timings) =
            time_tools(options, &Tool::ALL, set, bins, &keys, &mut servers, &dirs)?;
        let memory = peak_memory(bins, &keys, work, &dirs.pristine, &dirs.src, &dirs.dst)?;
        results.push(SetResult {
            set,
            files,
            bytes,
            timings,
            memory,
        });
    }
    dirs.clear()?;
    drop(servers);
    let resume = resume(bins, &keys, work)?;
    let latency = latency(bins, &keys, work)?;
    Ok((results, resume, latency))
}

/// Times realize and rsync only, and prints their medians and ratio.
fn quick(options: &Options, bins: &Binaries, work: &Path) -> anyhow::Result<()> {
    let keys = Keys::generate(bins, work)?;
    let dirs = Dirs::create(work)?;
    let mut servers = Servers::start(bins, &keys, work, &dirs.dst)?;
    for set in chosen_sets(options) {
        let tools = [Tool::Realize, Tool::Rsync];
        let (_, _, timings) = time_tools(options, &tools, set, bins, &keys, &mut servers, &dirs)?;
        let median = |t: &Timings| {
            let mut times = t.times.clone();
            times.sort();
            times[times.len() / 2].as_secs_f64()
        };
        let (realize, rsync) = (median(&timings[0]), median(&timings[1]));
        println!(
            "{}: realize {realize:.3} s, rsync {rsync:.3} s, realize time / rsync time {:.2}",
            set.name(),
            realize / rsync
        );
    }
    dirs.clear()
}

/// Times each of `tools` moving `set`, `options.runs` times in a rotating
/// order; returns the set's file count, size and the timings in the order of `tools`.
fn time_tools(
    options: &Options,
    tools: &[Tool],
    set: DataSet,
    bins: &Binaries,
    keys: &Keys,
    servers: &mut Servers,
    dirs: &Dirs,
) -> anyhow::Result<(u64, u64, Vec<Timings>)> {
    let Dirs { pristine, src, dst } = dirs;
    clear_dir(pristine)?;
    let (files, bytes) = set.generate(pristine)?;
    let expected = list_files(pristine)?;
    eprintln!(
        "{}: {files} files, {:.0} MB",
        set.name(),
        bytes as f64 / 1e6
    );
    let mut timings: Vec<Timings> = tools
        .iter()
        .map(|&tool| Timings {
            tool,
            times: Vec::new(),
            capped: None,
        })
        .collect();
    for round in 0..options.runs.max(1) {
        // A rotating order, so no tool always runs first (or last).
        for k in 0..tools.len() {
            let slot = (round + k) % tools.len();
            let tool = tools[slot];
            let capped = tool == Tool::Rclone && set == DataSet::Small;
            if capped && round > 0 {
                continue;
            }
            reset_copy(pristine, src)?;
            clear_dir(dst)?;
            if tool == Tool::Rclone {
                servers.restart_rclone()?;
            }
            let command = servers.command(tool, bins, keys, src, dst);
            let cap = capped.then(|| Duration::from_secs(options.rclone_small_cap));
            let entry = &mut timings[slot];
            match timed(command, cap)? {
                Some(elapsed) => {
                    verify(tool, src, dst, &expected)?;
                    eprintln!("  {} {elapsed:.3?}", tool.name());
                    entry.times.push(elapsed);
                }
                None => {
                    let arrived = list_files(dst)?.len();
                    eprintln!(
                        "  {} stopped at the {}s cap with {arrived} of {files} files",
                        tool.name(),
                        options.rclone_small_cap
                    );
                    entry.capped = cap.map(|cap| (cap, arrived));
                }
            }
        }
    }
    Ok((files, bytes, timings))
}

/// Wall time of `command`, or None if it was still running at `cap` (then it is killed).
fn timed(mut command: Command, cap: Option<Duration>) -> anyhow::Result<Option<Duration>> {
    command.stdin(Stdio::null()).stdout(Stdio::null());
    let started = Instant::now();
    let mut child = command.spawn().context("cannot start the tool")?;
    let status = match cap {
        None => child.wait()?,
        Some(cap) => loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() >= cap {
                child.kill()?;
                child.wait()?;
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        },
    };
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(Some(elapsed))
}

/// Every file arrived with its size, and a move left nothing on the source.
fn verify(
    tool: Tool,
    src: &Path,
    dst: &Path,
    expected: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    if list_files(dst)? != *expected {
        bail!("{} did not deliver the data set intact", tool.name());
    }
    if tool.moves() && !list_files(src)?.is_empty() {
        bail!("{} left files on the source", tool.name());
    }
    Ok(())
}

/// A fresh daemon and command move the set; both are polled for VmHWM.
fn peak_memory(
    bins: &Binaries,
    keys: &Keys,
    work: &Path,
    pristine: &Path,
    src: &Path,
    dst: &Path,
) -> anyhow::Result<Memory> {
    reset_copy(pristine, src)?;
    clear_dir(dst)?;
    let config = work.join("realized-memory.toml");
    keys.daemon_config(&config, &[("d", dst)])?;
    let daemon = Daemon::start(&bins.realized, &config, &work.join("realized-memory.log"))?;
    let daemon_idle = peak_rss(daemon.pid()).context("cannot read the daemon's memory")?;
    let mut child = keys
        .move_command(bins, src, &daemon.addr, "d")
        .arg("--quiet")
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start realize")?;
    let mut command = 0;
    // VmHWM is a high-water mark, so polling misses at most the last few
    // milliseconds of the command's life.
    let status = loop {
        command = command.max(peak_rss(child.id()).unwrap_or(0));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !status.success() {
        bail!("realize failed while its memory was measured: {status}");
    }
    let daemon = peak_rss(daemon.pid()).context("cannot read the daemon's memory")?;
    eprintln!(
        "  memory: daemon {} MiB (idle {} MiB), realize {} MiB",
        daemon >> 20,
        daemon_idle >> 20,
        command >> 20
    );
    Ok(Memory {
        daemon_idle,
        daemon,
        command,
    })
}

/// The JSON summary that `realize --output json` prints last.
fn bytes_sent(stdout: &[u8]) -> anyhow::Result<u64> {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().context("realize printed nothing")?;
    let summary: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("not a JSON summary: {last}"))?;
    summary["bytes_sent"]
        .as_u64()
        .with_context(|| format!("no bytes_sent in {last}"))
}

/// Resumes a 256 MiB file that is half there, through a counting proxy.
fn resume(bins: &Binaries, keys: &Keys, work: &Path) -> anyhow::Result<Resume> {
    const SIZE: u64 = 256 << 20;
    let (pristine, src, dst) = (
        work.join("resume-pristine"),
        work.join("resume-src"),
        work.join("resume-dst"),
    );
    write_random(&pristine.join("big.bin"), SIZE, &mut Rng::new(0x2E5E))?;
    let original = sha256_file(&pristine.join("big.bin"))?;
    let config = work.join("realized-resume.toml");
    keys.daemon_config(&config, &[("d", &dst)])?;
    clear_dir(&dst)?;
    let daemon = Daemon::start(&bins.realized, &config, &work.join("realized-resume.log"))?;
    let (partial, last) = (dst.join(".big.bin.part"), dst.join("big.bin"));

    // The resume, through a fresh proxy that counts what realize sends.
    let finish = || -> anyhow::Result<(u64, u64)> {
        let proxy = Proxy::start(&daemon.addr)?;
        let output = keys
            .move_command(bins, &src, &proxy.addr, "d")
            .args(["--output", "json"])
            .output()
            .context("cannot run realize")?;
        if !output.status.success() {
            bail!(
                "the resumed move failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if sha256_file(&last)? != original {
            bail!("the resumed file is not the original");
        }
        Ok((bytes_sent(&output.stdout)?, proxy.sent()))
    };

    reset_copy(&pristine, &src)?;
    let data = std::fs::read(pristine.join("big.bin"))?;
    std::fs::write(&partial, &data[..(SIZE / 2) as usize])?;
    drop(data);
    let (prepared_sent, prepared_wire) = finish()?;

    reset_copy(&pristine, &src)?;
    clear_dir(&dst)?;
    let mut child = keys
        .move_command(bins, &src, &daemon.addr, "d")
        .arg("--quiet")
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start realize")?;
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < SIZE / 2 {
        if child.try_wait()?.is_some() {
            bail!("the move ended before it could be interrupted at half way");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    run("kill", &["-INT", &child.id().to_string()])?;
    child.wait()?;
    let interrupted_partial = std::fs::metadata(&partial)
        .context("the interrupted move left no partial file")?
        .len();
    let (interrupted_sent, interrupted_wire) = finish()?;
    let resume = Resume {
        size: SIZE,
        prepared_sent,
        prepared_wire,
        interrupted_partial,
        interrupted_sent,
        interrupted_wire,
    };
    eprintln!("resume: {resume:?}");
    Ok(resume)
}

/// Hash and Read latency on 4 KiB files under 1, 8 and 32 concurrent clients.
fn latency(bins: &Binaries, keys: &Keys, work: &Path) -> anyhow::Result<Vec<rpc::Row>> {
    let dir = work.join("rpc");
    let mut rng = Rng::new(0x4C47);
    let paths: Vec<String> = (0..1000)
        .map(|i| format!("d{:02}/f{i:04}.bin", i % 10))
        .collect();
    for path in &paths {
        write_random(&dir.join(path), 4096, &mut rng)?;
    }
    let config = work.join("realized-rpc.toml");
    keys.daemon_config(&config, &[("r", &dir)])?;
    let daemon = Daemon::start(&bins.realized, &config, &work.join("realized-rpc.log"))?;
    rpc::measure(
        &daemon.addr,
        &keys.client_key,
        &keys.daemon_pub,
        "r",
        &paths,
    )
}

/// The first line a command prints, such as a tool's version, for the docs.
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{program}: unknown"))
}
