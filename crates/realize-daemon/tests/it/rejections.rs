//! What must be refused, and must change nothing on disk when it is.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use realize_core::{
    ByteRange, ByteStream, DirId, EntryStream, ExpectedHash, FileKind, FileStamp, HashResult,
    LocalStore, RelPath, Service, ServiceError, ServiceInfo, Sha256Hash,
};
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
    let before = tree(&src);
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
    assert_eq!(tree(&src), before);
    assert!(tree(&dst).is_empty());
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
    let before = tree(&src);
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
    assert_eq!(tree(&src), before);
    assert!(tree(&dst).is_empty());
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
    let before_root = tree(&root);
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
                sha256: Default::default(),
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
    assert_eq!(tree(&root), before_root);
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

/// `data` with the first byte of each chunk flipped.
fn corrupted(data: ByteStream) -> ByteStream {
    data.map(|chunk| {
        chunk.map(|c| {
            let mut c = c.to_vec();
            if let Some(b) = c.first_mut() {
                *b ^= 0xff;
            }
            Bytes::from(c)
        })
    })
    .boxed()
}

/// A store whose writes flip one byte: the destination never matches.
#[derive(Debug)]
struct Corrupting(LocalStore);

#[async_trait]
impl Service for Corrupting {
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        self.0.info().await
    }
    async fn list(&self, dir: &DirId, include_partial: bool) -> Result<EntryStream, ServiceError> {
        self.0.list(dir, include_partial).await
    }
    async fn read(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError> {
        self.0.read(dir, path, offset, length, if_stamp).await
    }
    async fn write(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        data: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.0
            .write(dir, path, offset, file_size, corrupted(data))
            .await
    }
    async fn write_file(
        &self,
        dir: &DirId,
        path: &RelPath,
        file_size: u64,
        data: ByteStream,
        expected: ExpectedHash,
    ) -> Result<u64, ServiceError> {
        self.0
            .write_file(dir, path, file_size, corrupted(data), expected)
            .await
    }
    async fn signature(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        block_size: u32,
    ) -> Result<Bytes, ServiceError> {
        self.0.signature(dir, path, range, block_size).await
    }
    async fn diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        self.0.diff(dir, path, range, signature).await
    }
    async fn apply_delta(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        delta: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.0.apply_delta(dir, path, range, file_size, delta).await
    }
    async fn hash(
        &self,
        dir: &DirId,
        path: &RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
    ) -> Result<HashResult, ServiceError> {
        self.0.hash(dir, path, kind, range).await
    }
    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        verified: Option<Sha256Hash>,
    ) -> Result<(), ServiceError> {
        self.0.finish(dir, path, verified).await
    }
    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        self.0.delete(dir, path, if_stamp).await
    }
}

#[tokio::test]
async fn destination_that_does_not_match_keeps_the_source() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    write_file(&src, "victim.bin", &pseudo_random(100_000, 7));
    let before = tree(&src);
    let store = LocalStore::new([(dir_id("d"), dst.clone())]);
    let daemon = InProcessDaemon::start(work.path(), Arc::new(Corrupting(store)), &client).await;
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
    assert_eq!(tree(&src), before, "source must be kept");
    assert!(!dst.join("victim.bin").exists(), "no final file may appear");
    daemon.stop().await;
}

#[tokio::test]
async fn moving_a_directory_onto_itself_is_refused() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    sample_tree(&root);
    let before = tree(&root);
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
    assert_eq!(tree(&root), before);
    daemon.stop().await;
}

/// A service whose every call panics, or whose data stream does.
#[derive(Debug)]
struct Panicking;

#[async_trait]
impl Service for Panicking {
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        panic!("info exploded")
    }
    async fn list(&self, _: &DirId, _: bool) -> Result<EntryStream, ServiceError> {
        panic!("list exploded")
    }
    async fn read(
        &self,
        _: &DirId,
        _: &RelPath,
        _: u64,
        _: Option<u64>,
        _: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError> {
        Ok(futures::stream::poll_fn(|_| panic!("read stream exploded")).boxed())
    }
    async fn write(
        &self,
        _: &DirId,
        _: &RelPath,
        _: u64,
        _: u64,
        _: ByteStream,
    ) -> Result<u64, ServiceError> {
        panic!("write exploded")
    }
    async fn write_file(
        &self,
        _: &DirId,
        _: &RelPath,
        _: u64,
        _: ByteStream,
        _: ExpectedHash,
    ) -> Result<u64, ServiceError> {
        panic!("write_file exploded")
    }
    async fn signature(
        &self,
        _: &DirId,
        _: &RelPath,
        _: ByteRange,
        _: u32,
    ) -> Result<Bytes, ServiceError> {
        panic!("signature exploded")
    }
    async fn diff(
        &self,
        _: &DirId,
        _: &RelPath,
        _: ByteRange,
        _: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        panic!("diff exploded")
    }
    async fn apply_delta(
        &self,
        _: &DirId,
        _: &RelPath,
        _: ByteRange,
        _: u64,
        _: ByteStream,
    ) -> Result<u64, ServiceError> {
        panic!("apply_delta exploded")
    }
    async fn hash(
        &self,
        _: &DirId,
        _: &RelPath,
        _: FileKind,
        _: Option<ByteRange>,
    ) -> Result<HashResult, ServiceError> {
        panic!("hash exploded")
    }
    async fn finish(
        &self,
        _: &DirId,
        _: &RelPath,
        _: Option<Sha256Hash>,
    ) -> Result<(), ServiceError> {
        panic!("finish exploded")
    }
    async fn delete(
        &self,
        _: &DirId,
        _: &RelPath,
        _: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        panic!("delete exploded")
    }
}

/// A panic inside a call is that call's INTERNAL error, whether it happens
/// in the handler or while its response streams, and the daemon serves on.
#[tokio::test]
async fn a_panic_in_a_call_is_internal_and_the_daemon_serves_on() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let daemon = InProcessDaemon::start(work.path(), Arc::new(Panicking), &client).await;
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
