//! `cargo xtask chaos --load`: the soak. Many `realize` clients, each with
//! its own key, peer and directory id, move fresh sets into one `realized`
//! for a bounded time while the suite reloads the daemon every second, cuts
//! clients' connections and kills the daemon now and then; every set is
//! checked when its move completes, and what is kept, once more at the end.

mod report;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use realize_core::Digest;
use realize_core::testing::Rng;

use super::files::{Checks, SetShape, check, generate};
use super::{wait, write_doc};
use crate::fixture::{Binaries, Daemon, keygen, move_command, peak_rss, scratch};
use crate::proxy::Proxy;
use report::{doc, exit, report};

/// Clients at once, unless `--clients` says otherwise.
pub const CLIENTS: usize = 16;

/// Each move's set: small and large files, log-uniform as in the fault runs,
/// fewer of them so that sixteen clients fit two cores.
const SET: SetShape = SetShape {
    files: 24,
    min_size: 512,
    max_size: 8 << 20,
};

/// Runs of one move before it counts as unfinished.
const MAX_RUNS: u32 = 10;
/// Sets each client keeps on the destination for the final check; older
/// ones are removed once checked, so that memory (tmpfs) stays bounded.
const KEEP_SETS: usize = 2;
/// Moves one client may start, whatever the duration.
const MAX_MOVES: u32 = 10_000;

const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// One client's connections are cut every this long (drawn uniformly).
const CUT_EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3));
/// The daemon is killed every this long (drawn uniformly), the first time
/// between 20% and 40% of the duration so that a short run has one too.
const KILL_EVERY: (Duration, Duration) = (Duration::from_secs(15), Duration::from_secs(30));
/// Failed runs whose first error line is kept for the report.
const NOTES: usize = 12;

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub clients: usize,
    pub seed: u64,
    /// Write the soak's section of docs/reliability.md.
    pub write_doc: bool,
}

/// `120`, `120s`, `2m`, `1m30s`: the `--duration` of the soak.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.trim().chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' if !number.is_empty() => {
                let n: u64 = number.parse().map_err(|e| format!("{text}: {e}"))?;
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total = n
                    .checked_mul(unit)
                    .and_then(|n| total.checked_add(n))
                    .ok_or_else(|| format!("{text}: too long"))?;
                number.clear();
            }
            _ => return Err(format!("{text}: expected e.g. 90s, 2m or 1m30s")),
        }
    }
    if !number.is_empty() {
        let n: u64 = number.parse().map_err(|e| format!("{text}: {e}"))?;
        total = total
            .checked_add(n)
            .ok_or_else(|| format!("{text}: too long"))?;
    }
    if total == 0 {
        return Err(format!(
            "{text}: the soak needs a duration of a second or more"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// One client: its key, peer and directory id (all named `name`), its
/// source directory and its destination root, its own proxy.
#[derive(Debug, Clone)]
struct Client {
    name: String,
    key: PathBuf,
    src: PathBuf,
    dst: PathBuf,
    addr: String,
}

/// A completed move.
#[derive(Debug, Clone, Copy)]
struct Move {
    /// From the start of its first run to the end of the run that succeeded.
    duration: Duration,
    runs: u32,
    files: usize,
    bytes: u64,
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientTally {
    moves: Vec<Move>,
    checks: Checks,
    unfinished: u32,
    /// Runs that failed (and were run again), by how they ended.
    failed_runs: BTreeMap<String, u32>,
    /// The first error line of some failed runs.
    notes: Vec<String>,
    /// The sets still on the destination, by path from the roots of all
    /// clients (`NAME/mNNNN/...`), for the final check.
    kept: BTreeMap<String, Digest>,
    /// Files of sets removed from the destination once checked.
    removed: u64,
}

/// What the fault loop did and saw.
#[derive(Debug, Default)]
struct Faults {
    reloads: u32,
    /// Cuts that shut a client's connections, and those that found no client connected.
    cuts: u32,
    idle_cuts: u32,
    kills: u32,
    /// Times the daemon exited without being killed by the suite.
    daemon_exits: u32,
    /// The highest VmHWM of the daemon's processes, and how many there were.
    peak_rss: u64,
    processes: u32,
}

pub fn load(root: &Path, options: &Options) -> anyhow::Result<()> {
    if options.clients == 0 {
        bail!("the soak needs one client or more");
    }
    let bins = Binaries::build(root, false)?;
    let work = scratch("soak")?;
    let result = soak(root, options, &bins, &work);
    match &result {
        // The files, the daemon's log and the keys are kept for the post-mortem.
        Err(_) => eprintln!(
            "the soak's files and realized's log are kept in {}",
            work.display()
        ),
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    result
}

fn soak(root: &Path, options: &Options, bins: &Binaries, work: &Path) -> anyhow::Result<()> {
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys)?;
    keygen(bins, &keys.join("daemon"))?;
    let daemon_pub = keys.join("daemon.pub.pem");
    let mut clients = Vec::new();
    for i in 0..options.clients {
        let name = format!("c{i:02}");
        keygen(bins, &keys.join(&name))?;
        let client = Client {
            key: keys.join(format!("{name}.key")),
            src: work.join("src").join(&name),
            dst: work.join("dst").join(&name),
            addr: String::new(),
            name,
        };
        std::fs::create_dir_all(&client.src)?;
        std::fs::create_dir_all(&client.dst)?;
        clients.push(client);
    }
    let config = work.join("realized.toml");
    daemon_config(&config, &keys, &clients)?;
    let log = work.join("realized.log");
    let mut daemon = Daemon::start(&bins.realized, &config, &log)?;
    // A proxy per client, so that one client's link can fail alone.
    let mut proxies = Vec::new();
    for client in &mut clients {
        let proxy = Proxy::start(&daemon.addr)?;
        client.addr = proxy.addr.clone();
        proxies.push(proxy);
    }
    eprintln!(
        "soak: {} clients into {} for {:?}",
        clients.len(),
        daemon.addr,
        options.duration
    );

    let started = Instant::now();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let workers: Vec<JoinHandle<anyhow::Result<ClientTally>>> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let (client, bins, daemon_pub, stop) = (
                client.clone(),
                bins.clone(),
                daemon_pub.clone(),
                std::sync::Arc::clone(&stop),
            );
            let seed = options
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(i as u64)
                .wrapping_shl(20);
            std::thread::spawn(move || run_client(&client, &bins, &daemon_pub, seed, &stop))
        })
        .collect();

    let mut faults = Faults {
        processes: 1,
        ..Faults::default()
    };
    let fault_result = inject(&mut daemon, &proxies, options, &mut faults);
    // Whatever happened, the clients stop starting moves and finish theirs.
    stop.store(true, Ordering::SeqCst);
    let load_time = started.elapsed();
    let mut tallies = Vec::new();
    let mut errors = Vec::new();
    for worker in workers {
        while !worker.is_finished() {
            watch(&mut daemon, &mut faults, "after the load")?;
            std::thread::sleep(Duration::from_millis(100));
        }
        match worker.join() {
            Ok(Ok(tally)) => tallies.push(tally),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("a client thread panicked".into()),
        }
    }
    fault_result?;
    if !errors.is_empty() {
        bail!("the soak could not run: {}", errors.join("; "));
    }
    watch(&mut daemon, &mut faults, "at the end")?;
    faults.peak_rss = faults.peak_rss.max(peak_rss(daemon.pid()).unwrap_or(0));
    daemon.kill()?;
    drop(proxies);

    // Every set kept, all clients together: on the destination once, intact,
    // no partial file anywhere, every source empty.
    let mut total = ClientTally::default();
    for tally in tallies {
        total.moves.extend(tally.moves);
        total.checks.absorb(tally.checks);
        total.unfinished += tally.unfinished;
        for (how, n) in tally.failed_runs {
            *total.failed_runs.entry(how).or_default() += n;
        }
        total.notes.extend(tally.notes);
        total.kept.extend(tally.kept);
        total.removed += tally.removed;
    }
    check(
        &mut total.checks,
        "final check of every client's kept sets",
        &work.join("src"),
        &work.join("dst"),
        &total.kept,
        true,
    )?;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let logged = |what: &str| log_text.lines().filter(|l| l.contains(what)).count();
    let log_counts = LogCounts {
        reloads_applied: logged("reload: config applied"),
        reloads_failed: logged("reload failed"),
        errors: logged("ERROR"),
    };
    if log_counts.reloads_failed > 0 {
        total.checks.finding(format!(
            "{} reloads failed; see realized's log",
            log_counts.reloads_failed
        ));
    }

    let report = report(
        options,
        &total,
        &faults,
        &log_counts,
        load_time,
        started.elapsed(),
    );
    println!("{report}");
    if options.write_doc {
        write_doc(root, None, Some(&doc(options, &report)))?;
    }
    if faults.cuts == 0 || faults.kills == 0 || faults.reloads == 0 {
        bail!("a kind of fault never struck: {faults:?}");
    }
    if total.checks.broken()
        || total.unfinished > 0
        || faults.daemon_exits > 0
        || log_counts.reloads_failed > 0
    {
        bail!("the soak broke the invariant or the daemon failed; see the findings above");
    }
    Ok(())
}

/// What realized's log says, counted at the end.
#[derive(Debug)]
struct LogCounts {
    reloads_applied: usize,
    reloads_failed: usize,
    errors: usize,
}

/// A config with one directory id and one peer per client, the peer allowed
/// only its own directory; the limits are the defaults, as deployed.
fn daemon_config(path: &Path, keys: &Path, clients: &[Client]) -> anyhow::Result<()> {
    let mut config = format!(
        "address = \"127.0.0.1:0\"\nprivkey = {:?}\n[dirs]\n",
        keys.join("daemon.key")
    );
    for client in clients {
        let _ = writeln!(config, "{} = {:?}", client.name, client.dst);
    }
    for client in clients {
        let _ = writeln!(
            config,
            "[peers.{name}]\npublic_key_file = {:?}\ndirs = [\"{name}\"]",
            keys.join(format!("{}.pub.pem", client.name)),
            name = client.name
        );
    }
    std::fs::write(path, config).with_context(|| format!("cannot write {}", path.display()))
}

/// The fault loop, for `options.duration`: SIGHUP every second, one
/// client's connections cut now and then, the daemon killed and restarted
/// now and then; and the daemon watched for exits of its own.
fn inject(
    daemon: &mut Daemon,
    proxies: &[Proxy],
    options: &Options,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(options.seed ^ 0xFA17);
    let between =
        |rng: &mut Rng, (lo, hi): (Duration, Duration)| lo + (hi - lo).mul_f64(rng.unit());
    let start = Instant::now();
    let deadline = start + options.duration;
    let mut next_reload = start + RELOAD_EVERY;
    let mut next_cut = start + between(&mut rng, CUT_EVERY);
    let mut next_kill = start + options.duration.mul_f64(0.2 + 0.2 * rng.unit());
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        watch(daemon, faults, "during the load")?;
        if now >= next_reload {
            sighup(daemon.pid())?;
            faults.reloads += 1;
            next_reload += RELOAD_EVERY;
        }
        if now >= next_cut {
            // A client drawn among those connected now, so that the cut strikes.
            let connected: Vec<&Proxy> = proxies.iter().filter(|p| p.live() > 0).collect();
            let struck = match connected.len() {
                0 => 0,
                n => connected[rng.below(n as u64) as usize].cut(),
            };
            if struck > 0 {
                faults.cuts += 1;
            } else {
                faults.idle_cuts += 1;
            }
            next_cut = now + between(&mut rng, CUT_EVERY);
        }
        if now >= next_kill {
            faults.peak_rss = faults.peak_rss.max(peak_rss(daemon.pid()).unwrap_or(0));
            daemon.kill()?;
            daemon.restart()?;
            faults.kills += 1;
            faults.processes += 1;
            eprintln!(
                "soak: kill -9 realized at {:.1?}, restarted",
                start.elapsed()
            );
            next_kill = Instant::now() + between(&mut rng, KILL_EVERY);
        }
        let next = next_reload.min(next_cut).min(next_kill).min(deadline);
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
}

/// Samples the daemon's peak RSS, and restarts it (a finding) if it exited
/// without being killed by the suite.
fn watch(daemon: &mut Daemon, faults: &mut Faults, when: &str) -> anyhow::Result<()> {
    if let Some(rss) = peak_rss(daemon.pid()) {
        faults.peak_rss = faults.peak_rss.max(rss);
    }
    if let Some(status) = daemon.revive()? {
        faults.daemon_exits += 1;
        faults.processes += 1;
        eprintln!(
            "  FINDING {when}: realized exited on its own ({status}); restarted, see its log"
        );
    }
    Ok(())
}

/// Asks the daemon to reload its config, as an operator would.
fn sighup(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", "HUP", &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -s HUP {pid} failed: {status}");
    }
    Ok(())
}

/// One client's loop: a fresh set in a new subdirectory of its source, moved
/// until a run succeeds, checked; until `stop`.
fn run_client(
    client: &Client,
    bins: &Binaries,
    daemon_pub: &Path,
    seed: u64,
    stop: &AtomicBool,
) -> anyhow::Result<ClientTally> {
    let mut tally = ClientTally::default();
    let mut kept: VecDeque<(String, BTreeMap<String, Digest>)> = VecDeque::new();
    for m in 0..MAX_MOVES {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let set = format!("m{m:04}");
        let (src, dst) = (client.src.join(&set), client.dst.join(&set));
        let (manifest, bytes) = generate(&src, seed.wrapping_add(u64::from(m)), SET)?;
        let label = format!("{} move {m} (seed {seed})", client.name);
        let started = Instant::now();
        let mut succeeded = None;
        for run in 1..=MAX_RUNS {
            let child = move_command(
                bins,
                &client.key,
                daemon_pub,
                &client.src,
                &client.addr,
                &client.name,
            )
            .args(["--quiet", "--retries", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start realize")?;
            let (status, stderr) = wait(child)?;
            if status.is_some_and(|s| s.success()) {
                succeeded = Some(run);
                break;
            }
            *tally.failed_runs.entry(exit(status)).or_default() += 1;
            if tally.notes.len() < NOTES {
                let why = stderr
                    .lines()
                    .find(|l| l.contains("ERROR"))
                    .unwrap_or(stderr.trim());
                tally.notes.push(format!(
                    "{label}, run {run}: {}: `{}`",
                    exit(status),
                    why.trim()
                ));
            }
            // Whatever the failure, every file still has an intact copy.
            check(
                &mut tally.checks,
                &format!("{label}, after failed run {run}"),
                &src,
                &dst,
                &manifest,
                false,
            )?;
            std::thread::sleep(Duration::from_millis(200));
        }
        let duration = started.elapsed();
        match succeeded {
            Some(runs) => tally.moves.push(Move {
                duration,
                runs,
                files: manifest.len(),
                bytes,
            }),
            None => {
                tally.unfinished += 1;
                tally
                    .checks
                    .finding(format!("{label}: not complete after {MAX_RUNS} runs"));
            }
        }
        check(
            &mut tally.checks,
            &format!("{label}, after the move"),
            &src,
            &dst,
            &manifest,
            succeeded.is_some(),
        )?;
        kept.push_back((set, manifest));
        while kept.len() > KEEP_SETS {
            let Some((set, manifest)) = kept.pop_front() else {
                break;
            };
            let dir = client.dst.join(&set);
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
            tally.removed += manifest.len() as u64;
        }
    }
    for (set, manifest) in kept {
        for (rel, digest) in manifest {
            tally
                .kept
                .insert(format!("{}/{set}/{rel}", client.name), digest);
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("m").is_err());
    }
}
