//! Per-peer controls through the real daemon: networks a peer may connect
//! from, several keys per peer and their rotation, the daemon's own key
//! rotated under its clients, and call rates with their pushback.

use std::time::{Duration, Instant};

use realize_net::connection::ConnectError;
use realize_proto::pb;
use realize_proto::pb::realize_client::RealizeClient;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::util::*;

async fn info(api: &mut RealizeClient<Channel>) -> Result<pb::InfoResponse, tonic::Status> {
    Ok(api.info(pb::InfoRequest {}).await?.into_inner())
}

/// Replaces the daemon's config with `adjust`'s change and reloads it.
async fn reload(daemon: &mut Daemon, adjust: impl FnOnce(&mut DaemonConfig)) {
    let mut config = daemon.config.clone();
    adjust(&mut config);
    daemon.write_config(config);
    let applied = daemon.log().matches("reload: config applied").count();
    daemon.signal(rustix::process::Signal::HUP);
    assert!(
        daemon
            .wait_until(|log| log.matches("reload: config applied").count() > applied)
            .await,
        "{}",
        daemon.log()
    );
}

/// The daemon's `/metrics` page; it must run with `--metrics-addr`.
async fn metrics(daemon: &Daemon) -> String {
    assert!(daemon.wait_for_log("serving metrics").await);
    let line = daemon.log_line(&["serving metrics"]).unwrap();
    let addr = line.split("addr=").nth(1).unwrap().trim().to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).await.unwrap();
    page
}

/// The value of the sample of `name` whose labels contain each of `labels`.
fn sample(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn with_metrics(config: &mut DaemonConfig) {
    config.args = vec!["--metrics-addr".into(), "127.0.0.1:0".into()];
}

#[tokio::test]
async fn a_peer_outside_its_networks_is_refused_at_connect_like_an_unknown_key() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let stranger = KeyFiles::new(work.path(), "stranger");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        // Networks that exclude 127.0.0.1, where the test connects from.
        c.peer_options.push((
            "client".into(),
            "allowed_networks = [\"192.0.2.0/24\", \"2001:db8::/32\"]".into(),
        ));
        with_metrics(c);
    })
    .await;

    let refused = channel(&daemon, &client).await.unwrap_err();
    assert!(
        matches!(refused, ConnectError::RefusedByServer { .. }),
        "{refused:?}"
    );
    // Nothing tells the client its key was known.
    let unknown = channel(&daemon, &stranger).await.unwrap_err();
    assert_eq!(refused.to_string(), unknown.to_string());
    let fingerprint = format!("key={}", client.public_key().fingerprint());
    assert!(
        daemon
            .wait_for_line(&[
                "WARN",
                "tls handshake refused",
                "peer=client",
                "addr=127.0.0.1:",
                &fingerprint,
                "may not connect from this address (allowed_networks)",
            ])
            .await,
        "{}",
        daemon.log()
    );
    let page = metrics(&daemon).await;
    assert_eq!(
        sample(
            &page,
            "realize_tls_handshakes_refused_total",
            &["reason=\"network\""]
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "realize_tls_handshakes_refused_total",
            &["reason=\"unknown_key\""]
        ),
        Some(1.0),
        "{page}"
    );

    // Networks reload: once loopback is in them, the peer is served.
    reload(&mut daemon, |c| {
        c.peer_options = vec![(
            "client".into(),
            "allowed_networks = [\"10.0.0.0/8\", \"127.0.0.1\"]".into(),
        )];
    })
    .await;
    let mut api = api(&daemon, &client).await;
    assert_eq!(info(&mut api).await.unwrap().dirs.len(), 1);

    // And out of them again: the open connection is closed, the next refused.
    reload(&mut daemon, |c| {
        c.peer_options = vec![(
            "client".into(),
            "allowed_networks = [\"10.0.0.0/8\"]".into(),
        )];
    })
    .await;
    assert!(info(&mut api).await.is_err());
    assert!(matches!(
        channel(&daemon, &client).await,
        Err(ConnectError::RefusedByServer { .. })
    ));
    daemon.stop().await;
}

/// A `public_keys` line listing the keys of `files`.
fn public_keys(files: &[&KeyFiles]) -> String {
    let pems: Vec<String> = files
        .iter()
        .map(|f| format!("{:?}", f.public_key().to_pem()))
        .collect();
    format!("public_keys = [{}]", pems.join(", "))
}

/// The procedure of docs/security.md, "Rotating a peer's key": the new key is
/// added beside the old one, the client switches, the old key is removed.
#[tokio::test]
async fn a_peer_with_two_keys_connects_with_either_until_one_is_removed() {
    let work = TempDir::new().unwrap();
    let old = KeyFiles::new(work.path(), "laptop-old");
    let new = KeyFiles::new(work.path(), "laptop-new");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let mut daemon = Daemon::start(work.path(), &[("d", &dst)], &old).await;
    let mut with_old = api(&daemon, &old).await;
    assert!(channel(&daemon, &new).await.is_err());

    // Step 1: the new key is added to the same peer.
    reload(&mut daemon, |c| {
        c.peer_options = vec![("client".into(), public_keys(&[&new]))];
    })
    .await;
    assert!(
        info(&mut with_old).await.is_ok(),
        "the old key's connection was cut"
    );
    let mut with_new = api(&daemon, &new).await;
    assert!(info(&mut with_new).await.is_ok());
    for key in [&old, &new] {
        let fingerprint = format!("key={}", key.public_key().fingerprint());
        assert!(
            daemon
                .wait_for_line(&["connection accepted", "peer=client", &fingerprint])
                .await,
            "{}",
            daemon.log()
        );
    }
    // The audit trail names the key that made each change.
    write_file(&src, "moved.txt", b"moved with the new key\n");
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &new,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let new_fingerprint = format!("key={}", new.public_key().fingerprint());
    assert!(
        daemon
            .wait_for_line(&[
                "peer=client",
                &new_fingerprint,
                "finished",
                "path=moved.txt"
            ])
            .await,
        "{}",
        daemon.log()
    );

    // Step 2: the old key is removed; its connection is closed, and it is
    // refused from then on, while the new key goes on.
    reload(&mut daemon, |c| {
        c.peers = vec![("client".into(), new.public.clone())];
        c.peer_options.clear();
    })
    .await;
    assert!(info(&mut with_old).await.is_err());
    assert!(matches!(
        channel(&daemon, &old).await,
        Err(ConnectError::RefusedByServer { .. })
    ));
    assert!(info(&mut with_new).await.is_ok());
    assert!(info(&mut api(&daemon, &new).await).await.is_ok());
    daemon.stop().await;
}

/// Moves one new file from a local directory to the daemon, trusting `trusted`.
async fn move_one(
    work: &std::path::Path,
    daemon_addr: &str,
    client: &KeyFiles,
    trusted: &[&std::path::Path],
    name: &str,
) -> std::process::Output {
    let src = work.join("src");
    write_file(&src, name, name.as_bytes());
    let args = move_args(
        Side::Path(&src),
        Side::Addr(daemon_addr),
        &["d"],
        client,
        trusted,
        work,
    );
    realize(&os(&args)).await
}

/// The procedure of docs/security.md, "Rotating the daemon's key": clients
/// trust both keys, the daemon restarts with the new one, clients drop the
/// old one; no move is refused on the way.
#[tokio::test]
async fn the_daemon_key_is_rotated_without_refusing_a_client() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let dst = work.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    let daemon = Daemon::start(work.path(), &[("d", &dst)], &client).await;
    let old = daemon.key.public.clone();
    let new = KeyFiles::new(work.path(), "server-2026");

    // Step 1: the clients trust both keys; the old daemon key still serves.
    let output = move_one(
        work.path(),
        &daemon.addr,
        &client,
        &[&old, &new.public],
        "1",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    // Step 2: the daemon restarts with the new key.
    let new_public = new.public.clone();
    let daemon = daemon.restart_with_key(new).await;
    let output = move_one(
        work.path(),
        &daemon.addr,
        &client,
        &[&old, &new_public],
        "2",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    // Step 3: the clients drop the old key.
    let output = move_one(work.path(), &daemon.addr, &client, &[&new_public], "3").await;
    assert!(output.status.success(), "{}", stderr(&output));
    // A client that never added the new key fails: it does not trust the daemon
    // any more (a fatal error, not retried).
    let output = move_one(work.path(), &daemon.addr, &client, &[&old], "4").await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("presented a key not in --peers"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        manifest(&dst).into_keys().collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    daemon.stop().await;
}

fn write_header(path: &str, file_size: u64) -> pb::WriteRequest {
    pb::WriteRequest {
        message: Some(pb::write_request::Message::Header(pb::WriteHeader {
            dir: "d".into(),
            path: path.into(),
            offset: 0,
            file_size,
            whole_file: false,
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })),
    }
}

fn write_data(data: Vec<u8>) -> pb::WriteRequest {
    pb::WriteRequest {
        message: Some(pb::write_request::Message::Data(data.into())),
    }
}

#[tokio::test]
async fn a_peer_over_its_rate_is_refused_with_a_pushback_then_served_again() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.peer_options
            .push(("client".into(), "calls_per_second = 5\nburst = 5".into()));
        with_metrics(c);
    })
    .await;
    let mut api = api(&daemon, &client).await;

    let start = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..50 {
        outcomes.push(info(&mut api).await.map(|_| ()));
    }
    let elapsed = start.elapsed();
    for (n, outcome) in outcomes.iter().take(5).enumerate() {
        assert!(outcome.is_ok(), "call {n} of the burst: {outcome:?}");
    }
    let served = outcomes.iter().filter(|o| o.is_ok()).count();
    // The burst, and what the rate refilled while the calls ran.
    let most = 5 + (elapsed.as_secs_f64() * 5.0).ceil() as usize;
    assert!(served <= most, "{served} calls served in {elapsed:?}");
    let refused: Vec<&tonic::Status> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(refused.len() >= 50 - most, "{outcomes:?}");
    let mut pushback = 0;
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("peer client is limited to 5 calls per second (burst 5): retry in "),
            "{status:?}"
        );
        pushback = status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no pushback trailer: {status:?}"));
        assert!((1..=200).contains(&pushback), "{pushback}");
    }
    // After the pushback, the next call is served.
    tokio::time::sleep(Duration::from_millis(pushback)).await;
    info(&mut api).await.unwrap();
    assert!(
        daemon
            .wait_for_line(&[
                "WARN",
                "call refused: peer client is limited to 5 calls per second"
            ])
            .await,
        "{}",
        daemon.log()
    );
    let page = metrics(&daemon).await;
    assert_eq!(
        sample(
            &page,
            "realize_rpc_rate_limited_total",
            &["peer=\"client\""]
        ),
        Some(refused.len() as f64),
        "{page}"
    );

    // A stream is one call, however many messages it carries: twenty chunks
    // pass a bucket of five.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let chunks = (0..20).map(|n| write_data(vec![n; 1024]));
    let stream =
        futures::stream::iter(std::iter::once(write_header("s.bin", 20 * 1024)).chain(chunks));
    assert_eq!(
        api.write(stream).await.unwrap().into_inner().bytes_written,
        20 * 1024
    );

    // The rate reloads: unlimited, every call is served.
    reload(&mut daemon, |c| c.peer_options.clear()).await;
    for _ in 0..50 {
        info(&mut api).await.unwrap();
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_rate_limited_move_completes_slower_with_exit_0() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    // Small files (one WriteFiles call), large ones (a Write each), and one
    // the destination has with other content (a delta).
    for n in 0..4u8 {
        write_file(
            &src,
            &format!("small/{n}.txt"),
            &random_bytes(n.into(), 1000),
        );
    }
    for n in 0..3u8 {
        write_file(
            &src,
            &format!("large/{n}.bin"),
            &random_bytes(10 + u64::from(n), 600_000),
        );
    }
    write_file(&src, "changed.bin", &random_bytes(20, 700_000));
    write_file(&dst, "changed.bin", &random_bytes(21, 700_000));
    let expected = manifest(&src);
    // The rate comes from the [limits] defaults.
    let daemon = Daemon::start_with(work.path(), &[("d", &dst)], &client, |c| {
        c.limits = vec![
            "calls_per_second_per_peer = 4".into(),
            "burst_per_peer = 2".into(),
        ];
    })
    .await;
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert!(
        output.status.success(),
        "{}\n{}",
        stderr(&output),
        daemon.log()
    );
    assert!(!stderr(&output).contains("ERROR"), "{}", stderr(&output));
    assert_eq!(manifest(&dst), expected);
    // It was held to the rate on the way.
    assert!(
        daemon
            .log_line(&["call refused: peer client is limited to 4 calls per second (burst 2)"])
            .is_some(),
        "{}",
        daemon.log()
    );
    daemon.stop().await;
}
