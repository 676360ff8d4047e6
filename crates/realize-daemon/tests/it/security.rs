//! Authorization, limits and hostile input, through the real daemon: each
//! refusal gets its status and log line, changes nothing on disk, and leaves
//! the daemon serving the next good client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use realize_proto::pb;
use realize_proto::pb::realize_client::RealizeClient;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::util::*;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn info_dirs(api: &mut RealizeClient<Channel>) -> Result<Vec<String>, tonic::Status> {
    let info = api.info(pb::InfoRequest {}).await?.into_inner();
    Ok(info.dirs.into_iter().map(|d| d.id).collect())
}

fn write_header(dir: &str, path: &str, offset: u64, file_size: u64) -> pb::WriteRequest {
    pb::WriteRequest {
        message: Some(pb::write_request::Message::Header(pb::WriteHeader {
            dir: dir.into(),
            path: path.into(),
            offset,
            file_size,
            whole_file: false,
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })),
    }
}

fn write_data(data: Vec<u8>) -> pb::WriteRequest {
    pb::WriteRequest {
        message: Some(pb::write_request::Message::Data(Bytes::from(data))),
    }
}

async fn write(
    api: &mut RealizeClient<Channel>,
    dir: &str,
    path: &str,
    data: Vec<u8>,
) -> Result<u64, tonic::Status> {
    let size = data.len() as u64;
    let stream = futures::stream::iter([write_header(dir, path, 0, size), write_data(data)]);
    Ok(api.write(stream).await?.into_inner().bytes_written)
}

/// A WriteFiles message whose SHA-256 is `sha256`, which may be the wrong length.
fn whole_file(dir: &str, path: &str, data: &[u8], sha256: &[u8]) -> pb::WriteFilesRequest {
    pb::WriteFilesRequest {
        dir: dir.into(),
        path: path.into(),
        data: Bytes::copy_from_slice(data),
        digest: Some(pb::Digest {
            algorithm: pb::DigestAlgorithm::Sha256.into(),
            value: Bytes::copy_from_slice(sha256),
        }),
    }
}

/// Sends `files` on one WriteFiles call; the code and message of each answer.
async fn write_files(
    api: &mut RealizeClient<Channel>,
    files: Vec<pb::WriteFilesRequest>,
) -> Vec<(tonic::Code, String)> {
    let count = files.len();
    let mut answers = api
        .write_files(futures::stream::iter(files))
        .await
        .unwrap()
        .into_inner();
    let mut codes = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        codes.push((tonic::Code::from_i32(answer.code), answer.message));
    }
    assert_eq!(codes.len(), count, "one answer per file: {codes:?}");
    codes
}

/// Asserts `result` failed with `code` and a message containing `text`.
fn check<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, text: &str) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(text), "{status:?} lacks {text:?}");
}

#[tokio::test]
async fn a_read_only_peer_reads_but_changes_nothing() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "a/file.txt", b"keep me\n");
    write_file(&root, "a/.half.txt.part", b"half");
    let before = manifest(&root);
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.peer_options
            .push(("client".into(), "access = \"read-only\"".into()));
    })
    .await;
    let mut api = api(&daemon, &client).await;

    // Reading is allowed.
    let hash = api
        .hash(pb::HashRequest {
            dir: "d".into(),
            path: "a/file.txt".into(),
            range: None,
            kind: 0,
            algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await;
    assert!(hash.is_ok(), "{hash:?}");
    let mut read = api
        .read(pb::ReadRequest {
            dir: "d".into(),
            path: "a/file.txt".into(),
            offset: 0,
            length: None,
            if_stamp: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        &read.message().await.unwrap().unwrap().data[..],
        b"keep me\n"
    );
    assert_eq!(info_dirs(&mut api).await.unwrap(), ["d"]);

    // Changing is not, and says which directory and why.
    let denied = "peer client may not change directory d: its access is read-only";
    let data = b"new";
    let sha256 = realize_core::testing::sha256(data).value;
    let answers = write_files(&mut api, vec![whole_file("d", "a/new.txt", data, &sha256)]).await;
    assert_eq!(answers[0].0, tonic::Code::PermissionDenied, "{answers:?}");
    assert!(answers[0].1.contains(denied), "{answers:?}");
    let file = stamp(&mut api, "d", "a/file.txt").await;
    check(
        api.delete_files(pb::DeleteFilesRequest {
            dir: "d".into(),
            files: vec![file_ref("a/file.txt", Some(file))],
        })
        .await,
        tonic::Code::PermissionDenied,
        denied,
    );
    check(
        write(&mut api, "d", "a/new.txt", b"new".to_vec()).await,
        tonic::Code::PermissionDenied,
        denied,
    );
    check(
        write(&mut api, "d", "a/file.txt", b"overwritten".to_vec()).await,
        tonic::Code::PermissionDenied,
        denied,
    );
    let delta = futures::stream::iter([pb::ApplyDeltaRequest {
        message: Some(pb::apply_delta_request::Message::Header(
            pb::ApplyDeltaHeader {
                dir: "d".into(),
                path: "a/file.txt".into(),
                range: Some(pb::ByteRange { start: 0, end: 8 }),
                file_size: 8,
            },
        )),
    }]);
    check(
        api.apply_delta(delta).await,
        tonic::Code::PermissionDenied,
        denied,
    );
    check(
        api.finish(pb::FinishRequest {
            dir: "d".into(),
            path: "a/half.txt".into(),
            digest: None,
            legacy_sha256: Default::default(),
        })
        .await,
        tonic::Code::PermissionDenied,
        denied,
    );
    check(
        api.delete(pb::DeleteRequest {
            dir: "d".into(),
            path: "a/file.txt".into(),
            if_stamp: None,
        })
        .await,
        tonic::Code::PermissionDenied,
        denied,
    );
    assert!(
        daemon
            .wait_for_line(&["WARN", "permission denied", "peer=client", "dir=d"])
            .await,
        "{}",
        daemon.log()
    );
    assert_eq!(manifest(&root), before);

    // Info tells the peer its access, so `realize` refuses a move out of
    // the read-only daemon, or into it, before it creates or copies anything.
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    write_file(&src, "mine.txt", b"mine");
    for (from, to, refusal) in [
        (
            Side::Addr(&daemon.addr),
            Side::Path(&dst),
            "source gives read-only access to d: no file could be deleted from it",
        ),
        (
            Side::Path(&src),
            Side::Addr(&daemon.addr),
            "destination gives read-only access to d: no file could be written to it",
        ),
    ] {
        let args = move_args(
            from,
            to,
            &["d"],
            &client,
            &[&daemon.key.public],
            work.path(),
        );
        let output = realize(&os(&args)).await;
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(stderr(&output).contains(refusal), "{}", stderr(&output));
    }
    assert!(!dst.exists(), "the destination was created");
    assert_eq!(manifest(&root), before, "the source must be kept");
    assert_eq!(std::fs::read(src.join("mine.txt")).unwrap(), b"mine");
    daemon.stop().await;
}

#[tokio::test]
async fn write_files_refuses_each_bad_file_alone_and_finishes_the_good_ones() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;
    let sha = |data: &[u8]| realize_core::testing::sha256(data).value;
    let answers = write_files(
        &mut api,
        vec![
            whole_file("d", "ok/first", b"first", &sha(b"first")),
            whole_file("d", "ok/wrong", b"wrong", &sha(b"something else")),
            whole_file("d", "ok/short", b"short", &[0; 5]),
            whole_file("d", "../escape", b"escape", &sha(b"escape")),
            whole_file("nope", "f", b"f", &sha(b"f")),
            whole_file("d", "ok/last", b"last", &sha(b"last")),
        ],
    )
    .await;
    let codes: Vec<tonic::Code> = answers.iter().map(|(code, _)| *code).collect();
    assert_eq!(
        codes,
        [
            tonic::Code::Ok,
            tonic::Code::FailedPrecondition,
            tonic::Code::InvalidArgument,
            tonic::Code::InvalidArgument,
            tonic::Code::InvalidArgument,
            tonic::Code::Ok,
        ],
        "{answers:?}"
    );
    assert!(answers[1].1.contains("d/ok/wrong"), "{answers:?}");
    assert!(
        answers[2].1.contains("a digest must be 32 bytes"),
        "{answers:?}"
    );
    assert!(
        answers[4].1.contains("unknown directory nope"),
        "{answers:?}"
    );
    // The good files are final; the mismatched one stays partial, to be resumed.
    assert_eq!(std::fs::read(root.join("ok/first")).unwrap(), b"first");
    assert_eq!(std::fs::read(root.join("ok/last")).unwrap(), b"last");
    let files: Vec<String> = manifest(&root).into_keys().collect();
    assert_eq!(files, ["ok/.wrong.part", "ok/first", "ok/last"]);
    assert!(!work.path().join("escape").exists());
    daemon.stop().await;
}

/// The stamp of a final file, as the daemon sees it.
async fn stamp(api: &mut RealizeClient<Channel>, dir: &str, path: &str) -> pb::FileStamp {
    api.hash(pb::HashRequest {
        dir: dir.into(),
        path: path.into(),
        range: None,
        kind: 0,
        algorithm: pb::DigestAlgorithm::Sha256.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stamp
    .unwrap()
}

fn file_ref(path: &str, stamp: Option<pb::FileStamp>) -> pb::FileRef {
    pb::FileRef {
        path: path.into(),
        stamp,
    }
}

#[tokio::test]
async fn read_files_and_delete_files_answer_each_file_and_check_its_version() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "a", b"first");
    write_file(&root, "b", b"second");
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;
    let (a, b) = (
        stamp(&mut api, "d", "a").await,
        stamp(&mut api, "d", "b").await,
    );
    let stale = pb::FileStamp {
        size: b.size + 1,
        ..b
    };

    let mut answers = api
        .read_files(pb::ReadFilesRequest {
            dir: "d".into(),
            files: vec![
                file_ref("a", Some(a)),
                file_ref("b", Some(stale)),
                file_ref("../x", Some(a)),
                file_ref("a", None),
            ],
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut read = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        read.push(answer);
    }
    let codes: Vec<_> = read.iter().map(|r| tonic::Code::from_i32(r.code)).collect();
    assert_eq!(
        codes,
        [
            tonic::Code::Ok,
            tonic::Code::FailedPrecondition,
            tonic::Code::InvalidArgument,
            tonic::Code::InvalidArgument,
        ],
        "{read:?}"
    );
    assert_eq!(&read[0].data[..], b"first");
    let digest = read[0].digest.as_ref().map(|d| &d.value[..]);
    assert_eq!(
        digest,
        Some(&realize_core::testing::sha256(b"first").value[..])
    );

    let results = api
        .delete_files(pb::DeleteFilesRequest {
            dir: "d".into(),
            files: vec![file_ref("a", Some(a)), file_ref("b", Some(stale))],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<_> = results
        .iter()
        .map(|r| tonic::Code::from_i32(r.code))
        .collect();
    assert_eq!(
        codes,
        [tonic::Code::Ok, tonic::Code::FailedPrecondition],
        "{results:?}"
    );
    // Only the version asked for goes.
    assert!(!root.join("a").exists());
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"second");

    // Calls past the limits are refused whole.
    let many = (0..1025)
        .map(|i| file_ref(&format!("f{i}"), Some(b)))
        .collect();
    check(
        api.read_files(pb::ReadFilesRequest {
            dir: "d".into(),
            files: many,
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await,
        tonic::Code::InvalidArgument,
        "1025 files in one call, at most 1024",
    );
    let huge = pb::FileStamp { size: 1 << 30, ..b };
    check(
        api.read_files(pb::ReadFilesRequest {
            dir: "d".into(),
            files: vec![file_ref("b", Some(huge))],
            digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await,
        tonic::Code::InvalidArgument,
        "bytes of files in one ReadFiles call",
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_peer_sees_and_reaches_only_its_directories() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (mine, theirs) = (work.path().join("mine"), work.path().join("theirs"));
    write_file(&mine, "m.txt", b"mine\n");
    write_file(&theirs, "t.txt", b"theirs\n");
    let before = manifest(&theirs);
    let daemon = Daemon::start_with(
        work.path(),
        &[("mine", &mine), ("theirs", &theirs)],
        &client,
        |c| {
            c.peer_options
                .push(("client".into(), "dirs = [\"mine\"]".into()));
        },
    )
    .await;
    let mut api = api(&daemon, &client).await;
    assert_eq!(info_dirs(&mut api).await.unwrap(), ["mine"]);
    let list = |dir: &str| pb::ListRequest {
        dir: dir.into(),
        prefix: String::new(),
        include_partial: false,
    };
    assert!(api.list(list("mine")).await.is_ok());
    let denied = "peer client may not access directory theirs";
    check(
        api.list(list("theirs")).await.map(|_| ()),
        tonic::Code::PermissionDenied,
        denied,
    );
    check(
        write(&mut api, "theirs", "planted.txt", b"x".to_vec()).await,
        tonic::Code::PermissionDenied,
        denied,
    );
    check(
        api.delete(pb::DeleteRequest {
            dir: "theirs".into(),
            path: "t.txt".into(),
            if_stamp: None,
        })
        .await,
        tonic::Code::PermissionDenied,
        denied,
    );
    // A directory that is not configured at all stays an invalid argument.
    check(
        api.list(list("nope")).await.map(|_| ()),
        tonic::Code::InvalidArgument,
        "unknown directory nope",
    );
    assert!(
        daemon
            .wait_for_line(&["WARN", "permission denied", "peer=client", "dir=theirs"])
            .await,
        "{}",
        daemon.log()
    );
    assert_eq!(manifest(&theirs), before);
    daemon.stop().await;
}

#[tokio::test]
async fn a_symlinked_directory_pointing_outside_is_never_followed() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (root, outside) = (work.path().join("root"), work.path().join("outside"));
    write_file(&root, "inside.txt", b"inside\n");
    write_file(&outside, "secret.txt", b"secret\n");
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let before = manifest(&outside);
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;

    let through_link = "goes through a symlink or non-directory at \"link\"";
    check(
        api.read(pb::ReadRequest {
            dir: "d".into(),
            path: "link/secret.txt".into(),
            offset: 0,
            length: None,
            if_stamp: None,
        })
        .await
        .map(|_| ()),
        tonic::Code::InvalidArgument,
        through_link,
    );
    check(
        write(&mut api, "d", "link/planted.txt", b"x".to_vec()).await,
        tonic::Code::InvalidArgument,
        through_link,
    );
    check(
        write(&mut api, "d", "link/deeper/planted.txt", b"x".to_vec()).await,
        tonic::Code::InvalidArgument,
        through_link,
    );
    check(
        api.delete(pb::DeleteRequest {
            dir: "d".into(),
            path: "link/secret.txt".into(),
            if_stamp: None,
        })
        .await,
        tonic::Code::InvalidArgument,
        through_link,
    );
    // The link itself is not a regular file: it is neither read nor listed.
    check(
        api.hash(pb::HashRequest {
            dir: "d".into(),
            path: "link".into(),
            range: None,
            kind: 0,
            algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await,
        tonic::Code::FailedPrecondition,
        "not a regular file",
    );
    let mut entries = api
        .list(pb::ListRequest {
            dir: "d".into(),
            prefix: String::new(),
            include_partial: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut listed = Vec::new();
    while let Some(entry) = entries.message().await.unwrap() {
        listed.push(entry.path);
    }
    assert_eq!(listed, ["inside.txt"]);
    assert_eq!(manifest(&outside), before);
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["inside.txt", "link"]);
    assert_eq!(std::fs::read_link(root.join("link")).unwrap(), outside);
    daemon.stop().await;
}

/// Every name directly in `dir`, sorted: a directory created through a
/// symlink would show here, where [`tree`] lists only files.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A local user swaps a directory inside the root with a symlink to
/// outside it, atomically and over and over, while a client reads, writes
/// and deletes through it: each call meets the directory or is refused,
/// and the daemon never reads, writes, creates or deletes anything outside.
#[tokio::test]
async fn a_directory_swapped_for_a_symlink_during_calls_is_never_followed() {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (root, outside) = (work.path().join("root"), work.path().join("outside"));
    write_file(&root, "d/secret.txt", b"inside\n");
    write_file(&outside, "secret.txt", b"secret\n");
    write_file(&outside, "victim.txt", b"victim\n");
    std::os::unix::fs::symlink(&outside, root.join("d.link")).unwrap();
    let (before, names_before) = (manifest(&outside), names(&outside));
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, d, link) = (stop.clone(), root.join("d"), root.join("d.link"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &d, CWD, &link, RenameFlags::EXCHANGE).unwrap();
                std::thread::yield_now();
            }
        })
    };
    let (mut followed, mut refused) = (0, 0);
    let mut tally = |call: &str, result: Result<(), tonic::Status>| match result {
        Ok(()) => followed += 1,
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{call}: {status:?}"
            );
            refused += 1;
        }
    };
    let started = Instant::now();
    for _ in 0..300 {
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        let read = async {
            let mut data = api
                .read(pb::ReadRequest {
                    dir: "d".into(),
                    path: "d/secret.txt".into(),
                    offset: 0,
                    length: None,
                    if_stamp: None,
                })
                .await?
                .into_inner();
            let mut read = Vec::new();
            while let Some(chunk) = data.message().await? {
                read.extend_from_slice(&chunk.data);
            }
            Ok(read)
        };
        let read: Result<Vec<u8>, tonic::Status> = read.await;
        if let Ok(read) = &read {
            assert_eq!(read, b"inside\n");
        }
        tally("read", read.map(drop));
        let planted = write(&mut api, "d", "d/new/planted.txt", b"x".to_vec()).await;
        tally("write", planted.map(drop));
        for path in ["d/victim.txt", "d/new/planted.txt"] {
            let delete = api.delete(pb::DeleteRequest {
                dir: "d".into(),
                path: path.into(),
                if_stamp: None,
            });
            tally("delete", delete.await.map(drop));
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(manifest(&outside), before);
    assert_eq!(names(&outside), names_before);
    // The race ran: calls met both the directory and the symlink.
    assert!(
        followed > 0 && refused > 0,
        "{followed} went through, {refused} refused"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn bad_numbers_are_refused_and_change_nothing() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "f.bin", &random_bytes(3, 1000));
    let before = manifest(&root);
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.limits.push("max_file_size = \"1MB\"".into());
    })
    .await;
    let mut api = api(&daemon, &client).await;
    check(
        api.read(pb::ReadRequest {
            dir: "d".into(),
            path: "f.bin".into(),
            offset: 900,
            length: Some(200),
            if_stamp: None,
        })
        .await
        .map(|_| ()),
        tonic::Code::OutOfRange,
        "past the end of the file (1000 bytes)",
    );
    check(
        api.hash(pb::HashRequest {
            dir: "d".into(),
            path: "f.bin".into(),
            range: Some(pb::ByteRange {
                start: 0,
                end: u64::MAX,
            }),
            kind: 0,
            algorithm: pb::DigestAlgorithm::Sha256.into(),
        })
        .await,
        tonic::Code::OutOfRange,
        "past the end",
    );
    // A file larger than max_file_size, over an existing file and a new one.
    for path in ["f.bin", "new.bin"] {
        let stream = futures::stream::iter([
            write_header("d", path, 0, 1_000_001),
            write_data(vec![1; 10]),
        ]);
        check(
            api.write(stream).await,
            tonic::Code::InvalidArgument,
            "file size 1000001 is larger than the daemon's max_file_size (1000000 bytes)",
        );
    }
    // A chunk larger than 1 MiB (within the message size).
    let stream = futures::stream::iter([
        write_header("d", "f.bin", 0, 900_000),
        write_data(vec![1; 1024 * 1024 + 1]),
    ]);
    check(
        api.write(stream).await,
        tonic::Code::InvalidArgument,
        "data chunk of 1048577 bytes is larger than 1048576 bytes",
    );
    // Data past the declared size, and an offset past it.
    check(
        api.write(futures::stream::iter([
            write_header("d", "f.bin", 0, 5),
            write_data(vec![1; 6]),
        ]))
        .await,
        tonic::Code::InvalidArgument,
        "data goes past the file size 5",
    );
    check(
        api.write(futures::stream::iter([write_header("d", "f.bin", 6, 5)]))
            .await,
        tonic::Code::InvalidArgument,
        "offset 6 is past the file size 5",
    );
    // A signature and a delta that do not parse, and a bad block size.
    let diff = api
        .diff(pb::DiffRequest {
            dir: "d".into(),
            path: "f.bin".into(),
            range: Some(pb::ByteRange {
                start: 0,
                end: 1000,
            }),
            // A sane header (block size 4096, 8-byte hashes) behind a wrong magic number.
            signature: Bytes::from_static(b"\0\0\0\0\0\0\x10\0\0\0\0\x08garbage"),
        })
        .await;
    check(
        diff.map(|_| ()),
        tonic::Code::InvalidArgument,
        "signature does not parse",
    );
    check(
        api.signature(pb::SignatureRequest {
            dir: "d".into(),
            path: "f.bin".into(),
            range: Some(pb::ByteRange {
                start: 0,
                end: 1000,
            }),
            block_size: 0,
        })
        .await,
        tonic::Code::InvalidArgument,
        "block size 0",
    );
    let delta = futures::stream::iter([
        pb::ApplyDeltaRequest {
            message: Some(pb::apply_delta_request::Message::Header(
                pb::ApplyDeltaHeader {
                    dir: "d".into(),
                    path: "f.bin".into(),
                    range: Some(pb::ByteRange {
                        start: 0,
                        end: 1000,
                    }),
                    file_size: 1000,
                },
            )),
        },
        pb::ApplyDeltaRequest {
            message: Some(pb::apply_delta_request::Message::Delta(Bytes::from_static(
                b"not a delta",
            ))),
        },
    ]);
    check(
        api.apply_delta(delta).await,
        tonic::Code::InvalidArgument,
        "delta does not apply",
    );
    assert_eq!(manifest(&root), before, "nothing may change");
    daemon.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_and_the_daemon_serves_on() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "f.bin", &random_bytes(4, 1000));
    let before = manifest(&root);
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.limits.push("max_message_size = \"2MiB\"".into());
    })
    .await;
    let mut api = api(&daemon, &client).await;
    let too_large = "is larger than the daemon's max_message_size (2097152 bytes)";
    // A streamed message...
    let stream = futures::stream::iter([
        write_header("d", "f.bin", 0, 3 << 20),
        write_data(vec![7; 3 << 20]),
    ]);
    check(
        api.write(stream).await,
        tonic::Code::ResourceExhausted,
        too_large,
    );
    // ... and a unary one.
    check(
        api.diff(pb::DiffRequest {
            dir: "d".into(),
            path: "f.bin".into(),
            range: Some(pb::ByteRange {
                start: 0,
                end: 1000,
            }),
            signature: Bytes::from(vec![0; 3 << 20]),
        })
        .await
        .map(|_| ()),
        tonic::Code::ResourceExhausted,
        too_large,
    );
    assert!(
        daemon
            .wait_for_line(&["WARN", "message refused: larger than max_message_size"])
            .await,
        "{}",
        daemon.log()
    );
    assert_eq!(manifest(&root), before);
    // The same connection still serves.
    assert_eq!(info_dirs(&mut api).await.unwrap(), ["d"]);
    daemon.stop().await;
}

/// A message past the default limit inside a Write stream is the client's
/// mistake (ResourceExhausted), never Unavailable, which clients retry.
#[tokio::test]
async fn an_oversized_message_inside_a_write_stream_is_not_retryable() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;
    for whole_file in [false, true] {
        let mut header = write_header("d", "big.bin", 0, 5 << 20);
        if let Some(pb::write_request::Message::Header(h)) = &mut header.message {
            h.whole_file = whole_file;
        }
        let stream = futures::stream::iter([
            header,
            write_data(vec![7; 1 << 20]),
            write_data(vec![7; 5 << 20]),
        ]);
        check(
            api.write(stream).await,
            tonic::Code::ResourceExhausted,
            "is larger than the daemon's max_message_size (4194304 bytes)",
        );
    }
    // What came before the oversized message may stay in the partial file,
    // to be resumed; nothing is ever finished from it.
    assert!(!root.join("big.bin").exists());
    daemon.stop().await;
}

/// A name too long for the filesystem, or a Delete that names a directory,
/// is the client's mistake: never Internal, and nothing changes.
#[tokio::test]
async fn a_name_too_long_or_a_directory_deleted_is_the_clients_mistake() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    write_file(&root, "sub/f.bin", b"kept");
    let before = manifest(&root);
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let mut api = api(&daemon, &client).await;
    let long = "n".repeat(300);
    check(
        write(&mut api, "d", &long, b"data".to_vec()).await,
        tonic::Code::InvalidArgument,
        "File name too long",
    );
    check(
        api.delete(pb::DeleteRequest {
            dir: "d".into(),
            path: "sub".into(),
            ..Default::default()
        })
        .await,
        tonic::Code::FailedPrecondition,
        "sub",
    );
    assert_eq!(manifest(&root), before);
    daemon.stop().await;
}

#[tokio::test]
async fn connections_past_the_limits_are_refused_and_the_next_client_is_served() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let other = KeyFiles::new(work.path(), "other");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.peers.push(("other".into(), other.public.clone()));
        c.limits.push("max_connections = 2".into());
        c.limits.push("max_connections_per_peer = 1".into());
    })
    .await;
    let mut first = api(&daemon, &client).await;
    assert!(info_dirs(&mut first).await.is_ok());

    // A second connection of the same peer is closed right after the
    // handshake that names its peer, and frees its slot at once.
    let second = channel(&daemon, &client).await;
    assert!(
        second.is_err(),
        "a second connection of one peer got through"
    );
    assert!(
        daemon
            .wait_for_line(&[
                "WARN",
                "connection closed: peer has too many connections open",
                "peer=client",
                "max_connections_per_peer=1"
            ])
            .await,
        "{}",
        daemon.log()
    );
    let mut other_first = api(&daemon, &other).await;
    assert_eq!(info_dirs(&mut other_first).await.unwrap(), ["d"]);

    // A third connection is past max_connections: closed before its handshake.
    let third = channel(&daemon, &other).await;
    assert!(third.is_err(), "a third connection got through");
    assert!(
        daemon
            .wait_for_line(&[
                "WARN",
                "connection refused: too many connections",
                "max_connections=2"
            ])
            .await,
        "{}",
        daemon.log()
    );

    // Once the others are gone, the next client is served.
    drop((first, other_first));
    assert!(
        daemon
            .wait_until(|log| log.matches("connection closed by the peer").count() >= 2)
            .await,
        "{}",
        daemon.log()
    );
    let mut next = api(&daemon, &other).await;
    assert_eq!(info_dirs(&mut next).await.unwrap(), ["d"]);
    daemon.stop().await;
}

#[tokio::test]
async fn garbage_and_plain_http_on_the_tls_port_are_refused_and_the_daemon_serves_on() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    write_file(&src, "f.txt", b"moved\n");
    let daemon = Daemon::start(work.path(), &[("d", &dst)], &client).await;
    let attempts: [&[u8]; 3] = [
        &random_bytes(9, 4096),
        b"GET / HTTP/1.1\r\nHost: realize\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    for bytes in attempts {
        let mut tcp = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
        // The daemon may close before it has read everything: that is its answer.
        let _ = tcp.write_all(bytes).await;
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer)).await;
        assert!(closed.is_ok(), "the daemon left a garbage connection open");
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/"),
            "plain HTTP got an HTTP answer: {answer:?}"
        );
    }
    assert!(
        daemon
            .wait_until(|log| log.matches("tls handshake refused").count() >= 3)
            .await,
        "{}",
        daemon.log()
    );
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(dst.join("f.txt")).unwrap(), b"moved\n");
    daemon.stop().await;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_at_their_timeouts() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.limits.push("handshake_timeout = \"1s\"".into());
        c.limits.push("idle_timeout = \"1s\"".into());
    })
    .await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a silent connection was left open");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        daemon
            .wait_for_line(&["tls handshake refused", "no handshake within 1s"])
            .await,
        "{}",
        daemon.log()
    );

    let mut api = api(&daemon, &client).await;
    assert!(info_dirs(&mut api).await.is_ok());
    assert!(
        daemon
            .wait_for_line(&["closing idle connection", "idle_timeout=1s"])
            .await,
        "{}",
        daemon.log()
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_call_without_a_deadline_ends_at_call_timeout_keeping_what_was_written() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.limits.push("call_timeout = \"1s\"".into());
    })
    .await;
    let mut api = api(&daemon, &client).await;
    // A write that sends its header and a chunk, then nothing, without ending.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(write_header("d", "slow.bin", 0, 100))
        .await
        .unwrap();
    tx.send(write_data(vec![5; 10])).await.unwrap();
    let started = Instant::now();
    let result = api
        .write(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    check(
        result,
        tonic::Code::DeadlineExceeded,
        "call exceeded its deadline of 1s",
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(tx);
    // What was written stays in the partial file, resumable; no final file.
    assert_eq!(std::fs::read(root.join(".slow.bin.part")).unwrap(), [5; 10]);
    assert!(!root.join("slow.bin").exists());
    daemon.stop().await;
}

#[tokio::test]
async fn max_calls_per_connection_reloads_and_refuses_the_call_past_it() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        c.limits.push("max_calls_per_connection = 4".into());
        c.rust_log = "info,realize_daemon=debug".into();
    })
    .await;
    let mut api = api(&daemon, &client).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(write_header("d", "held.bin", 0, 10)).await.unwrap();
    let mut held = api.clone();
    let held = tokio::spawn(async move {
        held.write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    assert!(
        daemon.wait_for_log("call started").await,
        "{}",
        daemon.log()
    );

    let mut config = daemon.config.clone();
    config.limits = vec!["max_calls_per_connection = 1".into()];
    daemon.write_config(config);
    daemon.signal(rustix::process::Signal::HUP);
    assert!(
        daemon.wait_for_log("reload: config applied").await,
        "{}",
        daemon.log()
    );
    check(
        info_dirs(&mut api).await,
        tonic::Code::ResourceExhausted,
        "1 calls already run on this connection (max_calls_per_connection)",
    );
    assert!(
        daemon
            .wait_for_line(&["WARN", "call refused", "max_calls_per_connection"])
            .await,
        "{}",
        daemon.log()
    );
    // Once the held call ends, the next one runs.
    tx.send(write_data(vec![1; 10])).await.unwrap();
    drop(tx);
    assert_eq!(held.await.unwrap().unwrap().into_inner().bytes_written, 10);
    assert_eq!(info_dirs(&mut api).await.unwrap(), ["d"]);
    daemon.stop().await;
}

#[tokio::test]
async fn a_private_key_others_may_read_is_warned_about_at_startup() {
    use std::os::unix::fs::PermissionsExt;
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &root)], &client, |c| {
        std::fs::set_permissions(&c.privkey, std::fs::Permissions::from_mode(0o640)).unwrap();
    })
    .await;
    let line = daemon
        .log_line(&["WARN", "is accessible by others (mode 0640): run chmod 600"])
        .unwrap_or_else(|| panic!("{}", daemon.log()));
    assert!(
        line.contains(&daemon.config.privkey.display().to_string()),
        "{line}"
    );
    daemon.stop().await;
}
