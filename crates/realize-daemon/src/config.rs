//! The daemon's TOML configuration, parsed and validated whole before use.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use realize_core::DirId;
use realize_core::path::InvalidDirId;
use realize_net::keys::{KeyError, PublicKey};
use serde::Deserialize;

pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9771";

/// How long calls in flight may run on after a shutdown request.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// What a peer may do in the directories it may access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// List, Read, Signature, Diff, Hash.
    ReadOnly,
    /// Everything, including Write, ApplyDelta, Finish and Delete.
    ReadWrite,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        })
    }
}

/// A peer allowed to connect, and what it may do once connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub key: PublicKey,
    /// `dirs`: the directories it may access; `None` for all of them.
    pub dirs: Option<BTreeSet<DirId>>,
    pub access: Access,
}

impl Peer {
    /// A peer that may do everything in every directory (the default in a config file).
    pub fn full(key: PublicKey) -> Self {
        Peer {
            key,
            dirs: None,
            access: Access::ReadWrite,
        }
    }

    pub fn may_access(&self, dir: &DirId) -> bool {
        self.dirs.as_ref().is_none_or(|dirs| dirs.contains(dir))
    }
}

/// `[limits]`: what one connection, peer or call may use, so no client can
/// exhaust the daemon. All of them reload live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, handshakes included; more are closed at once.
    pub max_connections: usize,
    /// Authenticated connections one peer may have open; one more is closed
    /// right after its handshake. See [`Limits::peer_share`].
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

impl Limits {
    /// The connections one peer may have open: `max_connections_per_peer`,
    /// but never more than half of `max_connections`, so that one peer at its
    /// limit always leaves room for others.
    pub fn peer_share(&self) -> usize {
        self.max_connections_per_peer
            .min((self.max_connections / 2).max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
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
    pub limits: Limits,
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
    #[error("[peers.{peer}]: set exactly one of public_key and public_key_file")]
    PeerKeyChoice { peer: String },
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_period: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
    dirs: Option<Vec<String>>,
    access: Option<Access>,
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
        let mut peers = BTreeMap::new();
        let mut seen: HashMap<PublicKey, String> = HashMap::new();
        for (peer, raw_peer) in raw.peers {
            if DirId::new(&peer).is_err() {
                return Err(ConfigError::PeerId { peer });
            }
            let key = match (raw_peer.public_key, raw_peer.public_key_file) {
                (Some(pem), None) => PublicKey::from_pem(&pem),
                (None, Some(file)) => {
                    PublicKey::load_all(&base.join(file)).and_then(|mut keys| match keys.len() {
                        1 => Ok(keys.remove(0)),
                        n => Err(KeyError::NotOnePublicKey(n)),
                    })
                }
                _ => return Err(ConfigError::PeerKeyChoice { peer }),
            }
            .map_err(|source| ConfigError::PeerKey {
                peer: peer.clone(),
                source,
            })?;
            if let Some(other) = seen.insert(key.clone(), peer.clone()) {
                return Err(ConfigError::DuplicateKey { peer, other });
            }
            let allowed = match raw_peer.dirs {
                None => None,
                Some(ids) => Some(
                    ids.into_iter()
                        .map(|id| match DirId::new(&id) {
                            // A typo in an allowlist would silently deny; refuse it instead.
                            Ok(dir) if dirs.contains_key(&dir) => Ok(dir),
                            _ => Err(ConfigError::PeerDir {
                                peer: peer.clone(),
                                dir: id,
                            }),
                        })
                        .collect::<Result<BTreeSet<_>, _>>()?,
                ),
            };
            let access = raw_peer.access.unwrap_or(Access::ReadWrite);
            peers.insert(
                peer,
                Peer {
                    key,
                    dirs: allowed,
                    access,
                },
            );
        }
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
        let limits = limits(raw.limits.unwrap_or_default())?;
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
        match realize_core::store::overlapping_roots(roots) {
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

/// `[limits]`, each field checked, with the defaults of [`Limits::default`].
fn limits(raw: RawLimits) -> Result<Limits, ConfigError> {
    let default = Limits::default();
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
    let limits = Limits {
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
mod tests {
    use super::*;
    use realize_net::keys::PrivateKey;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "test.toml".into(),
            source,
        })?;
        Config::from_raw(raw, Path::new("/etc/realize"), None)
    }

    fn key_pem() -> String {
        PrivateKey::generate().unwrap().public_key().to_pem()
    }

    /// A minimal valid config: a key and one peer, followed by `rest`.
    fn minimal(rest: &str) -> String {
        format!(
            "privkey = \"k\"\n{rest}\n[peers.p]\npublic_key = \"\"\"{}\"\"\"\n",
            key_pem()
        )
    }

    /// `text` is refused with a message containing `expected`.
    fn check_refused(text: &str, expected: &str) {
        let message = match parse(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => realize_core::mover::ErrorChain(&e).to_string(),
        };
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    #[test]
    fn full_config() {
        let config = parse(&format!(
            "address = \"0.0.0.0:1234\"\nprivkey = \"b.key\"\nlog_level = \"info,realize_daemon=debug\"\n[dirs]\nphotos = \"/srv/photos\"\nrel = \"data\"\n[peers.laptop]\npublic_key = \"\"\"{}\"\"\"\n[shutdown]\ngrace_period = \"1m 30s\"\n",
            key_pem()
        ))
        .unwrap();
        assert_eq!(config.address, "0.0.0.0:1234");
        assert_eq!(config.privkey, Path::new("/etc/realize/b.key"));
        let photos = DirId::new("photos").unwrap();
        assert_eq!(config.dirs[&photos], Path::new("/srv/photos"));
        assert_eq!(
            config.dirs[&DirId::new("rel").unwrap()],
            Path::new("/etc/realize/data")
        );
        assert!(config.peers.contains_key("laptop"));
        assert_eq!(config.grace_period, Duration::from_secs(90));
        assert_eq!(
            config.log_level.as_deref(),
            Some("info,realize_daemon=debug")
        );
    }

    #[test]
    fn defaults() {
        let config = parse(&minimal("")).unwrap();
        assert_eq!(config.address, DEFAULT_ADDRESS);
        assert_eq!(config.grace_period, DEFAULT_GRACE_PERIOD);
        assert_eq!(config.log_level, None);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.peers["p"].dirs, None);
        assert_eq!(config.peers["p"].access, Access::ReadWrite);
        let config = parse(&minimal("[shutdown]")).unwrap();
        assert_eq!(config.grace_period, DEFAULT_GRACE_PERIOD);
    }

    #[test]
    fn grace_period() {
        for (text, expected) in [
            ("10s", Duration::from_secs(10)),
            ("0s", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h 5s", Duration::from_secs(3605)),
        ] {
            let config = parse(&minimal(&format!("[shutdown]\ngrace_period = {text:?}"))).unwrap();
            assert_eq!(config.grace_period, expected, "{text}");
        }
        for bad in ["10", "ten seconds", "-1s", ""] {
            check_refused(
                &minimal(&format!("[shutdown]\ngrace_period = {bad:?}")),
                &format!("[shutdown] grace_period: invalid duration {bad:?}"),
            );
        }
        check_refused(
            &minimal("[shutdown]\ngrace_period = 10"),
            "invalid type: integer",
        );
        check_refused(
            &minimal("[shutdown]\ngrace = \"1s\""),
            "unknown field `grace`",
        );
    }

    #[test]
    fn errors() {
        check_refused("", "no privkey");
        check_refused(
            "privkey = \"k\"",
            "no [peers]: every connection would be refused",
        );
        check_refused(&minimal("[dirs]\n\"a/b\" = \"/x\""), "invalid directory id");
        check_refused(&minimal("bogus = 1"), "unknown field");
        check_refused(
            &minimal("[limits]\nmax_sockets = 1"),
            "unknown field `max_sockets`",
        );
        check_refused(
            &minimal("log_level = \"realize=loud\""),
            "log_level: invalid filter \"realize=loud\"",
        );
        check_refused("privkey = \"k\"\n[peers.p]\n", "exactly one of public_key");
        check_refused(
            "privkey = \"k\"\n[peers.p]\npublic_key = \"garbage\"",
            "[peers.p]: bad public key",
        );
        let pem = key_pem();
        check_refused(
            &format!(
                "privkey = \"k\"\n[peers.a]\npublic_key = \"\"\"{pem}\"\"\"\n[peers.b]\npublic_key = \"\"\"{pem}\"\"\"\n"
            ),
            "same public key",
        );
    }

    #[test]
    fn limits() {
        let config = parse(&minimal(
            "[limits]\nmax_connections = 5\nmax_connections_per_peer = 2\nmax_calls_per_connection = 3\nmax_message_size = \"8 MiB\"\nhandshake_timeout = \"2s\"\nidle_timeout = \"1m\"\ncall_timeout = \"1h\"\nmax_file_size = \"10GB\"\nmax_memory_per_peer = \"256 MiB\"",
        ))
        .unwrap();
        assert_eq!(
            config.limits,
            Limits {
                max_connections: 5,
                max_connections_per_peer: 2,
                max_calls_per_connection: 3,
                max_message_size: 8 << 20,
                handshake_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(60),
                call_timeout: Duration::from_secs(3600),
                stall_timeout: Duration::from_secs(120),
                partial_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
                max_file_size: 10_000_000_000,
                max_memory_per_peer: 256 << 20,
            }
        );
        for (line, expected) in [
            (
                "max_connections = 0",
                "[limits] max_connections: must be at least 1",
            ),
            ("max_connections = -1", "invalid value"),
            (
                "max_calls_per_connection = 0",
                "[limits] max_calls_per_connection: must be at least 1",
            ),
            (
                "max_message_size = \"1KiB\"",
                "[limits] max_message_size: must be between",
            ),
            (
                "max_message_size = \"1GiB\"",
                "[limits] max_message_size: must be between",
            ),
            (
                "max_message_size = \"lots\"",
                "[limits] max_message_size: invalid size \"lots\"",
            ),
            (
                "max_file_size = \"0\"",
                "[limits] max_file_size: must be at least 1 byte",
            ),
            (
                "max_memory_per_peer = \"1MiB\"",
                "[limits] max_memory_per_peer: must be at least max_message_size (4194304 bytes)",
            ),
            (
                "idle_timeout = \"0s\"",
                "[limits] idle_timeout: must be longer than 0s",
            ),
            (
                "call_timeout = \"10\"",
                "[limits] call_timeout: invalid duration \"10\"",
            ),
            ("handshake_timeout = 10", "invalid type: integer"),
        ] {
            check_refused(&minimal(&format!("[limits]\n{line}")), expected);
        }
    }

    #[test]
    fn peer_permissions() {
        let config = parse(&format!(
            "privkey = \"k\"\n[dirs]\na = \"/a\"\nb = \"/b\"\n[peers.p]\npublic_key = \"\"\"{}\"\"\"\ndirs = [\"a\"]\naccess = \"read-only\"\n",
            key_pem()
        ))
        .unwrap();
        let peer = &config.peers["p"];
        assert_eq!(peer.access, Access::ReadOnly);
        assert!(peer.may_access(&DirId::new("a").unwrap()));
        assert!(!peer.may_access(&DirId::new("b").unwrap()));
        let with = |line: &str| {
            format!(
                "privkey = \"k\"\n[dirs]\na = \"/a\"\n[peers.p]\npublic_key = \"\"\"{}\"\"\"\n{line}\n",
                key_pem()
            )
        };
        check_refused(
            &with("dirs = [\"c\"]"),
            "[peers.p] dirs: unknown directory \"c\"",
        );
        check_refused(
            &with("dirs = [\"../a\"]"),
            "[peers.p] dirs: unknown directory \"../a\"",
        );
        check_refused(
            &with("access = \"write-only\""),
            "unknown variant `write-only`",
        );
        let none = parse(&with("dirs = []")).unwrap();
        assert!(!none.peers["p"].may_access(&DirId::new("a").unwrap()));
    }

    #[test]
    fn overlapping_roots_are_refused_naming_both_ids() {
        let work = tempfile::tempdir().unwrap();
        let (a, b) = (work.path().join("a"), work.path().join("b"));
        std::fs::create_dir_all(a.join("inner")).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::os::unix::fs::symlink(&a, work.path().join("link")).unwrap();
        let with_dirs = |dirs: &[(&str, PathBuf)]| {
            let dirs: String = dirs
                .iter()
                .map(|(id, root)| format!("{id} = {:?}\n", root.display().to_string()))
                .collect();
            parse(&minimal(&format!("[dirs]\n{dirs}"))).unwrap()
        };
        with_dirs(&[("x", a.clone()), ("y", b.clone())])
            .check_roots()
            .unwrap();
        for (x, y) in [
            (a.clone(), a.clone()),
            (a.clone(), a.join("inner")),
            (a.join("inner"), a.clone()),
            (work.path().join("link"), a.clone()),
            (work.path().join("link/inner"), a.clone()),
        ] {
            let config = with_dirs(&[("x", x.clone()), ("y", y.clone()), ("z", b.clone())]);
            let err = config.check_roots().unwrap_err();
            assert!(
                matches!(&err, ConfigError::OverlappingRoots { dir, other, .. }
                    if dir.as_str() == "x" && other.as_str() == "y"),
                "{x:?} {y:?}: {err:?}"
            );
            let message = err.to_string();
            assert!(message.contains("directories x and y"), "{message}");
        }
    }
}
