//! The daemon's TOML configuration, parsed and validated whole before use.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use realize_core::DirId;
use realize_core::path::InvalidDirId;
use realize_net::keys::{KeyError, PublicKey};
use serde::Deserialize;

pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9771";

/// How long calls in flight may run on after a shutdown request.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

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
    /// Peer id → public key; only these peers may connect.
    pub peers: BTreeMap<String, PublicKey>,
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
    log_level: Option<String>,
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
        let raw: RawConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
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
            peers.insert(peer, key);
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
            grace_period,
            log_level: raw.log_level,
        })
    }

    /// Every root must exist and be a readable directory; one that is not
    /// writable is only a warning, since a read-only source still serves reads.
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
        Ok(())
    }
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
            &minimal("[limits]\nmax_connections = 1"),
            "unknown field `limits`",
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
}
