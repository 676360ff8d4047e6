//! RPC latency under concurrency: clients, each on its own TLS connection, calling a daemon in a loop.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use realize_net::keys::{PrivateKey, PublicKey};
use realize_net::throttle::SendLimit;
use realize_proto::pb;

/// Calls measured at each level of concurrency, shared among the clients.
const CALLS: usize = 6_400;

/// Calls each client makes before measuring, so connection set-up and
/// first-call costs are not in the figures.
const WARM_UP: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// SHA-256 of a whole 4 KiB file.
    Hash,
    /// The bytes of a whole 4 KiB file.
    Read,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Hash => "Hash",
            Method::Read => "Read",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub method: Method,
    pub clients: usize,
    pub calls: usize,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub calls_per_sec: f64,
}

/// Measures `methods` with 1, 8 and 32 clients against the daemon at `addr`,
/// on the files `paths` of its directory `dir`.
pub fn measure(
    addr: &str,
    client_key: &Path,
    daemon_pub: &Path,
    dir: &str,
    paths: &[String],
) -> anyhow::Result<Vec<Row>> {
    let key = PrivateKey::load(client_key)?;
    let tls = realize_net::tls::client_config(&key, PublicKey::load_all(daemon_pub)?)?;
    // Two workers, one per core: the daemon shares the machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let paths: Arc<Vec<String>> = Arc::new(paths.to_vec());
    let mut rows = Vec::new();
    for method in [Method::Hash, Method::Read] {
        for clients in [1, 8, 32] {
            let row =
                runtime.block_on(level(addr, &tls, dir, Arc::clone(&paths), method, clients))?;
            eprintln!(
                "{} × {clients}: p50 {:?} p95 {:?} p99 {:?}, {:.0} calls/s",
                method.name(),
                row.p50,
                row.p95,
                row.p99,
                row.calls_per_sec
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn level(
    addr: &str,
    tls: &Arc<rustls::ClientConfig>,
    dir: &str,
    paths: Arc<Vec<String>>,
    method: Method,
    clients: usize,
) -> anyhow::Result<Row> {
    let mut connected = Vec::new();
    for _ in 0..clients {
        let channel = realize_net::connection::connect(
            addr,
            Arc::clone(tls),
            Duration::from_secs(10),
            SendLimit::new(None),
        )
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
        let mut client = pb::realize_client::RealizeClient::new(channel);
        for i in 0..WARM_UP {
            call(&mut client, method, dir, &paths[i % paths.len()]).await?;
        }
        connected.push(client);
    }
    let per_client = CALLS / clients;
    // All clients start together, so the level is what it says.
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let started = Instant::now();
    let tasks: Vec<_> = connected
        .into_iter()
        .enumerate()
        .map(|(n, mut client)| {
            let (barrier, paths, dir) = (Arc::clone(&barrier), Arc::clone(&paths), dir.to_owned());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let path = &paths[(n * per_client + i) % paths.len()];
                    let start = Instant::now();
                    call(&mut client, method, &dir, path).await?;
                    latencies.push(start.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(CALLS);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Row {
        method,
        clients,
        calls: latencies.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        calls_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
    })
}

type Client = pb::realize_client::RealizeClient<tonic::transport::Channel>;

async fn call(client: &mut Client, method: Method, dir: &str, path: &str) -> anyhow::Result<()> {
    match method {
        Method::Hash => {
            client
                .hash(pb::HashRequest {
                    dir: dir.to_owned(),
                    path: path.to_owned(),
                    algorithm: pb::DigestAlgorithm::Blake3.into(),
                    ..Default::default()
                })
                .await?;
        }
        Method::Read => {
            let mut stream = client
                .read(pb::ReadRequest {
                    dir: dir.to_owned(),
                    path: path.to_owned(),
                    offset: 0,
                    length: None,
                    if_stamp: None,
                })
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
        }
    }
    Ok(())
}
