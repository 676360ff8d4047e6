//! docs/benchmarks.md and the chart's data: medians, spreads, CPU time and
//! ratios from one run, and issue 16's targets checked against them.

use std::fmt::Write as _;

use super::chart::{Bar, Panel};
use super::timing::{Timings, Variant, cpu_per_gib, median};
use super::tools::Tool;
use super::{DataSet, Measured, SetResult, VariantResult, first_line};

/// Time, throughput and CPU of a tool on a set: from the medians, or for a
/// capped run from what arrived before the cap.
struct Speed {
    seconds: f64,
    mb_per_sec: f64,
    files_per_sec: f64,
    /// CPU-seconds per GiB, client and server; None for a capped run.
    cpu: Option<f64>,
    capped: bool,
}

fn speed(set: &SetResult, timings: &Timings) -> Option<Speed> {
    if let Some(median_time) = median(&timings.times) {
        let seconds = median_time.as_secs_f64();
        return Some(Speed {
            seconds,
            mb_per_sec: set.bytes as f64 / 1e6 / seconds,
            files_per_sec: set.files as f64 / seconds,
            cpu: median(&timings.cpu).map(|cpu| cpu_per_gib(cpu, set.bytes)),
            capped: false,
        });
    }
    let (cap, arrived) = timings.capped?;
    let files_per_sec = arrived as f64 / cap.as_secs_f64();
    let bytes_per_file = set.bytes as f64 / set.files as f64;
    Some(Speed {
        // What the whole set would take at that rate.
        seconds: set.files as f64 / files_per_sec.max(f64::MIN_POSITIVE),
        mb_per_sec: files_per_sec * bytes_per_file / 1e6,
        files_per_sec,
        cpu: None,
        capped: true,
    })
}

fn of(set: &SetResult, tool: Tool) -> Option<Speed> {
    set.timings
        .iter()
        .find(|t| t.tool == tool)
        .and_then(|t| speed(set, t))
}

/// realize's time and CPU over `tool`'s on a set.
fn ratios(set: &SetResult, tool: Tool) -> Option<(f64, Option<f64>)> {
    let (realize, other) = (of(set, Tool::Realize)?, of(set, tool)?);
    // A run shorter than a clock tick can show no CPU time at all.
    let cpu = realize
        .cpu
        .zip(other.cpu.filter(|&o| o > 0.0))
        .map(|(r, o)| r / o);
    Some((realize.seconds / other.seconds, cpu))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn figure(value: Option<f64>) -> String {
    value.map_or_else(|| "—".into(), |v| format!("{v:.2}"))
}

/// The tools timed in a variant, in the order of [`Tool::ALL`].
fn tools_of(variant: &VariantResult) -> Vec<Tool> {
    Tool::ALL
        .into_iter()
        .filter(|&tool| {
            variant
                .sets
                .iter()
                .any(|set| set.timings.iter().any(|t| t.tool == tool))
        })
        .collect()
}

/// One row of panels per variant, one panel per data set.
pub fn panels(measured: &Measured) -> Vec<Vec<Panel>> {
    measured
        .variants
        .iter()
        .map(|variant| {
            variant
                .sets
                .iter()
                .map(|set| Panel {
                    title: format!(
                        "{}: {} ({})",
                        variant.variant.name(),
                        set.set.name(),
                        set.describe
                    ),
                    bars: Tool::ALL
                        .iter()
                        .enumerate()
                        .filter_map(|(colour, &tool)| {
                            of(set, tool).map(|s| Bar {
                                label: tool.short(),
                                colour,
                                mb_per_sec: s.mb_per_sec,
                                note: s.capped.then_some("capped"),
                            })
                        })
                        .collect(),
                })
                .collect()
        })
        .collect()
}

/// What a tool runs, for the list of tools.
fn command_line(tool: Tool) -> &'static str {
    match tool {
        Tool::Realize => {
            "`realize --src-path SRC --dst-addr 127.0.0.1:PORT --privkey K --peers P --quiet d` into a `realized` on loopback: mutual TLS 1.3, `--parallel 4` (the default), the default digest over every file, then deletion of the source"
        }
        Tool::RealizePull => {
            "`realize --src-addr 127.0.0.1:PORT --dst-path DST --privkey K --peers P --quiet s`: the same daemon sends, the command receives"
        }
        Tool::RealizeSha256 => {
            "the push with `--digest sha256` (timed once realize has the flag): the digest for clients that have only SHA-256"
        }
        Tool::Rsync => {
            "an rsync daemon on loopback with `socket options = TCP_NODELAY`, and `rsync -a --remove-source-files --sockopts=TCP_NODELAY SRC/ rsync://127.0.0.1:PORT/d/`: no encryption, one file at a time, nothing fsynced"
        }
        Tool::RsyncFsync => {
            "the same with `--fsync`: every file fsynced on the destination, the durability realize gives"
        }
        Tool::RsyncSsh => {
            "`rsync -a --remove-source-files -e 'ssh -p PORT -i KEY …' SRC/ 127.0.0.1:DST/` into a private sshd on loopback (its own host key, key authentication, OpenSSH's default cipher): the encrypted peer most users pick"
        }
        Tool::Rclone => {
            "`rclone serve webdav` on loopback and `rclone move SRC :webdav: --webdav-url http://127.0.0.1:PORT/`: plain HTTP, 4 transfers at once (the default)"
        }
        Tool::Cp => {
            "`cp -a SRC/. DST/`, the physical reference: a copy on the same filesystem, no network, nothing deleted"
        }
    }
}

fn describe_variant(variant: &VariantResult) -> String {
    match variant.variant {
        Variant::Tmpfs => "source and destination on tmpfs (`/dev/shm`), both sides sharing both cores".into(),
        Variant::Disk => format!(
            "source and destination on the disk ({}), the pristine copy on tmpfs, so the source is read from the page cache; `sync` before each run, outside the timing, so no run pays for the previous one's writeback",
            variant.filesystem
        ),
        Variant::TwoHosts => "tmpfs, each side pinned to its own core with `taskset -c`, as on two hosts of one core: every command (realize, the rsync client and its ssh) on CPU 0, every server (realized, the rsync daemon, sshd) on CPU 1".into(),
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

pub fn markdown(measured: &Measured) -> anyhow::Result<String> {
    let mut out = String::new();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or_else(|| "unknown".into(), |kib| format!("{:.0}", kib / 1048576.0));
    let scale = if measured.scale == 1.0 {
        String::new()
    } else {
        format!(
            " **The data sets were scaled by {}: these figures check the code paths, not the tools.**",
            measured.scale
        )
    };
    writeln!(
        out,
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` on {date} at commit {commit}.{scale}\n\n\
         **Machine:** {cores} cores ({cpu}), {memory_gib} GiB of memory, Linux {kernel}; every connection on loopback.\n\
         **Tools:** realize and realized built in release from this commit; {rsync}; {ssh}; {rclone}; {cp}.\n\n\
         ## How it is measured\n\n\
         Each data set is made once from a fixed seed and moved in each variant of the setting.\n\
         Each round times every tool once, in an order that rotates from round to round; between runs, outside the timing, the source is restored with `cp -a` from a pristine copy and the destination emptied.\n\
         A time is the wall clock of the whole command: process start, connection, listing, transfer, verification, deletion of the source.\n\
         *CPU* is the user and system time of both sides: the command with every process it starts and waits for (rsync's ssh), read from the bench's own `/proc/self/stat` (its reaped children), and the server with every process it forks per connection (an rsync daemon's receiver, sshd's session and the rsync it runs), the difference of `/proc/PID/stat` (utime, stime, cutime, cstime) across the run, read once the server has reaped them, in clock ticks of 1/{hz} s. *CPU-s/GiB* is that over the GiB (2^30 bytes) moved: a figure that depends less on the machine's other load than the wall time.\n\
         Figures are the median of {runs} runs, with the fastest and slowest as the spread; MB is 10^6 bytes.\n\
         Ratios are realize's (the push with the default digest) over the other tool's, from the same run, as issue 16 states its targets: *time* is realize's time ÷ the tool's (below 1, realize is faster), *CPU* is realize's CPU-s/GiB ÷ the tool's (below 1, realize spends less).\n\n\
         Variants:\n",
        date = first_line("date", &["-u", "+%Y-%m-%d"]),
        commit = first_line("git", &["rev-parse", "--short", "HEAD"]),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu = crate::cpu_model(),
        kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        rsync = first_line("rsync", &["--version"]),
        ssh = first_line("ssh", &["-V"]),
        rclone = first_line("rclone", &["version"]),
        cp = first_line("cp", &["--version"]),
        runs = measured.runs,
        hz = rustix::param::clock_ticks_per_second(),
    )?;
    for variant in &measured.variants {
        let tools: Vec<&str> = tools_of(variant).into_iter().map(Tool::name).collect();
        writeln!(
            out,
            "- **{}**: {}; tools: {}.",
            variant.variant.name(),
            describe_variant(variant),
            tools.join(", ")
        )?;
    }
    writeln!(out, "\nTools:\n")?;
    for tool in Tool::ALL {
        writeln!(out, "- **{}**: {}.", tool.name(), command_line(tool))?;
    }
    writeln!(out)?;

    targets(&mut out, measured)?;
    writeln!(
        out,
        "![Throughput by tool, variant and data set](benchmarks.png)\n"
    )?;
    for variant in &measured.variants {
        variant_tables(&mut out, variant)?;
    }

    writeln!(
        out,
        "## Resume\n\n\
         A 256 MiB file whose destination already holds a partial file, resumed by `realize --output json` through a TCP proxy that counts what realize sends.\n\
         *Payload* is the summary's `bytes_sent` (file, delta and signature bytes); *wire* is every byte realize sent, TLS and gRPC framing included.\n\
         The target is less than 52% of the file for a file interrupted at 50%.\n\n\
         | case | partial file before the resume | payload sent | ÷ file | wire bytes sent | ÷ file |\n\
         |---|---|---|---|---|---|"
    )?;
    let resume = &measured.resume;
    let size = resume.size as f64;
    for (case, partial, sent, wire) in [
        (
            "a partial file holding exactly the first half",
            resume.size / 2,
            resume.prepared_sent,
            resume.prepared_wire,
        ),
        (
            "a move interrupted by SIGINT once half was written",
            resume.interrupted_partial,
            resume.interrupted_sent,
            resume.interrupted_wire,
        ),
    ] {
        writeln!(
            out,
            "| {case} | {} ({:.1}%) | {} | **{:.3}** | {} | {:.3} |",
            mib(partial),
            partial as f64 / size * 100.0,
            mib(sent),
            sent as f64 / size,
            mib(wire),
            wire as f64 / size
        )?;
    }

    writeln!(
        out,
        "\n## Memory\n\n\
         Peak resident set (VmHWM from `/proc/PID/status`, polled every 5 ms) of a fresh `realized` and of `realize` while moving each set on tmpfs.\n\n\
         | data set | realized at rest | realized peak | realize peak |\n\
         |---|---|---|---|"
    )?;
    for memory in &measured.memory {
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            memory.set.name(),
            mib(memory.daemon_idle),
            mib(memory.daemon),
            mib(memory.command)
        )?;
    }

    writeln!(
        out,
        "\n## RPC latency\n\n\
         A load client in xtask (realize-net's `connect` and the generated `RealizeClient`, a 2-thread tokio runtime on the same 2 cores as the daemon) calls a `realized` on 1,000 files of 4 KiB.\n\
         Each client has its own TLS connection and calls one after the other; all clients start together; the calls of each level are shared among its clients, after 10 warm-up calls per client.\n\n\
         | method | clients | calls | p50 | p95 | p99 | calls/s |\n\
         |---|---|---|---|---|---|---|"
    )?;
    for row in &measured.latency {
        writeln!(
            out,
            "| {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
            row.method.name(),
            row.clients,
            row.calls,
            row.p50.as_secs_f64() * 1e3,
            row.p95.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3,
            row.calls_per_sec
        )?;
    }
    writeln!(
        out,
        "\nThrottle accuracy is measured by `cargo xtask bench throttle`: [bench-throttle.md](bench-throttle.md)."
    )?;
    Ok(out)
}

fn find(measured: &Measured, variant: Variant, set: DataSet) -> Option<&SetResult> {
    measured
        .variants
        .iter()
        .find(|v| v.variant == variant)?
        .sets
        .iter()
        .find(|s| s.set == set)
}

/// A target of issue 16: what it bounds, where, and the figure of this run.
struct Target {
    text: &'static str,
    variant: Variant,
    set: DataSet,
    bound: f64,
    figure: fn(&SetResult) -> Option<f64>,
}

fn targets(out: &mut String, measured: &Measured) -> anyhow::Result<()> {
    let mut list = Vec::new();
    for (set, bound) in [
        (DataSet::Large, 1.3),
        (DataSet::Mixed, 1.3),
        (DataSet::Small, 1.0),
    ] {
        list.push(Target {
            text: "realize time ÷ rsync daemon time",
            variant: Variant::Tmpfs,
            set,
            bound,
            figure: |set| ratios(set, Tool::Rsync).map(|(time, _)| time),
        });
    }
    list.push(Target {
        text: "realize time ÷ rsync --fsync time",
        variant: Variant::Disk,
        set: DataSet::Large,
        bound: 1.3,
        figure: |set| ratios(set, Tool::RsyncFsync).map(|(time, _)| time),
    });
    list.push(Target {
        text: "realize CPU-s/GiB ÷ rsync daemon CPU-s/GiB",
        variant: Variant::Tmpfs,
        set: DataSet::Large,
        bound: 2.0,
        figure: |set| ratios(set, Tool::Rsync).and_then(|(_, cpu)| cpu),
    });
    for set in DataSet::ALL {
        list.push(Target {
            text: "realize time ÷ rsync over ssh time",
            variant: Variant::Tmpfs,
            set,
            bound: 0.25,
            figure: |set| ratios(set, Tool::RsyncSsh).map(|(time, _)| time),
        });
    }
    writeln!(
        out,
        "## Issue 16's targets\n\n\
         Each target as the ratio the tables below show, from this run (medians, loopback, TLS on, default digest); the longer-term goal is realize ÷ rsync daemon ≤ 1.0 on every set.\n\n\
         | target | variant | data set | this run | met |\n\
         |---|---|---|---|---|"
    )?;
    for target in &list {
        let Some(figure) = find(measured, target.variant, target.set).and_then(target.figure)
        else {
            continue;
        };
        writeln!(
            out,
            "| {} ≤ {:.2} | {} | {} | {figure:.2} | {} |",
            target.text,
            target.bound,
            target.variant.name(),
            target.set.name(),
            if figure <= target.bound {
                "yes"
            } else {
                "**no**"
            }
        )?;
    }
    for variant in &measured.variants {
        for set in &variant.sets {
            let (Some(sha256), Some(realize)) =
                (of(set, Tool::RealizeSha256), of(set, Tool::Realize))
            else {
                continue;
            };
            writeln!(
                out,
                "| realize --digest sha256 no slower than realize before issue 16 (SHA-256 only): compare with that commit's realize row; here ÷ the default digest | {} | {} | {:.2} | — |",
                variant.variant.name(),
                set.set.name(),
                sha256.seconds / realize.seconds
            )?;
        }
    }
    let resume = &measured.resume;
    let resumed = resume.interrupted_sent as f64 / resume.size as f64;
    writeln!(
        out,
        "| resume of a file interrupted half way sends < 0.52 of it | tmpfs | 256 MiB | {resumed:.3} | {} |",
        if resumed < 0.52 { "yes" } else { "**no**" }
    )?;
    if let Some(peak) = measured.memory.iter().map(|m| m.daemon).max() {
        writeln!(
            out,
            "| realized peak RSS < 64 MiB | tmpfs | every set | {} | {} |",
            mib(peak),
            if peak < 64 << 20 { "yes" } else { "**no**" }
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// A variant's summary, ratio and per-set tables.
fn variant_tables(out: &mut String, variant: &VariantResult) -> anyhow::Result<()> {
    let tools = tools_of(variant);
    let name = variant.variant.name();
    writeln!(
        out,
        "## {name}\n\n{}.\n\n\
         Median time and CPU-seconds per GiB of each tool (client and server together).\n",
        capitalised(&describe_variant(variant))
    )?;
    let header: Vec<&str> = tools.iter().map(|t| t.name()).collect();
    writeln!(
        out,
        "| data set | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(tools.len())
    )?;
    for set in &variant.sets {
        let mut row = format!("| {} ({}) |", set.set.name(), set.describe);
        for &tool in &tools {
            match of(set, tool) {
                Some(s) if s.capped => write!(
                    row,
                    " ~{:.0} s at the capped rate ({:.1} MB/s, see below) |",
                    s.seconds, s.mb_per_sec
                )?,
                Some(s) => write!(row, " {:.2} s · {} CPU-s/GiB |", s.seconds, figure(s.cpu))?,
                None => row.push_str(" — |"),
            }
        }
        writeln!(out, "{row}")?;
    }

    let others: Vec<Tool> = tools
        .iter()
        .copied()
        .filter(|&t| t != Tool::Realize)
        .collect();
    if tools.contains(&Tool::Realize) && !others.is_empty() {
        let header: Vec<String> = others
            .iter()
            .map(|t| format!("realize ÷ {}", t.name()))
            .collect();
        writeln!(
            out,
            "\nrealize's time ÷ each tool's, and its CPU-s/GiB ÷ theirs (time · CPU; below 1, realize is faster or spends less).\n\n\
             | data set | {} |\n|---|{}",
            header.join(" | "),
            "---|".repeat(others.len())
        )?;
        for set in &variant.sets {
            let mut row = format!("| {} |", set.set.name());
            for &tool in &others {
                match ratios(set, tool) {
                    Some((time, cpu)) => write!(row, " **{time:.2}** · {} |", figure(cpu))?,
                    None => row.push_str(" — |"),
                }
            }
            writeln!(out, "{row}")?;
        }
    }
    writeln!(out)?;

    for set in &variant.sets {
        writeln!(
            out,
            "### {name}, {}: {} ({} files, {:.1} MB)\n\n\
             | tool | median | spread (min–max) | MB/s | files/s | CPU-s/GiB | realize ÷ this tool: time | CPU |\n\
             |---|---|---|---|---|---|---|---|",
            set.set.name(),
            set.describe,
            set.files,
            set.bytes as f64 / 1e6
        )?;
        for timings in &set.timings {
            let Some(s) = speed(set, timings) else {
                continue;
            };
            let (time, cpu) = ratios(set, timings.tool).unzip();
            if let (true, Some((cap, arrived))) = (s.capped, timings.capped) {
                writeln!(
                    out,
                    "| {} | one run, stopped at the {} s cap with {arrived} of {} files | — | {:.2} | {:.0} | — | {} (estimated) | — |",
                    timings.tool.name(),
                    cap.as_secs(),
                    set.files,
                    s.mb_per_sec,
                    s.files_per_sec,
                    figure(time),
                )?;
                continue;
            }
            let (min, max) = (
                timings.times.iter().min().copied().unwrap_or_default(),
                timings.times.iter().max().copied().unwrap_or_default(),
            );
            writeln!(
                out,
                "| {} | {:.3} s | {:.3}–{:.3} s | {:.0} | {:.0} | {} | {} | {} |",
                timings.tool.name(),
                s.seconds,
                min.as_secs_f64(),
                max.as_secs_f64(),
                s.mb_per_sec,
                s.files_per_sec,
                figure(s.cpu),
                figure(time),
                figure(cpu.flatten()),
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
