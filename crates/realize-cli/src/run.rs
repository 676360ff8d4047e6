//! One run of a move: both sides opened, the move tried again after network
//! failures, and an honest account of how it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use opentelemetry::KeyValue;
use realize_core::ErrorChain;
use realize_core::{
    DirId, FileKind, LocalStore, MoveError, MoveOptions, MoveSummary, Service, ServiceError, Side,
    Stop, Subtree,
};
use realize_net::connection::ConnectError;
use realize_net::metrics::record_limit;
use realize_net::remote::RemoteService;
use realize_net::retry::{Backoff, is_retryable};
use realize_net::throttle::{SendLimit, Throttle, ThrottledService};

use crate::output::Output;
use crate::{Config, Endpoint, client_tls};

/// The longest one TCP connection and TLS handshake to a daemon may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest, when little of `--connect-timeout` is left.
const MIN_DIAL_TIMEOUT: Duration = Duration::from_millis(100);

/// What a run did, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub summary: MoveSummary,
    pub ending: Ending,
    /// Partial files the last try left at the destination, by directory:
    /// what the next run resumes (or the daemon removes once stale).
    pub partial_files_left: Vec<(DirId, u64)>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Ending {
    /// Every file listed was moved, failed, or was skipped.
    Finished,
    /// A stop cut the run short: some files may not even have been listed.
    CutShort,
    /// A daemon could not be reached, or was lost and the retries ran out.
    GaveUp(GaveUp),
}

/// A daemon the run gave up on.
#[derive(Debug, Clone)]
pub struct GaveUp {
    pub side: Side,
    /// The daemon's `HOST:PORT` (or a local side's path).
    pub address: String,
    /// Whether it had been reached in this run: lost, rather than never reached.
    pub reached: bool,
    /// The innermost error of the last try, e.g. `connection refused`.
    pub cause: String,
    /// Tries made, the first included.
    pub tries: u32,
    /// From the start of the run to giving up.
    pub elapsed: Duration,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let GaveUp {
            side,
            address,
            cause,
            tries,
            ..
        } = self;
        if self.reached {
            write!(f, "lost the connection to the {side} daemon at {address}")?;
        } else {
            write!(f, "cannot reach the {side} daemon at {address}")?;
        }
        let plural = if *tries == 1 { "try" } else { "tries" };
        let elapsed = if self.elapsed < Duration::from_secs(1) {
            Duration::from_millis(self.elapsed.as_millis() as u64)
        } else {
            Duration::from_secs(self.elapsed.as_secs_f64().round() as u64)
        };
        write!(
            f,
            ": {cause} ({tries} {plural} in {})",
            humantime::format_duration(elapsed)
        )
    }
}

/// Moves every directory, trying again after network failures.
///
/// Each try connects both sides afresh (setting the daemons' send limits
/// again), lists, and resumes: files already moved are gone from the
/// source, partial files continue where they stopped. A daemon never
/// reached in this run is tried until `config.connect_timeout` has passed
/// since the start; one lost after it was reached, `config.retries` more
/// times. Tries also stop when `stop` fires. The summary adds up what every
/// try moved; failures and interrupted files are those of the last try.
///
/// `rpc_deadline`, if set, is carried by every call to a daemon.
pub async fn run_move(
    config: &Config,
    output: &Output,
    stop: &Stop,
    rpc_deadline: Option<Instant>,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let sides = Sides {
        tls: if config.both_local() {
            None
        } else {
            Some(client_tls(config)?)
        },
        // One limit for everything this command sends, whichever daemon gets it.
        upload: SendLimit::new(config.limits.upload),
        download: config.limits.download,
        rpc_deadline,
        started,
        reached: Default::default(),
    };
    for (scope, limit) in [
        ("upload", config.limits.upload),
        ("download", config.limits.download),
    ] {
        record_limit(limit, &[KeyValue::new("scope", scope)]);
    }
    let mut total = MoveSummary::default();
    let mut backoff = Backoff::new();
    let (mut tries, mut retries_after_reaching) = (0, 0);
    let mut partial_files_left = Vec::new();
    let run = |summary, partial_files_left, ending| {
        Ok(Run {
            summary,
            ending,
            partial_files_left,
        })
    };
    loop {
        tries += 1;
        let failure = match sides.attempt(config, output, stop).await {
            Ok((summary, partials)) => {
                partial_files_left = partials;
                if summary.files_moved > 0 {
                    backoff.reset();
                }
                total.files_moved += summary.files_moved;
                total.bytes_moved += summary.bytes_moved;
                total.bytes_sent += summary.bytes_sent;
                total.files_failed = summary.files_failed;
                total.files_interrupted = summary.files_interrupted;
                total.files_skipped = summary.files_skipped;
                total.files_excluded = summary.files_excluded;
                total.planned = summary.planned;
                total.failures = summary.failures;
                match total
                    .failures
                    .iter()
                    .find_map(|f| network_failure(&f.error))
                {
                    Some(failure) => failure,
                    // Interrupted while listing, the try may have seen
                    // only some of the files.
                    None if stop.is_interrupted() => {
                        return run(
                            total,
                            std::mem::take(&mut partial_files_left),
                            Ending::CutShort,
                        );
                    }
                    None => {
                        return run(
                            total,
                            std::mem::take(&mut partial_files_left),
                            Ending::Finished,
                        );
                    }
                }
            }
            Err(AttemptError::Move(MoveError::Cancelled)) => {
                return run(
                    total,
                    std::mem::take(&mut partial_files_left),
                    Ending::CutShort,
                );
            }
            Err(error) => match error.network_failure() {
                Some(failure) => failure,
                None => return Err(error.into()),
            },
        };
        if stop.is_stopping() {
            return run(
                total,
                std::mem::take(&mut partial_files_left),
                Ending::CutShort,
            );
        }
        let reached = sides.reached(failure.side);
        let elapsed = started.elapsed();
        let mut delay = backoff.next_delay();
        let mut of = None;
        let give_up = if reached {
            retries_after_reaching += 1;
            of = Some(config.retries + 1);
            retries_after_reaching > config.retries
        } else {
            // Daemons restart, so one never reached is worth a few tries,
            // but a typo or a daemon that is not there must not hang a script.
            match config.connect_timeout.checked_sub(elapsed) {
                Some(left) if !left.is_zero() => {
                    delay = delay.min(left);
                    false
                }
                _ => true,
            }
        };
        if give_up {
            let gave_up = GaveUp {
                side: failure.side,
                address: config.endpoint(failure.side).to_string(),
                reached,
                cause: failure.cause,
                tries,
                elapsed,
            };
            return run(
                total,
                std::mem::take(&mut partial_files_left),
                Ending::GaveUp(gave_up),
            );
        }
        tracing::info!(tries, ?delay, error = %failure.error, "retrying");
        let attempt = if reached {
            retries_after_reaching + 1
        } else {
            tries + 1
        };
        output.retrying(attempt, of, delay, &failure.error);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.stopping() => return run(total, std::mem::take(&mut partial_files_left), Ending::CutShort),
        }
    }
}

/// Why one try of a move failed as a whole.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{side}")]
    Connect { side: Side, source: ConnectError },
    #[error("cannot set the send limit of the daemon at {addr}")]
    Configure {
        side: Side,
        addr: String,
        #[source]
        source: ServiceError,
    },
    #[error(transparent)]
    Move(#[from] MoveError),
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// A failure of the network, which may go away if tried again.
struct NetworkFailure {
    side: Side,
    /// The whole chain, for the `RETRY` line.
    error: String,
    /// The innermost cause, for the line that gives up.
    cause: String,
}

impl NetworkFailure {
    fn new(side: Side, error: &(dyn std::error::Error + 'static)) -> Self {
        NetworkFailure {
            side,
            error: ErrorChain(error).to_string(),
            cause: root_cause(error),
        }
    }
}

impl AttemptError {
    /// Network failures may go away; everything else would fail again.
    fn network_failure(&self) -> Option<NetworkFailure> {
        match self {
            AttemptError::Connect { side, source } if source.is_retryable() => {
                Some(NetworkFailure::new(*side, source))
            }
            AttemptError::Configure { side, source, .. } if is_retryable(source) => {
                Some(NetworkFailure::new(*side, self))
            }
            AttemptError::Move(error) => network_failure(error),
            _ => None,
        }
    }
}

fn network_failure(error: &MoveError) -> Option<NetworkFailure> {
    match error {
        MoveError::Service { side, source } if is_retryable(source) => {
            Some(NetworkFailure::new(*side, source))
        }
        _ => None,
    }
}

/// The innermost error, as a person reads it: `connection refused` rather
/// than `Connection refused (os error 111)`.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = innermost.to_string();
    let text = match text.rsplit_once(" (os error ") {
        Some((text, code)) if code.ends_with(')') => text.to_string(),
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

impl Config {
    fn endpoint(&self, side: Side) -> &Endpoint {
        match side {
            Side::Source => &self.source,
            Side::Destination => &self.destination,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Local(path) => write!(f, "{}", path.display()),
            Endpoint::Remote(addr) => f.write_str(addr),
        }
    }
}

/// What opening either side of a move needs.
struct Sides {
    tls: Option<Arc<rustls::ClientConfig>>,
    upload: SendLimit,
    download: Option<u64>,
    rpc_deadline: Option<Instant>,
    /// When the run started, for `--connect-timeout`.
    started: Instant,
    /// Whether each side (source, destination) was reached in this run.
    reached: [AtomicBool; 2],
}

impl Sides {
    fn reached(&self, side: Side) -> bool {
        self.reached[side as usize].load(Ordering::Relaxed)
    }

    /// One try: connect both sides and move.
    async fn attempt(
        &self,
        config: &Config,
        output: &Output,
        stop: &Stop,
    ) -> Result<(MoveSummary, Vec<(DirId, u64)>), AttemptError> {
        // move_files stops by itself, and counts what it interrupts; the
        // steps before it must stop too.
        let opened = tokio::select! {
            opened = async {
                let source = self.open(config, Side::Source).await?;
                let destination = self.open(config, Side::Destination).await?;
                // A dry run creates nothing: the mover takes a missing
                // destination for an empty one.
                if let Endpoint::Local(root) = &config.destination
                    && !root.exists()
                    && !config.dry_run
                {
                    // Every check that can refuse the move runs before the
                    // destination is created.
                    let dirs: Vec<DirId> = config.roots.iter().map(|r| r.dir.clone()).collect();
                    realize_core::check_move(&*source, &*destination, &dirs, config.digest).await?;
                    std::fs::create_dir(root).with_context(|| {
                        format!("cannot create the destination {}", root.display())
                    })?;
                }
                Ok::<_, AttemptError>((source, destination))
            } => opened,
            () = stop.interrupted() => Err(MoveError::Cancelled.into()),
        };
        let (source, mut destination) = opened?;
        if config.both_local()
            && let Some(rate) = [config.limits.upload, config.limits.download]
                .into_iter()
                .flatten()
                .min()
        {
            // No socket to slow down: the copy itself is held to the limit.
            destination = Arc::new(ThrottledService::new(
                destination,
                Throttle(SendLimit::new(Some(rate))),
            ));
        }
        let mut options = MoveOptions::default();
        options.parallel = config.parallel;
        options.digest = config.digest;
        options.filter = config.filter.clone();
        options.dry_run = config.dry_run;
        let summary = realize_core::move_files(
            &*source,
            &*destination,
            &config.roots,
            &options,
            output,
            stop,
        )
        .await?;
        let partials = if summary.files_failed + summary.files_interrupted > 0 {
            partial_files(&*destination, &config.roots).await
        } else {
            Vec::new()
        };
        Ok((summary, partials))
    }

    async fn open(&self, config: &Config, side: Side) -> Result<Arc<dyn Service>, AttemptError> {
        match config.endpoint(side) {
            Endpoint::Local(root) => {
                check_local_root(root, side)?;
                let dir = config
                    .roots
                    .first()
                    .map(|root| root.dir.clone())
                    .context("no directory id")?;
                Ok(Arc::new(LocalStore::new([(dir, root.clone())])))
            }
            Endpoint::Remote(addr) => {
                let tls = self
                    .tls
                    .clone()
                    .context("no TLS configuration for a daemon")?;
                let timeout = if self.reached(side) {
                    DIAL_TIMEOUT
                } else {
                    config
                        .connect_timeout
                        .saturating_sub(self.started.elapsed())
                        .clamp(MIN_DIAL_TIMEOUT, DIAL_TIMEOUT)
                };
                let channel =
                    realize_net::connection::connect(addr, tls, timeout, self.upload.clone())
                        .await
                        .map_err(|source| AttemptError::Connect { side, source })?;
                self.reached[side as usize].store(true, Ordering::Relaxed);
                let mut remote =
                    RemoteService::new(channel).with_stall_timeout(config.stall_timeout);
                if let Some(deadline) = self.rpc_deadline {
                    remote = remote.with_deadline(deadline.into());
                }
                if let Some(rate) = self.download.filter(|_| !config.dry_run) {
                    // Set on every new connection: the limit belongs to the connection.
                    remote.configure(Some(rate)).await.map_err(|source| {
                        AttemptError::Configure {
                            side,
                            addr: addr.clone(),
                            source,
                        }
                    })?;
                    tracing::info!(%addr, rate, "daemon send limit set");
                }
                Ok(Arc::new(remote))
            }
        }
    }
}

/// How long counting the partial files left may delay the summary: an
/// interrupted run must still exit promptly.
const PARTIALS_TIMEOUT: Duration = Duration::from_millis(500);

/// The partial files `destination` holds in each of `roots` that has any;
/// a directory that cannot be listed in time is left out.
async fn partial_files(destination: &dyn Service, roots: &[Subtree]) -> Vec<(DirId, u64)> {
    let mut found = Vec::new();
    for Subtree {
        dir,
        destination: sub,
        ..
    } in roots
    {
        let listing = async {
            destination
                .list(dir, sub.as_ref(), true)
                .await?
                .try_collect::<Vec<_>>()
                .await
        };
        if let Ok(Ok(entries)) = tokio::time::timeout(PARTIALS_TIMEOUT, listing).await {
            let partials = entries
                .iter()
                .filter(|e| e.kind == FileKind::Partial)
                .count() as u64;
            if partials > 0 {
                found.push((dir.clone(), partials));
            }
        }
    }
    found
}

/// A local side must be a directory; a destination may also not exist yet
/// if its parent does, since it is created (like `rsync`, only its last
/// component) once nothing refuses the move.
fn check_local_root(root: &std::path::Path, side: Side) -> anyhow::Result<()> {
    let is_dir = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.is_dir());
    match is_dir(root) {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!("the {side} {} is not a directory", root.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && side == Side::Destination => {
            let parent = match root.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => std::path::Path::new("."),
            };
            match is_dir(parent) {
                Ok(true) => Ok(()),
                Ok(false) => anyhow::bail!(
                    "cannot create the destination {}: {} is not a directory",
                    root.display(),
                    parent.display()
                ),
                Err(e) => Err(e).with_context(|| {
                    format!(
                        "cannot create the destination {}: its parent {} is missing",
                        root.display(),
                        parent.display()
                    )
                }),
            }
        }
        Err(e) => Err(e).with_context(|| format!("cannot use the {side} {}", root.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_cause_reads_like_a_sentence() {
        let io = std::io::Error::from_raw_os_error(111);
        assert_eq!(root_cause(&io), "connection refused");
        let wrapped = anyhow::Error::new(io).context("cannot connect");
        assert_eq!(root_cause(wrapped.as_ref()), "connection refused");
    }

    #[test]
    fn gave_up_names_side_address_cause_and_tries() {
        let mut gave_up = GaveUp {
            side: Side::Destination,
            address: "127.0.0.1:1".into(),
            reached: false,
            cause: "connection refused".into(),
            tries: 4,
            elapsed: Duration::from_millis(7_400),
        };
        assert_eq!(
            gave_up.to_string(),
            "cannot reach the destination daemon at 127.0.0.1:1: connection refused (4 tries in 7s)"
        );
        gave_up.reached = true;
        gave_up.tries = 1;
        gave_up.elapsed = Duration::from_millis(20);
        assert_eq!(
            gave_up.to_string(),
            "lost the connection to the destination daemon at 127.0.0.1:1: connection refused (1 try in 20ms)"
        );
    }
}
