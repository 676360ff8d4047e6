//! Real signals sent to the real `realized`: SIGTERM and SIGINT shut it down in
//! phases, SIGHUP reloads its config. Each shutdown test checks the exit code,
//! the log line of each phase, the files on disk, and that running `realize`
//! afterwards completes the move.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use realize_net::connection::ConnectError;
use realize_net::keys::SERVER_NAME;
use realize_net::tls::client_config;
use realize_proto::pb;
use realize_proto::pb::realize_client::RealizeClient;
use rustix::process::Signal;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::util::*;

/// Shows each call's start, which the tests wait for before signalling.
const DEBUG_LOG: &str = "info,realize_daemon=debug";
const CHUNK: usize = 256 * 1024;

struct Setup {
    work: TempDir,
    client: KeyFiles,
}

impl Setup {
    fn new() -> Self {
        let work = TempDir::new().unwrap();
        let client = KeyFiles::new(work.path(), "client");
        Setup { work, client }
    }

    fn dir(&self, name: &str) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Runs `realize` from `src` to `dst` for `dir` and checks it moved every file.
    async fn complete_move(&self, src: Side<'_>, dst: Side<'_>, dir: &str, trusted: &[&Path]) {
        let args = move_args(src, dst, &[dir], &self.client, trusted, self.work.path());
        let output = realize(&os(&args)).await;
        assert!(
            output.status.success(),
            "realize failed: {}",
            stderr(&output)
        );
        assert!(stdout(&output).contains("Moved "), "{}", stdout(&output));
    }
}

async fn api_as(
    daemon: &Daemon,
    client: &KeyFiles,
) -> Result<RealizeClient<Channel>, ConnectError> {
    Ok(RealizeClient::new(channel(daemon, client).await?))
}

async fn info(api: &mut RealizeClient<Channel>) -> Result<pb::InfoResponse, tonic::Status> {
    api.info(pb::InfoRequest {}).await.map(|r| r.into_inner())
}

async fn list(api: &mut RealizeClient<Channel>, dir: &str) -> Result<Vec<String>, tonic::Status> {
    let mut stream = api
        .list(pb::ListRequest {
            dir: dir.into(),
            prefix: String::new(),
            include_partial: false,
        })
        .await?
        .into_inner();
    let mut paths = Vec::new();
    while let Some(entry) = stream.message().await? {
        paths.push(entry.path);
    }
    Ok(paths)
}

/// Checks that each of `lines` (given as parts of one line) was logged, in this order.
fn assert_logged_in_order(daemon: &Daemon, lines: &[&[&str]]) {
    let log = daemon.log();
    let mut from = 0;
    for parts in lines {
        let found = log
            .lines()
            .enumerate()
            .skip(from)
            .find(|(_, line)| parts.iter().all(|part| line.contains(part)));
        match found {
            Some((index, _)) => from = index + 1,
            None => panic!("no line with {parts:?} after line {from} in:\n{log}"),
        }
    }
}

/// The log line of every phase of a shutdown that ends cleanly.
fn assert_clean_shutdown(daemon: &Daemon, calls: usize, grace: &str, calls_line: &[&str]) {
    let calls = format!("calls={calls}");
    let grace = format!("grace_period={grace}");
    assert_logged_in_order(
        daemon,
        &[
            &["shutdown: stopped accepting connections", &calls, &grace],
            calls_line,
            &["shutdown: closing connections"],
            &["shutdown: connections closed"],
            &["shutdown complete"],
        ],
    );
}

/// A Write call whose data the test sends chunk by chunk; the request stream
/// stays open until `tx` is dropped.
struct OpenWrite {
    tx: mpsc::Sender<pb::WriteRequest>,
    response: JoinHandle<Result<tonic::Response<pb::WriteResponse>, tonic::Status>>,
}

impl OpenWrite {
    fn start(api: &RealizeClient<Channel>, dir: &str, path: &str, file_size: u64) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let header = pb::WriteRequest {
            message: Some(pb::write_request::Message::Header(pb::WriteHeader {
                dir: dir.into(),
                path: path.into(),
                offset: 0,
                file_size,
                whole_file: false,
                digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
            })),
        };
        tx.try_send(header).unwrap();
        let mut api = api.clone();
        let response = tokio::spawn(async move { api.write(ReceiverStream::new(rx)).await });
        OpenWrite { tx, response }
    }

    async fn send(&self, data: &[u8]) {
        for chunk in data.chunks(CHUNK) {
            let message = pb::WriteRequest {
                message: Some(pb::write_request::Message::Data(Bytes::copy_from_slice(
                    chunk,
                ))),
            };
            self.tx.send(message).await.unwrap();
        }
    }
}

/// The partial file holds a prefix of `data` (what the daemon had written),
/// and no final file exists. A daemon stopped before it opened the file left
/// none, which is the empty prefix.
fn assert_partial_prefix(root: &Path, name: &str, data: &[u8]) {
    assert!(!root.join(name).exists(), "a final file appeared");
    let partial = match std::fs::read(root.join(format!(".{name}.part"))) {
        Ok(partial) => partial,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read the partial file: {e}"),
    };
    assert!(partial.len() <= data.len());
    assert!(
        partial == data[..partial.len()],
        "the partial file is not a prefix of what was sent"
    );
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// A bare HTTP/2 client on TLS that only answers SETTINGS and PING, so the
/// test sees the daemon's frames and how the TLS stream ends. Returns once the
/// daemon serves the connection; the task yields the frame types received
/// until a clean end of the TLS stream, or the read error.
async fn bare_connection(
    daemon: &Daemon,
    client: &KeyFiles,
) -> JoinHandle<std::io::Result<Vec<u8>>> {
    let tls = client_config(&client.key, [daemon.key.public_key()]).unwrap();
    let tcp = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    tls.flush().await.unwrap();
    // The daemon's SETTINGS: from here on the daemon counts the connection.
    let mut first = [0u8; 9];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(first[3], SETTINGS);
    let mut rest = vec![0u8; usize::from(first[2])];
    tls.read_exact(&mut rest).await.unwrap();
    tokio::spawn(async move {
        let mut seen = vec![SETTINGS];
        tls.write_all(&frame(SETTINGS, ACK, &[])).await?;
        loop {
            let mut header = [0u8; 9];
            // rustls reports a clean end (close_notify received) as 0 bytes,
            // and a bare TCP close as an error.
            if tls.read(&mut header[..1]).await? == 0 {
                return Ok(seen);
            }
            tls.read_exact(&mut header[1..]).await?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            tls.read_exact(&mut payload).await?;
            let (kind, flags) = (header[3], header[4]);
            seen.push(kind);
            if kind == SETTINGS && flags & ACK == 0 {
                tls.write_all(&frame(SETTINGS, ACK, &[])).await?;
            }
            if kind == PING && flags & ACK == 0 {
                tls.write_all(&frame(PING, ACK, &payload)).await?;
            }
            tls.flush().await?;
        }
    })
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn sigterm_when_idle_closes_connections_cleanly_and_exits_0() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    sample_tree(&src);
    let before = manifest(&src);
    let mut daemon = Daemon::start(s.work.path(), &[("d", &src)], &s.client).await;
    let bare = bare_connection(&daemon, &s.client).await;
    let mut api = api(&daemon, &s.client).await;
    info(&mut api).await.unwrap();

    daemon.signal(Signal::TERM);
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_clean_shutdown(&daemon, 0, "10s", &["shutdown: all calls finished"]);
    assert!(
        daemon
            .log_line(&["shutdown: closing connections", "connections=2"])
            .is_some(),
        "{}",
        daemon.log()
    );
    let frames = bare
        .await
        .unwrap()
        .expect("the connection did not end with TLS close_notify");
    assert!(frames.contains(&GOAWAY), "no GOAWAY among {frames:?}");
    assert!(info(&mut api).await.is_err());

    assert_eq!(manifest(&src), before);
    let daemon = Daemon::start(s.work.path(), &[("d", &src)], &s.client).await;
    s.complete_move(
        Side::Addr(&daemon.addr),
        Side::Path(&dst),
        "d",
        &[&daemon.key.public],
    )
    .await;
    assert_eq!(manifest(&dst), before);
    daemon.stop().await;
}

#[tokio::test]
async fn sigterm_during_a_write_lets_it_finish_within_the_grace_period() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    let data = random_bytes(11, 4 * 1024 * 1024 + 5);
    write_file(&src, "big.bin", &data);
    let mut daemon = Daemon::start_with(s.work.path(), &[("d", &dst)], &s.client, |c| {
        c.rust_log = DEBUG_LOG.into();
    })
    .await;
    let channel = channel(&daemon, &s.client).await.unwrap();
    let mut api = RealizeClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let write = OpenWrite::start(&api, "d", "big.bin", data.len() as u64);
    write.send(&data[..data.len() / 2]).await;
    assert!(
        daemon
            .wait_for_line(&["method=\"Write\"", "call started"])
            .await
    );

    daemon.signal(Signal::TERM);
    assert!(
        daemon
            .wait_for_line(&["shutdown: stopped accepting connections", "calls=1"])
            .await,
        "{}",
        daemon.log()
    );
    // During the grace period: no new connection, no new call, the Write goes on.
    assert!(tokio::net::TcpStream::connect(&daemon.addr).await.is_err());
    let serving = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status(), ServingStatus::NotServing);
    let refused = info(&mut api).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "realized is shutting down");
    write.send(&data[data.len() / 2..]).await;
    drop(write.tx);
    let written = write.response.await.unwrap().unwrap().into_inner();
    assert_eq!(written.bytes_written, data.len() as u64);

    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_clean_shutdown(&daemon, 1, "10s", &["shutdown: all calls finished"]);
    // Written whole, but only Finish makes a final file.
    assert_partial_prefix(&dst, "big.bin", &data);
    assert_eq!(std::fs::read(dst.join(".big.bin.part")).unwrap(), data);

    let daemon = Daemon::start(s.work.path(), &[("d", &dst)], &s.client).await;
    s.complete_move(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        "d",
        &[&daemon.key.public],
    )
    .await;
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), data);
    assert!(manifest(&src).is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn sigterm_during_a_write_cancels_it_at_the_end_of_the_grace_period() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    let data = random_bytes(12, 4 * 1024 * 1024);
    write_file(&src, "big.bin", &data);
    let mut daemon = Daemon::start_with(s.work.path(), &[("d", &dst)], &s.client, |c| {
        c.rust_log = DEBUG_LOG.into();
        c.grace_period = Some("1s".into());
    })
    .await;
    let api = api(&daemon, &s.client).await;
    let write = OpenWrite::start(&api, "d", "big.bin", data.len() as u64);
    write.send(&data[..data.len() / 4]).await;
    assert!(
        daemon
            .wait_for_line(&["method=\"Write\"", "call started"])
            .await
    );

    // The client sends nothing more and keeps its stream open: the Write
    // cannot finish, and is cancelled when the grace period is over.
    daemon.signal(Signal::TERM);
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_clean_shutdown(
        &daemon,
        1,
        "1s",
        &[
            "shutdown: grace period over, cancelling the calls left",
            "calls=1",
        ],
    );
    assert!(
        daemon
            .log_line(&[
                "method=\"Write\"",
                "call cancelled",
                "realized is shutting down"
            ])
            .is_some(),
        "{}",
        daemon.log()
    );
    let refused = write.response.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "realized is shutting down");
    // What was written is there, and was neither truncated nor extended.
    assert_partial_prefix(&dst, "big.bin", &data[..data.len() / 4]);
    drop(write.tx);

    let daemon = Daemon::start(s.work.path(), &[("d", &dst)], &s.client).await;
    s.complete_move(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        "d",
        &[&daemon.key.public],
    )
    .await;
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), data);
    assert!(manifest(&src).is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn sigterm_during_a_read_resets_it_if_the_client_does_not_read() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    write_file(&src, "small.txt", b"small\n");
    // Far more than HTTP/2 flow control lets the daemon send unread.
    let big = std::fs::File::create(src.join("big.bin")).unwrap();
    big.set_len(32 * 1024 * 1024).unwrap();
    drop(big);
    let before = manifest(&src);
    let mut daemon = Daemon::start_with(s.work.path(), &[("d", &src)], &s.client, |c| {
        c.grace_period = Some("1s".into());
    })
    .await;
    let mut api = api(&daemon, &s.client).await;
    // The call is in flight once its response has started; the test then
    // reads nothing, so the daemon's sending stalls.
    let mut data = api
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

    daemon.signal(Signal::TERM);
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_clean_shutdown(
        &daemon,
        1,
        "1s",
        &[
            "shutdown: grace period over, cancelling the calls left",
            "calls=1",
        ],
    );
    // The stalled call is reset, and the connection still closes cleanly.
    assert_logged_in_order(
        &daemon,
        &[
            &["shutdown: closing connections", "connections=1"],
            &["connection did not close within 3s: resetting its calls"],
            &["call reset"],
            &["connection closed"],
            &["shutdown: connections closed"],
        ],
    );
    assert!(daemon.log_line(&["dropped"]).is_none(), "{}", daemon.log());
    let mut received = 0;
    let end = loop {
        match data.message().await {
            Ok(Some(chunk)) => received += chunk.data.len(),
            end => break end,
        }
    };
    assert!(end.is_err(), "the cut stream ended as if complete");
    assert!(received < 32 * 1024 * 1024);

    assert_eq!(manifest(&src), before);
    let daemon = Daemon::start(s.work.path(), &[("d", &src)], &s.client).await;
    s.complete_move(
        Side::Addr(&daemon.addr),
        Side::Path(&dst),
        "d",
        &[&daemon.key.public],
    )
    .await;
    assert_eq!(manifest(&dst), before);
    daemon.stop().await;
}

#[tokio::test]
async fn sigterm_during_a_hash_of_a_large_file() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    // What an interrupted copy of a large file leaves, with the source beside
    // it: the next run hashes the partial file to resume.
    let size = 512 * 1024 * 1024;
    for path in [src.join("big.bin"), dst.join(".big.bin.part")] {
        std::fs::File::create(path).unwrap().set_len(size).unwrap();
    }
    let mut daemon = Daemon::start_with(s.work.path(), &[("d", &dst)], &s.client, |c| {
        c.rust_log = DEBUG_LOG.into();
        c.grace_period = Some("0s".into());
    })
    .await;
    let mut api = api(&daemon, &s.client).await;
    let hash = tokio::spawn(async move {
        api.hash(pb::HashRequest {
            dir: "d".into(),
            path: "big.bin".into(),
            range: None,
            kind: pb::FileKind::Partial.into(),
            algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await
    });
    assert!(
        daemon
            .wait_for_line(&["method=\"Hash\"", "call started"])
            .await
    );

    daemon.signal(Signal::TERM);
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    match hash.await.unwrap() {
        // Hashing takes far longer than a signal, so this is what happens...
        Err(refused) => {
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            assert_clean_shutdown(
                &daemon,
                1,
                "0s",
                &[
                    "shutdown: grace period over, cancelling the calls left",
                    "calls=1",
                ],
            );
            assert!(
                daemon
                    .log_line(&["method=\"Hash\"", "call cancelled"])
                    .is_some(),
                "{}",
                daemon.log()
            );
        }
        // ...but a hash that did finish first must be right, and in the grace period.
        Ok(response) => {
            let mut zeros = realize_core::Hasher::new(realize_core::DigestAlgorithm::Sha256);
            for _ in 0..size / CHUNK as u64 {
                zeros.update(&[0u8; CHUNK]);
            }
            let digest = response.into_inner().digest.map(|d| d.value);
            assert_eq!(digest.as_deref(), Some(&zeros.finish().value[..]));
            assert_clean_shutdown(&daemon, 1, "0s", &["shutdown: all calls finished"]);
        }
    }
    assert_eq!(
        std::fs::metadata(dst.join(".big.bin.part")).unwrap().len(),
        size
    );
    assert!(!dst.join("big.bin").exists());

    let daemon = Daemon::start(s.work.path(), &[("d", &dst)], &s.client).await;
    s.complete_move(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        "d",
        &[&daemon.key.public],
    )
    .await;
    assert_eq!(std::fs::metadata(dst.join("big.bin")).unwrap().len(), size);
    assert!(manifest(&src).is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn a_second_signal_during_the_grace_period_exits_at_once() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    let data = random_bytes(13, 2 * 1024 * 1024);
    write_file(&src, "big.bin", &data);
    let mut daemon = Daemon::start_with(s.work.path(), &[("d", &dst)], &s.client, |c| {
        c.rust_log = DEBUG_LOG.into();
        c.grace_period = Some("1h".into());
    })
    .await;
    let api = api(&daemon, &s.client).await;
    let write = OpenWrite::start(&api, "d", "big.bin", data.len() as u64);
    write.send(&data[..data.len() / 2]).await;
    assert!(
        daemon
            .wait_for_line(&["method=\"Write\"", "call started"])
            .await
    );

    daemon.signal(Signal::TERM);
    assert!(
        daemon
            .wait_for_log("shutdown: stopped accepting connections")
            .await
    );
    daemon.signal(Signal::INT);
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(130), "{}", daemon.log());
    assert_logged_in_order(
        &daemon,
        &[
            &[
                "shutdown: stopped accepting connections",
                "calls=1",
                "grace_period=1h",
            ],
            &["shutdown: second request, exiting at once"],
        ],
    );
    assert!(daemon.log_line(&["shutdown complete"]).is_none());
    assert_partial_prefix(&dst, "big.bin", &data[..data.len() / 2]);
    drop(write.tx);

    let daemon = Daemon::start(s.work.path(), &[("d", &dst)], &s.client).await;
    s.complete_move(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        "d",
        &[&daemon.key.public],
    )
    .await;
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), data);
    daemon.stop().await;
}

/// Rewrites the config and sends SIGHUP; waits until the reload logged `outcome`.
async fn reload(daemon: &mut Daemon, config: DaemonConfig, outcome: &str) {
    const ATTEMPT: &str = "reload: reading the config file";
    let attempts = daemon.log().matches(ATTEMPT).count();
    daemon.write_config(config);
    daemon.signal(Signal::HUP);
    let logged = daemon
        .wait_until(|log| {
            log.matches(ATTEMPT).count() > attempts
                && log
                    .rfind(ATTEMPT)
                    .is_some_and(|last| log[last..].contains(outcome))
        })
        .await;
    assert!(logged, "no {outcome:?} after SIGHUP:\n{}", daemon.log());
}

#[tokio::test]
async fn sighup_adds_and_removes_directories_and_changes_the_log_level() {
    let s = Setup::new();
    let (a, b) = (s.dir("a"), s.dir("b"));
    write_file(&a, "in-a.txt", b"a\n");
    write_file(&b, "in-b.txt", b"b\n");
    let mut daemon = Daemon::start(s.work.path(), &[("a", &a)], &s.client).await;
    let mut api = api(&daemon, &s.client).await;
    let unknown = list(&mut api, "b").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(daemon.log_line(&["call started"]).is_none());

    let mut config = daemon.config.clone();
    config.dirs.push(("b".into(), b.clone()));
    config.log_level = Some(DEBUG_LOG.into());
    reload(&mut daemon, config.clone(), "reload: config applied").await;
    assert!(
        daemon
            .log_line(&["reload: config applied", "dirs=[\"a\", \"b\"]"])
            .is_some(),
        "{}",
        daemon.log()
    );
    // On the connection opened before the reload.
    assert_eq!(list(&mut api, "b").await.unwrap(), ["in-b.txt"]);
    assert!(
        daemon
            .wait_for_line(&["method=\"List\"", "call started"])
            .await
    );

    config.dirs.retain(|(id, _)| id != "a");
    reload(&mut daemon, config, "reload: config applied").await;
    let removed = list(&mut api, "a").await.unwrap_err();
    assert_eq!(removed.code(), tonic::Code::InvalidArgument);
    assert!(
        removed.message().contains("unknown directory a"),
        "{removed:?}"
    );
    assert_eq!(list(&mut api, "b").await.unwrap(), ["in-b.txt"]);
    assert_eq!(manifest(&a).len(), 1, "a removed directory is left alone");

    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn sighup_removing_a_peer_closes_its_connections_and_refuses_it() {
    let s = Setup::new();
    let other = KeyFiles::new(s.work.path(), "other");
    let root = s.dir("root");
    write_file(&root, "file.txt", b"file\n");
    let mut daemon = Daemon::start_with(s.work.path(), &[("d", &root)], &s.client, |c| {
        c.peers.push(("other".into(), other.public.clone()));
    })
    .await;
    let mut kept = api(&daemon, &s.client).await;
    let mut removed = api(&daemon, &other).await;
    info(&mut kept).await.unwrap();
    info(&mut removed).await.unwrap();

    let mut config = daemon.config.clone();
    config.peers.retain(|(id, _)| id != "other");
    reload(&mut daemon, config, "reload: config applied").await;
    assert!(
        daemon
            .log_line(&[
                "reload: config applied",
                "peers=[\"client\"]",
                "closed_connections=1"
            ])
            .is_some(),
        "{}",
        daemon.log()
    );
    assert!(
        daemon
            .wait_for_line(&["peer=other", "connection closed"])
            .await,
        "{}",
        daemon.log()
    );
    assert!(info(&mut removed).await.is_err());
    let refused = api_as(&daemon, &other).await.unwrap_err();
    assert!(
        matches!(refused, ConnectError::RefusedByServer { .. }),
        "{refused:?}"
    );
    assert_eq!(list(&mut kept, "d").await.unwrap(), ["file.txt"]);

    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn sighup_with_an_invalid_config_keeps_the_old_one() {
    let s = Setup::new();
    let root = s.dir("root");
    write_file(&root, "file.txt", b"file\n");
    let mut daemon = Daemon::start(s.work.path(), &[("d", &root)], &s.client).await;
    let mut api = api(&daemon, &s.client).await;
    let good = daemon.config.clone();

    let mut bad_grace = good.clone();
    bad_grace.grace_period = Some("soon".into());
    reload(&mut daemon, bad_grace, "reload failed").await;
    assert!(
        daemon
            .log_line(&[
                "reload failed, keeping the current config",
                "[shutdown] grace_period: invalid duration \"soon\""
            ])
            .is_some(),
        "{}",
        daemon.log()
    );

    // Parses, but a root does not exist: refused whole, so the valid new
    // directory next to it is not served either.
    let mut missing_root = good.clone();
    missing_root.dirs.push(("new".into(), s.dir("new")));
    missing_root
        .dirs
        .push(("gone".into(), s.work.path().join("gone")));
    reload(&mut daemon, missing_root, "reload failed").await;
    assert!(
        daemon
            .log_line(&["reload failed", "directory gone: root", "is not usable"])
            .is_some(),
        "{}",
        daemon.log()
    );

    assert_eq!(list(&mut api, "d").await.unwrap(), ["file.txt"]);
    assert_eq!(
        list(&mut api, "new").await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let mut fresh = api_as(&daemon, &s.client).await.unwrap();
    assert_eq!(list(&mut fresh, "d").await.unwrap(), ["file.txt"]);

    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait_exit().await.code(), Some(0));
    // The grace period in force was still the old one.
    assert!(daemon.log_line(&["grace_period=10s"]).is_some());
}

#[tokio::test]
async fn sighup_with_a_changed_address_warns_and_keeps_listening() {
    let s = Setup::new();
    let root = s.dir("root");
    write_file(&root, "file.txt", b"file\n");
    let mut daemon = Daemon::start(s.work.path(), &[("d", &root)], &s.client).await;
    let mut config = daemon.config.clone();
    config.address = "127.0.0.1:1".into();
    reload(&mut daemon, config, "reload: config applied").await;
    let warning = format!(
        "reload: address changed from 127.0.0.1:0 to 127.0.0.1:1: it takes effect at the next restart, still listening on {}",
        daemon.addr
    );
    assert!(
        daemon.log_line(&["WARN", &warning]).is_some(),
        "{}",
        daemon.log()
    );

    let mut api = api(&daemon, &s.client).await;
    assert_eq!(list(&mut api, "d").await.unwrap(), ["file.txt"]);

    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait_exit().await.code(), Some(0));
}

/// A config that stops the daemon from starting is said once on stderr,
/// in the log's format, and the daemon exits 1.
#[test]
fn a_start_up_error_is_said_once() {
    let work = TempDir::new().unwrap();
    KeyFiles::new(work.path(), "daemon");
    let missing_root = work.path().join("no-such-root");
    let configs = [
        (
            "bad.toml",
            "privkey = \"daemon.key\"\n[dirs]\nbad".to_string(),
            "TOML parse error",
        ),
        (
            "missing.toml",
            format!(
                "privkey = \"daemon.key\"\n[dirs]\nd = {:?}\n[peers.c]\npublic_key_file = \"daemon.pub.pem\"\n",
                missing_root.display().to_string()
            ),
            "no-such-root",
        ),
    ];
    for (name, text, what) in configs {
        let path = work.path().join(name);
        std::fs::write(&path, text).unwrap();
        for format in ["text", "json"] {
            let output = std::process::Command::new(realized_bin())
                .arg("--config")
                .arg(&path)
                .args(["--address", "127.0.0.1:0", "--log-format", format])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{name} {format}: {err}");
            assert_eq!(err.matches(what).count(), 1, "{name} {format}: {err}");
            if format == "text" {
                assert!(err.starts_with("realized: error: "), "{name}: {err}");
            } else {
                let last = err.lines().last().unwrap();
                let event: serde_json::Value = serde_json::from_str(last).unwrap();
                assert_eq!(event["level"], "ERROR", "{name}: {err}");
            }
        }
    }
}

/// Two clients move the same paths into one daemon while SIGHUP reloads it
/// every 50 ms: every file ends whole, once, with one client's content, and
/// both sources are emptied.
#[tokio::test]
async fn a_sighup_storm_during_concurrent_writes_of_the_same_paths_loses_nothing() {
    let s = Setup::new();
    let dst = s.dir("dst");
    let sources: Vec<PathBuf> = (1..=2u64)
        .map(|client| {
            let src = s.dir(&format!("src{client}"));
            for i in 0..12u64 {
                let size = 1000 + (i as usize) * 150_000;
                write_file(
                    &src,
                    &format!("f{i}.bin"),
                    &random_bytes(client * 100 + i, size),
                );
            }
            src
        })
        .collect();
    let versions: Vec<_> = sources.iter().map(|src| manifest(src)).collect();
    let daemon = Daemon::start(s.work.path(), &[("d", &dst)], &s.client).await;
    let storm = tokio_util::sync::CancellationToken::new();
    let reloads = {
        let (storm, pid) = (storm.clone(), daemon.pid());
        tokio::spawn(async move {
            let mut sent = 0;
            while !storm.is_cancelled() {
                let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
                rustix::process::kill_process(pid, Signal::HUP).unwrap();
                sent += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            sent
        })
    };
    let moves: Vec<_> = sources
        .iter()
        .map(|src| {
            let args = move_args(
                Side::Path(src),
                Side::Addr(&daemon.addr),
                &["d"],
                &s.client,
                &[&daemon.key.public],
                s.work.path(),
            );
            tokio::spawn(async move { realize(&os(&args)).await })
        })
        .collect();
    for moved in moves {
        let output = moved.await.unwrap();
        assert!(
            output.status.success(),
            "{}\ndaemon log:\n{}",
            stderr(&output),
            daemon.log()
        );
    }
    storm.cancel();
    let sent = reloads.await.unwrap();
    assert!(sent > 1, "only {sent} reloads");
    for src in &sources {
        assert!(manifest(src).is_empty(), "{:?}", manifest(src));
    }
    let landed = manifest(&dst);
    assert_eq!(landed.len(), 12, "{landed:?}");
    for (path, digest) in &landed {
        assert!(
            versions.iter().any(|v| v.get(path) == Some(digest)),
            "{path} holds neither client's content"
        );
    }
    daemon.stop().await;
}

/// Partial files nobody wrote for `partial_max_age` go at start, each with
/// an audit line; fresh ones stay for the next run to resume.
#[tokio::test]
async fn stale_partial_files_are_removed_at_start() {
    let s = Setup::new();
    let root = s.dir("root");
    write_file(
        &root,
        "a/.stale.bin.part",
        b"left by a move that never came back",
    );
    write_file(&root, "a/.fresh.bin.part", b"a move resumes it soon");
    std::fs::File::options()
        .write(true)
        .open(root.join("a/.stale.bin.part"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    let daemon = Daemon::start_with(s.work.path(), &[("d", &root)], &s.client, |c| {
        c.limits.push("partial_max_age = \"1h\"".into());
    })
    .await;
    assert!(
        daemon
            .wait_for_line(&["INFO", "stale partial file removed", "dir=d", "a/stale.bin"])
            .await,
        "{}",
        daemon.log()
    );
    assert!(!root.join("a/.stale.bin.part").exists());
    assert!(root.join("a/.fresh.bin.part").exists());
    daemon.stop().await;
}
