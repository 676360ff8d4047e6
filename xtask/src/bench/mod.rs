//! `cargo xtask bench`: realize (push, pull) against rsync (daemon, --fsync, over ssh), rclone and cp on the same data in the same run, on tmpfs, on disk and on two pinned cores, in wall time and CPU time; resume, memory and RPC latency; written to docs/benchmarks.md and docs/benchmarks.png.

mod chart;
mod cpu;
mod data;
mod report;
mod rpc;
mod ssh;
mod throttle;
mod timing;
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use realize_core::testing::{Rng, list_files, sha256_file, write_random};

use crate::fixture::{
    Binaries, Daemon, Keys, clear_dir, peak_rss, reset_copy, runs, scratch, target_dir,
};
use crate::proxy::Proxy;
use crate::run;
pub use data::DataSet;
use timing::{Dirs, Generated, Timings, Variant, cpu_per_gib, median};
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
    /// Variants to time, comma-separated (default: all; with --quick, tmpfs).
    #[arg(long, value_enum, value_delimiter = ',')]
    variants: Vec<Variant>,
    /// Tools to time, comma-separated (default: each variant's; with
    /// --quick, realize and rsync).
    #[arg(long, value_enum, value_delimiter = ',')]
    tools: Vec<Tool>,
    /// Size of the data sets relative to the documented ones, such as 0.01
    /// for a check of the code paths in seconds.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Where the disk variant moves files, in a scratch directory of its own:
    /// a directory on the disk, not on tmpfs (default: target/).
    #[arg(long)]
    disk_dir: Option<PathBuf>,
    /// Seconds rclone may take on the small set, which it moves one slow
    /// request after another; it runs once there.
    #[arg(long, default_value_t = 60)]
    rclone_small_cap: u64,
    /// Print the figures without writing docs/.
    #[arg(long)]
    no_doc: bool,
    /// Time realize against rsync only (or --tools), and print their medians
    /// and ratios without measuring memory, resume or latency: a check while optimising.
    #[arg(long)]
    quick: bool,
    /// Time the realize and realized found in DIR instead of this checkout's
    /// (an earlier build kept aside), to compare a change with --quick.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Only {
    /// Throttle accuracy only, written to docs/bench-throttle.md.
    Throttle,
}

#[derive(Debug, Clone)]
pub struct SetResult {
    pub set: DataSet,
    pub describe: String,
    pub files: u64,
    pub bytes: u64,
    pub timings: Vec<Timings>,
}

/// Every data set timed in one variant.
#[derive(Debug, Clone)]
pub struct VariantResult {
    pub variant: Variant,
    /// The filesystem the files were on, such as "ext4 /dev/vda".
    pub filesystem: String,
    pub sets: Vec<SetResult>,
}

/// Peak resident memory while moving a set with realize, each process fresh.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub set: DataSet,
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

/// Everything a full run measures, for the docs.
#[derive(Debug)]
pub struct Measured {
    pub variants: Vec<VariantResult>,
    pub memory: Vec<Memory>,
    pub resume: Resume,
    pub latency: Vec<rpc::Row>,
    pub runs: usize,
    pub scale: f64,
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
    let bins = match &options.bin_dir {
        Some(dir) => Binaries {
            realize: dir.join("realize"),
            realized: dir.join("realized"),
        },
        None => Binaries::build(root, true)?,
    };
    if let Some(Only::Throttle) = options.only {
        return throttle::throttle(root, bins);
    }
    if !(options.scale > 0.0 && options.scale <= 1.0) {
        bail!("--scale must be above 0 and at most 1");
    }
    tools::install_missing()?;
    let variants = chosen_variants(options);
    if variants.contains(&Variant::TwoHosts) {
        if !runs("taskset") {
            bail!(
                "the two-hosts variant pins each side with taskset (util-linux), which is missing"
            );
        }
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            bail!("the two-hosts variant needs 2 CPUs, one per side");
        }
    }
    let work = scratch("bench")?;
    // A directory of its own, removed at the end, even inside --disk-dir.
    let disk = options
        .disk_dir
        .clone()
        .unwrap_or_else(|| target_dir(root))
        .join(format!("bench-disk-{}", std::process::id()));
    let places = Places {
        work: &work,
        disk: &disk,
    };
    let result = if options.quick {
        quick(options, &variants, &bins, &places).map(|()| None)
    } else {
        measure(options, &variants, &bins, &places).map(Some)
    };
    let _ = std::fs::remove_dir_all(&work);
    if variants.contains(&Variant::Disk) {
        let _ = std::fs::remove_dir_all(&disk);
    }
    let Some(measured) = result? else {
        return Ok(());
    };
    let doc = report::markdown(&measured)?;
    println!("{doc}");
    if !options.no_doc {
        let path = root.join("docs/benchmarks.md");
        std::fs::write(&path, &doc).with_context(|| format!("cannot write {}", path.display()))?;
        let png = root.join("docs/benchmarks.png");
        chart::draw(
            &png,
            "Throughput by tool, variant and data set (median of the runs; higher is better)",
            &report::panels(&measured),
        )?;
        eprintln!("wrote {} and {}", path.display(), png.display());
    }
    Ok(())
}

/// The scratch directories: `work` on tmpfs, `disk` on the disk.
struct Places<'a> {
    work: &'a Path,
    disk: &'a Path,
}

/// The data sets asked for, all by default.
fn chosen_sets(options: &Options) -> Vec<DataSet> {
    if options.sets.is_empty() {
        DataSet::ALL.to_vec()
    } else {
        options.sets.clone()
    }
}

fn chosen_variants(options: &Options) -> Vec<Variant> {
    match (options.variants.is_empty(), options.quick) {
        (false, _) => options.variants.clone(),
        (true, true) => vec![Variant::Tmpfs],
        (true, false) => Variant::ALL.to_vec(),
    }
}

/// The tools to time in `variant`; realize's SHA-256 row only once realize has `--digest`.
fn chosen_tools(options: &Options, variant: Variant, digest: bool) -> Vec<Tool> {
    let tools = match (options.tools.is_empty(), options.quick) {
        (false, _) => options.tools.clone(),
        (true, true) => vec![Tool::Realize, Tool::Rsync],
        (true, false) => variant.tools(),
    };
    tools
        .into_iter()
        .filter(|&tool| tool != Tool::RealizeSha256 || digest)
        .collect()
}

/// Whether this realize has `--digest` (the SHA-256 row needs it).
fn has_digest_flag(bins: &Binaries) -> bool {
    Command::new(&bins.realize)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--digest"))
}

/// The filesystem `dir` is on, as findmnt names it: type and source.
fn filesystem(dir: &Path) -> String {
    let dir = dir.to_string_lossy();
    let line = first_line("findmnt", &["-n", "-o", "FSTYPE,SOURCE", "-T", &dir]);
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The source and destination of each variant, created; the pristine copy
/// of the data set is on tmpfs for all of them.
fn variant_dirs(places: &Places, variant: Variant) -> anyhow::Result<Dirs> {
    let base = match variant {
        Variant::Tmpfs | Variant::TwoHosts => places.work,
        Variant::Disk => places.disk,
    };
    let dirs = Dirs {
        pristine: places.work.join("pristine"),
        src: base.join("src"),
        dst: base.join("dst"),
    };
    for dir in [&dirs.pristine, &dirs.src, &dirs.dst] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if variant == Variant::Disk && filesystem(&dirs.dst).starts_with("tmpfs") {
        bail!(
            "{} is on tmpfs: give the disk variant a directory on the disk with --disk-dir",
            dirs.dst.display()
        );
    }
    Ok(dirs)
}

/// Makes `set` in the pristine directory.
fn generate(set: DataSet, pristine: &Path, scale: f64) -> anyhow::Result<Generated> {
    clear_dir(pristine)?;
    let (files, bytes) = set.generate(pristine, scale)?;
    eprintln!(
        "{}: {files} files, {:.1} MB",
        set.name(),
        bytes as f64 / 1e6
    );
    Ok(Generated {
        set,
        expected: list_files(pristine)?,
        files,
        bytes,
    })
}

/// Times every tool of every variant on every set; the variants of a set
/// share one generation of it.
fn time_all(
    options: &Options,
    variants: &[Variant],
    bins: &Binaries,
    keys: &Keys,
    places: &Places,
    mut after_set: impl FnMut(DataSet) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<VariantResult>> {
    let digest = has_digest_flag(bins);
    if !digest {
        eprintln!("realize has no --digest yet: no realize --digest sha256 row");
    }
    let mut results: Vec<VariantResult> = Vec::new();
    for &variant in variants {
        let dirs = variant_dirs(places, variant)?;
        results.push(VariantResult {
            variant,
            filesystem: filesystem(&dirs.dst),
            sets: Vec::new(),
        });
    }
    for set in chosen_sets(options) {
        let data = generate(set, &places.work.join("pristine"), options.scale)?;
        for result in &mut results {
            let variant = result.variant;
            eprintln!("{} · {}", variant.name(), set.name());
            let dirs = variant_dirs(places, variant)?;
            let tools = chosen_tools(options, variant, digest);
            let mut servers = Servers::start(
                bins,
                keys,
                places.work,
                (&dirs.src, &dirs.dst),
                &tools,
                variant.server_cpu(),
            )?;
            let timings = timing::time_tools(
                options,
                variant,
                &tools,
                &data,
                (bins, keys),
                &mut servers,
                &dirs,
            )?;
            drop(servers);
            // Frees the disk before the next variant.
            clear_dir(&dirs.src)?;
            clear_dir(&dirs.dst)?;
            result.sets.push(SetResult {
                set,
                describe: set.describe(options.scale),
                files: data.files,
                bytes: data.bytes,
                timings,
            });
        }
        after_set(set)?;
    }
    Ok(results)
}

fn measure(
    options: &Options,
    variants: &[Variant],
    bins: &Binaries,
    places: &Places,
) -> anyhow::Result<Measured> {
    let work = places.work;
    let keys = Keys::generate(bins, work)?;
    let mut memory = Vec::new();
    let variants = time_all(options, variants, bins, &keys, places, |set| {
        memory.push(peak_memory(set, bins, &keys, work)?);
        Ok(())
    })?;
    let resume = resume(bins, &keys, work)?;
    let latency = latency(bins, &keys, work)?;
    Ok(Measured {
        variants,
        memory,
        resume,
        latency,
        runs: options.runs,
        scale: options.scale,
    })
}

/// Times realize and rsync (or `--tools`) only, and prints their medians,
/// CPU-seconds per GiB and realize's ratios to the others.
fn quick(
    options: &Options,
    variants: &[Variant],
    bins: &Binaries,
    places: &Places,
) -> anyhow::Result<()> {
    let keys = Keys::generate(bins, places.work)?;
    let results = time_all(options, variants, bins, &keys, places, |_| Ok(()))?;
    for result in &results {
        for set in &result.sets {
            let figures: Vec<(Tool, f64, f64)> = set
                .timings
                .iter()
                .filter_map(|t| {
                    let wall = median(&t.times)?.as_secs_f64();
                    let cpu = cpu_per_gib(median(&t.cpu)?, set.bytes);
                    Some((t.tool, wall, cpu))
                })
                .collect();
            let mut line = format!("{} {}:", result.variant.name(), set.set.name());
            for (tool, wall, cpu) in &figures {
                line.push_str(&format!(" {} {wall:.3} s {cpu:.2} CPU-s/GiB;", tool.name()));
            }
            if let Some(&(_, wall, cpu)) = figures.iter().find(|f| f.0 == Tool::Realize) {
                for (tool, other_wall, other_cpu) in figures.iter().filter(|f| f.0 != Tool::Realize)
                {
                    // A run shorter than a clock tick can show no CPU time at all.
                    let cpu = if *other_cpu > 0.0 {
                        format!("{:.2}", cpu / other_cpu)
                    } else {
                        "—".into()
                    };
                    line.push_str(&format!(
                        " realize ÷ {}: time {:.2}, CPU {cpu};",
                        tool.name(),
                        wall / other_wall,
                    ));
                }
            }
            println!("{}", line.trim_end_matches(';'));
        }
    }
    Ok(())
}

/// A fresh daemon and command move the set (in the pristine directory);
/// both are polled for VmHWM.
fn peak_memory(set: DataSet, bins: &Binaries, keys: &Keys, work: &Path) -> anyhow::Result<Memory> {
    let (src, dst) = (work.join("memory-src"), work.join("memory-dst"));
    reset_copy(&work.join("pristine"), &src)?;
    clear_dir(&dst)?;
    let config = work.join("realized-memory.toml");
    keys.daemon_config(&config, &[("d", &dst)])?;
    let daemon = Daemon::start(&bins.realized, &config, &work.join("realized-memory.log"))?;
    let daemon_idle = peak_rss(daemon.pid()).context("cannot read the daemon's memory")?;
    let mut child = keys
        .move_command(bins, &src, &daemon.addr, "d")
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
    clear_dir(&dst)?;
    eprintln!(
        "  memory: daemon {} MiB (idle {} MiB), realize {} MiB",
        daemon >> 20,
        daemon_idle >> 20,
        command >> 20
    );
    Ok(Memory {
        set,
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

/// The first line a command prints, such as a tool's version, for the docs;
/// on standard error when it prints nothing else (`ssh -V`).
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{program}: unknown"))
}
