//! Moves a local directory's files into a daemon's directory over mutual TLS.
//!
//! `cargo run -p realize-net --example remote_move -- ADDR KEY DAEMON_KEY DIR FROM`:
//! ADDR is the daemon's `HOST:PORT`, KEY this client's private key (PEM,
//! one of the daemon's `[peers]`), DAEMON_KEY the daemon's public key (PEM),
//! DIR the directory id the daemon serves, FROM the local directory whose
//! files go there. The move then checks that FROM is empty and that the
//! daemon lists every file with the size it had.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use realize_core::{DirId, LocalStore, Move, NoProgress, SendLimit, Service};
use realize_net::keys::{PrivateKey, PublicKey};
use realize_net::remote::RemoteService;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, key, daemon_key, dir, from] = args.as_slice() else {
        return Err("usage: remote_move ADDR KEY DAEMON_KEY DIR FROM".into());
    };
    let key = PrivateKey::load(&PathBuf::from(key))?;
    let daemon_keys = PublicKey::load_all(&PathBuf::from(daemon_key))?;
    let dir = DirId::new(dir)?;

    let tls = realize_net::tls::client_config(&key, daemon_keys)?;
    let channel =
        realize_net::connection::connect(addr, tls, Duration::from_secs(10), SendLimit::new(None))
            .await?;
    let daemon: Arc<dyn Service> = Arc::new(RemoteService::new(channel));
    let local = LocalStore::new([(dir.clone(), PathBuf::from(from))]);

    let sizes = local_sizes(&local, &dir).await?;
    let summary = Move::new(&local, &*daemon)
        .dirs([dir.clone()])
        .progress(&NoProgress)
        .run()
        .await?;
    println!(
        "{} moved, {} failed",
        summary.files_moved, summary.files_failed
    );
    assert!(
        local_sizes(&local, &dir).await?.is_empty(),
        "the source is empty"
    );
    let there = local_sizes(&*daemon, &dir).await?;
    for (path, size) in &sizes {
        assert!(
            there.contains(&(path.clone(), *size)),
            "{path} is at the daemon"
        );
    }
    Ok(())
}

/// The files `service` lists in `dir`, with their sizes.
async fn local_sizes(
    service: &dyn Service,
    dir: &DirId,
) -> Result<Vec<(String, u64)>, realize_core::ServiceError> {
    service
        .list(dir, None, false)
        .await?
        .map_ok(|entry| (entry.path.to_string(), entry.stamp.size))
        .try_collect()
        .await
}
