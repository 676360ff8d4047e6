//! The timed runs: each tool moving a data set in turn, its wall time and
//! the CPU time of its client and server, in one variant of the setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::cpu;
use super::tools::{Servers, Tool, pinned};
use super::{DataSet, Options};
use crate::fixture::{Binaries, Keys, clear_dir, reset_copy};
use realize_core::testing::list_files;

/// Where and how both sides run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Source and destination on tmpfs, both sides sharing every core.
    Tmpfs,
    /// Source and destination on the disk (`--disk-dir`), so fsync costs what it costs.
    Disk,
    /// tmpfs, the client pinned to CPU 0 and the server to CPU 1 with
    /// taskset, as on two hosts of one core each.
    TwoHosts,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Tmpfs, Variant::Disk, Variant::TwoHosts];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Tmpfs => "tmpfs",
            Variant::Disk => "disk",
            Variant::TwoHosts => "two hosts",
        }
    }

    /// The tools a full run times in this variant. rclone, slow and far
    /// behind, only on tmpfs; cp, with no second side, not on two hosts.
    pub fn tools(self) -> Vec<Tool> {
        Tool::ALL
            .into_iter()
            .filter(|&tool| match (self, tool) {
                (Variant::Tmpfs, _) => true,
                (_, Tool::Rclone) | (Variant::TwoHosts, Tool::Cp) => false,
                _ => true,
            })
            .collect()
    }

    /// The CPU of the client (realize, the rsync client, ssh) and of the
    /// server (realized, the rsync daemon, sshd), when pinned.
    pub fn client_cpu(self) -> Option<usize> {
        (self == Variant::TwoHosts).then_some(0)
    }

    pub fn server_cpu(self) -> Option<usize> {
        (self == Variant::TwoHosts).then_some(1)
    }
}

/// What one tool did on one data set.
#[derive(Debug, Clone)]
pub struct Timings {
    pub tool: Tool,
    pub times: Vec<Duration>,
    /// CPU time of each run, client and server together, in the order of `times`.
    pub cpu: Vec<Duration>,
    /// Set when the run was stopped at the cap: how long it ran and how
    /// many files had arrived by then.
    pub capped: Option<(Duration, usize)>,
}

/// The directories a set is moved from and to; the pristine copy it is
/// restored from stays on tmpfs in every variant.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub pristine: PathBuf,
    pub src: PathBuf,
    pub dst: PathBuf,
}

/// A data set as generated: its files by path and size, and the totals.
#[derive(Debug)]
pub struct Generated {
    pub set: DataSet,
    pub expected: BTreeMap<String, u64>,
    pub files: u64,
    pub bytes: u64,
}

/// Times each of `tools` moving the set, `options.runs` times in a rotating
/// order; returns the timings in the order of `tools`.
pub fn time_tools(
    options: &Options,
    variant: Variant,
    tools: &[Tool],
    data: &Generated,
    (bins, keys): (&Binaries, &Keys),
    servers: &mut Servers,
    dirs: &Dirs,
) -> anyhow::Result<Vec<Timings>> {
    let mut timings: Vec<Timings> = tools
        .iter()
        .map(|&tool| Timings {
            tool,
            times: Vec::new(),
            cpu: Vec::new(),
            capped: None,
        })
        .collect();
    for round in 0..options.runs.max(1) {
        // A rotating order, so no tool always runs first (or last).
        for k in 0..tools.len() {
            let slot = (round + k) % tools.len();
            let tool = tools[slot];
            let capped = tool == Tool::Rclone && data.set == DataSet::Small;
            if capped && round > 0 {
                continue;
            }
            reset_copy(&dirs.pristine, &dirs.src)?;
            clear_dir(&dirs.dst)?;
            if tool == Tool::Rclone {
                servers.restart_rclone(variant.server_cpu())?;
            }
            if variant == Variant::Disk {
                // The previous run's dirty pages would otherwise be written
                // back during this one, charged to whichever tool comes next.
                rustix::fs::sync();
            }
            let command = pinned(servers.command(tool, bins, keys)?, variant.client_cpu());
            let cap = capped.then(|| Duration::from_secs(options.rclone_small_cap));
            let entry = &mut timings[slot];
            match timed(command, cap, servers.pid(tool))? {
                Some((wall, cpu)) => {
                    verify(tool, &dirs.src, &dirs.dst, &data.expected)?;
                    eprintln!("  {} {wall:.3?}, {cpu:.3?} CPU", tool.name());
                    entry.times.push(wall);
                    entry.cpu.push(cpu);
                }
                None => {
                    let arrived = list_files(&dirs.dst)?.len();
                    eprintln!(
                        "  {} stopped at the {}s cap with {arrived} of {} files",
                        tool.name(),
                        options.rclone_small_cap,
                        data.files
                    );
                    entry.capped = cap.map(|cap| (cap, arrived));
                }
            }
        }
    }
    Ok(timings)
}

/// Wall time of `command` and the CPU time of it and of the server `server`
/// meanwhile, or None if it was still running at `cap` (then it is killed).
fn timed(
    mut command: Command,
    cap: Option<Duration>,
    server: Option<u32>,
) -> anyhow::Result<Option<(Duration, Duration)>> {
    command.stdin(Stdio::null()).stdout(Stdio::null());
    let server_before = server.map(cpu::server).transpose()?;
    let client_before = cpu::reaped_by_self()?;
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
    let wall = started.elapsed();
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    let mut cpu = cpu::reaped_by_self()?.saturating_sub(client_before);
    if let (Some(pid), Some(before)) = (server, server_before) {
        cpu::wait_for_children(pid)?;
        cpu += cpu::server(pid)?.saturating_sub(before);
    }
    Ok(Some((wall, cpu)))
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

/// The median of `values`: the middle one, or the mean of the two middle ones.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// CPU-seconds per GiB moved.
pub fn cpu_per_gib(cpu: Duration, bytes: u64) -> f64 {
    cpu.as_secs_f64() / (bytes as f64 / f64::from(1u32 << 30))
}
