//! The attacks of issue 14 (arithmetic on client numbers, memory, special
//! files, deadlines), each performed through the real daemon over TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use realize_net::connection::connect;
use realize_net::throttle::SendLimit;
use realize_net::tls::client_config;
use realize_proto::pb;
use realize_proto::pb::realize_client::RealizeClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::util::*;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any call of these tests may take before it counts as hung.
const HUNG: Duration = Duration::from_secs(60);
/// The largest file ReadFiles reads whole (realize-core's MAX_WHOLE_FILE).
const WHOLE: usize = 256 * 1024;

async fn stamp(api: &mut RealizeClient<Channel>, path: &str) -> pb::FileStamp {
    let hash = api.hash(pb::HashRequest {
        dir: "d".into(),
        path: path.into(),
        range: None,
        kind: 0,
        algorithm: pb::DigestAlgorithm::Sha256.into(),
    });
    hash.await.unwrap().into_inner().stamp.unwrap()
}

fn refs(path: &str, stamp: pb::FileStamp, count: usize) -> Vec<pb::FileRef> {
    let one = pb::FileRef {
        path: path.into(),
        stamp: Some(stamp),
    };
    vec![one; count]
}

fn read_only(config: &mut DaemonConfig) {
    config
        .peer_options
        .push(("client".into(), "access = \"read-only\"".into()));
}

#[tokio::test]
async fn read_files_sizes_whose_sum_overflows_are_refused() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "f.bin", &random_bytes(14, WHOLE));
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, read_only).await;
    let mut api = api(&daemon, &client).await;
    let real = stamp(&mut api, "f.bin").await;
    // 1023 real refs and one whose size makes the u64 sum wrap to exactly 0.
    let mut files = refs("f.bin", real, 1023);
    let wrapping = pb::FileStamp {
        size: 0u64.wrapping_sub(1023 * WHOLE as u64),
        ..real
    };
    files.extend(refs("f.bin", wrapping, 1));
    let result = api
        .read_files(pb::ReadFilesRequest {
            dir: "d".into(),
            files,
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await;
    let status = result.expect_err("the call should have been refused");
    assert!(
        matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .contains("more than 2^64 bytes of files in one ReadFiles call"),
        "{status:?}"
    );
    // The daemon serves on.
    assert_eq!(stamp(&mut api, "f.bin").await, real);
    daemon.stop().await;
}

/// What became of one call of the memory attack.
enum Outcome {
    /// Served: its stream, of which only the first message was read.
    Held(Box<tonic::Streaming<pb::ReadFilesResponse>>),
    Refused(tonic::Status),
}

#[tokio::test]
async fn a_peer_cannot_make_the_daemon_hold_more_than_its_memory_budget() {
    // One connection per call, each with its own HTTP/2 window (calls left
    // unread on one connection would starve each other's first message),
    // and with the first connection, the peer's 16 allowed: the budget
    // spans them all.
    const CALLS: usize = 15;
    const FILES_PER_CALL: usize = 64; // 16 MiB: the most one ReadFiles call may ask
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "f.bin", &random_bytes(15, WHOLE));
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, read_only).await;
    let mut api = api(&daemon, &client).await;
    let real = stamp(&mut api, "f.bin").await;

    // Sampled until the attack is over: the peak is what matters.
    let (pid, peak, done) = (
        daemon.pid(),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(vm_rss(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut apis = Vec::new();
    for _ in 0..CALLS {
        apis.push(self::api(&daemon, &client).await);
    }
    let calls: Vec<_> = apis
        .into_iter()
        .map(|mut api| {
            let files = refs("f.bin", real, FILES_PER_CALL);
            tokio::spawn(async move {
                let request = pb::ReadFilesRequest {
                    dir: "d".into(),
                    files,
                    digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
                };
                match api.read_files(request).await {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        let first = stream.message().await.unwrap().unwrap();
                        assert_eq!(first.data.len(), WHOLE);
                        Outcome::Held(Box::new(stream))
                    }
                    Err(status) => Outcome::Refused(status),
                }
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for call in calls {
        match tokio::time::timeout(HUNG, call).await.unwrap().unwrap() {
            Outcome::Held(stream) => held.push(stream),
            Outcome::Refused(status) => refused.push(status),
        }
    }
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "memory attack: {} calls held, {} refused, realized peak VmRSS {} MB",
        held.len(),
        refused.len(),
        peak / 1_000_000
    );
    // The default max_memory_per_peer (64 MiB) holds four such calls.
    assert!((1..=4).contains(&held.len()), "{} calls held", held.len());
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("max_memory_per_peer"),
            "{status:?}"
        );
    }
    assert!(peak < 200_000_000, "realized reached {peak} bytes");

    // Once the held calls are gone, their memory is the peer's again.
    drop(held);
    let mut again = api
        .read_files(pb::ReadFilesRequest {
            dir: "d".into(),
            files: refs("f.bin", real, FILES_PER_CALL),
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut answers = 0;
    while let Some(answer) = again.message().await.unwrap() {
        assert_eq!(answer.code, tonic::Code::Ok as i32, "{}", answer.message);
        answers += 1;
    }
    assert_eq!(answers, FILES_PER_CALL);
    daemon.stop().await;
}

#[tokio::test]
async fn delete_refuses_a_symlink_and_a_fifo_and_leaves_them() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "target.txt", b"pointed at");
    std::os::unix::fs::symlink(root.join("target.txt"), root.join("link")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;
    for path in ["link", "fifo"] {
        let deleted = api
            .delete(pb::DeleteRequest {
                dir: "d".into(),
                path: path.into(),
                if_stamp: None,
            })
            .await;
        let status = deleted.expect_err("a special file was deleted");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("not a regular file"),
            "{status:?}"
        );
        assert!(root.join(path).symlink_metadata().is_ok(), "{path} is gone");
    }
    assert_eq!(
        std::fs::read(root.join("target.txt")).unwrap(),
        b"pointed at"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn call_timeout_caps_a_longer_client_deadline() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.limits.push("call_timeout = \"2s\"".into());
    })
    .await;
    let mut api = api(&daemon, &client).await;
    // A Write that sends its header and a chunk, then stalls, under a 1 h deadline.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = pb::WriteHeader {
        dir: "d".into(),
        path: "stalled.bin".into(),
        offset: 0,
        file_size: 100,
        whole_file: false,
        digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
    };
    tx.send(pb::WriteRequest {
        message: Some(pb::write_request::Message::Header(header)),
    })
    .await
    .unwrap();
    tx.send(pb::WriteRequest {
        message: Some(pb::write_request::Message::Data(Bytes::from(vec![5; 10]))),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.set_timeout(Duration::from_secs(3600));
    let result = tokio::time::timeout(HUNG, api.write(request))
        .await
        .expect("the stalled Write outlived call_timeout");
    let status = result.expect_err("a stalled Write succeeded");
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    assert!(status.message().contains("deadline of 2s"), "{status:?}");
    drop(tx);
    daemon.stop().await;
}

/// A gRPC request body that declares one message of `len` bytes, sends all
/// but the last 64 KiB of it, then stalls: tonic gathers a message whole
/// before decoding it, so each such call used to hold up to
/// `max_message_size` in the daemon.
struct StalledMessage {
    len: u32,
    sent: u32,
    zeros: Bytes,
}

impl http_body::Body for StalledMessage {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let data = if self.sent == 0 {
            let mut prefix = vec![0];
            prefix.extend_from_slice(&self.len.to_be_bytes());
            Bytes::from(prefix)
        } else if self.sent + 2 * self.zeros.len() as u32 <= self.len {
            self.zeros.clone()
        } else {
            // Never woken: the message never ends.
            return std::task::Poll::Pending;
        };
        self.sent += data.len() as u32;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }
}

#[tokio::test]
async fn messages_still_arriving_count_in_the_peers_memory_budget() {
    const CONNECTIONS: usize = 8;
    const CALLS_PER_CONNECTION: usize = 32;
    const MESSAGE: u32 = (4 << 20) - 64; // just under the default max_message_size
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "f.bin", b"signed");
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, read_only).await;
    let zeros = Bytes::from(vec![0u8; 64 * 1024]);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let tls = client_config(&client.key, [daemon.key.public_key()]).unwrap();
        let channel = connect(&daemon.addr, tls, TIMEOUT, SendLimit::new(None))
            .await
            .unwrap();
        for _ in 0..CALLS_PER_CONNECTION {
            let body = StalledMessage {
                len: MESSAGE,
                sent: 0,
                zeros: zeros.clone(),
            };
            let request = http::Request::post("http://realize/realize.v1.Realize/Diff")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(tonic::body::Body::new(body))
                .unwrap();
            let channel = channel.clone();
            calls.spawn(async move {
                use tower::ServiceExt;
                let response = channel.oneshot(request).await.unwrap();
                let header = |name| {
                    response
                        .headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_string())
                };
                (header("grpc-status"), header("grpc-message"))
            });
        }
    }
    // Every call that finds no room is refused after the budget's wait; the
    // ones that fit stay stalled, holding their messages.
    let pid = daemon.pid();
    let mut peak = 0;
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + HUNG;
    while refused < CONNECTIONS * CALLS_PER_CONNECTION - 16 {
        // Memory is sampled while the calls are waited for: the peak is what matters.
        let rss = vm_rss(pid);
        peak = peak.max(rss);
        assert!(
            rss < 200_000_000,
            "realized reached {rss} bytes, {refused} calls refused"
        );
        let Ok(next) = tokio::time::timeout(Duration::from_millis(50), calls.join_next()).await
        else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "calls neither served nor refused"
            );
            continue;
        };
        let (status, message) = next.unwrap().unwrap();
        assert_eq!(status.as_deref(), Some("8"), "{message:?}"); // RESOURCE_EXHAUSTED
        assert!(
            message.is_some_and(|m| m.contains("max_memory_per_peer")),
            "refused for another reason"
        );
        refused += 1;
    }
    peak = peak.max(vm_rss(pid));
    eprintln!(
        "messages in transit: {refused} calls refused, realized peak VmRSS {} MB",
        peak / 1_000_000
    );
    // 64 MiB of messages, what the HTTP/2 windows of 8 connections may hold,
    // and the daemon itself; without the budget, 256 calls held ~1 GiB.
    assert!(peak < 200_000_000, "realized reached {peak} bytes");
    calls.abort_all();
    daemon.stop().await;
}

fn short_stall(config: &mut DaemonConfig) {
    config.limits.push("stall_timeout = \"1s\"".into());
}

/// A Write whose client stops sending mid-stream ends at `stall_timeout`
/// with DEADLINE_EXCEEDED, keeping what it wrote for a resume.
#[tokio::test]
async fn a_write_whose_client_goes_silent_ends_at_the_stall_timeout() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, short_stall).await;
    let mut api = api(&daemon, &client).await;
    let header = pb::WriteRequest {
        message: Some(pb::write_request::Message::Header(pb::WriteHeader {
            dir: "d".into(),
            path: "f.bin".into(),
            offset: 0,
            file_size: 1 << 20,
            whole_file: false,
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })),
    };
    let chunk = pb::WriteRequest {
        message: Some(pb::write_request::Message::Data(Bytes::from(vec![7; 1000]))),
    };
    // Two messages, then silence with the stream still open.
    let stream = futures::StreamExt::chain(
        futures::stream::iter([header, chunk]),
        futures::stream::pending(),
    );
    let status = tokio::time::timeout(HUNG, api.write(stream))
        .await
        .expect("the stalled Write was never ended")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains("no data from the client for 1s (stall_timeout)"),
        "{status:?}"
    );
    assert_eq!(
        std::fs::read(root.join(".f.bin.part")).unwrap(),
        vec![7; 1000]
    );
    daemon.stop().await;
}

/// A WriteFiles call idle between files is not stalled: `realize` keeps one
/// open for a whole move, whatever the large files in between take.
#[tokio::test]
async fn a_write_files_call_idle_between_files_is_not_stalled() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, short_stall).await;
    let mut api = api(&daemon, &client).await;
    let (files, receive) = tokio::sync::mpsc::channel(1);
    let mut answers = api
        .write_files(tokio_stream::wrappers::ReceiverStream::new(receive))
        .await
        .unwrap()
        .into_inner();
    for name in ["a", "b"] {
        let data = name.as_bytes();
        files
            .send(pb::WriteFilesRequest {
                dir: "d".into(),
                path: name.into(),
                data: Bytes::copy_from_slice(data),
                digest: Some(realize_core::testing::sha256(data).into()),
            })
            .await
            .unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.code, 0, "{}", answer.message);
        // Idle for longer than stall_timeout: the point of the test.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"b");
    daemon.stop().await;
}

/// The WriteFiles call a client keeps for small files ends once no file
/// has come for a moment: it no longer holds one of the connection's calls
/// for as long as the client lives, and the next file opens a new one.
#[tokio::test]
async fn an_idle_write_files_call_ends_and_the_next_file_opens_another() {
    use realize_core::Service;
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.limits.push("max_calls_per_connection = 1".into());
    })
    .await;
    let tls = client_config(&client.key, [daemon.key.public_key()]).unwrap();
    let channel = connect(&daemon.addr, tls, TIMEOUT, SendLimit::new(None))
        .await
        .unwrap();
    let remote = realize_net::remote::RemoteService::new(channel);
    let dir = dir_id("d");
    let small = |name: &str| {
        let data = Bytes::from(name.as_bytes().to_vec());
        let expected = realize_core::ExpectedHash::known(realize_core::testing::sha256(&data));
        let path: realize_core::RelPath = name.parse().unwrap();
        (
            path,
            data.len() as u64,
            futures::StreamExt::boxed(futures::stream::iter([Ok(data)])),
            expected,
        )
    };
    let (path, size, data, expected) = small("first");
    assert_eq!(
        remote
            .write_file(&dir, &path, size, data, expected)
            .await
            .unwrap(),
        5
    );
    // The connection's only call is free again once the WriteFiles call ends.
    let hashed = tokio::time::timeout(HUNG, async {
        loop {
            match remote
                .hash(
                    &dir,
                    &path,
                    realize_core::FileKind::Final,
                    None,
                    realize_core::DigestAlgorithm::Sha256,
                )
                .await
            {
                Ok(result) => break result,
                Err(e) => assert_eq!(e.code(), realize_core::ErrorCode::ResourceExhausted, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the WriteFiles call never ended");
    assert_eq!(hashed.hash, realize_core::testing::sha256(b"first"));
    let (path, size, data, expected) = small("second");
    assert_eq!(
        remote
            .write_file(&dir, &path, size, data, expected)
            .await
            .unwrap(),
        6
    );
    assert_eq!(std::fs::read(root.join("second")).unwrap(), b"second");
    daemon.stop().await;
}
