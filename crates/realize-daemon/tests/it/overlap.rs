//! One directory served twice (two ids, nested roots, two daemons): the
//! config is refused, and where it cannot be (two daemons), the file's own
//! lock keeps two writers of one path from interleaving.

use realize_core::testing::sha256;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use realize_core::Digest;
use realize_proto::pb;
use realize_proto::pb::realize_client::RealizeClient;
use rustix::process::Signal;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::util::*;

async fn list(api: &mut RealizeClient<Channel>, dir: &str) -> Result<Vec<String>, tonic::Status> {
    let mut entries = api
        .list(pb::ListRequest {
            dir: dir.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut paths = Vec::new();
    while let Some(entry) = entries.message().await? {
        paths.push(entry.path);
    }
    Ok(paths)
}

/// Runs `realized` on a config serving `dirs`, which it must refuse: its
/// exit status and stderr.
async fn start_refused(work: &Path, client: &KeyFiles, dirs: &[(&str, &Path)]) -> (i32, String) {
    let key = KeyFiles::new(work, "refused");
    let config = DaemonConfig {
        address: "127.0.0.1:0".into(),
        privkey: key.private.clone(),
        dirs: dirs
            .iter()
            .map(|(id, root)| (id.to_string(), root.to_path_buf()))
            .collect(),
        peers: vec![("client".into(), client.public.clone())],
        peer_options: Vec::new(),
        limits: Vec::new(),
        grace_period: None,
        log_level: None,
        rust_log: "info".into(),
        args: Vec::new(),
        env: Vec::new(),
    };
    let path = work.join("refused.toml");
    std::fs::write(&path, config.render()).unwrap();
    let output = tokio::process::Command::new(realized_bin())
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("realized hung on a config it must refuse")
        .unwrap();
    std::fs::remove_file(&key.private).unwrap();
    std::fs::remove_file(&key.public).unwrap();
    (output.status.code().unwrap_or(-1), stderr(&output))
}

#[tokio::test]
async fn roots_that_are_one_directory_or_nest_are_refused_at_start() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let shared = work.path().join("roots/shared");
    std::fs::create_dir_all(shared.join("inner")).unwrap();
    let parent = work.path().join("roots");
    for dirs in [
        [("x", shared.as_path()), ("y", shared.as_path())],
        [("x", parent.as_path()), ("y", shared.as_path())],
        [
            ("x", shared.join("inner").as_path()),
            ("y", shared.as_path()),
        ],
    ] {
        let (code, err) = start_refused(work.path(), &client, &dirs).await;
        assert_eq!(code, 1, "{dirs:?}: {err}");
        assert!(
            err.contains("directories x and y")
                && err.contains("are the same directory or one contains the other"),
            "{dirs:?}: {err}"
        );
        assert!(!err.contains("listening on"), "{err}");
    }
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
async fn roots_that_are_one_directory_or_nest_are_refused_on_reload() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let roots = work.path().join("roots");
    let shared = roots.join("shared");
    write_file(&shared, "file.txt", b"file\n");
    let mut daemon = Daemon::start(work.path(), &[("x", &shared)], &client).await;
    let mut api = api(&daemon, &client).await;
    let good = daemon.config.clone();

    for (id, root) in [("y", &shared), ("parent", &roots)] {
        let mut overlapping = good.clone();
        overlapping.dirs.push((id.into(), root.clone()));
        reload(&mut daemon, overlapping, "reload failed").await;
        let names = if id < "x" {
            format!("directories {id} and x")
        } else {
            format!("directories x and {id}")
        };
        assert!(
            daemon
                .log_line(&["reload failed, keeping the current config", &names])
                .is_some(),
            "{}",
            daemon.log()
        );
        // The old config stays: the new id is unknown, the old one serves.
        assert_eq!(
            list(&mut api, id).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(list(&mut api, "x").await.unwrap(), ["file.txt"]);
    }

    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait_exit().await.code(), Some(0));
}

fn header(dir: &str, path: &str, file_size: u64) -> pb::WriteRequest {
    pb::WriteRequest {
        message: Some(pb::write_request::Message::Header(pb::WriteHeader {
            dir: dir.into(),
            path: path.into(),
            offset: 0,
            file_size,
            whole_file: true,
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })),
    }
}

fn data(chunk: &[u8]) -> pb::WriteRequest {
    pb::WriteRequest {
        message: Some(pb::write_request::Message::Data(Bytes::copy_from_slice(
            chunk,
        ))),
    }
}

fn finish(hash: Digest) -> pb::WriteRequest {
    pb::WriteRequest {
        message: Some(pb::write_request::Message::Finish(pb::WriteFinish {
            digest: Some(hash.into()),
        })),
    }
}

/// A whole-file Write of `content`, sent at once, finish included.
fn whole_write(dir: &str, path: &str, content: &[u8]) -> Vec<pb::WriteRequest> {
    let mut requests = vec![header(dir, path, content.len() as u64)];
    requests.extend(content.chunks(256 * 1024).map(data));
    requests.push(finish(sha256(content)));
    requests
}

#[tokio::test]
async fn two_daemons_on_one_directory_never_interleave_two_writes_of_one_path() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let shared = work.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    // Each daemon alone has a valid config; together they serve one directory.
    let first = Daemon::start(work.path(), &[("x", &shared)], &client).await;
    let second = Daemon::start(work.path(), &[("y", &shared)], &client).await;
    let (mut api_x, mut api_y) = (api(&first, &client).await, api(&second, &client).await);
    let size = 4 * 1024 * 1024;
    let (a, b) = (random_bytes(1, size), random_bytes(2, size));

    // The first writer sends all its data and holds its call open before the
    // finish, so it holds the partial file while the second one tries.
    let (requests, rx) = tokio::sync::mpsc::channel(64);
    let first_write = tokio::spawn(async move {
        api_x
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    requests
        .send(header("x", "mix.bin", size as u64))
        .await
        .unwrap();
    for chunk in a.chunks(256 * 1024) {
        requests.send(data(chunk)).await.unwrap();
    }
    wait_for_file(&shared.join(".mix.bin.part"), size as u64).await;

    let refused = api_y
        .write(futures::stream::iter(whole_write("y", "mix.bin", &b)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("y/mix.bin: being written by another client"),
        "{refused:?}"
    );
    let finish_refused = api_y
        .finish(pb::FinishRequest {
            dir: "y".into(),
            path: "mix.bin".into(),
            digest: Some(sha256(&a).into()),
            legacy_sha256: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        finish_refused.code(),
        tonic::Code::Aborted,
        "{finish_refused:?}"
    );

    requests.send(finish(sha256(&a))).await.unwrap();
    drop(requests);
    let written = first_write.await.unwrap().unwrap().into_inner();
    assert_eq!(written.bytes_written, size as u64);
    let on_disk = std::fs::read(shared.join("mix.bin")).unwrap();
    assert_eq!(
        sha256(&on_disk),
        sha256(&a),
        "the file answered OK is the first writer's, whole"
    );
    assert_eq!(manifest(&shared).len(), 1, "no partial file is left");
    assert!(
        first
            .log_line(&["finished", "mix.bin", &sha256(&a).to_hex()])
            .is_some(),
        "{}",
        first.log()
    );
    assert!(second.log_line(&["finished", "mix.bin"]).is_none());

    // Once the first has finished, the second may overwrite it, whole.
    api_y
        .write(futures::stream::iter(whole_write("y", "mix.bin", &b)))
        .await
        .unwrap();
    assert_eq!(
        sha256(&std::fs::read(shared.join("mix.bin")).unwrap()),
        sha256(&b)
    );
    first.stop().await;
    second.stop().await;
}
