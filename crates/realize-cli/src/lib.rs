//! realize-cli: `realize`, the command that moves files from a source to a
//! destination, each a local path (served in-process) or a daemon (over
//! mutual TLS).
//!
//! [`Config::validate`] checks the flags against each other; [`run_move`]
//! wires the two sides, calls realize-core's move algorithm, and tries
//! again after network failures;
//! [`keygen`] writes a key pair; [`output`] shows the move as it happens.
//! `main.rs` parses flags and maps results to exit codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry::KeyValue;
use realize_core::mover::ErrorChain;
use realize_core::{
    DirId, LocalStore, MoveError, MoveOptions, MoveSummary, Service, ServiceError, Stop,
};
use realize_net::connection::ConnectError;
use realize_net::keys::{PrivateKey, PublicKey};
use realize_net::metrics::record_limit;
use realize_net::remote::RemoteService;
use realize_net::retry::{Backoff, is_retryable};
use realize_net::throttle::{SendLimit, ThrottledService};

use crate::output::Output;

pub mod output;
pub mod stopping;

/// How long to wait for a TCP connection and TLS handshake to a daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory id used when both sides are local paths and none is given.
pub const DEFAULT_LOCAL_DIR: &str = "dir";

/// One side of a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A directory on this machine, served in-process.
    Local(PathBuf),
    /// A daemon at `HOST:PORT`.
    Remote(String),
}

/// A move request; [`Config::validate`] checks it.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Endpoint,
    pub destination: Endpoint,
    pub dirs: Vec<DirId>,
    pub privkey: Option<PathBuf>,
    pub peers: Option<PathBuf>,
    pub parallel: usize,
    pub limits: Limits,
    /// Wall-clock budget of the whole run.
    pub max_duration: Option<Duration>,
    pub cutoff: CutoffMode,
    /// Tries after the first, for network failures.
    pub retries: u32,
}

/// Bandwidth limits in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// What this command sends.
    pub upload: Option<u64>,
    /// What daemons send to this command.
    pub download: Option<u64>,
}

/// What `--max-duration` does to the files in flight when it is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CutoffMode {
    /// Interrupt them, leaving resumable partial files.
    #[default]
    Hard,
    /// Let them finish; start no new file.
    Soft,
    /// Like soft, and do not even start a file that, at the rate measured
    /// so far, cannot finish before the deadline.
    Cautious,
}

/// A flag combination that makes no sense; the command exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Config {
    /// Checks the flags against each other: a local side takes exactly one
    /// directory id (default `dir` when both are local), a remote side needs keys.
    pub fn validate(mut self) -> Result<Config, UsageError> {
        let local = |e: &Endpoint| matches!(e, Endpoint::Local(_));
        let (source_local, destination_local) = (local(&self.source), local(&self.destination));
        match (source_local, destination_local, self.dirs.len()) {
            (true, true, 0) => {
                self.dirs =
                    vec![DirId::new(DEFAULT_LOCAL_DIR).map_err(|e| UsageError(e.to_string()))?];
            }
            (true, _, 1) | (_, true, 1) | (false, false, 1..) => {}
            (true, _, n) | (_, true, n) => {
                return Err(UsageError(format!(
                    "a local side (--src-path/--dst-path) takes exactly one DIR_ID, got {n}"
                )));
            }
            (false, false, 0) => {
                return Err(UsageError("give at least one DIR_ID to move".into()));
            }
        }
        if !source_local || !destination_local {
            if self.privkey.is_none() {
                return Err(UsageError(
                    "--privkey is required when a side is a daemon (--src-addr/--dst-addr)".into(),
                ));
            }
            if self.peers.is_none() {
                return Err(UsageError(
                    "--peers is required when a side is a daemon (--src-addr/--dst-addr)".into(),
                ));
            }
        }
        if self.parallel == 0 {
            return Err(UsageError("--parallel must be at least 1".into()));
        }
        if self.max_duration.is_some_and(|d| d.is_zero()) {
            return Err(UsageError("--max-duration must be longer than zero".into()));
        }
        Ok(self)
    }

    fn both_local(&self) -> bool {
        matches!(
            (&self.source, &self.destination),
            (Endpoint::Local(_), Endpoint::Local(_))
        )
    }
}

/// Why one try of a move failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot set the send limit of the daemon at {addr}")]
    Configure {
        addr: String,
        #[source]
        source: ServiceError,
    },
    #[error(transparent)]
    Move(#[from] MoveError),
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

impl AttemptError {
    /// Network failures may go away; everything else would fail again.
    fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Connect(e) => e.is_retryable(),
            AttemptError::Configure { source, .. } => is_retryable(source),
            AttemptError::Move(e) => move_error_is_retryable(e),
            AttemptError::Local(_) => false,
        }
    }
}

fn move_error_is_retryable(error: &MoveError) -> bool {
    matches!(error, MoveError::Service { source, .. } if is_retryable(source))
}

/// Moves every directory, trying again after network failures.
///
/// Each try connects both sides afresh (setting the daemons' send limits
/// again), lists, and resumes: files already moved are gone from the
/// source, partial files continue where they stopped. Tries stop when
/// nothing failed for a network reason, after `config.retries` more, or
/// when `stop` fires. The summary adds up what every try moved; failures
/// and interrupted files are those of the last try.
///
/// `rpc_deadline`, if set, is carried by every call to a daemon.
pub async fn run_move(
    config: &Config,
    output: &Output,
    stop: &Stop,
    rpc_deadline: Option<Instant>,
) -> anyhow::Result<Run> {
    let sides = Sides {
        tls: if config.both_local() {
            None
        } else {
            Some(client_tls(config)?)
        },
        // One limit for everything this command sends, whichever daemon gets it.
        upload: SendLimit::new(config.limits.upload),
        download: config.limits.download,
        dirs: &config.dirs,
        rpc_deadline,
    };
    for (scope, limit) in [
        ("upload", config.limits.upload),
        ("download", config.limits.download),
    ] {
        record_limit(limit, &[KeyValue::new("scope", scope)]);
    }
    let mut total = MoveSummary::default();
    let mut backoff = Backoff::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cut_short = |summary| {
            Ok(Run {
                summary,
                finished: false,
            })
        };
        let result = sides.attempt(config, output, stop).await;
        let retryable = match result {
            Ok(summary) => {
                if summary.files_moved > 0 {
                    backoff.reset();
                }
                total.files_moved += summary.files_moved;
                total.bytes_moved += summary.bytes_moved;
                total.bytes_sent += summary.bytes_sent;
                total.files_failed = summary.files_failed;
                total.files_interrupted = summary.files_interrupted;
                total.failures = summary.failures;
                match total
                    .failures
                    .iter()
                    .find(|f| move_error_is_retryable(&f.error))
                {
                    Some(failure) => ErrorChain(&failure.error).to_string(),
                    None => {
                        return Ok(Run {
                            summary: total,
                            // Interrupted while listing, the try may have
                            // seen only some of the files.
                            finished: !stop.is_interrupted(),
                        });
                    }
                }
            }
            Err(AttemptError::Move(MoveError::Cancelled)) => return cut_short(total),
            Err(error) if error.is_retryable() => ErrorChain(&error).to_string(),
            Err(error) => return Err(error.into()),
        };
        if stop.is_stopping() {
            return cut_short(total);
        }
        if attempt > config.retries {
            return Ok(Run {
                summary: total,
                finished: true,
            });
        }
        let delay = backoff.next_delay();
        tracing::warn!(attempt, ?delay, error = %retryable, "retrying");
        output.retrying(attempt + 1, config.retries + 1, delay, &retryable);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.stopping() => return cut_short(total),
        }
    }
}

/// What a run did.
#[derive(Debug)]
pub struct Run {
    pub summary: MoveSummary,
    /// False if a stop cut the run short before it had gone through every
    /// file: some may not even have been listed.
    pub finished: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Source,
    Destination,
}

fn client_tls(config: &Config) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let (Some(privkey), Some(peers)) = (&config.privkey, &config.peers) else {
        bail!("--privkey and --peers are required with a daemon");
    };
    let key = PrivateKey::load(privkey)?;
    let servers = PublicKey::load_all(peers)?;
    Ok(realize_net::tls::client_config(&key, servers)?)
}

/// What opening either side of a move needs.
struct Sides<'a> {
    tls: Option<Arc<rustls::ClientConfig>>,
    upload: SendLimit,
    download: Option<u64>,
    dirs: &'a [DirId],
    rpc_deadline: Option<Instant>,
}

impl Sides<'_> {
    /// One try: connect both sides and move.
    async fn attempt(
        &self,
        config: &Config,
        output: &Output,
        stop: &Stop,
    ) -> Result<MoveSummary, AttemptError> {
        // move_files stops by itself, and counts what it interrupts; the
        // connections before it must stop too.
        let opened = tokio::select! {
            opened = async {
                let source = self.open(&config.source, Role::Source).await?;
                let destination = self.open(&config.destination, Role::Destination).await?;
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
                SendLimit::new(Some(rate)),
            ));
        }
        let options = MoveOptions {
            parallel: config.parallel,
            ..MoveOptions::default()
        };
        Ok(realize_core::move_files(
            &*source,
            &*destination,
            &config.dirs,
            &options,
            output,
            stop,
        )
        .await?)
    }

    async fn open(
        &self,
        endpoint: &Endpoint,
        role: Role,
    ) -> Result<Arc<dyn Service>, AttemptError> {
        match endpoint {
            Endpoint::Local(path) => {
                if role == Role::Destination {
                    std::fs::create_dir_all(path)
                        .with_context(|| format!("cannot create destination {}", path.display()))?;
                }
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("cannot use {}", path.display()))?;
                if !meta.is_dir() {
                    return Err(anyhow::anyhow!("{} is not a directory", path.display()).into());
                }
                let dir = self.dirs.first().cloned().context("no directory id")?;
                Ok(Arc::new(LocalStore::new([(dir, path.clone())])))
            }
            Endpoint::Remote(addr) => {
                let tls = self
                    .tls
                    .clone()
                    .context("no TLS configuration for a daemon")?;
                let channel = realize_net::connection::connect(
                    addr,
                    tls,
                    CONNECT_TIMEOUT,
                    self.upload.clone(),
                )
                .await?;
                let mut remote = RemoteService::new(channel);
                if let Some(deadline) = self.rpc_deadline {
                    remote = remote.with_deadline(deadline.into());
                }
                if let Some(rate) = self.download {
                    // Set on every new connection: the limit belongs to the connection.
                    remote.configure(Some(rate)).await.map_err(|source| {
                        AttemptError::Configure {
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

/// Writes `PREFIX.key` (private, mode 0600), `PREFIX.pub.pem` (to give to
/// peers) and `PREFIX.crt` (the self-signed certificate, for gRPC clients in
/// other languages). Refuses to overwrite any existing file. Returns the files
/// and the key's fingerprint.
pub fn keygen(prefix: &Path) -> anyhow::Result<(Vec<PathBuf>, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let key = PrivateKey::generate()?;
    let with_suffix = |suffix: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let files = [
        (with_suffix(".key"), key.to_pem(), 0o600),
        (with_suffix(".pub.pem"), key.public_key().to_pem(), 0o644),
        (with_suffix(".crt"), key.certificate_pem()?, 0o644),
    ];
    for (path, _, _) in &files {
        if path.exists() {
            bail!("{} already exists, not overwriting it", path.display());
        }
    }
    for (path, contents, mode) in &files {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let fingerprint = key.public_key().fingerprint();
    Ok((
        files.into_iter().map(|(path, _, _)| path).collect(),
        fingerprint,
    ))
}

/// The fingerprints of the keys in a PEM file: its private key's, or those of
/// the public keys it holds (a `--peers` file may hold several).
pub fn fingerprints(file: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let keys = if text.contains("PRIVATE KEY-----") {
        vec![PrivateKey::load(file)?.public_key()]
    } else {
        PublicKey::load_all(file)?
    };
    Ok(keys.iter().map(PublicKey::fingerprint).collect())
}
