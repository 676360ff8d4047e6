//! Tests of the directory store against real temporary directories.

use std::os::unix::fs::symlink;
use std::path::Path;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};

use super::LocalStore;
use crate::delta::MAX_RANGE;
use crate::digest::{Digest, DigestAlgorithm};
use crate::error::{ErrorCode, ServiceError};
use crate::path::{DirId, RelPath};
use crate::service::{ByteRange, ByteStream, FileKind, FileStamp, Service};
use crate::testing::{exists, random_bytes, read_file, sha256, tree, write_file};

fn dir() -> DirId {
    DirId::new("d").unwrap()
}

fn rel(path: &str) -> RelPath {
    RelPath::new(path).unwrap()
}

fn store(root: &Path) -> LocalStore {
    LocalStore::new([(dir(), root.to_path_buf())])
}

/// A stream of the given chunks.
fn chunks<I: IntoIterator<Item = Vec<u8>>>(chunks: I) -> ByteStream {
    let chunks: Vec<_> = chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
    stream::iter(chunks).boxed()
}

async fn collect(data: ByteStream) -> Result<Vec<u8>, ServiceError> {
    let parts: Vec<Bytes> = data.try_collect().await?;
    Ok(parts.concat())
}

/// The code of an error the call must have returned.
fn code<T>(result: Result<T, ServiceError>) -> ErrorCode {
    match result {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.code(),
    }
}

async fn list(store: &LocalStore, include_partial: bool) -> Vec<(String, FileKind, u64)> {
    store
        .list(&dir(), None, include_partial)
        .await
        .unwrap()
        .map_ok(|e| (e.path.to_string(), e.kind, e.stamp.size))
        .try_collect()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- list

#[tokio::test]
async fn list_walks_nested_dirs_sorted_and_skips_what_does_not_move() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "b.txt", b"bbb");
    write_file(root, "a/z.txt", &[7; 10]);
    write_file(root, "a/b/c.txt", b"hello");
    write_file(root, "a.txt", b"a");
    write_file(root, "empty", b"");
    write_file(root, "a/.p.part", &[1; 7]);
    write_file(root, "x", b"final");
    write_file(root, ".x.part", b"partial!");
    symlink(root.join("b.txt"), root.join("link-to-file")).unwrap();
    symlink(root.join("a"), root.join("link-to-dir")).unwrap();
    std::fs::create_dir(root.join("only-links")).unwrap();
    symlink(root.join("b.txt"), root.join("only-links/l")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let store = store(root);

    let finals = vec![
        ("a.txt".to_string(), FileKind::Final, 1),
        ("a/b/c.txt".to_string(), FileKind::Final, 5),
        ("a/z.txt".to_string(), FileKind::Final, 10),
        ("b.txt".to_string(), FileKind::Final, 3),
        ("empty".to_string(), FileKind::Final, 0),
        ("x".to_string(), FileKind::Final, 5),
    ];
    assert_eq!(list(&store, false).await, finals);

    let all = vec![
        ("a.txt".to_string(), FileKind::Final, 1),
        ("a/b/c.txt".to_string(), FileKind::Final, 5),
        ("a/p".to_string(), FileKind::Partial, 7),
        ("a/z.txt".to_string(), FileKind::Final, 10),
        ("b.txt".to_string(), FileKind::Final, 3),
        ("empty".to_string(), FileKind::Final, 0),
        ("x".to_string(), FileKind::Final, 5),
        ("x".to_string(), FileKind::Partial, 8),
    ];
    assert_eq!(list(&store, true).await, all);
}

#[tokio::test]
async fn list_is_sorted_by_path_in_a_larger_tree() {
    let root = tempfile::tempdir().unwrap();
    let names = [
        "z",
        "a-b",
        "a/b",
        "a.b",
        "a0",
        "A",
        "m/n/o/p",
        "m/n-o",
        "m/n/o.q",
        "_",
        "m/.n.part",
    ];
    for (i, name) in names.iter().enumerate() {
        write_file(root.path(), name, &random_bytes(i as u64, i * 3));
    }
    let listed = list(&store(root.path()), true).await;
    assert_eq!(listed.len(), names.len());
    let paths: Vec<&str> = listed.iter().map(|(p, _, _)| p.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

#[tokio::test]
async fn list_of_an_unknown_dir_is_invalid_argument() {
    let root = tempfile::tempdir().unwrap();
    let store = store(root.path());
    let other = DirId::new("other").unwrap();
    assert_eq!(
        code(store.list(&other, None, false).await),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn list_of_a_prefix_walks_only_that_subtree() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "a/b/c.txt", b"hello");
    write_file(root, "a/z.txt", &[7; 10]);
    write_file(root, "a/.p.part", &[1; 7]);
    write_file(root, "ab/not-below-a", b"x");
    write_file(root, "top", b"t");
    symlink(root.join("a"), root.join("link")).unwrap();
    let store = store(root);
    let listed = |prefix: &'static str| {
        let store = store.clone();
        async move {
            let prefix = RelPath::new(prefix).unwrap();
            let entries = store.list(&dir(), Some(&prefix), true).await?;
            entries
                .map_ok(|e| (e.path.to_string(), e.kind))
                .try_collect::<Vec<_>>()
                .await
        }
    };
    assert_eq!(
        listed("a").await.unwrap(),
        vec![
            ("a/b/c.txt".to_string(), FileKind::Final),
            ("a/p".to_string(), FileKind::Partial),
            ("a/z.txt".to_string(), FileKind::Final),
        ]
    );
    assert_eq!(
        listed("a/b").await.unwrap(),
        vec![("a/b/c.txt".to_string(), FileKind::Final)]
    );
    // Missing: nothing to move. A file, or a symlink (never followed): the
    // caller named a directory that is not one.
    assert_eq!(listed("nope/deeper").await.unwrap(), Vec::new());
    assert_eq!(code(listed("top").await), ErrorCode::FailedPrecondition);
    assert_eq!(code(listed("link").await), ErrorCode::FailedPrecondition);
    assert_eq!(code(listed("link/b").await), ErrorCode::FailedPrecondition);
    assert_eq!(code(listed("top/x").await), ErrorCode::FailedPrecondition);
}

// ---------------------------------------------------------------- write

#[tokio::test]
async fn write_creates_the_partial_file_and_its_parents_never_the_final_one() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let data = random_bytes(1, 3000);
    let written = store
        .write(
            &dir(),
            &rel("x/y/f.bin"),
            0,
            3000,
            chunks([data[..1000].to_vec(), data[1000..].to_vec()]),
        )
        .await
        .unwrap();
    assert_eq!(written, 3000);
    assert_eq!(read_file(root, "x/y/.f.bin.part"), data);
    assert!(!exists(root, "x/y/f.bin"));
    assert_eq!(tree(root), ["x", "x/y", "x/y/.f.bin.part"]);

    // A second write continues the same partial file.
    let more = random_bytes(2, 500);
    store
        .write(
            &dir(),
            &rel("x/y/f.bin"),
            3000,
            3500,
            chunks([more.clone()]),
        )
        .await
        .unwrap();
    assert_eq!(read_file(root, "x/y/.f.bin.part"), [data, more].concat());
    assert!(!exists(root, "x/y/f.bin"));
}

#[tokio::test]
async fn write_past_the_file_size_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let result = store
        .write(&dir(), &rel("f"), 0, 10, chunks([vec![1; 6], vec![2; 6]]))
        .await;
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    let result = store
        .write(&dir(), &rel("g"), 11, 10, chunks([Vec::new()]))
        .await;
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    assert!(!exists(root, "f"));
    assert!(!exists(root, "g"));
    assert!(!exists(root, ".g.part"));
}

#[tokio::test]
async fn a_write_without_data_sets_the_size_and_polls_no_ended_stream() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    // An unfold panics if polled after its end, as the daemon's request streams do.
    let data = stream::unfold((), |()| async { None::<(Result<Bytes, ServiceError>, ())> }).boxed();
    let written = store.write(&dir(), &rel("f"), 0, 5, data).await.unwrap();
    assert_eq!(written, 0);
    assert_eq!(read_file(root, ".f.part"), [0; 5]);
}

#[tokio::test]
async fn a_write_refused_at_its_first_chunk_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "f", b"final");
    let store = store(root);
    let result = store
        .write(&dir(), &rel("f"), 0, 3, chunks([vec![1; 4]]))
        .await;
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    let failing = futures::stream::iter([Err(ServiceError::Protocol("broken".into()))]).boxed();
    let result = store.write(&dir(), &rel("sub/g"), 0, 3, failing).await;
    assert_eq!(code(result), ErrorCode::Internal);
    assert_eq!(read_file(root, "f"), b"final", "the final file stays final");
    assert!(!exists(root, ".f.part"));
    assert!(!exists(root, "sub"), "no parent directory is created");
}

#[tokio::test]
async fn write_turns_an_existing_final_file_into_the_partial_file() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let original = random_bytes(3, 100);
    write_file(root, "sub/f", &original);
    let store = store(root);
    store
        .write(&dir(), &rel("sub/f"), 10, 100, chunks([b"XY".to_vec()]))
        .await
        .unwrap();
    assert!(!exists(root, "sub/f"));
    let mut expected = original;
    expected[10..12].copy_from_slice(b"XY");
    assert_eq!(read_file(root, "sub/.f.part"), expected);
}

#[tokio::test]
async fn write_sets_the_length_to_file_size_at_the_end() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    write_file(root, ".f.part", &random_bytes(4, 100));
    let head = random_bytes(5, 10);
    store
        .write(&dir(), &rel("f"), 0, 10, chunks([head.clone()]))
        .await
        .unwrap();
    assert_eq!(read_file(root, ".f.part"), head);

    // Nothing to write but a larger size: extended with zeros.
    store
        .write(&dir(), &rel("f"), 10, 50, chunks([]))
        .await
        .unwrap();
    let mut expected = head;
    expected.resize(50, 0);
    assert_eq!(read_file(root, ".f.part"), expected);
}

#[tokio::test]
async fn an_error_in_the_data_aborts_the_write_as_is() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let head = random_bytes(6, 100);
    let data = stream::iter([
        Ok(Bytes::from(head.clone())),
        Err(ServiceError::Protocol("boom".into())),
        Ok(Bytes::from(vec![9; 100])),
    ])
    .boxed();
    let result = store.write(&dir(), &rel("f"), 0, 1000, data).await;
    assert!(
        matches!(&result, Err(ServiceError::Protocol(m)) if m == "boom"),
        "{result:?}"
    );
    // The size was not set to file_size: only what was written is there.
    assert_eq!(read_file(root, ".f.part"), head);
    assert!(!exists(root, "f"));
}

/// Writes `head` then aborts with `second`; returns the result of `write`
/// and the partial file as it was the instant `write` returned.
///
/// What `write` wrote must be on disk when it returns an error: a chunk still
/// being written in the background would land after the caller has moved on
/// (after a retry, a truncation, a resume), and its I/O error would be lost.
/// Deterministic: the runtime has one blocking thread, which the data stream
/// occupies before yielding `head`, so the background write of `head` is
/// queued behind it. The blocker is released only once `write` waits for
/// something after `second` was yielded; a `write` that returns at once is
/// caught with `head` not yet on disk. An empty chunk comes first: `write`
/// takes its first chunk before opening the partial file, and that open
/// needs the blocking thread.
fn aborted_write(
    head: Vec<u8>,
    second: Result<Bytes, ServiceError>,
    file_size: u64,
) -> (Result<u64, ServiceError>, Vec<u8>) {
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, mpsc};
    use std::task::Poll;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_tx = Mutex::new(Some(release_tx));
    let release = || drop(release_tx.lock().unwrap().take());
    let aborting = Arc::new(AtomicBool::new(false));

    let first = stream::once(async move {
        tokio::task::spawn_blocking(move || {
            let _ = release_rx.recv();
        });
        Ok(Bytes::from(head))
    });
    let flag = Arc::clone(&aborting);
    let second = stream::once(async move {
        flag.store(true, Ordering::SeqCst);
        second
    });
    let data = stream::once(async { Ok(Bytes::new()) })
        .chain(first)
        .chain(second)
        .boxed();

    let outcome = runtime.block_on(async {
        let (d, f) = (dir(), rel("f"));
        let mut write = std::pin::pin!(store.write(&d, &f, 0, file_size, data));
        let result = std::future::poll_fn(|cx| match write.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => {
                if aborting.load(Ordering::SeqCst) {
                    release();
                }
                Poll::Pending
            }
        })
        .await;
        let on_disk = read_file(root, ".f.part");
        release();
        (result, on_disk)
    });
    drop(runtime);
    outcome
}

#[test]
fn a_write_aborted_by_its_data_has_finished_writing_when_it_returns() {
    let head = random_bytes(7, 1000);
    let (result, on_disk) = aborted_write(
        head.clone(),
        Err(ServiceError::Protocol("boom".into())),
        1_000_000,
    );
    assert!(
        matches!(&result, Err(ServiceError::Protocol(m)) if m == "boom"),
        "{result:?}"
    );
    assert_eq!(
        on_disk.len(),
        head.len(),
        "returned before head was on disk"
    );
    assert!(on_disk == head);
}

#[test]
fn a_write_refused_past_the_file_size_has_finished_writing_when_it_returns() {
    let head = random_bytes(8, 1000);
    let (result, on_disk) = aborted_write(head.clone(), Ok(Bytes::from(vec![1; 100])), 1050);
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    assert_eq!(
        on_disk.len(),
        head.len(),
        "returned before head was on disk"
    );
    assert!(on_disk == head);
}

// ---------------------------------------------------------------- write_file

/// The digest a whole-file write is told to expect, already sent.
fn expecting(hash: Digest) -> crate::service::ExpectedHash {
    crate::service::ExpectedHash::known(hash)
}

/// A SHA-256 a whole-file write waits for, and where to send it.
fn awaiting() -> (
    tokio::sync::oneshot::Sender<Digest>,
    crate::service::ExpectedHash,
) {
    let (sender, value) = tokio::sync::oneshot::channel();
    let expected = crate::service::ExpectedHash {
        algorithm: DigestAlgorithm::Sha256,
        value,
    };
    (sender, expected)
}

#[tokio::test]
async fn write_file_replaces_a_stale_partial_and_finishes_the_verified_file() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // Longer than the new file, so it must be emptied, not overwritten.
    write_file(root, "a/.f.part", &random_bytes(20, 5000));
    let store = store(root);
    let data = random_bytes(21, 3000);
    let written = store
        .write_file(
            &dir(),
            &rel("a/f"),
            3000,
            chunks([data[..1000].to_vec(), data[1000..].to_vec()]),
            expecting(sha256(&data)),
        )
        .await
        .unwrap();
    assert_eq!(written, 3000);
    assert_eq!(read_file(root, "a/f"), data);
    assert_eq!(tree(root), ["a", "a/f"]);
}

#[tokio::test]
async fn write_file_with_the_wrong_hash_renames_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let data = random_bytes(22, 3000);
    let result = store
        .write_file(
            &dir(),
            &rel("f"),
            3000,
            chunks([data.clone()]),
            expecting(sha256(b"something else")),
        )
        .await;
    assert_eq!(code(result), ErrorCode::FailedPrecondition);
    assert!(!exists(root, "f"));
    // What was written stays, to be resumed.
    assert_eq!(read_file(root, ".f.part"), data);
}

#[tokio::test]
async fn write_file_without_its_hash_or_all_its_data_renames_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let data = random_bytes(23, 3000);
    // The hash never comes: the sender is dropped.
    let (_, expected) = awaiting();
    let result = store
        .write_file(&dir(), &rel("f"), 3000, chunks([data.clone()]), expected)
        .await;
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    assert!(!exists(root, "f"));
    // The data ends short of the file size, hash right or not.
    let result = store
        .write_file(
            &dir(),
            &rel("g"),
            4000,
            chunks([data.clone()]),
            expecting(sha256(&data)),
        )
        .await;
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    assert!(!exists(root, "g"));
    // The data fails: its error is returned, and nothing is renamed.
    let failing = stream::iter([
        Ok(Bytes::from(data.clone())),
        Err(ServiceError::Protocol("boom".into())),
    ])
    .boxed();
    let result = store
        .write_file(&dir(), &rel("h"), 3000, failing, expecting(sha256(&data)))
        .await;
    assert!(
        matches!(&result, Err(ServiceError::Protocol(m)) if m == "boom"),
        "{result:?}"
    );
    assert!(!exists(root, "h"));
}

#[tokio::test]
async fn write_file_of_an_empty_file_finishes_it() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    store
        .write_file(&dir(), &rel("e"), 0, chunks([]), expecting(sha256(b"")))
        .await
        .unwrap();
    assert_eq!(read_file(root, "e"), b"");
    assert_eq!(tree(root), ["e"]);
}

#[tokio::test]
async fn concurrent_whole_file_writes_of_one_path_each_finish_what_they_hashed() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let (a, b) = (random_bytes(24, 600_000), random_bytes(25, 600_000));
    // Many small chunks, so unserialized writes would interleave.
    let split = |data: &[u8]| chunks(data.chunks(1000).map(<[u8]>::to_vec).collect::<Vec<_>>());
    let (d, f) = (dir(), rel("f"));
    let (first, second) = tokio::join!(
        store.write_file(&d, &f, 600_000, split(&a), expecting(sha256(&a))),
        store.write_file(&d, &f, 600_000, split(&b), expecting(sha256(&b))),
    );
    first.unwrap();
    second.unwrap();
    let last = read_file(root, "f");
    assert!(
        last == a || last == b,
        "the final file is one of the two, whole"
    );
}

#[tokio::test]
async fn a_batch_of_whole_files_fails_only_the_files_that_fail() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "blocker", b"a file where a directory is needed");
    let store = store(root);
    let whole = |path: &str, data: &[u8], sha256| crate::service::WholeFile {
        path: rel(path),
        data: Bytes::copy_from_slice(data),
        digest: sha256,
    };
    let results = store
        .write_files(
            &dir(),
            vec![
                whole("d/good", b"good", sha256(b"good")),
                whole("d/bad", b"bad", sha256(b"something else")),
                whole("blocker/f", b"blocked", sha256(b"blocked")),
            ],
        )
        .await;
    assert_eq!(results.len(), 3);
    assert_eq!(*results[0].as_ref().unwrap(), 4);
    assert_eq!(
        results[1].as_ref().unwrap_err().code(),
        ErrorCode::FailedPrecondition
    );
    assert!(results[2].is_err());
    assert_eq!(read_file(root, "d/good"), b"good");
    assert!(!exists(root, "d/bad"));

    // Read back whole, then deleted, each only in the version listed.
    let stamp = store
        .hash(
            &dir(),
            &rel("d/good"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap()
        .stamp;
    let stale = FileStamp {
        size: stamp.size + 1,
        ..stamp
    };
    let read = store
        .read_files(
            &dir(),
            &[(rel("d/good"), stamp), (rel("d/good"), stale)],
            DigestAlgorithm::Sha256,
        )
        .await;
    let file = read[0].as_ref().unwrap();
    assert_eq!(
        (file.data.as_ref(), file.digest),
        (&b"good"[..], sha256(b"good"))
    );
    assert_eq!(
        read[1].as_ref().unwrap_err().code(),
        ErrorCode::FailedPrecondition
    );
    let deleted = store
        .delete_files(&dir(), &[(rel("d/good"), stale), (rel("d/bad"), stamp)])
        .await;
    assert_eq!(
        deleted[0].as_ref().unwrap_err().code(),
        ErrorCode::FailedPrecondition
    );
    assert!(exists(root, "d/good"));
    // A stamped delete removes only a final file: without one, nothing goes.
    assert!(deleted[1].is_ok());
    assert!(exists(root, "d/.bad.part"));
}

// ---------------------------------------------------------------- finish

#[tokio::test]
async fn finish_renames_the_partial_file_to_the_final_name() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let data = random_bytes(8, 1000);
    write_file(root, "a/.f.part", &data);
    write_file(root, "a/f", b"old final, replaced");
    let store = store(root);
    store.finish(&dir(), &rel("a/f"), None).await.unwrap();
    assert_eq!(read_file(root, "a/f"), data);
    assert!(!exists(root, "a/.f.part"));
}

#[tokio::test]
async fn finish_of_a_final_file_alone_leaves_it() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "f", b"done");
    let store = store(root);
    store.finish(&dir(), &rel("f"), None).await.unwrap();
    assert_eq!(read_file(root, "f"), b"done");
    assert_eq!(tree(root), ["f"]);
}

#[tokio::test]
async fn finish_of_nothing_is_not_found() {
    let root = tempfile::tempdir().unwrap();
    let store = store(root.path());
    assert_eq!(
        code(store.finish(&dir(), &rel("a/f"), None).await),
        ErrorCode::NotFound
    );
    assert!(tree(root.path()).is_empty());
}

// ---------------------------------------------------------------- delete

#[tokio::test]
async fn delete_removes_both_forms_and_the_parents_left_empty() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "a/b/c/f", b"final");
    write_file(root, "a/b/c/.f.part", b"partial");
    write_file(root, "a/keep", b"keep");
    let store = store(root);
    store.delete(&dir(), &rel("a/b/c/f"), None).await.unwrap();
    assert_eq!(tree(root), ["a", "a/keep"]);

    store.delete(&dir(), &rel("a/keep"), None).await.unwrap();
    // The root itself stays, even empty.
    assert!(root.is_dir());
    assert!(tree(root).is_empty());
}

#[tokio::test]
async fn delete_of_nothing_is_ok() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "other", b"x");
    let store = store(root);
    store.delete(&dir(), &rel("f"), None).await.unwrap();
    store.delete(&dir(), &rel("no/such/f"), None).await.unwrap();
    assert_eq!(tree(root), ["other"]);
}

#[tokio::test]
async fn delete_refuses_a_symlink_or_fifo_and_removes_neither_form() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "target", b"target");
    symlink(root.join("target"), root.join("link")).unwrap();
    mkfifo(&root.join("fifo"));
    // A regular final file beside a FIFO partial file: neither goes.
    write_file(root, "f", b"final");
    mkfifo(&root.join(".f.part"));
    let store = store(root);
    for path in ["link", "fifo", "f"] {
        let result = store.delete(&dir(), &rel(path), None).await;
        assert_eq!(code(result), ErrorCode::FailedPrecondition, "{path}");
    }
    for path in ["link", "fifo", "f", ".f.part", "target"] {
        assert!(exists(root, path), "{path} was removed");
    }
}

#[tokio::test]
async fn delete_with_a_stale_stamp_is_refused_and_deletes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "sub/f", b"version 1");
    write_file(root, "sub/.f.part", b"partial");
    let store = store(root);
    let stamp = store
        .hash(
            &dir(),
            &rel("sub/f"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap()
        .stamp;
    write_file(root, "sub/f", b"version 2, longer");
    let result = store.delete(&dir(), &rel("sub/f"), Some(stamp)).await;
    assert_eq!(code(result), ErrorCode::FailedPrecondition);
    assert_eq!(read_file(root, "sub/f"), b"version 2, longer");
    assert_eq!(read_file(root, "sub/.f.part"), b"partial");

    // With the current stamp it goes through.
    let stamp = store
        .hash(
            &dir(),
            &rel("sub/f"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap()
        .stamp;
    store
        .delete(&dir(), &rel("sub/f"), Some(stamp))
        .await
        .unwrap();
    // The partial form was never verified: a stamped delete leaves it.
    assert_eq!(read_file(root, "sub/.f.part"), b"partial");
    assert!(!exists(root, "sub/f"));
}

// ---------------------------------------------------------------- hash

#[tokio::test]
async fn hash_of_a_file_and_of_ranges_is_the_sha256_of_those_bytes() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // Larger than the 1 MiB hash buffer, so it is hashed in several reads.
    let data = random_bytes(9, 2 * 1024 * 1024 + 17);
    write_file(root, "f", &data);
    write_file(root, "empty", b"");
    let store = store(root);
    let check = |range: Option<(usize, usize)>| {
        let store = store.clone();
        let data = &data;
        async move {
            let expected = match range {
                Some((start, end)) => sha256(&data[start..end]),
                None => sha256(data),
            };
            let range = range.map(|(s, e)| ByteRange::new(s as u64, e as u64));
            let got = store
                .hash(
                    &dir(),
                    &rel("f"),
                    FileKind::Final,
                    range,
                    DigestAlgorithm::Sha256,
                )
                .await
                .unwrap();
            assert_eq!(got.hash, expected, "{range:?}");
            assert_eq!(got.stamp.size, data.len() as u64);
        }
    };
    check(None).await;
    check(Some((0, data.len()))).await;
    check(Some((0, 1))).await;
    check(Some((1000, 1_500_000))).await;
    check(Some((data.len() - 5, data.len()))).await;
    check(Some((77, 77))).await;
    let empty = store
        .hash(
            &dir(),
            &rel("empty"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap();
    assert_eq!(empty.hash, sha256(b""));
}

#[tokio::test]
async fn hash_past_the_end_is_out_of_range() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "f", &[1; 100]);
    let store = store(root.path());
    let (d, f) = (dir(), rel("f"));
    let hash = |start, end| {
        store.hash(
            &d,
            &f,
            FileKind::Final,
            Some(ByteRange::new(start, end)),
            DigestAlgorithm::Sha256,
        )
    };
    assert_eq!(code(hash(0, 101).await), ErrorCode::OutOfRange);
    assert_eq!(code(hash(200, 300).await), ErrorCode::OutOfRange);
    assert_eq!(code(hash(50, 10).await), ErrorCode::InvalidArgument);
    let missing = store
        .hash(
            &dir(),
            &rel("nope"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await;
    assert_eq!(code(missing), ErrorCode::NotFound);
}

#[tokio::test]
async fn hash_of_the_partial_form_reads_the_partial_file() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "a/f", b"the final file");
    write_file(root, "a/.f.part", b"the partial file");
    let store = store(root);
    let partial = store
        .hash(
            &dir(),
            &rel("a/f"),
            FileKind::Partial,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap();
    assert_eq!(partial.hash, sha256(b"the partial file"));
    assert_eq!(partial.stamp.size, 16);
    let final_ = store
        .hash(
            &dir(),
            &rel("a/f"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap();
    assert_eq!(final_.hash, sha256(b"the final file"));
    let range = store
        .hash(
            &dir(),
            &rel("a/f"),
            FileKind::Partial,
            Some(ByteRange::new(4, 11)),
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap();
    assert_eq!(range.hash, sha256(b"partial"));
}

// ---------------------------------------------------------------- read

#[tokio::test]
async fn read_returns_exactly_the_requested_bytes() {
    let root = tempfile::tempdir().unwrap();
    // Several 256 KiB chunks.
    let data = random_bytes(10, 1024 * 1024 + 333);
    write_file(root.path(), "d/f", &data);
    let store = store(root.path());
    let read = |offset: u64, length: Option<u64>| {
        let store = store.clone();
        async move {
            collect(
                store
                    .read(&dir(), &rel("d/f"), offset, length, None)
                    .await
                    .unwrap(),
            )
            .await
            .unwrap()
        }
    };
    assert!(read(0, None).await == data);
    assert!(read(0, Some(data.len() as u64)).await == data);
    assert!(read(100, Some(300_000)).await == data[100..300_100]);
    assert!(read(500_000, None).await == data[500_000..]);
    assert!(read(data.len() as u64, None).await.is_empty());
    assert!(read(7, Some(0)).await.is_empty());
}

#[tokio::test]
async fn read_of_another_version_than_the_one_expected_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "f", &random_bytes(26, 1000));
    let store = store(root);
    let listed = store
        .hash(
            &dir(),
            &rel("f"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap()
        .stamp;
    let data = collect(
        store
            .read(&dir(), &rel("f"), 0, None, Some(listed))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(data.unwrap().len(), 1000);
    let stale = FileStamp {
        mtime_unix_nanos: listed.mtime_unix_nanos - 1,
        ..listed
    };
    let result = store.read(&dir(), &rel("f"), 0, None, Some(stale)).await;
    assert_eq!(code(result), ErrorCode::FailedPrecondition);
}

#[tokio::test]
async fn read_hashed_sends_the_sha256_of_the_bytes_once_they_are_all_read() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // More chunks than the read queue holds, so a reader that stops taking
    // them stops the read.
    let data = random_bytes(27, 3_000_000);
    write_file(root, "f", &data);
    let store = store(root);
    let stamp = store
        .hash(
            &dir(),
            &rel("f"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap()
        .stamp;
    let (stream, expected) = store
        .read_hashed(&dir(), &rel("f"), stamp, DigestAlgorithm::Sha256)
        .await
        .unwrap();
    assert!(collect(stream).await.unwrap() == data);
    assert_eq!(expected.value.await.unwrap(), sha256(&data));

    // A stream dropped before the file is read to its end sends no hash.
    let (stream, expected) = store
        .read_hashed(&dir(), &rel("f"), stamp, DigestAlgorithm::Sha256)
        .await
        .unwrap();
    drop(stream);
    assert!(expected.value.await.is_err());
}

#[tokio::test]
async fn read_past_the_end_is_out_of_range() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "f", &[1; 100]);
    write_file(root.path(), ".g.part", &[1; 100]);
    let store = store(root.path());
    let (d, f) = (dir(), rel("f"));
    let read = |offset, length| store.read(&d, &f, offset, length, None);
    assert_eq!(code(read(0, Some(101)).await), ErrorCode::OutOfRange);
    assert_eq!(code(read(101, None).await), ErrorCode::OutOfRange);
    assert_eq!(code(read(50, Some(u64::MAX)).await), ErrorCode::OutOfRange);
    // Read only ever serves final files.
    let partial_only = store.read(&dir(), &rel("g"), 0, None, None).await;
    assert_eq!(code(partial_only), ErrorCode::NotFound);
}

// ---------------------------------------------------------------- deltas

#[tokio::test]
async fn signature_diff_and_apply_delta_resume_a_half_written_partial() {
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let data = random_bytes(11, 300_000);
    write_file(src_root.path(), "a/f", &data);
    write_file(dst_root.path(), "a/.f.part", &data[..150_000]);
    let (src, dst) = (store(src_root.path()), store(dst_root.path()));
    let path = rel("a/f");
    let range = ByteRange::new(0, data.len() as u64);

    let signature = dst.signature(&dir(), &path, range, 1024).await.unwrap();
    let delta = collect(src.diff(&dir(), &path, range, signature).await.unwrap())
        .await
        .unwrap();
    // The first half is matched by the signature, not sent again.
    assert!(delta.len() < 160_000, "delta is {} bytes", delta.len());
    let applied = dst
        .apply_delta(&dir(), &path, range, data.len() as u64, chunks([delta]))
        .await
        .unwrap();
    assert_eq!(applied, data.len() as u64);
    assert!(read_file(dst_root.path(), "a/.f.part") == data);
    assert!(!exists(dst_root.path(), "a/f"));
}

#[tokio::test]
async fn apply_delta_to_a_range_of_a_final_file_makes_it_partial() {
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let data = random_bytes(12, 100_000);
    let mut old = data.clone();
    old[50_000] ^= 0xff;
    old.truncate(90_000);
    write_file(src_root.path(), "f", &data);
    write_file(dst_root.path(), "f", &old);
    let (src, dst) = (store(src_root.path()), store(dst_root.path()));
    let range = ByteRange::new(40_000, 60_000);
    let signature = dst.signature(&dir(), &rel("f"), range, 512).await.unwrap();
    let delta = collect(src.diff(&dir(), &rel("f"), range, signature).await.unwrap())
        .await
        .unwrap();
    assert!(delta.len() < 2_000, "delta is {} bytes", delta.len());
    dst.apply_delta(&dir(), &rel("f"), range, 100_000, chunks([delta]))
        .await
        .unwrap();
    assert!(!exists(dst_root.path(), "f"));
    let partial = read_file(dst_root.path(), ".f.part");
    assert_eq!(partial.len(), 100_000);
    assert!(partial[..90_000] == data[..90_000]);
    assert!(partial[90_000..].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn ranges_larger_than_max_range_are_invalid() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "f", &[1; 100]);
    let store = store(root.path());
    let range = ByteRange::new(0, MAX_RANGE + 1);
    let signature = store.signature(&dir(), &rel("f"), range, 1024).await;
    assert_eq!(code(signature), ErrorCode::InvalidArgument);
    let good_signature = store
        .signature(&dir(), &rel("f"), ByteRange::new(0, 100), 1024)
        .await
        .unwrap();
    let diff = store.diff(&dir(), &rel("f"), range, good_signature).await;
    assert_eq!(code(diff), ErrorCode::InvalidArgument);
    let apply = store
        .apply_delta(&dir(), &rel("f"), range, MAX_RANGE + 1, chunks([]))
        .await;
    assert_eq!(code(apply), ErrorCode::InvalidArgument);
    assert_eq!(read_file(root.path(), "f"), [1; 100]);
    assert_eq!(tree(root.path()), ["f"]);
}

#[tokio::test]
async fn a_bad_block_size_is_invalid() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "f", &[1; 100]);
    let store = store(root.path());
    let range = ByteRange::new(0, 100);
    for block_size in [0, 1, 2 * 1024 * 1024] {
        let result = store.signature(&dir(), &rel("f"), range, block_size).await;
        assert_eq!(code(result), ErrorCode::InvalidArgument, "{block_size}");
    }
}

#[tokio::test]
async fn a_garbage_delta_is_invalid_and_leaves_the_partial_file_alone() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let partial = random_bytes(13, 5000);
    write_file(root, ".f.part", &partial);
    let store = store(root);
    let range = ByteRange::new(0, 8000);
    for garbage in [
        b"this is not a delta".to_vec(),
        random_bytes(14, 3000),
        Vec::new(),
        // A valid magic and a copy command far past the base.
        [
            &[0x72, 0x73, 0x02, 0x36][..],
            &[0x45],
            &u32::MAX.to_be_bytes(),
            &[0x10],
        ]
        .concat(),
    ] {
        let result = store
            .apply_delta(&dir(), &rel("f"), range, 8000, chunks([garbage]))
            .await;
        assert_eq!(code(result), ErrorCode::InvalidArgument);
        assert!(read_file(root, ".f.part") == partial);
        assert!(!exists(root, "f"));
    }
    // A delta far longer than the range could ever need is refused too.
    let huge = vec![0u8; 100_000];
    let result = store
        .apply_delta(
            &dir(),
            &rel("f"),
            ByteRange::new(0, 1000),
            1000,
            chunks([huge]),
        )
        .await;
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    assert!(read_file(root, ".f.part") == partial);
}

#[tokio::test]
async fn a_garbage_signature_is_invalid() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "f", &random_bytes(15, 5000));
    let store = store(root.path());
    let range = ByteRange::new(0, 5000);
    let mut truncated = store
        .signature(&dir(), &rel("f"), range, 1024)
        .await
        .unwrap()
        .to_vec();
    truncated.truncate(truncated.len() - 3);
    let mut bad_magic = store
        .signature(&dir(), &rel("f"), range, 1024)
        .await
        .unwrap()
        .to_vec();
    bad_magic[0] ^= 0xff;
    for garbage in [
        b"not a signature at all".to_vec(),
        Vec::new(),
        vec![0; 3],
        random_bytes(16, 4096),
        truncated,
        bad_magic,
    ] {
        let result = store
            .diff(&dir(), &rel("f"), range, Bytes::from(garbage))
            .await;
        assert_eq!(code(result), ErrorCode::InvalidArgument);
    }
}

// ---------------------------------------------------------------- special files

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Opening a FIFO for reading blocks until a writer shows up, so a call that
/// opens one without checking what it is hangs, and holds a blocking thread
/// that keeps the runtime (the daemon) from shutting down. Every call must
/// refuse a path that is not a regular file, at once.
///
/// Bounded by a generous timeout; on expiry the FIFO is opened for writing so
/// the stuck thread can finish and the test fails instead of hanging.
#[tokio::test]
async fn a_fifo_is_refused_without_blocking() {
    use std::future::Future;
    use std::os::unix::fs::OpenOptionsExt;
    use std::pin::Pin;

    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    mkfifo(&root.join("fifo"));
    mkfifo(&root.join(".p.part"));
    let store = store(root);
    let (d, fifo, p) = (dir(), rel("fifo"), rel("p"));
    let range = ByteRange::new(0, 10);
    let signature = store
        .signature(&d, &rel("absent"), range, 1024)
        .await
        .unwrap();
    type Call<'a> = Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send + 'a>>;
    let calls: Vec<(&str, &str, Call<'_>)> = vec![
        (
            "read",
            "fifo",
            Box::pin(async { store.read(&d, &fifo, 0, None, None).await.map(drop) }),
        ),
        (
            "hash",
            "fifo",
            Box::pin(async {
                store
                    .hash(&d, &fifo, FileKind::Final, None, DigestAlgorithm::Sha256)
                    .await
                    .map(drop)
            }),
        ),
        (
            "hash of the partial form",
            ".p.part",
            Box::pin(async {
                store
                    .hash(&d, &p, FileKind::Partial, None, DigestAlgorithm::Sha256)
                    .await
                    .map(drop)
            }),
        ),
        (
            "diff",
            "fifo",
            Box::pin(async {
                store
                    .diff(&d, &fifo, range, signature.clone())
                    .await
                    .map(drop)
            }),
        ),
        (
            "signature",
            "fifo",
            Box::pin(async { store.signature(&d, &fifo, range, 1024).await.map(drop) }),
        ),
        (
            "write",
            ".p.part",
            Box::pin(async {
                store
                    .write(&d, &p, 0, 1, chunks([b"x".to_vec()]))
                    .await
                    .map(drop)
            }),
        ),
        ("finish", ".p.part", Box::pin(store.finish(&d, &p, None))),
        ("finish", "fifo", Box::pin(store.finish(&d, &fifo, None))),
    ];
    let mut blocked = Vec::new();
    for (name, on_disk, call) in calls {
        match tokio::time::timeout(std::time::Duration::from_secs(3), call).await {
            Ok(result) => assert!(result.is_err(), "{name} of a FIFO succeeded"),
            Err(_) => {
                // Let the blocked open return, so the runtime can shut down.
                let _writer = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(root.join(on_disk));
                blocked.push(format!("{name} of {on_disk}"));
            }
        }
    }
    assert!(blocked.is_empty(), "blocked on a FIFO: {blocked:?}");
    assert!(root.join("fifo").exists());
    assert!(root.join(".p.part").exists());
}

// ---------------------------------------------------------------- path safety

#[tokio::test]
async fn a_symlinked_parent_leading_outside_the_root_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (root, outside) = (root.path(), outside.path());
    write_file(outside, "f", b"outside, must not be touched");
    write_file(outside, ".f.part", b"outside partial");
    symlink(outside, root.join("link")).unwrap();
    std::fs::create_dir(root.join("real")).unwrap();
    symlink(outside, root.join("real/deeper")).unwrap();
    let store = store(root);
    let before = tree(outside);

    for path in ["link/f", "link/new/g", "real/deeper/f"] {
        let path = rel(path);
        let read = store.read(&dir(), &path, 0, None, None).await;
        assert_eq!(code(read), ErrorCode::InvalidArgument, "read {path}");
        let write = store
            .write(&dir(), &path, 0, 4, chunks([b"evil".to_vec()]))
            .await;
        assert_eq!(code(write), ErrorCode::InvalidArgument, "write {path}");
        for kind in [FileKind::Final, FileKind::Partial] {
            let hash = store
                .hash(&dir(), &path, kind, None, DigestAlgorithm::Sha256)
                .await;
            assert_eq!(code(hash), ErrorCode::InvalidArgument, "hash {path}");
        }
        let delete = store.delete(&dir(), &path, None).await;
        assert_eq!(code(delete), ErrorCode::InvalidArgument, "delete {path}");
        let finish = store.finish(&dir(), &path, None).await;
        assert_eq!(code(finish), ErrorCode::InvalidArgument, "finish {path}");
        let range = ByteRange::new(0, 4);
        let signature = store.signature(&dir(), &path, range, 1024).await;
        assert_eq!(code(signature), ErrorCode::InvalidArgument);
        let apply = store.apply_delta(&dir(), &path, range, 4, chunks([])).await;
        assert_eq!(code(apply), ErrorCode::InvalidArgument);
    }
    assert_eq!(tree(outside), before);
    assert_eq!(read_file(outside, "f"), b"outside, must not be touched");
    assert_eq!(read_file(outside, ".f.part"), b"outside partial");
    // The symlinks themselves are not removed either.
    assert!(exists(root, "link"));
    assert!(exists(root, "real/deeper"));
}

#[tokio::test]
async fn a_symlink_as_the_file_itself_is_never_followed() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (root, outside) = (root.path(), outside.path());
    write_file(outside, "target", b"outside, must not be touched");
    symlink(outside.join("target"), root.join("f")).unwrap();
    symlink(outside.join("target"), root.join(".g.part")).unwrap();
    let store = store(root);
    let (d, f, g) = (dir(), rel("f"), rel("g"));
    let range = ByteRange::new(0, 4);

    assert!(store.read(&d, &f, 0, None, None).await.is_err());
    assert!(
        store
            .hash(&d, &f, FileKind::Final, None, DigestAlgorithm::Sha256)
            .await
            .is_err()
    );
    assert!(
        store
            .hash(&d, &g, FileKind::Partial, None, DigestAlgorithm::Sha256)
            .await
            .is_err()
    );
    let signature = store
        .signature(&d, &rel("absent"), range, 1024)
        .await
        .unwrap();
    assert!(store.diff(&d, &f, range, signature).await.is_err());
    for path in [&f, &g] {
        let write = store
            .write(&d, path, 0, 4, chunks([b"evil".to_vec()]))
            .await;
        assert!(write.is_err(), "write {path}");
        assert!(store.signature(&d, path, range, 1024).await.is_err());
        let apply = store.apply_delta(&d, path, range, 4, chunks([])).await;
        assert!(apply.is_err(), "apply_delta {path}");
        assert!(store.finish(&d, path, None).await.is_err(), "finish {path}");
    }
    assert_eq!(
        read_file(outside, "target"),
        b"outside, must not be touched"
    );
    assert_eq!(tree(root), [".g.part", "f"]);

    // Delete refuses them too, as not regular files: what is not moved is
    // not removed either.
    for path in [&f, &g] {
        let delete = store.delete(&d, path, None).await;
        assert_eq!(code(delete), ErrorCode::FailedPrecondition, "delete {path}");
    }
    assert_eq!(tree(root), [".g.part", "f"]);
    assert_eq!(
        read_file(outside, "target"),
        b"outside, must not be touched"
    );
}

#[tokio::test]
async fn a_regular_file_as_a_parent_is_refused() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "sub", b"a file, not a directory");
    let store = store(root.path());
    let write = store
        .write(&dir(), &rel("sub/f"), 0, 1, chunks([b"x".to_vec()]))
        .await;
    assert_eq!(code(write), ErrorCode::InvalidArgument);
    assert_eq!(read_file(root.path(), "sub"), b"a file, not a directory");
}

#[tokio::test]
async fn an_unknown_dir_id_is_invalid_argument() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "f", b"data");
    let store = store(root.path());
    let other = DirId::new("other").unwrap();
    let path = rel("f");
    assert_eq!(
        code(store.read(&other, &path, 0, None, None).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            store
                .hash(
                    &other,
                    &path,
                    FileKind::Final,
                    None,
                    DigestAlgorithm::Sha256
                )
                .await
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            store
                .write(&other, &path, 0, 1, chunks([b"x".to_vec()]))
                .await
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(store.delete(&other, &path, None).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(store.finish(&other, &path, None).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(tree(root.path()), ["f"]);
}

// ---------------------------------------------------------------- write lock

/// Another writer's hold on a file: another process, another daemon or
/// another directory id on the same files. A lock of the open file, so a
/// descriptor of this test process conflicts with the store's like another
/// process's would.
fn hold_write_lock(path: &Path) -> std::fs::File {
    let file = std::fs::File::open(path).unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    file
}

/// The error of a call refused because another writer holds the file.
fn assert_busy<T: std::fmt::Debug>(result: Result<T, ServiceError>) {
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Aborted, "{err}");
    assert!(
        err.to_string().contains("being written by another client"),
        "{err}"
    );
}

#[tokio::test]
async fn a_partial_file_held_by_another_writer_is_refused_to_every_writer_and_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let held = random_bytes(30, 5000);
    write_file(root, ".f.part", &held);
    let holder = hold_write_lock(&root.join(".f.part"));
    let store = store(root);
    let (d, f) = (dir(), rel("f"));
    let data = random_bytes(31, 5000);
    let hash = sha256(&data);

    assert_busy(
        store
            .write_file(&d, &f, 5000, chunks([data.clone()]), expecting(hash))
            .await,
    );
    assert_busy(store.write(&d, &f, 0, 5000, chunks([data.clone()])).await);
    assert_busy(store.finish(&d, &f, Some(sha256(&held))).await);
    assert_busy(store.finish(&d, &f, None).await);
    let range = ByteRange::new(0, 5000);
    let signature = store.signature(&d, &f, range, 1024).await.unwrap();
    let delta = {
        let src_root = tempfile::tempdir().unwrap();
        write_file(src_root.path(), "f", &data);
        let src = super::LocalStore::new([(dir(), src_root.path().to_path_buf())]);
        collect(src.diff(&d, &f, range, signature).await.unwrap())
            .await
            .unwrap()
    };
    assert_busy(
        store
            .apply_delta(&d, &f, range, 5000, chunks([delta.clone()]))
            .await,
    );
    let batch = vec![crate::service::WholeFile {
        path: f.clone(),
        data: Bytes::from(data.clone()),
        digest: hash,
    }];
    let mut results = store.write_files(&d, batch.clone()).await;
    assert_busy(results.remove(0));
    assert_eq!(read_file(root, ".f.part"), held, "nothing was written");
    assert!(!exists(root, "f"), "nothing was renamed");

    // Readers are not writers: they do not wait for the lock.
    let hashed = store
        .hash(&d, &f, FileKind::Partial, None, DigestAlgorithm::Sha256)
        .await
        .unwrap();
    assert_eq!(hashed.hash, sha256(&held));
    assert_eq!(
        list(&store, true).await,
        [("f".into(), FileKind::Partial, 5000)]
    );

    drop(holder);
    store
        .apply_delta(&d, &f, range, 5000, chunks([delta]))
        .await
        .unwrap();
    store.finish(&d, &f, Some(hash)).await.unwrap();
    assert_eq!(read_file(root, "f"), data);
    let mut results = store.write_files(&d, batch).await;
    assert_eq!(results.remove(0).unwrap(), 5000);
}

#[tokio::test]
async fn a_final_file_held_by_another_writer_is_not_turned_back_into_a_partial_file() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let old = random_bytes(32, 3000);
    write_file(root, "f", &old);
    let _holder = hold_write_lock(&root.join("f"));
    let store = store(root);
    let data = random_bytes(33, 3000);
    assert_busy(
        store
            .write_file(
                &dir(),
                &rel("f"),
                3000,
                chunks([data.clone()]),
                expecting(sha256(&data)),
            )
            .await,
    );
    assert_eq!(tree(root), ["f"]);
    assert_eq!(read_file(root, "f"), old);
}

/// Waits until `path` holds `size` bytes: the only sign, outside the
/// store, that a write has reached the disk.
async fn wait_for_size(path: &Path, size: u64) {
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while std::fs::metadata(path).map_or(true, |m| m.len() != size) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never held {size} bytes", path.display()));
}

#[tokio::test]
async fn two_stores_on_one_directory_never_interleave_their_writes() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let (x, y) = (DirId::new("x").unwrap(), DirId::new("y").unwrap());
    // Two stores, as two daemons would be: within one store, calls on a
    // path queue on its lock whatever the id; across stores only the file's
    // write lock stands between them.
    let store = LocalStore::new([(x.clone(), root.to_path_buf())]);
    let other = LocalStore::new([(y.clone(), root.to_path_buf())]);
    let f = rel("mix.bin");
    let (a, b) = (random_bytes(34, 300_000), random_bytes(35, 300_000));
    let split = |data: &[u8]| chunks(data.chunks(4096).map(<[u8]>::to_vec).collect::<Vec<_>>());

    // The first write has all its data on disk and waits for its hash, so it
    // holds the partial file for as long as this test wants.
    let (send_hash, first_hash) = awaiting();
    let first = tokio::spawn({
        let (store, x, f, data) = (store.clone(), x.clone(), f.clone(), split(&a));
        async move { store.write_file(&x, &f, 300_000, data, first_hash).await }
    });
    wait_for_size(&root.join(".mix.bin.part"), 300_000).await;

    assert_busy(
        other
            .write_file(&y, &f, 300_000, split(&b), expecting(sha256(&b)))
            .await,
    );
    assert_busy(other.write(&y, &f, 0, 300_000, split(&b)).await);
    assert_busy(other.finish(&y, &f, None).await);

    send_hash.send(sha256(&a)).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 300_000);
    assert!(
        read_file(root, "mix.bin") == a,
        "the file is the first write's, whole"
    );
    assert_eq!(tree(root), ["mix.bin"]);
}

// ---------------------------------------------------------------- info

#[tokio::test]
async fn info_identifies_each_root() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let identity = |root: &Path| {
        let store = store(root);
        async move {
            let info = store.info().await.unwrap();
            assert_eq!(info.dirs.len(), 1);
            assert_eq!(info.dirs[0].id, dir());
            assert!(!info.dirs[0].identity.is_empty());
            info.dirs[0].identity.clone()
        }
    };
    let (id_a, id_b) = (identity(a.path()).await, identity(b.path()).await);
    assert_ne!(id_a, id_b);
    assert_eq!(identity(a.path()).await, id_a);

    // The same root reached through a symlink is the same directory.
    let link_parent = tempfile::tempdir().unwrap();
    let link = link_parent.path().join("link");
    symlink(a.path(), &link).unwrap();
    assert_eq!(identity(&link).await, id_a);

    let both = LocalStore::new([
        (DirId::new("one").unwrap(), a.path().to_path_buf()),
        (DirId::new("two").unwrap(), b.path().to_path_buf()),
    ]);
    let info = both.info().await.unwrap();
    let ids: Vec<&str> = info.dirs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["one", "two"]);
    assert_eq!(info.dirs[0].identity, id_a);
    assert_eq!(info.dirs[1].identity, id_b);
    assert_eq!(info.version, crate::VERSION);
}

// ---------------------------------------------------------------- arithmetic

#[test]
fn offsets_and_lengths_that_overflow_do_not_fit() {
    use super::write::fits;
    assert!(fits(0, 10, 10));
    assert!(fits(5, 5, 10));
    assert!(!fits(5, 6, 10));
    assert!(fits(u64::MAX, 0, u64::MAX));
    // Would wrap to a small number, and so look within the file.
    assert!(!fits(u64::MAX, 1, u64::MAX));
    assert!(!fits(u64::MAX - 5, 10, u64::MAX));
    assert!(!fits(1, usize::MAX, u64::MAX));
}

#[tokio::test]
async fn a_write_at_an_offset_near_u64_max_is_refused_not_wrapped() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store(root);
    let result = store
        .write(
            &dir(),
            &rel("f"),
            u64::MAX - 1,
            u64::MAX,
            chunks([vec![1; 10]]),
        )
        .await;
    assert_eq!(code(result), ErrorCode::InvalidArgument);
    assert!(!exists(root, ".f.part"));
}

#[tokio::test]
async fn read_files_refuses_a_claimed_size_past_the_whole_file_limit() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_file(root, "f", b"data");
    let store = store(root);
    let stamp = store
        .hash(
            &dir(),
            &rel("f"),
            FileKind::Final,
            None,
            DigestAlgorithm::Sha256,
        )
        .await
        .unwrap()
        .stamp;
    let huge = FileStamp {
        size: u64::MAX,
        ..stamp
    };
    let read = store
        .read_files(
            &dir(),
            &[(rel("f"), huge), (rel("f"), stamp)],
            DigestAlgorithm::Sha256,
        )
        .await;
    assert_eq!(read.len(), 2);
    assert!(matches!(&read[0], Err(e) if e.code() == ErrorCode::InvalidArgument));
    assert_eq!(&read[1].as_ref().unwrap().data[..], b"data");
}

/// A daemon builds a new store on each reload: with the path locks shared,
/// a Finish admitted after the reload waits for a Write admitted before it,
/// instead of finding the partial file taken.
#[tokio::test]
async fn stores_sharing_path_locks_queue_calls_on_one_path() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let locks = super::PathLocks::default();
    let before = LocalStore::with_locks([(dir(), root.to_path_buf())], locks.clone());
    let after = LocalStore::with_locks([(dir(), root.to_path_buf())], locks);
    let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, ServiceError>>(1);
    let data: ByteStream =
        stream::unfold(
            receive,
            |mut r| async move { r.recv().await.map(|c| (c, r)) },
        )
        .boxed();
    let writing = tokio::spawn(async move { before.write(&dir(), &rel("f"), 0, 10, data).await });
    send.send(Ok(Bytes::from_static(b"01234"))).await.unwrap();
    // The write holds the path once its first bytes are on disk.
    while std::fs::metadata(root.join(".f.part")).map_or(0, |m| m.len()) < 5 {
        tokio::task::yield_now().await;
    }
    let mut finishing = tokio::spawn(async move { after.finish(&dir(), &rel("f"), None).await });
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut finishing)
            .await
            .is_err(),
        "the finish did not wait for the write"
    );
    send.send(Ok(Bytes::from_static(b"56789"))).await.unwrap();
    drop(send);
    assert_eq!(writing.await.unwrap().unwrap(), 10);
    finishing.await.unwrap().unwrap();
    assert_eq!(read_file(root, "f"), b"0123456789");
}

#[tokio::test]
async fn stale_partial_files_are_removed_unless_fresh_or_being_written() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for name in ["a/.old.part", ".written.part"] {
        write_file(root, name, b"left by a failed move");
        let file = std::fs::File::options()
            .write(true)
            .open(root.join(name))
            .unwrap();
        file.set_modified(two_hours_ago).unwrap();
    }
    write_file(root, "a/.fresh.part", b"being resumed");
    write_file(root, "a/old", b"a final file, however old, stays");
    std::fs::File::options()
        .write(true)
        .open(root.join("a/old"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // A writer holds this one's lock.
    let writer = std::fs::File::open(root.join(".written.part")).unwrap();
    rustix::fs::flock(&writer, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let removed = store(root)
        .remove_stale_partials(std::time::Duration::from_secs(3600))
        .await;
    assert_eq!(removed, 1);
    assert!(!exists(root, "a/.old.part"));
    assert!(exists(root, "a/.fresh.part"));
    assert!(exists(root, ".written.part"));
    assert!(exists(root, "a/old"));
}

mod race;
