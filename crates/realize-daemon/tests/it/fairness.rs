//! One authenticated peer cannot keep the others out: its connections past
//! its limit are closed right after their handshake and hold no slot.

use std::time::Duration;

use realize_core::ErrorChain;
use realize_net::connection::connect;
use realize_net::throttle::SendLimit;
use realize_net::tls::client_config;
use realize_proto::pb;
use realize_proto::pb::realize_client::RealizeClient;
use tempfile::TempDir;

use crate::util::*;

#[tokio::test]
async fn a_peer_opening_four_times_its_limit_keeps_no_other_peer_out() {
    const PER_PEER: usize = 4;
    let work = TempDir::new().unwrap();
    let greedy = KeyFiles::new(work.path(), "greedy");
    let mover = KeyFiles::new(work.path(), "mover");
    let (src, root) = (work.path().join("src"), work.path().join("root"));
    std::fs::create_dir_all(&root).unwrap();
    sample_tree(&src);
    let expected = manifest(&src);
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &mover, |c| {
        c.peers.push(("greedy".into(), greedy.public.clone()));
        c.limits.push("max_connections = 8".into());
        c.limits
            .push(format!("max_connections_per_peer = {PER_PEER}"));
    })
    .await;

    let tls = client_config(&greedy.key, [daemon.key.public_key()]).unwrap();
    let mut kept = Vec::new();
    let mut closed = Vec::new();
    for _ in 0..4 * PER_PEER {
        match connect(
            &daemon.addr,
            tls.clone(),
            Duration::from_secs(10),
            SendLimit::new(None),
        )
        .await
        {
            Ok(channel) => kept.push(RealizeClient::new(channel)),
            Err(e) => closed.push(ErrorChain(&e).to_string()),
        }
    }
    assert_eq!(kept.len(), PER_PEER, "{closed:?}");
    for error in &closed {
        assert!(
            error.contains("connection closed right after the TLS handshake"),
            "{error}"
        );
    }
    let warned = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains("connection closed: peer has too many connections open")
                    && l.contains("peer=greedy")
                    && l.contains("addr=127.0.0.1:")
            })
            .count()
            == 3 * PER_PEER
    };
    assert!(daemon.wait_until(warned).await, "{}", daemon.log());

    // The other peer connects and moves files while the greedy one holds
    // every connection it may have.
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &mover,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(manifest(&root), expected);
    assert!(manifest(&src).is_empty());

    // The greedy peer's connections within its limit still serve.
    for api in &mut kept {
        api.info(pb::InfoRequest {}).await.unwrap();
    }
    daemon.stop().await;
}
