//! What must be refused, and must change nothing on disk when it is.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use realize_core::testing::{Fault, Faulty};
use realize_core::{ByteStream, Call, Filter, LocalStore, Method, Wrapped};
use realize_net::connection::connect;
use realize_net::tls::client_config;
use realize_proto::pb;
use tempfile::TempDir;

use crate::util::*;

#[tokio::test]
async fn unknown_client_key_is_refused_and_nothing_moves() {
    let work = TempDir::new().unwrap();
    let allowed = KeyFiles::new(work.path(), "allowed");
    let intruder = KeyFiles::new(work.path(), "intruder");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    sample_tree(&src);
    let before = manifest(&src);
    let daemon = Daemon::start(work.path(), &[("d", &dst)], &allowed).await;
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &intruder,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("daemon at {} refused our key", daemon.addr)),
        "{}",
        stderr(&output)
    );
    assert_eq!(manifest(&src), before);
    assert!(manifest(&dst).is_empty());
    assert!(
        daemon.wait_for_log("tls handshake refused").await,
        "{}",
        daemon.log()
    );
    daemon.stop().await;
}

#[tokio::test]
async fn unknown_server_key_is_refused_and_nothing_moves() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let impostor = KeyFiles::new(work.path(), "impostor");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    sample_tree(&src);
    let before = manifest(&src);
    let daemon = Daemon::start(work.path(), &[("d", &dst)], &client).await;
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&impostor.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "server at {} presented a key not in --peers",
            daemon.addr
        )),
        "{}",
        stderr(&output)
    );
    assert_eq!(manifest(&src), before);
    assert!(manifest(&dst).is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn bad_paths_sent_to_the_api_are_invalid_and_touch_nothing() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "inside/file.txt", b"inside\n");
    // A file next to the root that traversal would reach.
    write_file(work.path(), "outside.txt", b"outside\n");
    let before_root = manifest(&root);
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let before_work: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let tls = client_config(&client.key, [daemon.key.public_key()]).unwrap();
    let channel = connect(
        &daemon.addr,
        tls,
        std::time::Duration::from_secs(10),
        realize_net::throttle::SendLimit::new(None),
    )
    .await
    .unwrap();
    let mut api = pb::realize_client::RealizeClient::new(channel);
    for path in [
        "../outside.txt",
        "/etc/passwd",
        "inside/\0file.txt",
        "inside/../../outside.txt",
        "",
    ] {
        let read = api
            .read(pb::ReadRequest {
                dir: "d".into(),
                path: path.into(),
                offset: 0,
                length: None,
                if_stamp: None,
            })
            .await;
        assert_eq!(
            read.unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "read {path:?}"
        );
        let hash = api
            .hash(pb::HashRequest {
                dir: "d".into(),
                path: path.into(),
                range: None,
                kind: 0,
                algorithm: pb::DigestAlgorithm::Sha256.into(),
            })
            .await;
        assert_eq!(
            hash.unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "hash {path:?}"
        );
        let delete = api
            .delete(pb::DeleteRequest {
                dir: "d".into(),
                path: path.into(),
                if_stamp: None,
            })
            .await;
        assert_eq!(
            delete.unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "delete {path:?}"
        );
        let finish = api
            .finish(pb::FinishRequest {
                dir: "d".into(),
                path: path.into(),
                digest: None,
                legacy_sha256: Default::default(),
            })
            .await;
        assert_eq!(
            finish.unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "finish {path:?}"
        );
        let header = pb::WriteRequest {
            message: Some(pb::write_request::Message::Header(pb::WriteHeader {
                dir: "d".into(),
                path: path.into(),
                offset: 0,
                file_size: 5,
                whole_file: false,
                digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
            })),
        };
        let data = pb::WriteRequest {
            message: Some(pb::write_request::Message::Data(Bytes::from_static(
                b"owned",
            ))),
        };
        let write = api.write(futures::stream::iter([header, data])).await;
        let status = write.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "write {path:?}"
        );
        assert!(
            status.message().contains("invalid path"),
            "{}",
            status.message()
        );
    }
    let unknown = api
        .list(pb::ListRequest {
            dir: "nope".into(),
            prefix: String::new(),
            include_partial: false,
        })
        .await;
    let status = unknown.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("unknown directory nope"),
        "{}",
        status.message()
    );
    assert_eq!(manifest(&root), before_root);
    let after_work: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before_work.len(), after_work.len());
    assert_eq!(
        std::fs::read(work.path().join("outside.txt")).unwrap(),
        b"outside\n"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn destination_that_does_not_match_keeps_the_source() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    write_file(&src, "victim.bin", &random_bytes(7, 100_000));
    let before = manifest(&src);
    // Its writes flip one byte: the destination never matches.
    let store = Faulty::new(&dst, Fault::FlipWrittenBytes);
    let daemon = InProcessDaemon::start(work.path(), Arc::new(store), &client).await;
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("[1/1] ERROR     d/victim.bin: destination hash ")
            && lines[0].ends_with(", source kept"),
        "{err}"
    );
    assert_eq!(
        lines[1],
        "1 partial file left at the destination (d: 1): the next run resumes them"
    );
    assert_eq!(lines[2], "ERROR 1 failed, 0 moved");
    assert_eq!(manifest(&src), before, "source must be kept");
    assert!(!dst.join("victim.bin").exists(), "no final file may appear");
    daemon.stop().await;
}

#[tokio::test]
async fn moving_a_directory_onto_itself_is_refused() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    sample_tree(&root);
    let before = manifest(&root);
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let args = move_args(
        Side::Path(&root),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("same directory"),
        "{}",
        stderr(&output)
    );
    assert_eq!(manifest(&root), before);
    daemon.stop().await;
}

/// Makes every call panic but reads, whose data stream does.
#[derive(Debug)]
struct Panicking;

#[async_trait]
impl Filter for Panicking {
    async fn before(&self, call: Call<'_>) {
        if call.method() != Method::Read {
            panic!("{} exploded", call.method().name())
        }
    }

    fn outgoing(&self, _: Method, _: ByteStream) -> ByteStream {
        futures::stream::poll_fn(|_| panic!("read stream exploded")).boxed()
    }
}

/// A panic inside a call is that call's INTERNAL error, whether it happens
/// in the handler or while its response streams, and the daemon serves on.
#[tokio::test]
async fn a_panic_in_a_call_is_internal_and_the_daemon_serves_on() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "f", b"never read");
    let store = LocalStore::new([(dir_id("d"), root)]);
    let service = Wrapped::new(Arc::new(store), Panicking);
    let daemon = InProcessDaemon::start(work.path(), Arc::new(service), &client).await;
    let tls = client_config(&client.key, [daemon.key.public_key()]).unwrap();
    let channel = connect(
        &daemon.addr,
        tls,
        std::time::Duration::from_secs(10),
        realize_net::throttle::SendLimit::new(None),
    )
    .await
    .unwrap();
    let mut api = pb::realize_client::RealizeClient::new(channel);
    let hash = || pb::HashRequest {
        dir: "d".into(),
        path: "f".into(),
        range: None,
        kind: 0,
        algorithm: pb::DigestAlgorithm::Sha256.into(),
    };
    for _ in 0..2 {
        let status = api.hash(hash()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert!(
            status
                .message()
                .contains("Hash failed: internal error in the daemon (hash exploded)"),
            "{status:?}"
        );
    }
    let mut read = api
        .read(pb::ReadRequest {
            dir: "d".into(),
            path: "f".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = read.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status.message().contains("read stream exploded"),
        "{status:?}"
    );
    // And the same connection still answers.
    assert_eq!(
        api.hash(hash()).await.unwrap_err().code(),
        tonic::Code::Internal
    );
    daemon.stop().await;
}
