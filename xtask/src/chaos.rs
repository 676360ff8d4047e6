//! `cargo xtask chaos`: moves a mixed set into a daemon again and again, injects a fault at a random moment of each move, and checks the invariant of SPEC §2 after the fault and after the move is finished.

mod files;
pub mod load;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use realize_core::testing::Rng;

use crate::fixture::{Binaries, Daemon, Keys, clear_dir, scratch};
use crate::proxy::Proxy;
use files::{Checks, SetShape, check, generate};

/// Files in each iteration's set, and their size range (log-uniform).
const FILES: usize = 40;
const MIN_SIZE: u64 = 1024;
const MAX_SIZE: u64 = 8 << 20;
const SET: SetShape = SetShape {
    files: FILES,
    min_size: MIN_SIZE,
    max_size: MAX_SIZE,
};

/// Longest a `realize` run may take before it counts as hung (it retries
/// network failures itself, with backoff from 1 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs of the plain move after a fault before the iteration counts as unfinished.
const COMPLETION_RUNS: u32 = 3;

#[derive(Debug, Clone)]
pub struct Options {
    pub iterations: u32,
    pub seed: u64,
    /// Write the figures to docs/reliability.md.
    pub write_doc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillClient,
    KillDaemon,
    CutConnection,
    DiskFull,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::KillClient => "kill -9 realize",
            Fault::KillDaemon => "kill -9 realized, restarted on the same address",
            Fault::CutConnection => "connections cut by the proxy",
            Fault::DiskFull => "destination filesystem full",
        }
    }
}

/// What the run saw, for the summary.
#[derive(Debug, Default)]
struct Tally {
    iterations: u32,
    /// Faults that hit a move in flight.
    injected: BTreeMap<Fault, u32>,
    /// Faults whose moment came after the move had already ended.
    missed: BTreeMap<Fault, u32>,
    checks: Checks,
    unfinished: u32,
    /// Times the daemon exited without being killed by the suite.
    daemon_exits: u32,
    /// Daemon restarts and cuts that realize got over by itself, retrying.
    recovered: u32,
    /// Why realize gave up after the others, by iteration.
    not_recovered: Vec<String>,
}

impl Tally {
    fn failed(&self) -> bool {
        self.checks.broken() || self.unfinished + self.daemon_exits > 0
    }

    fn finding(&mut self, what: String) {
        self.checks.finding(what);
    }
}

/// A small tmpfs mounted on the destination root, so that it can fill up;
/// unmounted when dropped.
#[derive(Debug)]
struct SmallFs {
    path: PathBuf,
    roomy: u64,
}

impl SmallFs {
    fn mount(path: &Path, roomy: u64) -> anyhow::Result<Self> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={roomy}"), "tmpfs"])
            .arg(path)
            .output()
            .context("cannot run mount")?;
        if !output.status.success() {
            bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(SmallFs {
            path: path.to_path_buf(),
            roomy,
        })
    }

    /// Sets the filesystem's size; tmpfs resizes live, open files and all.
    fn resize(&self, size: u64) -> anyhow::Result<()> {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .context("cannot run mount")?;
        if !status.success() {
            bail!("cannot resize the tmpfs on {}", self.path.display());
        }
        Ok(())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

struct Chaos {
    bins: Binaries,
    keys: Keys,
    src: PathBuf,
    dst: PathBuf,
    daemon: Daemon,
    proxy: Proxy,
    small_fs: Option<SmallFs>,
    work: PathBuf,
    /// Kept for the post-mortem when the invariant broke.
    keep_work: bool,
}

impl Chaos {
    /// A `realize` move of the source into the daemon, through `addr`.
    fn spawn_move(&self, addr: &str) -> anyhow::Result<Child> {
        self.keys
            .move_command(&self.bins, &self.src, addr, "d")
            // A restarted daemon or a new connection is there at once; more
            // tries would only stretch an iteration that has gone wrong.
            .args(["--quiet", "--retries", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start realize")
    }

    /// Runs the move without faults until it succeeds, at most
    /// `COMPLETION_RUNS` times; returns the runs it took, or the last error.
    fn complete(&mut self, tally: &mut Tally, label: &str) -> anyhow::Result<Result<u32, String>> {
        let mut last = String::new();
        for runs in 1..=COMPLETION_RUNS {
            self.check_daemon(tally, label)?;
            let child = self.spawn_move(&self.daemon.addr)?;
            let (status, stderr) = wait(child)?;
            if status.is_some_and(|s| s.success()) {
                return Ok(Ok(runs));
            }
            last = format!("{}: {}", describe(status), stderr.trim());
        }
        Ok(Err(last))
    }
}

impl Chaos {
    /// The daemon must only die when the suite kills it; if it exited on
    /// its own (a crash, or a signal from outside), that is reported and it
    /// is started again so the run can go on.
    fn check_daemon(&mut self, tally: &mut Tally, label: &str) -> anyhow::Result<()> {
        if let Some(status) = self.daemon.revive()? {
            tally.daemon_exits += 1;
            tally.finding(format!(
                "{label}: realized exited on its own ({status}); restarted, see its log"
            ));
        }
        Ok(())
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        // The daemon and the mount go with their own guards; the rest is files.
        let _ = self.daemon.kill();
        if self.keep_work {
            // Unmounting would throw the destination's files away.
            std::mem::forget(self.small_fs.take());
        } else {
            self.small_fs = None;
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

/// Waits for `realize` within `RUN_TIMEOUT` (killing it past that); returns
/// its exit status (None if it hung) and stderr.
fn wait(mut child: Child) -> anyhow::Result<(Option<ExitStatus>, String)> {
    let stderr = child.stderr.take();
    // Read stderr on a thread so a chatty child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = stderr {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        }
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = reader.join().unwrap_or_default();
    Ok((status, text))
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => format!("hung for {RUN_TIMEOUT:?} and was killed"),
        Some(status) => status.to_string(),
    }
}

/// Sleeps until `at` after `started`, then says whether `child` is still running.
fn still_running_at(child: &mut Child, started: Instant, at: Duration) -> anyhow::Result<bool> {
    std::thread::sleep(at.saturating_sub(started.elapsed()));
    Ok(child.try_wait()?.is_none())
}

pub fn chaos(root: &Path, options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    // Debug binaries are enough: what is tested is correctness, not speed.
    let bins = Binaries::build(root, false)?;
    let work = scratch("chaos")?;
    let (src, dst) = (work.join("src"), work.join("dst"));
    for dir in [&src, &dst] {
        std::fs::create_dir_all(dir)?;
    }
    let keys = Keys::generate(&bins, &work)?;

    // Sizes of the sets are known only once they are made; a roomy
    // filesystem holds several.
    let roomy = 8 * FILES as u64 * MAX_SIZE;
    let small_fs = match SmallFs::mount(&dst, roomy) {
        Ok(fs) => Some(fs),
        Err(e) => {
            eprintln!("disk-full faults skipped: cannot mount a tmpfs on the destination: {e:#}");
            None
        }
    };
    let config = work.join("realized.toml");
    keys.daemon_config(&config, &[("d", &dst)])?;
    let daemon = Daemon::start(&bins.realized, &config, &work.join("realized.log"))?;
    let proxy = Proxy::start(&daemon.addr)?;
    let mut chaos = Chaos {
        bins,
        keys,
        src,
        dst,
        daemon,
        proxy,
        small_fs,
        work,
        keep_work: false,
    };

    // A clean move first: it must work, and its duration bounds the moments
    // at which faults are injected.
    let (manifest, _) = generate(&chaos.src, options.seed ^ 0x5EED, SET)?;
    let calibration_start = Instant::now();
    let mut tally = Tally::default();
    let calibration = chaos.complete(&mut tally, "clean move")?;
    let span = calibration_start.elapsed();
    if let Err(error) = calibration {
        bail!("the clean move before the faults failed: {error}");
    }
    check(
        &mut tally.checks,
        "clean move",
        &chaos.src,
        &chaos.dst,
        &manifest,
        true,
    )?;
    if tally.failed() {
        bail!(
            "the clean move broke the invariant: {:?}",
            tally.checks.findings
        );
    }
    tally = Tally::default();
    eprintln!("a clean move takes {span:.2?}; faults strike within that span");

    let mut faults = vec![Fault::KillClient, Fault::KillDaemon, Fault::CutConnection];
    if chaos.small_fs.is_some() {
        faults.push(Fault::DiskFull);
    }
    let mut rng = Rng::new(options.seed);
    for i in 0..options.iterations {
        let fault = faults[i as usize % faults.len()];
        let label = format!(
            "iteration {} (seed {}, {})",
            i + 1,
            options.seed,
            fault.describe()
        );
        clear_dir(&chaos.src)?;
        clear_dir(&chaos.dst)?;
        let (manifest, total) = generate(&chaos.src, options.seed.wrapping_add(u64::from(i)), SET)?;
        // Within the first two thirds of a clean move's span: a moment near
        // its end often comes after a faster move has ended, and a short
        // run must still strike with every kind of fault.
        let at = span.mul_f64(0.05 + 0.6 * rng.unit());
        let (hit, moment) = inject(&mut chaos, &mut tally, &label, fault, at, total, &mut rng)?;
        chaos.check_daemon(&mut tally, &label)?;
        *if hit {
            tally.injected.entry(fault).or_default()
        } else {
            tally.missed.entry(fault).or_default()
        } += 1;
        check(
            &mut tally.checks,
            &format!("{label}, after the fault"),
            &chaos.src,
            &chaos.dst,
            &manifest,
            false,
        )?;
        match chaos.complete(&mut tally, &label)? {
            Ok(runs) => {
                check(
                    &mut tally.checks,
                    &format!("{label}, after the completing run"),
                    &chaos.src,
                    &chaos.dst,
                    &manifest,
                    true,
                )?;
                eprintln!(
                    "{label}: {moment}, {}; finished in {runs} run(s); {} files intact",
                    if hit {
                        "injected"
                    } else {
                        "too late, the move had ended"
                    },
                    manifest.len()
                );
            }
            Err(error) => {
                tally.unfinished += 1;
                tally.finding(format!("{label}: the move did not complete: {error}"));
            }
        }
        tally.iterations += 1;
    }

    let report = report(&tally, options, started.elapsed(), chaos.small_fs.is_some());
    println!("{report}");
    if options.write_doc {
        write_doc(root, Some(&doc(&report)), None)?;
    }
    // Every kind had its turn: one that never struck tested nothing.
    if options.iterations as usize >= faults.len()
        && let Some(fault) = faults.iter().find(|f| !tally.injected.contains_key(f))
    {
        bail!(
            "no fault of kind \"{}\" struck a move in flight in {} iterations",
            fault.describe(),
            options.iterations
        );
    }
    if tally.failed() {
        chaos.keep_work = true;
        bail!(
            "the invariant was broken; the files and the daemon's log are kept in {} (unmount its dst when done)",
            chaos.work.display()
        );
    }
    Ok(())
}

/// Runs one move with `fault` at `at`; says whether the fault hit the move
/// while it was in flight, and when or how it struck.
fn inject(
    chaos: &mut Chaos,
    tally: &mut Tally,
    label: &str,
    fault: Fault,
    at: Duration,
    total: u64,
    rng: &mut Rng,
) -> anyhow::Result<(bool, String)> {
    let moment = format!("at {at:.2?}");
    let hit = match fault {
        Fault::KillClient => {
            let started = Instant::now();
            let mut child = chaos.spawn_move(&chaos.daemon.addr)?;
            let hit = still_running_at(&mut child, started, at)?;
            // SIGKILL: no summary, no cleanup, partial files as they are.
            if hit {
                child.kill()?;
            }
            wait(child)?;
            hit
        }
        Fault::KillDaemon => {
            let started = Instant::now();
            let mut child = chaos.spawn_move(&chaos.daemon.addr)?;
            let hit = still_running_at(&mut child, started, at)?;
            if hit {
                chaos.daemon.kill()?;
                chaos.daemon.restart()?;
            }
            // realize retries on its own; whether it finished is counted.
            let (status, stderr) = wait(child)?;
            if hit {
                recovered(tally, label, status, &stderr);
            }
            hit
        }
        Fault::CutConnection => {
            let started = Instant::now();
            let mut child = chaos.spawn_move(&chaos.proxy.addr)?;
            let hit = still_running_at(&mut child, started, at)? && chaos.proxy.cut() > 0;
            let (status, stderr) = wait(child)?;
            if hit {
                recovered(tally, label, status, &stderr);
            }
            hit
        }
        Fault::DiskFull => {
            let fs = chaos
                .small_fs
                .as_ref()
                .context("disk-full faults need the small filesystem")?;
            // Room for 10% to 90% of the set: the move fills it up part way.
            let share = 0.1 + 0.8 * rng.unit();
            fs.resize(((total as f64 * share) as u64).max(64 * 1024))?;
            let child = chaos.spawn_move(&chaos.daemon.addr)?;
            let (status, _) = wait(child)?;
            // Space comes back, as when an operator frees some.
            fs.resize(fs.roomy)?;
            let hit = !status.is_some_and(|s| s.success());
            return Ok((hit, format!("room for {:.0}% of the set", share * 100.0)));
        }
    };
    Ok((hit, moment))
}

/// Counts a network fault that realize's retries got over, and notes why
/// when they did not (not a broken invariant: the completing run follows).
fn recovered(tally: &mut Tally, label: &str, status: Option<ExitStatus>, stderr: &str) {
    if status.is_some_and(|s| s.success()) {
        tally.recovered += 1;
        return;
    }
    // The first error says why; the summary line only counts.
    let why = stderr
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or(stderr.trim());
    let note = format!(
        "{label}: realize gave up ({}): `{}`",
        describe(status),
        why.trim()
    );
    eprintln!("  {note}");
    tally.not_recovered.push(note);
}

fn report(tally: &Tally, options: &Options, elapsed: Duration, disk_full: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    let _ = writeln!(out, "| iterations | {} |", tally.iterations);
    for fault in [
        Fault::KillClient,
        Fault::KillDaemon,
        Fault::CutConnection,
        Fault::DiskFull,
    ] {
        if fault == Fault::DiskFull && !disk_full {
            let _ = writeln!(
                out,
                "| faults: {} | skipped (no tmpfs could be mounted) |",
                fault.describe()
            );
            continue;
        }
        let _ = writeln!(
            out,
            "| faults: {} | {} injected, {} too late |",
            fault.describe(),
            tally.injected.get(&fault).copied().unwrap_or(0),
            tally.missed.get(&fault).copied().unwrap_or(0)
        );
    }
    let network: u32 = [Fault::KillDaemon, Fault::CutConnection]
        .iter()
        .map(|f| tally.injected.get(f).copied().unwrap_or(0))
        .sum();
    let _ = writeln!(
        out,
        "| daemon restarts and cuts that realize's own retries finished (exit 0) | {} of {network} |",
        tally.recovered
    );
    let _ = writeln!(
        out,
        "| file checks (after each fault and after each completing run) | {} |",
        tally.checks.file_checks
    );
    let _ = writeln!(out, "| files lost | {} |", tally.checks.lost);
    let _ = writeln!(out, "| corrupt files | {} |", tally.checks.corrupt);
    let _ = writeln!(
        out,
        "| stray partial files after a completed move | {} |",
        tally.checks.stray_partials
    );
    let _ = writeln!(
        out,
        "| files misplaced after a completed move | {} |",
        tally.checks.misplaced
    );
    let _ = writeln!(
        out,
        "| moves that did not complete in {COMPLETION_RUNS} runs | {} |",
        tally.unfinished
    );
    let _ = writeln!(
        out,
        "| times realized exited without being killed by the suite | {} |",
        tally.daemon_exits
    );
    let _ = writeln!(out, "| seed | {} |", options.seed);
    let _ = writeln!(out, "| duration | {:.0?} |", elapsed);
    if !tally.not_recovered.is_empty() {
        let _ = writeln!(
            out,
            "\nNetwork faults that realize did not get over by itself (the completing run then finished the move):\n"
        );
        for note in &tally.not_recovered {
            let _ = writeln!(out, "- {note}");
        }
    }
    for finding in &tally.checks.findings {
        let _ = writeln!(out, "\nFINDING {finding}");
    }
    out
}

/// The heading of the soak's section of docs/reliability.md, the file's last:
/// the fault runs' `--doc` keeps it as it is, the soak's `--doc` replaces it.
const SOAK_HEADING: &str = "## Soak under load";

/// Writes docs/reliability.md from its two parts: `faults`, everything
/// before the soak's section, and `soak`, that section; a part not given is
/// kept as the file has it.
fn write_doc(root: &Path, faults: Option<&str>, soak: Option<&str>) -> anyhow::Result<()> {
    let path = root.join("docs/reliability.md");
    let current = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (old_faults, old_soak) = match current.find(&format!("\n{SOAK_HEADING}\n")) {
        Some(at) => current.split_at(at + 1),
        None => (current.as_str(), ""),
    };
    let mut text = faults.unwrap_or(old_faults).trim_end().to_string();
    text.push('\n');
    let soak = soak.unwrap_or(old_soak).trim_end();
    if !soak.is_empty() {
        text.push('\n');
        text.push_str(soak);
        text.push('\n');
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn doc(report: &str) -> String {
    format!(
        "# Reliability\n\n\
         Written by `cargo xtask chaos --doc` on {cores} cores ({cpu}), files on tmpfs, loopback only.\n\n\
         Each iteration makes a fresh set of {FILES} files ({MIN_SIZE} B to {MAX_SIZE} B, log-uniform sizes, some in nested directories), moves it from a local directory into a `realized` (debug build) with `realize`, and injects one fault, the kinds in turn, at a moment drawn uniformly between 5% and 65% of the duration of a clean move:\n\n\
         - kill -9 of `realize`;\n\
         - kill -9 of `realized`, restarted at once on the same address (`realized --config F --address HOST:PORT`); `realize` retries by itself;\n\
         - every connection cut by a TCP proxy between the two; `realize` retries by itself;\n\
         - the destination, a tmpfs, shrunk to hold 10% to 90% of the set before the move, and grown back after it.\n\n\
         After the fault the suite checks that every file still has an intact copy (source or destination) with its original SHA-256 and that no final file is corrupt; then it runs the plain move until it succeeds (at most {COMPLETION_RUNS} runs) and checks that every file is on the destination only, intact, with no partial file left.\n\
         A fault that comes after the move has ended counts as too late; the checks run all the same. A run of at least as many iterations as there are kinds of fault fails if some kind never struck a move in flight.\n\n\
         {report}\n\
         Reproduce with `cargo xtask chaos --iterations N --seed S`; CI runs `cargo xtask chaos --iterations 5`.\n\n\
         ## Races the test suite reproduces\n\
         \n\
         Beyond the chaos run, these races run in `cargo test --workspace` through the real binaries or the store:\n\
         \n\
         - A SIGHUP storm (every 50 ms) while two `realize` clients move the same paths into one daemon: every file ends whole, once, with one client's content, and both sources are emptied. The daemon keeps one table of path locks for its whole life (`PathLocks`), so a call admitted before a reload and one admitted after it queue on the same path.\n\
         - Another client finishing or removing a destination file under a move: the move lists the destination again (at most 3 times) and goes on from what is there, instead of failing the file with `not found`.\n\
         - Two daemons, or two directory ids, on one directory: each partial file is written under an exclusive lock of its open file (`flock`), so a second writer gets `ABORTED` (`being written by another client`, retried by `realize`) and never interleaves; a daemon refuses a config whose roots are one directory or nest.\n\
         - A panic inside a call (a bug in a handler or a store, or in a response stream): the call ends with `INTERNAL` (`METHOD failed: internal error in the daemon (MESSAGE)`), the panic is logged at ERROR in the call's span and counted in `realize_rpc_panics_total{{method}}`, and the daemon serves on; the test runs a daemon over a store whose every call panics.\n\
         - A stalled stream: a Write whose client goes silent mid-stream ends at the daemon's `stall_timeout` with `DEADLINE_EXCEEDED`, keeping what it wrote; a daemon whose data stops mid-Read fails the stream at `realize --stall-timeout`, retried as a cut connection and, with no retries left, given up with exit 10 and the source kept; a WriteFiles call idle between files is not cut.\n\
         - Partial files left by failed moves filling a disk: the daemon removes those nobody wrote for `partial_max_age` (7 days by default), at start and periodically, each as an audit line, never one being written; `realize` says how many partial files a failed or interrupted run left and where.\n\
         - A WriteFiles call held for small files: `realize` ends it once no file has come for a second (files queued meanwhile still go on it), so it no longer holds one of the connection's calls, or keeps the connection from being idle, for a whole move; the next file opens a new call.\n\
         - A hard stop (Ctrl-C, SIGTERM, a hard deadline) while the destination writes a batch of small files: the destination finishes what it took whatever the move does, so the move waits up to 0.7 s for its answer and reports those files as they are on disk, moved, their sources deleted; past that, nothing is deleted and the next run finds them identical.\n\
         - A move into a destination this peer may only read, or out of a source it may only read: `Info` tells each directory's access, and `realize` refuses the move before it creates or copies anything (exit 1), instead of failing every file at `Finish` or `Delete`.\n\
         - A directory inside a root swapped for a symlink to outside it, atomically and over and over, while calls run on paths through it (the store's read, hash, write, write_file, finish, delete, write_files and list, and Read, Write and Delete through the daemon): each call meets the directory or is refused with `INVALID_ARGUMENT`, and nothing outside the root is read, listed, written, created or deleted. The store resolves each path's parent with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, without it, one `openat(O_NOFOLLOW | O_DIRECTORY)` per component) and acts on names relative to that directory, so a swap after the resolution changes nothing.\n",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu = crate::cpu_model(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `--doc` replaces its own part of docs/reliability.md and keeps the other.
    #[test]
    fn doc_parts() -> anyhow::Result<()> {
        let root = std::env::temp_dir().join(format!("xtask-doc-{}", std::process::id()));
        std::fs::create_dir_all(root.join("docs"))?;
        let read = || std::fs::read_to_string(root.join("docs/reliability.md"));
        let soak = format!("{SOAK_HEADING}\n\nsoak 1\n");
        write_doc(&root, Some("# Reliability\n\nfaults 1\n"), None)?;
        assert_eq!(read()?, "# Reliability\n\nfaults 1\n");
        write_doc(&root, None, Some(&soak))?;
        assert_eq!(read()?, format!("# Reliability\n\nfaults 1\n\n{soak}"));
        write_doc(&root, Some("# Reliability\n\nfaults 2\n"), None)?;
        assert_eq!(read()?, format!("# Reliability\n\nfaults 2\n\n{soak}"));
        write_doc(&root, None, Some(&format!("{SOAK_HEADING}\n\nsoak 2\n")))?;
        assert_eq!(
            read()?,
            format!("# Reliability\n\nfaults 2\n\n{SOAK_HEADING}\n\nsoak 2\n")
        );
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
