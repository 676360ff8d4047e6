//! realize-cli: `realize`, the command that moves files from a source to a
//! destination, each a local path (served in-process) or a daemon (over
//! mutual TLS).
//!
//! [`Config::validate`] checks the flags against each other;
//! [`run::run_move`] wires the two sides, calls realize-core's move
//! algorithm, tries again after network failures and says when it gave up;
//! [`keygen`] writes a key pair; [`output`] shows the move as it happens.
//! [`flags`] is the command line, [`config_file`] the client config,
//! [`sides`] the `SRC DST` forms and [`resolve`] makes them one [`Config`];
//! [`app`] runs a parsed command line to its exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use realize_core::{DirId, FilterRules, Subtree};
use realize_net::keys::{PrivateKey, PublicKey};

pub mod app;
pub mod config_file;
pub mod flags;
pub mod output;
pub mod remote_add;
pub mod resolve;
pub mod run;
pub mod sides;
pub mod stopping;

pub use run::{Ending, GaveUp, Run, run_move};

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
    /// The directory ids moved, each whole or a subtree of it (`REMOTE:DIR/SUB`).
    pub roots: Vec<Subtree>,
    pub privkey: Option<PathBuf>,
    pub peers: Option<PathBuf>,
    /// Daemon keys to trust when `peers` is not given: those of the client
    /// config's remotes.
    pub server_keys: Vec<PublicKey>,
    pub parallel: usize,
    /// Which files move (--include, --exclude, --exclude-from).
    pub filter: FilterRules,
    /// Say what would move, change nothing (--dry-run).
    pub dry_run: bool,
    pub limits: BandwidthLimits,
    /// Wall-clock budget of the whole run.
    pub max_duration: Option<Duration>,
    pub cutoff: CutoffMode,
    /// Tries after the first, for a daemon lost after it was reached.
    pub retries: u32,
    /// How long to keep trying a daemon never reached in this run.
    pub connect_timeout: Duration,
    /// A data stream from a daemon that brings nothing for this long fails
    /// like a cut connection (and is retried).
    pub stall_timeout: Duration,
    /// The digest forced by --digest; `None`: the preferred both sides take.
    pub digest: Option<realize_core::DigestAlgorithm>,
}

/// Bandwidth limits in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandwidthLimits {
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

/// Reads the client's key and the daemons it trusts.
pub(crate) fn client_tls(config: &Config) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let Some(privkey) = &config.privkey else {
        bail!("--privkey is required with a daemon");
    };
    let key = PrivateKey::load(privkey)?;
    let servers = match &config.peers {
        Some(peers) => PublicKey::load_all(peers)?,
        None => config.server_keys.clone(),
    };
    Ok(realize_net::tls::client_config(&key, servers)?)
}

impl Config {
    /// Checks the flags against each other: a local side takes exactly one
    /// directory id (default `dir` when both are local), a remote side needs keys.
    pub fn validate(mut self) -> Result<Config, UsageError> {
        let local = |e: &Endpoint| matches!(e, Endpoint::Local(_));
        let (source_local, destination_local) = (local(&self.source), local(&self.destination));
        match (source_local, destination_local, self.roots.len()) {
            (true, true, 0) => {
                let dir = DirId::new(DEFAULT_LOCAL_DIR).map_err(|e| UsageError(e.to_string()))?;
                self.roots = vec![dir.into()];
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
        for (flag, endpoint) in [
            ("--src-addr", &self.source),
            ("--dst-addr", &self.destination),
        ] {
            if let Endpoint::Remote(addr) = endpoint {
                check_address(addr)
                    .map_err(|why| UsageError(format!("invalid {flag} {addr:?}: {why}")))?;
            }
        }
        if self.connect_timeout.is_zero() {
            return Err(UsageError(
                "--connect-timeout must be longer than zero".into(),
            ));
        }
        if self.stall_timeout.is_zero() {
            return Err(UsageError(
                "--stall-timeout must be longer than zero".into(),
            ));
        }
        if !source_local || !destination_local {
            if self.privkey.is_none() {
                return Err(UsageError(
                    "--privkey is required when a side is a daemon, or `privkey` in the \
                     client config (see realize keygen)"
                        .into(),
                ));
            }
            if self.peers.is_none() && self.server_keys.is_empty() {
                return Err(UsageError(
                    "--peers is required when a side is a daemon, or a remote in the \
                     client config (see realize remote add)"
                        .into(),
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

    pub(crate) fn both_local(&self) -> bool {
        matches!(
            (&self.source, &self.destination),
            (Endpoint::Local(_), Endpoint::Local(_))
        )
    }
}

/// Checks that `addr` is `HOST:PORT` (`[IPV6]:PORT` for an IPv6 address),
/// so a typo is a usage error rather than minutes of retried connections.
/// Whether the host resolves is left to the connection.
pub fn check_address(addr: &str) -> Result<(), String> {
    if addr.contains("://") {
        return Err("expected HOST:PORT, not a URL".into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("expected HOST:PORT, the port is missing".into());
    };
    if host.is_empty() {
        return Err("expected HOST:PORT, the host is missing".into());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("{port:?} is not a port (1 to 65535)")),
        Ok(_) => {}
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(drop)
            .map_err(|_| format!("{inner:?} is not an IPv6 address"));
    }
    if host.contains(':') {
        return Err("expected HOST:PORT; write an IPv6 address in brackets, [::1]:9771".into());
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if !host.chars().all(valid) {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok(())
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

/// The prefix of `realize keygen`'s key in the config's directory.
pub const DEFAULT_KEY: &str = "client";

/// `keygen` to `out`, or without it to the default key in the directory of the
/// client config at `config`, which then names it as `privkey` unless it names
/// another key already.
pub fn keygen_into(out: Option<&Path>, config: &Path) -> anyhow::Result<(Vec<PathBuf>, String)> {
    if let Some(prefix) = out {
        return keygen(prefix);
    }
    let dir = config.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (mut files, fingerprint) = keygen(&dir.join(DEFAULT_KEY))?;
    if config_file::set_default_privkey(config, &format!("{DEFAULT_KEY}.key"))? {
        files.push(config.to_owned());
    }
    Ok((files, fingerprint))
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

#[cfg(test)]
mod tests {
    use super::check_address;

    #[test]
    fn addresses() {
        for good in [
            "127.0.0.1:9771",
            "localhost:1",
            "host-a.example:65535",
            "[::1]:9771",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("127.0.0.1", "port is missing"),
            (":9771", "host is missing"),
            ("host:0", "not a port"),
            ("host:99999", "not a port"),
            ("host:http", "not a port"),
            ("::1:9771", "brackets"),
            ("[zz]:1", "not an IPv6"),
            ("ho st:1", "not a host"),
            ("http://host:1", "not a URL"),
        ] {
            let error = check_address(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
