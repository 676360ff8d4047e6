//! The daemon's TOML configuration, parsed and validated whole before use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use realize_core::DirId;
use realize_core::InvalidDirId;
use realize_net::keys::KeyError;
use serde::Deserialize;

mod peer;

pub use peer::{Access, CallRate, MAX_CALLS_PER_SECOND, Peer};
use peer::{RateDefaults, RawPeer};

pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9771";

/// How long calls in flight may run on after a shutdown request.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// `[limits]`: what one connection, peer or call may use, so no client can
/// exhaust the daemon. All of them reload live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaemonLimits {
    /// Connections open at once, handshakes included; more are closed at once.
    pub max_connections: usize,
    /// Authenticated connections one peer may have open; one more is closed
    /// right after its handshake. See [`DaemonLimits::peer_share`].
    pub max_connections_per_peer: usize,
    /// Calls one connection may run at once (also advertised as HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, so gRPC clients queue rather than fail).
    pub max_calls_per_connection: u32,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_size: usize,
    /// Time a client has to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with no call in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Deadline of a call whose client set none.
    pub call_timeout: Duration,
    /// A call waiting on its client's data (the rest of a message, or the
    /// next chunk of a Write or ApplyDelta) that gets no byte for this long
    /// ends with DEADLINE_EXCEEDED.
    pub stall_timeout: Duration,
    /// Partial files nobody has written for this long are removed (at start
    /// and then periodically); `None` (configured as 0) keeps them forever.
    pub partial_max_age: Option<Duration>,
    /// Largest file size a Write or ApplyDelta may declare.
    pub max_file_size: u64,
    /// Bytes the calls of one peer, all its connections together, may make
    /// the daemon hold at once (see `budget.rs`).
    pub max_memory_per_peer: u64,
}

impl DaemonLimits {
    /// The connections one peer may have open: `max_connections_per_peer`,
    /// but never more than half of `max_connections`, so that one peer at its
    /// limit always leaves room for others.
    pub fn peer_share(&self) -> usize {
        self.max_connections_per_peer
            .min((self.max_connections / 2).max(1))
    }
}

impl Default for DaemonLimits {
    fn default() -> Self {
        DaemonLimits {
            max_connections: 64,
            max_connections_per_peer: 16,
            max_calls_per_connection: 32,
            // tonic's own default, and room for the largest signature (16 MiB
            // range in 128-byte blocks: 1.5 MiB).
            max_message_size: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            // A whole-file Read or Write of a large file over a slow link is one
            // call, so this only bounds calls that would otherwise never end.
            call_timeout: Duration::from_secs(24 * 3600),
            // rsync's --timeout and rclone's --timeout are of this order: a
            // link that moves no byte for minutes is gone.
            stall_timeout: Duration::from_secs(120),
            // Long enough for anyone to re-run a move they care about.
            partial_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_file_size: 1 << 40,
            // Four ReadFiles calls of 16 MiB, or one delta of the largest
            // range and a few Writes: what a move with --parallel 4 needs.
            max_memory_per_peer: 64 * 1024 * 1024,
        }
    }
}

/// The smallest `max_message_size`: a 1 MiB data chunk (SPEC §4) or the
/// largest signature must fit.
pub const MIN_MESSAGE_SIZE: usize = 2 * 1024 * 1024;
/// The largest `max_message_size`: no message needs more, and each may be
/// buffered whole.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Where the config comes from: the file and the flags that override it, kept so a
/// reload reads the file again with the same overrides.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// `--address`, instead of the file's `address`.
    pub address: Option<String>,
    /// `--privkey`, instead of the file's `privkey`.
    pub privkey: Option<PathBuf>,
}

impl ConfigSource {
    /// Reads and validates the file, then applies the overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(&self.path, self.privkey.clone())?;
        if let Some(address) = &self.address {
            config.address = address.clone();
        }
        Ok(config)
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST:PORT` to listen on.
    pub address: String,
    /// The daemon's ed25519 private key (PEM, PKCS#8).
    pub privkey: PathBuf,
    /// Directory id → root.
    pub dirs: BTreeMap<DirId, PathBuf>,
    /// Peer id → key and permissions; only these peers may connect.
    pub peers: BTreeMap<String, Peer>,
    /// `[limits]`.
    pub limits: DaemonLimits,
    /// `[shutdown] grace_period`: how long calls in flight may run on after a
    /// shutdown request before they are cancelled.
    pub grace_period: Duration,
    /// `log_level`: a `RUST_LOG`-style filter; `None` keeps the one given by `-v`
    /// or `RUST_LOG`.
    pub log_level: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("[dirs]: {0}")]
    DirId(#[from] InvalidDirId),
    #[error("[peers.{peer}]: invalid peer id: must be 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    PeerId { peer: String },
    #[error("[peers.{peer}]: no key: set public_key, public_keys or public_key_file")]
    PeerNoKey { peer: String },
    #[error("[peers.{peer}]: bad public key")]
    PeerKey {
        peer: String,
        #[source]
        source: KeyError,
    },
    #[error("[peers.{peer}] and [peers.{other}] have the same public key")]
    DuplicateKey { peer: String, other: String },
    #[error("[peers.{peer}] dirs: unknown directory {dir:?}")]
    PeerDir { peer: String, dir: String },
    #[error(
        "[peers.{peer}] allowed_networks: invalid network {value:?} (examples: \"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\")"
    )]
    PeerNetwork { peer: String, value: String },
    #[error("[peers.{peer}] {field}: {reason}")]
    PeerField {
        peer: String,
        field: &'static str,
        reason: String,
    },
    #[error("[limits] {field}: invalid duration {value:?} (examples: \"10s\", \"5m\")")]
    LimitDuration {
        field: &'static str,
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("[limits] {field}: invalid size {value:?} (examples: \"4MiB\", \"1 TiB\")")]
    LimitSize { field: &'static str, value: String },
    #[error("[limits] {field}: {reason}")]
    LimitRange { field: &'static str, reason: String },
    #[error("no [peers]: every connection would be refused")]
    NoPeers,
    #[error("no privkey: set privkey in the config file or pass --privkey")]
    NoPrivkey,
    #[error("[shutdown] grace_period: invalid duration {value:?} (examples: \"10s\", \"1m 30s\")")]
    GracePeriod {
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("log_level: invalid filter {value:?}")]
    LogLevel {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("directory {dir}: root {path} is not usable")]
    Root {
        dir: DirId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("directory {dir}: root {path} is not a directory")]
    RootNotDir { dir: DirId, path: PathBuf },
    #[error(
        "directories {dir} and {other}: roots {path} and {other_path} are the same directory or one contains the other"
    )]
    OverlappingRoots {
        dir: DirId,
        path: PathBuf,
        other: DirId,
        other_path: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    address: Option<String>,
    privkey: Option<PathBuf>,
    #[serde(default)]
    dirs: BTreeMap<String, PathBuf>,
    #[serde(default)]
    peers: BTreeMap<String, RawPeer>,
    shutdown: Option<RawShutdown>,
    limits: Option<RawLimits>,
    log_level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    max_calls_per_connection: Option<u32>,
    max_message_size: Option<String>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    call_timeout: Option<String>,
    stall_timeout: Option<String>,
    partial_max_age: Option<String>,
    max_file_size: Option<String>,
    max_memory_per_peer: Option<String>,
    calls_per_second_per_peer: Option<f64>,
    burst_per_peer: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_period: Option<String>,
}

impl Config {
    /// Reads and validates a config file; relative paths in it are relative
    /// to the file's directory, so a config works whatever the current directory.
    pub fn load(path: &Path, privkey_override: Option<PathBuf>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base, privkey_override)
    }

    /// Validates the text of a config file named `path`, whose relative paths are
    /// relative to `base`; nothing is read but the peers' `public_key_file`s.
    pub fn parse(
        text: &str,
        path: &Path,
        base: &Path,
        privkey_override: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_raw(raw, base, privkey_override)
    }

    fn from_raw(
        raw: RawConfig,
        base: &Path,
        privkey_override: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let dirs = raw
            .dirs
            .into_iter()
            .map(|(id, root)| Ok((DirId::new(&id)?, base.join(root))))
            .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
        let mut raw_limits = raw.limits.unwrap_or_default();
        let defaults = rate_defaults(&mut raw_limits)?;
        let peers = peer::peers(raw.peers, &dirs, base, defaults)?;
        let privkey = privkey_override
            .or_else(|| raw.privkey.map(|p| base.join(p)))
            .ok_or(ConfigError::NoPrivkey)?;
        if peers.is_empty() {
            return Err(ConfigError::NoPeers);
        }
        let grace_period = match raw.shutdown.and_then(|s| s.grace_period) {
            Some(value) => humantime::parse_duration(&value)
                .map_err(|source| ConfigError::GracePeriod { value, source })?,
            None => DEFAULT_GRACE_PERIOD,
        };
        let limits = limits(raw_limits)?;
        if let Some(value) = &raw.log_level {
            // Parsed here so a bad filter rejects the whole file; the daemon builds
            // its own filter from the string when it applies it.
            tracing_subscriber::EnvFilter::try_new(value).map_err(|source| {
                ConfigError::LogLevel {
                    value: value.clone(),
                    source,
                }
            })?;
        }
        Ok(Config {
            address: raw.address.unwrap_or_else(|| DEFAULT_ADDRESS.to_string()),
            privkey,
            dirs,
            peers,
            limits,
            grace_period,
            log_level: raw.log_level,
        })
    }

    /// Every root must exist and be a readable directory; one that is not
    /// writable is only a warning, since a read-only source still serves reads.
    /// No two roots may be one directory or nest: a file reachable under two
    /// ids would be written by two calls at once, each locking only its own id.
    pub fn check_roots(&self) -> Result<(), ConfigError> {
        for (dir, root) in &self.dirs {
            let root_error = |source| ConfigError::Root {
                dir: dir.clone(),
                path: root.clone(),
                source,
            };
            let meta = std::fs::metadata(root).map_err(root_error)?;
            if !meta.is_dir() {
                return Err(ConfigError::RootNotDir {
                    dir: dir.clone(),
                    path: root.clone(),
                });
            }
            std::fs::read_dir(root).map_err(root_error)?;
            if rustix::fs::access(root, rustix::fs::Access::WRITE_OK).is_err() {
                tracing::warn!(%dir, root = %root.display(), "root is not writable: moves into it will fail");
            }
        }
        let roots = self.dirs.iter().map(|(id, root)| (id, root.as_path()));
        match realize_core::overlapping_roots(roots) {
            Some((dir, other)) => Err(ConfigError::OverlappingRoots {
                path: self.dirs[&dir].clone(),
                other_path: self.dirs[&other].clone(),
                dir,
                other,
            }),
            None => Ok(()),
        }
    }
}

fn duration(
    field: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed =
        humantime::parse_duration(&value).map_err(|source| ConfigError::LimitDuration {
            field,
            value: value.clone(),
            source,
        })?;
    if parsed.is_zero() {
        return Err(ConfigError::LimitRange {
            field,
            reason: "must be longer than 0s".to_string(),
        });
    }
    Ok(parsed)
}

fn size(field: &'static str, value: Option<String>, default: u64) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    value
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| ConfigError::LimitSize { field, value })
}

fn at_least_one<T: PartialOrd + From<u8>>(
    field: &'static str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        Some(value) if value < T::from(1) => Err(ConfigError::LimitRange {
            field,
            reason: "must be at least 1".to_string(),
        }),
        Some(value) => Ok(value),
        None => Ok(default),
    }
}

/// `[limits] calls_per_second_per_peer` and `burst_per_peer`, taken out of
/// `raw`: they are the peers' defaults rather than limits of their own.
fn rate_defaults(raw: &mut RawLimits) -> Result<RateDefaults, ConfigError> {
    let per_second = match raw.calls_per_second_per_peer.take() {
        Some(value) => peer::calls_per_second(value, || ConfigError::LimitRange {
            field: "calls_per_second_per_peer",
            reason: "must be a number of calls per second from 0 (unlimited) to 1000000".to_owned(),
        })?,
        None => 0.0,
    };
    let burst = raw.burst_per_peer.take();
    if burst == Some(0) {
        return Err(ConfigError::LimitRange {
            field: "burst_per_peer",
            reason: "must be at least 1".to_owned(),
        });
    }
    Ok(RateDefaults { per_second, burst })
}

/// `[limits]`, each field checked, with the defaults of [`DaemonLimits::default`].
fn limits(raw: RawLimits) -> Result<DaemonLimits, ConfigError> {
    let default = DaemonLimits::default();
    let max_message_size = size(
        "max_message_size",
        raw.max_message_size,
        default.max_message_size as u64,
    )?;
    if !(MIN_MESSAGE_SIZE as u64..=MAX_MESSAGE_SIZE as u64).contains(&max_message_size) {
        return Err(ConfigError::LimitRange {
            field: "max_message_size",
            reason: format!(
                "must be between {MIN_MESSAGE_SIZE} and {MAX_MESSAGE_SIZE} bytes (2 MiB to 64 MiB)"
            ),
        });
    }
    let max_file_size = size("max_file_size", raw.max_file_size, default.max_file_size)?;
    if max_file_size == 0 {
        return Err(ConfigError::LimitRange {
            field: "max_file_size",
            reason: "must be at least 1 byte".to_string(),
        });
    }
    let max_memory_per_peer = size(
        "max_memory_per_peer",
        raw.max_memory_per_peer,
        default.max_memory_per_peer,
    )?;
    // Every message the daemon accepts is budgeted while it arrives.
    if max_memory_per_peer < max_message_size {
        return Err(ConfigError::LimitRange {
            field: "max_memory_per_peer",
            reason: format!("must be at least max_message_size ({max_message_size} bytes)"),
        });
    }
    let limits = DaemonLimits {
        max_connections: at_least_one(
            "max_connections",
            raw.max_connections,
            default.max_connections,
        )?,
        max_connections_per_peer: at_least_one(
            "max_connections_per_peer",
            raw.max_connections_per_peer,
            default.max_connections_per_peer,
        )?,
        max_calls_per_connection: at_least_one(
            "max_calls_per_connection",
            raw.max_calls_per_connection,
            default.max_calls_per_connection,
        )?,
        // Checked against MAX_MESSAGE_SIZE above, so it fits.
        max_message_size: max_message_size as usize,
        handshake_timeout: duration(
            "handshake_timeout",
            raw.handshake_timeout,
            default.handshake_timeout,
        )?,
        idle_timeout: duration("idle_timeout", raw.idle_timeout, default.idle_timeout)?,
        call_timeout: duration("call_timeout", raw.call_timeout, default.call_timeout)?,
        stall_timeout: duration("stall_timeout", raw.stall_timeout, default.stall_timeout)?,
        partial_max_age: match raw.partial_max_age.as_deref().map(str::trim) {
            // 0 switches the cleaning off; anything else is a duration.
            Some("0") => None,
            _ => Some(duration(
                "partial_max_age",
                raw.partial_max_age,
                default.partial_max_age.unwrap_or_default(),
            )?),
        },
        max_file_size,
        max_memory_per_peer,
    };
    if limits.peer_share() < limits.max_connections_per_peer {
        tracing::warn!(
            max_connections = limits.max_connections,
            max_connections_per_peer = limits.max_connections_per_peer,
            "[limits] max_connections_per_peer is more than half of max_connections: each peer may open {} connections, so that one cannot keep the others out",
            limits.peer_share()
        );
    }
    Ok(limits)
}

#[cfg(test)]
mod tests;
