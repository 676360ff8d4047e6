//! The soak's report: the figures printed, and the section of
//! docs/reliability.md that `--doc` writes from them.

use std::fmt::Write as _;
use std::process::ExitStatus;
use std::time::Duration;

use super::{ClientTally, Faults, KEEP_SETS, LogCounts, MAX_RUNS, Options, SET};
use crate::chaos::SOAK_HEADING;

/// How a failed run ended, for the report.
pub(super) fn exit(status: Option<ExitStatus>) -> String {
    match status {
        None => "hung and killed".into(),
        Some(status) => match status.code() {
            Some(code) => format!("exit {code}"),
            None => status.to_string(),
        },
    }
}

/// The `q` quantile of sorted durations (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(super) fn report(
    options: &Options,
    total: &ClientTally,
    faults: &Faults,
    log: &LogCounts,
    load_time: Duration,
    elapsed: Duration,
) -> String {
    let mut durations: Vec<Duration> = total.moves.iter().map(|m| m.duration).collect();
    durations.sort();
    let files: usize = total.moves.iter().map(|m| m.files).sum();
    let bytes: u64 = total.moves.iter().map(|m| m.bytes).sum();
    let rerun = total.moves.iter().filter(|m| m.runs > 1).count();
    let max_runs = total.moves.iter().map(|m| m.runs).max().unwrap_or(0);
    let failed_runs = if total.failed_runs.is_empty() {
        "none".to_string()
    } else {
        total
            .failed_runs
            .iter()
            .map(|(how, n)| format!("{how}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let checks = &total.checks;
    let rows = [
        (
            "clients (each its own key, peer and directory id)".to_string(),
            options.clients.to_string(),
        ),
        (
            "load (faults injected, moves started)".into(),
            format!("{:.0} s", options.duration.as_secs_f64()),
        ),
        ("moves completed".into(), total.moves.len().to_string()),
        ("files moved".into(), files.to_string()),
        (
            "bytes moved".into(),
            format!("{bytes} ({:.2} GB)", bytes as f64 / 1e9),
        ),
        (
            "faults: SIGHUP (config reload), one a second".into(),
            format!(
                "{} sent, {} applied (logged)",
                faults.reloads, log.reloads_applied
            ),
        ),
        (
            "faults: one client's connections cut by its proxy".into(),
            format!(
                "{} struck, {} found no client connected",
                faults.cuts, faults.idle_cuts
            ),
        ),
        (
            "faults: kill -9 realized, restarted on the same address".into(),
            faults.kills.to_string(),
        ),
        (
            "move duration p50 / p99 / max (first run's start to success)".into(),
            format!(
                "{} / {} / {}",
                secs(quantile(&durations, 0.5)),
                secs(quantile(&durations, 0.99)),
                secs(durations.last().copied().unwrap_or_default())
            ),
        ),
        (
            "moves that needed more than one run".into(),
            format!("{rerun} (at most {max_runs} runs)"),
        ),
        ("failed runs, run again, by exit".into(), failed_runs),
        (
            "file checks (after each failed run, each move, and at the end)".into(),
            checks.file_checks.to_string(),
        ),
        ("files lost".into(), checks.lost.to_string()),
        ("corrupt files".into(), checks.corrupt.to_string()),
        (
            "stray partial files after a completed move".into(),
            checks.stray_partials.to_string(),
        ),
        (
            "files misplaced (not moved, left on the source, or unexpected)".into(),
            checks.misplaced.to_string(),
        ),
        (
            format!("moves not complete in {MAX_RUNS} runs"),
            total.unfinished.to_string(),
        ),
        (
            "times realized exited without being killed by the suite".into(),
            faults.daemon_exits.to_string(),
        ),
        (
            "ERROR lines in realized's log".into(),
            log.errors.to_string(),
        ),
        (
            format!(
                "realized's peak RSS (VmHWM, highest of its {} processes)",
                faults.processes
            ),
            format!("{:.1} MiB", faults.peak_rss as f64 / f64::from(1 << 20)),
        ),
        (
            "files kept to the end and checked again / removed after their move's check".into(),
            format!("{} / {}", total.kept.len(), total.removed),
        ),
        ("seed".into(), options.seed.to_string()),
        (
            "wall time (load, then the last moves without faults)".into(),
            format!(
                "{:.0} s ({:.0} s + {:.0} s)",
                elapsed.as_secs_f64(),
                load_time.as_secs_f64(),
                elapsed.saturating_sub(load_time).as_secs_f64()
            ),
        ),
    ];
    let mut out = String::from("| figure | value |\n|---|---|\n");
    for (figure, value) in rows {
        let _ = writeln!(out, "| {figure} | {value} |");
    }
    if !total.notes.is_empty() {
        let _ = writeln!(
            out,
            "\nThe first failed runs (each was run again until the move completed):\n"
        );
        for note in &total.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    for finding in &checks.findings {
        let _ = writeln!(out, "\nFINDING {finding}");
    }
    out
}

/// The soak's section of docs/reliability.md.
pub(super) fn doc(options: &Options, report: &str) -> String {
    format!(
        "{SOAK_HEADING}\n\n\
         Written by `cargo xtask chaos --load --doc` on {cores} cores ({cpu}), files on tmpfs, loopback only.\n\n\
         {clients} `realize` clients run at once against one `realized` (debug build, default limits). Each has its own key and is its own peer of the daemon, allowed only its own directory id (sibling roots), and reaches the daemon through its own TCP proxy. Each client loops: it makes a fresh set of {files} files ({min} B to {max} B, log-uniform sizes, some in nested directories) in a new subdirectory of its source directory, moves it into its directory id (`realize --retries 3`), and runs the move again until it succeeds (at most {MAX_RUNS} runs). After each failed run the suite checks that every file of the set still has an intact copy (source or destination) with its original SHA-256; after the move, that every file is on the destination exactly once with its SHA-256, with no partial file left and nothing left on the source.\n\n\
         For {load:.0} s, meanwhile, the suite sends `realized` SIGHUP every second (a config reload), cuts every connection of one client drawn at random every 1 to 3 s, and kills `realized` with kill -9 every 15 to 30 s (first between 20% and 40% of the run), restarting it at once on the same address; then the clients finish the move in hand without faults and stop. Each client keeps its last {KEEP_SETS} sets on the destination (older ones are removed once checked, to bound memory); at the end all the kept sets, both trees whole, are checked once more. The run fails if a file is lost, corrupt or misplaced, if a move does not complete, if a reload fails, if `realized` exits without being killed, or if a kind of fault never struck.\n\n\
         {report}\n\
         Reproduce with `cargo xtask chaos --load --duration 2m --seed S` (not part of CI: it takes minutes).\n",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu = crate::cpu_model(),
        clients = options.clients,
        files = SET.files,
        min = SET.min_size,
        max = SET.max_size,
        load = options.duration.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_secs(50));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_secs(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
