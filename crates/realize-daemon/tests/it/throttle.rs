//! Bandwidth limits, end to end: Configure on the real daemon, and moves
//! that cannot be faster than their limit (lower bounds only).

use std::time::{Duration, Instant};

use futures::StreamExt;
use realize_net::connection::connect;
use realize_net::throttle::SendLimit;
use realize_net::tls::client_config;
use realize_proto::pb;
use tempfile::TempDir;

use crate::util::*;

async fn api(
    daemon: &Daemon,
    client: &KeyFiles,
) -> pb::realize_client::RealizeClient<tonic::transport::Channel> {
    let tls = client_config(&client.key, [daemon.key.public_key()]).unwrap();
    let channel = connect(
        &daemon.addr,
        tls,
        Duration::from_secs(10),
        SendLimit::new(None),
    )
    .await
    .unwrap();
    pb::realize_client::RealizeClient::new(channel)
}

#[tokio::test]
async fn configure_sets_and_clears_the_connection_limit() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;

    let set = api
        .configure(pb::ConfigureRequest {
            send_limit: Some(1_000_000),
        })
        .await
        .unwrap();
    assert_eq!(set.into_inner().send_limit, Some(1_000_000));
    let info = api.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.send_limit, Some(1_000_000));
    assert!(
        daemon.wait_for_log("send limit changed peer=client").await,
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("old=unlimited new=1000000 B/s"),
        "{}",
        daemon.log()
    );

    // Another connection of the same peer keeps its own limit.
    let mut other = self::api(&daemon, &client).await;
    let other_info = other.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(other_info.send_limit, None);

    for bad in [0, u64::MAX, 1_000_000_000_001] {
        let status = api
            .configure(pb::ConfigureRequest {
                send_limit: Some(bad),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            status.message().starts_with("send_limit: rate"),
            "{}",
            status.message()
        );
    }
    let info = api.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        info.send_limit,
        Some(1_000_000),
        "a refused value changes nothing"
    );

    let cleared = api
        .configure(pb::ConfigureRequest { send_limit: None })
        .await
        .unwrap();
    assert_eq!(cleared.into_inner().send_limit, None);
    daemon.stop().await;
}

#[tokio::test]
async fn a_limit_lowered_mid_transfer_slows_the_rest_of_it() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    let size = 5_000_000;
    write_file(&root, "big.bin", &random_bytes(9, size));
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;

    let mut read = api
        .read(pb::ReadRequest {
            dir: "d".into(),
            path: "big.bin".into(),
            offset: 0,
            length: None,
            if_stamp: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = read.next().await.unwrap().unwrap().data.len();
    api.configure(pb::ConfigureRequest {
        send_limit: Some(1_000_000),
    })
    .await
    .unwrap();
    let changed = Instant::now();
    let mut received = first;
    while let Some(chunk) = read.next().await {
        received += chunk.unwrap().data.len();
    }
    assert_eq!(received, size);
    // Up to the 2 MiB HTTP/2 window may have left before the change; the
    // rest, at least 2.7 MB, crossed at 1 MB/s.
    let remaining = (size - first) as f64 - 2.0 * 1024.0 * 1024.0;
    let floor = Duration::from_secs_f64(remaining / 1_000_000.0 - 0.1);
    assert!(
        changed.elapsed() >= floor,
        "{:?} < {floor:?}",
        changed.elapsed()
    );
    daemon.stop().await;
}

/// Runs a move of `size` bytes with `flags` and returns how long it took.
async fn timed_move(remote_source: bool, flags: &[&str], size: usize) -> Duration {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    write_file(&src, "f.bin", &random_bytes(10, size));
    let before = manifest(&src);
    let daemon_root = if remote_source { &src } else { &dst };
    let daemon = Daemon::start(work.path(), &[("d", daemon_root)], &client).await;
    let (from, to) = if remote_source {
        (Side::Addr(&daemon.addr), Side::Path(&dst))
    } else {
        (Side::Path(&src), Side::Addr(&daemon.addr))
    };
    let mut args = move_args(
        from,
        to,
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    args.extend(flags.iter().map(Into::into));
    let started = Instant::now();
    let output = realize(&os(&args)).await;
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(manifest(&dst), before);
    daemon.stop().await;
    elapsed
}

/// 1.5 MB at 1 MB/s, less the 0.1 s the token bucket starts with.
const FLOOR: Duration = Duration::from_millis(1400);

#[tokio::test]
async fn throttle_up_holds_a_move_to_a_daemon_to_the_limit() {
    let elapsed = timed_move(false, &["--throttle-up", "1M"], 1_500_000).await;
    assert!(elapsed >= FLOOR, "{elapsed:?}");
}

#[tokio::test]
async fn throttle_down_holds_a_move_from_a_daemon_to_the_limit() {
    let elapsed = timed_move(true, &["--throttle-down", "1M"], 1_500_000).await;
    assert!(elapsed >= FLOOR, "{elapsed:?}");
}
