//! `[peers.NAME]`: who may connect, with which keys, from where, how often,
//! and what it may do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use realize_core::DirId;
use realize_net::keys::{KeyError, PublicKey};
use serde::Deserialize;

use super::ConfigError;

/// The highest call rate a config may set, per peer: far above what any
/// client makes, low enough that a burst of one second's calls fits a `u32`.
pub const MAX_CALLS_PER_SECOND: f64 = 1_000_000.0;

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

/// How many calls a peer may start: a token bucket refilled at `per_second`
/// that holds at most `burst` calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallRate {
    pub per_second: f64,
    pub burst: u32,
}

impl std::fmt::Display for CallRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls per second (burst {})",
            self.per_second, self.burst
        )
    }
}

/// `[limits] calls_per_second_per_peer` and `burst_per_peer`: the rate of a
/// peer that sets none of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct RateDefaults {
    /// 0: unlimited.
    pub per_second: f64,
    pub burst: Option<u32>,
}

/// A peer allowed to connect, and what it may do once connected.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// Its keys, any of which may connect: more than one while a key is replaced.
    pub keys: Vec<PublicKey>,
    /// `dirs`: the directories it may access; `None` for all of them.
    pub dirs: Option<BTreeSet<DirId>>,
    pub access: Access,
    /// `allowed_networks`: where it may connect from; `None` for anywhere.
    pub networks: Option<Vec<IpNet>>,
    /// How fast it may make calls; `None` for unlimited.
    pub rate: Option<CallRate>,
}

impl Peer {
    /// A peer that may do everything in every directory, from anywhere, as
    /// often as it likes (the default in a config file).
    pub fn full(key: PublicKey) -> Self {
        Peer {
            keys: vec![key],
            dirs: None,
            access: Access::ReadWrite,
            networks: None,
            rate: None,
        }
    }

    pub fn may_access(&self, dir: &DirId) -> bool {
        self.dirs.as_ref().is_none_or(|dirs| dirs.contains(dir))
    }

    /// Whether it may connect from `addr`; an IPv4 client of a socket bound to
    /// an IPv6 address (`::ffff:10.1.2.3`) is compared as the IPv4 address it is.
    pub fn may_connect_from(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.networks
            .as_ref()
            .is_none_or(|networks| networks.iter().any(|net| net.contains(&addr)))
    }
}

/// `public_key_file`: one file or several.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum KeyFiles {
    One(PathBuf),
    Several(Vec<PathBuf>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    public_key: Option<String>,
    public_keys: Option<Vec<String>>,
    public_key_file: Option<KeyFiles>,
    dirs: Option<Vec<String>>,
    access: Option<Access>,
    allowed_networks: Option<Vec<String>>,
    calls_per_second: Option<f64>,
    burst: Option<u32>,
}

/// A call rate as a config gives it: a number of calls per second, 0 for
/// unlimited; else the error `refused` makes, which names the field.
pub(super) fn calls_per_second(
    value: f64,
    refused: impl FnOnce() -> ConfigError,
) -> Result<f64, ConfigError> {
    if value.is_finite() && (0.0..=MAX_CALLS_PER_SECOND).contains(&value) {
        Ok(value)
    } else {
        Err(refused())
    }
}

/// Validates `[peers]`: ids, keys (no key shared by two peers), `dirs`
/// against the directories configured, networks and rates.
pub(super) fn peers(
    raw: BTreeMap<String, RawPeer>,
    dirs: &BTreeMap<DirId, PathBuf>,
    base: &Path,
    defaults: RateDefaults,
) -> Result<BTreeMap<String, Peer>, ConfigError> {
    let mut peers = BTreeMap::new();
    let mut seen: HashMap<PublicKey, String> = HashMap::new();
    for (peer, raw_peer) in raw {
        if DirId::new(&peer).is_err() {
            return Err(ConfigError::PeerId { peer });
        }
        let key_error = |source| ConfigError::PeerKey {
            peer: peer.clone(),
            source,
        };
        let mut keys = Vec::new();
        for pem in raw_peer
            .public_key
            .iter()
            .chain(raw_peer.public_keys.iter().flatten())
        {
            keys.push(PublicKey::from_pem(pem).map_err(key_error)?);
        }
        let files = match raw_peer.public_key_file {
            None => Vec::new(),
            Some(KeyFiles::One(file)) => vec![file],
            Some(KeyFiles::Several(files)) => files,
        };
        for file in files {
            let loaded = PublicKey::load_all(&base.join(file)).map_err(key_error)?;
            if loaded.is_empty() {
                return Err(key_error(KeyError::NotOnePublicKey(0)));
            }
            keys.extend(loaded);
        }
        if keys.is_empty() {
            return Err(ConfigError::PeerNoKey { peer });
        }
        let mut own = Vec::with_capacity(keys.len());
        for key in keys {
            match seen.get(&key) {
                // The same key listed twice for one peer is harmless.
                Some(other) if *other == peer => {}
                Some(other) => {
                    return Err(ConfigError::DuplicateKey {
                        peer,
                        other: other.clone(),
                    });
                }
                None => {
                    seen.insert(key.clone(), peer.clone());
                    own.push(key);
                }
            }
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
        let networks = raw_peer
            .allowed_networks
            .map(|networks| self::networks(&peer, networks))
            .transpose()?;
        let rate = rate(&peer, raw_peer.calls_per_second, raw_peer.burst, defaults)?;
        peers.insert(
            peer,
            Peer {
                keys: own,
                dirs: allowed,
                access: raw_peer.access.unwrap_or(Access::ReadWrite),
                networks,
                rate,
            },
        );
    }
    Ok(peers)
}

/// `allowed_networks`: CIDR networks, or single addresses.
fn networks(peer: &str, networks: Vec<String>) -> Result<Vec<IpNet>, ConfigError> {
    if networks.is_empty() {
        // Such a peer could never connect: say so rather than refuse it silently.
        return Err(ConfigError::PeerField {
            peer: peer.to_owned(),
            field: "allowed_networks",
            reason: "is empty, so the peer could never connect (remove the field to allow any address, or the peer to allow none)".to_owned(),
        });
    }
    networks
        .into_iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::PeerNetwork {
                    peer: peer.to_owned(),
                    value: text,
                })
        })
        .collect()
}

/// The peer's call rate: its own `calls_per_second` and `burst`, else the
/// `[limits]` defaults; 0 calls per second is unlimited. Without a burst, a
/// peer may make one second's calls at once.
fn rate(
    peer: &str,
    per_second: Option<f64>,
    burst: Option<u32>,
    defaults: RateDefaults,
) -> Result<Option<CallRate>, ConfigError> {
    let field = |field: &'static str, reason: &str| ConfigError::PeerField {
        peer: peer.to_owned(),
        field,
        reason: reason.to_owned(),
    };
    let per_second = match per_second {
        Some(value) => calls_per_second(value, || {
            field(
                "calls_per_second",
                "must be a number of calls per second from 0 (unlimited) to 1000000",
            )
        })?,
        None => defaults.per_second,
    };
    if burst == Some(0) {
        return Err(field("burst", "must be at least 1"));
    }
    if per_second == 0.0 {
        return Ok(None);
    }
    // At most MAX_CALLS_PER_SECOND, so the conversion is exact.
    let one_second = per_second.ceil().max(1.0) as u32;
    Ok(Some(CallRate {
        per_second,
        burst: burst.or(defaults.burst).unwrap_or(one_second),
    }))
}
