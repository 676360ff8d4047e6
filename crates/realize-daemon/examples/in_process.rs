//! Serves a directory in-process with `serve`, and moves a tree into it through `RemoteService`.
//!
//! `cargo run -p realize-daemon --example in_process` needs nothing but
//! loopback: both keys are made on the spot and both directories are
//! temporary. It then checks the outcome: every file in the daemon's
//! directory with the digest it had, the source empty.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use realize_core::{Digest, DigestAlgorithm, DirId, LocalStore, Move, SendLimit, Service};
use realize_net::keys::PrivateKey;
use realize_net::remote::RemoteService;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (from, served) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut sent = BTreeMap::new();
    for (name, data) in [("a.txt", vec![1u8; 10]), ("big.bin", vec![2u8; 2 << 20])] {
        std::fs::write(from.path().join(name), &data)?;
        sent.insert(name.to_string(), Digest::of(DigestAlgorithm::Blake3, &data));
    }
    let dir = DirId::new("inbox")?;

    // The daemon: its key, the one peer it accepts, its store, its address.
    let (daemon_key, client_key) = (PrivateKey::generate()?, PrivateKey::generate()?);
    let peers = BTreeMap::from([("example".to_string(), client_key.public_key())]);
    let store: Arc<dyn Service> = Arc::new(LocalStore::new([(
        dir.clone(),
        served.path().to_path_buf(),
    )]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon_public = daemon_key.public_key();
    let daemon = tokio::spawn(async move {
        realize_daemon::serve(listener, &daemon_key, &peers, store, async {
            let _ = stopped.await;
        })
        .await
    });

    // The client: TLS pinned to the daemon's key, one channel, the move.
    let tls = realize_net::tls::client_config(&client_key, [daemon_public])?;
    let channel =
        realize_net::connection::connect(&addr, tls, Duration::from_secs(10), SendLimit::new(None))
            .await?;
    let remote = RemoteService::new(channel);
    let local = LocalStore::new([(dir.clone(), from.path().to_path_buf())]);
    let summary = Move::new(&local, &remote).dirs([dir]).run().await?;
    println!(
        "{} files moved into the daemon at {addr}",
        summary.files_moved
    );
    drop(remote);

    let _ = shutdown.send(());
    let exit = daemon.await??;
    assert!(matches!(exit, realize_daemon::Exit::Clean), "{exit:?}");
    for (name, digest) in &sent {
        let data = std::fs::read(served.path().join(name))?;
        assert_eq!(
            Digest::of(DigestAlgorithm::Blake3, &data),
            *digest,
            "{name} arrived whole"
        );
        assert!(!from.path().join(name).exists(), "{name} left the source");
    }
    println!(
        "checked: {} files served with their digests, source empty",
        sent.len()
    );
    Ok(())
}
