//! Tests of the config: every field, its default and its errors.

use super::*;
use realize_net::keys::{PrivateKey, PublicKey};

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
        Err(e) => realize_core::ErrorChain(&e).to_string(),
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
    assert_eq!(config.limits, DaemonLimits::default());
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
    check_refused(
        "privkey = \"k\"\n[peers.p]\n",
        "[peers.p]: no key: set public_key, public_keys or public_key_file",
    );
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
        "[limits]\nmax_connections = 5\nmax_connections_per_peer = 2\nmax_calls_per_connection = 3\nmax_message_size = \"8 MiB\"\nhandshake_timeout = \"2s\"\nidle_timeout = \"1m\"\ncall_timeout = \"1h\"\nstall_timeout = \"30s\"\npartial_max_age = \"0\"\nmax_file_size = \"10GB\"\nmax_memory_per_peer = \"256 MiB\"",
    ))
    .unwrap();
    assert_eq!(
        config.limits,
        DaemonLimits {
            max_connections: 5,
            max_connections_per_peer: 2,
            max_calls_per_connection: 3,
            max_message_size: 8 << 20,
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            call_timeout: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(30),
            partial_max_age: None,
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

/// A config with one peer `p` whose key is `pem`, and `lines` in its table.
fn peer_with(pem: &str, lines: &str) -> String {
    format!("privkey = \"k\"\n[peers.p]\npublic_key = \"\"\"{pem}\"\"\"\n{lines}\n")
}

#[test]
fn several_keys_per_peer() {
    let work = tempfile::tempdir().unwrap();
    let keys: Vec<PublicKey> = (0..5)
        .map(|_| PrivateKey::generate().unwrap().public_key())
        .collect();
    std::fs::write(work.path().join("one.pem"), keys[2].to_pem()).unwrap();
    // A file may hold several keys, as a --peers file does.
    std::fs::write(
        work.path().join("two.pem"),
        format!("{}{}", keys[3].to_pem(), keys[4].to_pem()),
    )
    .unwrap();
    let text = format!(
        "privkey = \"k\"\n[peers.p]\npublic_key = \"\"\"{}\"\"\"\npublic_keys = [\"\"\"{}\"\"\", \"\"\"{}\"\"\"]\npublic_key_file = [\"one.pem\", \"two.pem\"]\n",
        keys[0].to_pem(),
        keys[1].to_pem(),
        keys[0].to_pem(),
    );
    let config = Config::parse(&text, Path::new("c.toml"), work.path(), None).unwrap();
    assert_eq!(config.peers["p"].keys, keys);
    let single = format!(
        "privkey = \"k\"\n[peers.p]\npublic_key_file = \"one.pem\"\n[peers.q]\npublic_keys = [\"\"\"{}\"\"\"]\n",
        keys[0].to_pem()
    );
    let config = Config::parse(&single, Path::new("c.toml"), work.path(), None).unwrap();
    assert_eq!(config.peers["p"].keys, [keys[2].clone()]);
    assert_eq!(config.peers["q"].keys, [keys[0].clone()]);

    // A key of two peers is refused wherever each lists it.
    let shared = format!(
        "privkey = \"k\"\n[peers.p]\npublic_key_file = \"two.pem\"\n[peers.q]\npublic_keys = [\"\"\"{}\"\"\"]\n",
        keys[4].to_pem()
    );
    let err = Config::parse(&shared, Path::new("c.toml"), work.path(), None).unwrap_err();
    assert!(matches!(err, ConfigError::DuplicateKey { .. }), "{err}");
    std::fs::write(work.path().join("empty.pem"), "").unwrap();
    let err = Config::parse(
        "privkey = \"k\"\n[peers.p]\npublic_key_file = [\"one.pem\", \"empty.pem\"]\n",
        Path::new("c.toml"),
        work.path(),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("[peers.p]: bad public key"),
        "{err}"
    );
    check_refused(
        &peer_with(&key_pem(), "public_keys = [\"garbage\"]"),
        "[peers.p]: bad public key",
    );
}

#[test]
fn allowed_networks() {
    let pem = key_pem();
    let config = parse(&peer_with(
        &pem,
        "allowed_networks = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]",
    ))
    .unwrap();
    let peer = &config.peers["p"];
    for (addr, allowed) in [
        ("10.1.2.3", true),
        ("11.0.0.1", false),
        ("192.0.2.7", true),
        ("192.0.2.8", false),
        ("2001:db8::1", true),
        ("2001:db9::1", false),
        // An IPv4 client on an IPv6 socket.
        ("::ffff:10.9.9.9", true),
        ("127.0.0.1", false),
    ] {
        let addr: std::net::IpAddr = addr.parse().unwrap();
        assert_eq!(peer.may_connect_from(addr), allowed, "{addr}");
    }
    let anywhere = parse(&peer_with(&pem, "")).unwrap();
    assert_eq!(anywhere.peers["p"].networks, None);
    assert!(anywhere.peers["p"].may_connect_from([127, 0, 0, 1].into()));
    for bad in ["10.0.0.0/33", "10.0.0", "localhost", "10.0.0.0/8/8", ""] {
        check_refused(
            &peer_with(&pem, &format!("allowed_networks = [{bad:?}]")),
            &format!("[peers.p] allowed_networks: invalid network {bad:?}"),
        );
    }
    check_refused(
        &peer_with(&pem, "allowed_networks = []"),
        "[peers.p] allowed_networks: is empty",
    );
}

#[test]
fn call_rates() {
    let pem = key_pem();
    let rate = |peer: &str, limits: &str| {
        let text = format!("{}[limits]\n{limits}\n", peer_with(&pem, peer));
        parse(&text).unwrap().peers["p"].rate
    };
    assert_eq!(rate("", ""), None);
    assert_eq!(
        rate("calls_per_second = 5\nburst = 10", ""),
        Some(CallRate {
            per_second: 5.0,
            burst: 10
        })
    );
    // Without a burst: one second's calls, at least one.
    assert_eq!(
        rate("calls_per_second = 2.5", ""),
        Some(CallRate {
            per_second: 2.5,
            burst: 3
        })
    );
    assert_eq!(
        rate("calls_per_second = 0.1", ""),
        Some(CallRate {
            per_second: 0.1,
            burst: 1
        })
    );
    // The [limits] defaults, and a peer's own values over them.
    let defaults = "calls_per_second_per_peer = 20\nburst_per_peer = 40";
    assert_eq!(
        rate("", defaults),
        Some(CallRate {
            per_second: 20.0,
            burst: 40
        })
    );
    assert_eq!(
        rate("burst = 5", defaults),
        Some(CallRate {
            per_second: 20.0,
            burst: 5
        })
    );
    assert_eq!(rate("calls_per_second = 0", defaults), None);
    for (peer, expected) in [
        (
            "calls_per_second = -1",
            "[peers.p] calls_per_second: must be a number of calls per second from 0 (unlimited) to 1000000",
        ),
        (
            "calls_per_second = nan",
            "[peers.p] calls_per_second: must be",
        ),
        (
            "calls_per_second = inf",
            "[peers.p] calls_per_second: must be",
        ),
        (
            "calls_per_second = 1e9",
            "[peers.p] calls_per_second: must be",
        ),
        ("calls_per_second = \"5/s\"", "invalid type: string"),
        (
            "calls_per_second = 5\nburst = 0",
            "[peers.p] burst: must be at least 1",
        ),
        ("burst = -1", "invalid value"),
    ] {
        check_refused(&peer_with(&pem, peer), expected);
    }
    for (limits, expected) in [
        (
            "calls_per_second_per_peer = -0.5",
            "[limits] calls_per_second_per_peer: must be a number of calls per second",
        ),
        (
            "burst_per_peer = 0",
            "[limits] burst_per_peer: must be at least 1",
        ),
    ] {
        check_refused(
            &format!("{}[limits]\n{limits}\n", peer_with(&pem, "")),
            expected,
        );
    }
}
