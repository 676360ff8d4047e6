//! docs/benchmarks.md and the chart's data: medians, spreads and ratios from one run.

use std::fmt::Write as _;
use std::time::Duration;

use super::chart::{Bar, Panel};
use super::rpc::Row;
use super::tools::Tool;
use super::{Resume, SetResult, Timings, first_line};

fn median(times: &[Duration]) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Seconds per file and bytes per second of a tool on a set: from the
/// median, or for a capped run from what arrived before the cap.
struct Speed {
    seconds: f64,
    mb_per_sec: f64,
    files_per_sec: f64,
    capped: bool,
}

fn speed(set: &SetResult, timings: &Timings) -> Option<Speed> {
    if let Some(median) = median(&timings.times) {
        let seconds = median.as_secs_f64();
        return Some(Speed {
            seconds,
            mb_per_sec: set.bytes as f64 / 1e6 / seconds,
            files_per_sec: set.files as f64 / seconds,
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
        capped: true,
    })
}

fn of(set: &SetResult, tool: Tool) -> Option<Speed> {
    set.timings
        .iter()
        .find(|t| t.tool == tool)
        .and_then(|t| speed(set, t))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

pub fn panels(sets: &[SetResult]) -> Vec<Panel> {
    sets.iter()
        .map(|set| Panel {
            title: format!("{} ({})", set.set.name(), set.set.describe()),
            bars: Tool::ALL
                .iter()
                .filter_map(|&tool| {
                    of(set, tool).map(|s| Bar {
                        tool: tool.name(),
                        mb_per_sec: s.mb_per_sec,
                        note: s.capped.then_some("capped"),
                    })
                })
                .collect(),
        })
        .collect()
}

pub fn markdown(
    sets: &[SetResult],
    resume: &Resume,
    latency: &[Row],
    runs: usize,
) -> anyhow::Result<String> {
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
    writeln!(
        out,
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` on {date} at commit {commit}.\n\n\
         **Machine:** {cores} cores ({cpu}), {memory_gib} GiB of memory, Linux {kernel}; every file on tmpfs (`/dev/shm`), every connection on loopback.\n\
         **Tools:** realize and realized built in release from this commit; {rsync}; {rclone}; {cp}.\n\n\
         ## How it is measured\n\n\
         Each data set is made once from a fixed seed.\n\
         Each round times every tool once, in an order that rotates from round to round; between runs, outside the timing, the source is restored with `cp -a` and the destination emptied.\n\
         A time is the wall clock of the whole command: process start, connection, listing, transfer, verification, deletion of the source.\n\
         Figures are the median of {runs} runs, with the fastest and slowest as the spread; MB is 10^6 bytes.\n\
         Ratios are realize's speed over the other tool's, from the same run: above 1, realize is faster.\n\n\
         - **realize**: `realize --src-path SRC --dst-addr 127.0.0.1:PORT --privkey K --peers P --quiet d` into a `realized` on loopback: mutual TLS 1.3, `--parallel 4` (the default), SHA-256 verification of every file, then deletion of the source.\n\
         - **rsync**: an rsync daemon on loopback with `socket options = TCP_NODELAY`, and `rsync -a --remove-source-files --sockopts=TCP_NODELAY SRC/ rsync://127.0.0.1:PORT/d/`: no encryption, one file at a time.\n\
         - **rclone**: `rclone serve webdav` on loopback and `rclone move SRC :webdav: --webdav-url http://127.0.0.1:PORT/`: plain HTTP, 4 transfers at once (the default).\n\
         - **cp**: `cp -a SRC/. DST/`, the physical reference: a copy on the same filesystem, no network, nothing deleted.\n",
        date = first_line("date", &["-u", "+%Y-%m-%d"]),
        commit = first_line("git", &["rev-parse", "--short", "HEAD"]),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu = crate::cpu_model(),
        kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        rsync = first_line("rsync", &["--version"]),
        rclone = first_line("rclone", &["version"]),
        cp = first_line("cp", &["--version"]),
    )?;

    writeln!(
        out,
        "## Summary\n\n\
         Median time and throughput of each tool; the last columns are realize's speed over rsync's and over cp's.\n\n\
         | data set | realize | rsync | rclone | cp | realize ÷ rsync | realize ÷ cp |\n\
         |---|---|---|---|---|---|---|"
    )?;
    for set in sets {
        let realize = of(set, Tool::Realize);
        let mut row = format!("| {} ({}) |", set.set.name(), set.set.describe());
        for tool in Tool::ALL {
            match of(set, tool) {
                Some(s) if s.capped => write!(
                    row,
                    " ~{:.0} s at the capped rate ({:.1} MB/s, see below) |",
                    s.seconds, s.mb_per_sec
                )?,
                Some(s) => write!(row, " {:.2} s, {:.0} MB/s |", s.seconds, s.mb_per_sec)?,
                None => row.push_str(" — |"),
            }
        }
        for base in [Tool::Rsync, Tool::Cp] {
            match (&realize, of(set, base)) {
                (Some(r), Some(b)) => write!(row, " **{:.2}** |", b.seconds / r.seconds)?,
                _ => row.push_str(" — |"),
            }
        }
        writeln!(out, "{row}")?;
    }
    writeln!(
        out,
        "\n![Throughput by tool and data set](benchmarks.png)\n"
    )?;

    for set in sets {
        writeln!(
            out,
            "### {}: {} ({} files, {:.1} MB)\n\n\
             | tool | median | spread (min–max) | MB/s | files/s | realize ÷ this tool |\n\
             |---|---|---|---|---|---|",
            set.set.name(),
            set.set.describe(),
            set.files,
            set.bytes as f64 / 1e6
        )?;
        let realize = of(set, Tool::Realize);
        for timings in &set.timings {
            let Some(s) = speed(set, timings) else {
                continue;
            };
            let ratio = realize
                .as_ref()
                .map_or_else(|| "—".into(), |r| format!("{:.2}", s.seconds / r.seconds));
            if let (true, Some((cap, arrived))) = (s.capped, timings.capped) {
                writeln!(
                    out,
                    "| {} | one run, stopped at the {} s cap with {arrived} of {} files | — | {:.2} | {:.0} | {ratio} (estimated) |",
                    timings.tool.name(),
                    cap.as_secs(),
                    set.files,
                    s.mb_per_sec,
                    s.files_per_sec,
                )?;
                continue;
            }
            let (min, max) = (
                timings.times.iter().min().copied().unwrap_or_default(),
                timings.times.iter().max().copied().unwrap_or_default(),
            );
            writeln!(
                out,
                "| {} | {:.3} s | {:.3}–{:.3} s | {:.0} | {:.0} | {ratio} |",
                timings.tool.name(),
                s.seconds,
                min.as_secs_f64(),
                max.as_secs_f64(),
                s.mb_per_sec,
                s.files_per_sec,
            )?;
        }
        writeln!(out)?;
    }

    writeln!(
        out,
        "## Resume\n\n\
         A 256 MiB file whose destination already holds a partial file, resumed by `realize --output json` through a TCP proxy that counts what realize sends.\n\
         *Payload* is the summary's `bytes_sent` (file, delta and signature bytes); *wire* is every byte realize sent, TLS and gRPC framing included.\n\
         The target is less than 55% of the file for a file interrupted at 50%.\n\n\
         | case | partial file before the resume | payload sent | ÷ file | wire bytes sent | ÷ file |\n\
         |---|---|---|---|---|---|"
    )?;
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
         Peak resident set (VmHWM from `/proc/PID/status`, polled every 5 ms) of a fresh `realized` and of `realize` while moving each set.\n\n\
         | data set | realized at rest | realized peak | realize peak |\n\
         |---|---|---|---|"
    )?;
    for set in sets {
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            set.set.name(),
            mib(set.memory.daemon_idle),
            mib(set.memory.daemon),
            mib(set.memory.command)
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
    for row in latency {
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
