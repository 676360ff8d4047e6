//! realize-cli: `realize`, the command that moves files from a source to a
//! destination, each a local path (served in-process) or a daemon (over
//! mutual TLS).
//!
//! [`Config::from_args`] turns raw flags into a validated [`Config`];
//! [`run_move`] wires the two sides and calls realize-core's move algorithm;
//! [`keygen`] writes a key pair; [`output`] shows the move as it happens.
//! `main.rs` parses flags and maps results to exit codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use realize_core::{DirId, LocalStore, MoveOptions, MoveSummary, Progress, Service};
use realize_net::keys::{PrivateKey, PublicKey};
use realize_net::remote::RemoteService;
use realize_net::throttle::{SendLimit, ThrottledService};
use tokio_util::sync::CancellationToken;

pub mod output;

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

/// A validated move request.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Endpoint,
    pub destination: Endpoint,
    pub dirs: Vec<DirId>,
    pub privkey: Option<PathBuf>,
    pub peers: Option<PathBuf>,
    pub parallel: usize,
    pub limits: Limits,
}

/// Bandwidth limits in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// What this command sends.
    pub upload: Option<u64>,
    /// What daemons send to this command.
    pub download: Option<u64>,
}

/// A flag combination that makes no sense; the command exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Config {
    /// Checks the flags against each other: a local side takes exactly one
    /// directory id, a remote side needs keys.
    pub fn from_args(
        source: Endpoint,
        destination: Endpoint,
        dirs: Vec<DirId>,
        privkey: Option<PathBuf>,
        peers: Option<PathBuf>,
        parallel: usize,
        limits: Limits,
    ) -> Result<Config, UsageError> {
        let local = |e: &Endpoint| matches!(e, Endpoint::Local(_));
        let dirs = match (local(&source), local(&destination), dirs.len()) {
            (true, true, 0) => {
                vec![DirId::new(DEFAULT_LOCAL_DIR).map_err(|e| UsageError(e.to_string()))?]
            }
            (true, _, 1) | (_, true, 1) => dirs,
            (true, _, n) | (_, true, n) => {
                return Err(UsageError(format!(
                    "a local side (--src-path/--dst-path) takes exactly one DIR_ID, got {n}"
                )));
            }
            (false, false, 0) => {
                return Err(UsageError("give at least one DIR_ID to move".into()));
            }
            (false, false, _) => dirs,
        };
        if !local(&source) || !local(&destination) {
            if privkey.is_none() {
                return Err(UsageError(
                    "--privkey is required when a side is a daemon (--src-addr/--dst-addr)".into(),
                ));
            }
            if peers.is_none() {
                return Err(UsageError(
                    "--peers is required when a side is a daemon (--src-addr/--dst-addr)".into(),
                ));
            }
        }
        if parallel == 0 {
            return Err(UsageError("--parallel must be at least 1".into()));
        }
        Ok(Config {
            source,
            destination,
            dirs,
            privkey,
            peers,
            parallel,
            limits,
        })
    }
}

/// Connects both sides and moves every directory, reporting to `progress`.
pub async fn run_move(
    config: &Config,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> anyhow::Result<MoveSummary> {
    let both_local = matches!(
        (&config.source, &config.destination),
        (Endpoint::Local(_), Endpoint::Local(_))
    );
    let sides = Sides {
        tls: if both_local {
            None
        } else {
            Some(client_tls(config)?)
        },
        // One limit for everything this command sends, whichever daemon gets it.
        upload: SendLimit::new(config.limits.upload),
        download: config.limits.download,
        dirs: &config.dirs,
    };
    let source = sides.open(&config.source, Role::Source).await?;
    let mut destination = sides.open(&config.destination, Role::Destination).await?;
    if both_local
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
        progress,
        cancel,
    )
    .await?)
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
}

impl Sides<'_> {
    async fn open(&self, endpoint: &Endpoint, role: Role) -> anyhow::Result<Arc<dyn Service>> {
        match endpoint {
            Endpoint::Local(path) => {
                if role == Role::Destination {
                    std::fs::create_dir_all(path)
                        .with_context(|| format!("cannot create destination {}", path.display()))?;
                }
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("cannot use {}", path.display()))?;
                if !meta.is_dir() {
                    bail!("{} is not a directory", path.display());
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
                let remote = RemoteService::new(channel);
                if let Some(rate) = self.download {
                    // Set on every new connection: the limit belongs to the connection.
                    remote
                        .configure(Some(rate))
                        .await
                        .with_context(|| format!("cannot set the send limit of {addr}"))?;
                    tracing::info!(%addr, rate, "daemon send limit set");
                }
                Ok(Arc::new(remote))
            }
        }
    }
}

/// Writes `PREFIX.key` (private, mode 0600), `PREFIX.pub.pem` (to give to
/// peers) and `PREFIX.crt` (the self-signed certificate, for gRPC clients in
/// other languages). Refuses to overwrite any existing file.
pub fn keygen(prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
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
    Ok(files.into_iter().map(|(path, _, _)| path).collect())
}
