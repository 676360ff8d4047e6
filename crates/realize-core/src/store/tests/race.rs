//! A local user who can write inside a root swaps a directory for a symlink
//! to outside it while the store's calls run on paths through it: nothing
//! outside is ever read, written, created or deleted.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rustix::fs::{CWD, RenameFlags, renameat_with};

use super::{chunks, collect, dir, expecting, random_bytes, rel, sha256, store, write_file};
use crate::digest::DigestAlgorithm;
use crate::error::{ErrorCode, ServiceError};
use crate::service::{FileKind, Service, WholeFile};

/// Every file and directory under `root`, with the bytes of each file.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for item in std::fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Inodes of every file under `root`.
fn inodes(root: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for (path, _) in snapshot(root) {
        out.push(std::fs::symlink_metadata(root.join(path)).unwrap().ino());
    }
    out
}

/// What each kind of call answered: its successes and its refusals.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
}

impl Tally {
    /// Counts `result`, which must be a success or one of `expected`.
    fn count<T>(&self, call: &str, result: Result<T, ServiceError>, expected: &[ErrorCode]) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                assert!(
                    expected.contains(&e.code()),
                    "{call}: unexpected error {e} ({:?})",
                    e.code()
                );
                self.refused.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_outside_is_never_followed() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (root, outside) = (root.path(), outside.path());
    // Outside: a file at every name the calls use, and one nothing inside has.
    for name in [
        "f",
        ".f.part",
        "w",
        ".w.part",
        "wf",
        "del",
        "sub/x",
        "batch",
        "only-outside",
    ] {
        write_file(outside, name, format!("outside {name}\n").as_bytes());
    }
    let inside_f = random_bytes(1, 100_000);
    let inside_x = random_bytes(2, 1000);
    write_file(root, "d/f", &inside_f);
    write_file(root, "d/sub/x", &inside_x);
    symlink(outside, root.join("d.link")).unwrap();
    let before = snapshot(outside);
    let outside_inodes = inodes(outside);

    // `d` is the directory or the symlink, in turn, and always one of them:
    // RENAME_EXCHANGE swaps the two names atomically.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, d, link) = (stop.clone(), root.join("d"), root.join("d.link"));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &d, CWD, &link, RenameFlags::EXCHANGE).unwrap();
                swaps += 1;
                std::thread::yield_now();
            }
            swaps
        })
    };

    let store = store(root);
    let d = dir();
    let (f, x, w, wf, del, new) = (
        rel("d/f"),
        rel("d/sub/x"),
        rel("d/w"),
        rel("d/wf"),
        rel("d/del"),
        rel("d/new/n"),
    );
    let inside_w = random_bytes(3, 5000);
    let sha_f = sha256(&inside_f);
    let sha_w = sha256(&inside_w);
    let tallies: BTreeMap<&str, Tally> = [
        "read",
        "hash",
        "write",
        "write_file",
        "finish",
        "delete",
        "list",
        "write_files",
    ]
    .into_iter()
    .map(|call| (call, Tally::default()))
    .collect();
    let through_symlink = [ErrorCode::InvalidArgument];
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 400 && started.elapsed() < Duration::from_secs(3) {
        rounds += 1;
        let read = async {
            for (path, inside) in [(&f, &inside_f), (&x, &inside_x)] {
                let data = match store.read(&d, path, 0, None, None).await {
                    Ok(data) => collect(data).await,
                    Err(e) => Err(e),
                };
                if let Ok(data) = &data {
                    assert!(data == inside, "read of {path} returned other bytes");
                }
                tallies["read"].count("read", data, &through_symlink);
            }
        };
        let hash = async {
            let hash = store
                .hash(&d, &f, FileKind::Final, None, DigestAlgorithm::Sha256)
                .await;
            if let Ok(hash) = &hash {
                assert_eq!(hash.hash, sha_f, "hash of {f}");
            }
            tallies["hash"].count("hash", hash, &through_symlink);
        };
        let write = async {
            let size = inside_w.len() as u64;
            let written = store
                .write(&d, &w, 0, size, chunks([inside_w.clone()]))
                .await;
            tallies["write"].count("write", written, &through_symlink);
        };
        let finish = async {
            // Nothing to finish until a write of it got through.
            let finished = store.finish(&d, &w, Some(sha_w)).await;
            let expected = [ErrorCode::InvalidArgument, ErrorCode::NotFound];
            tallies["finish"].count("finish", finished, &expected);
        };
        let write_file = async {
            let size = inside_w.len() as u64;
            let data = chunks([inside_w.clone()]);
            let written = store
                .write_file(&d, &wf, size, data, expecting(sha_w))
                .await;
            tallies["write_file"].count("write_file", written, &through_symlink);
        };
        // Each file made and deleted in turn: in a new directory, whose
        // delete removes it again, and beside others.
        let delete = async {
            let size = inside_w.len() as u64;
            let data = chunks([inside_w.clone()]);
            let written = store.write(&d, &new, 0, size, data).await;
            tallies["write"].count("write", written, &through_symlink);
            let deleted = store.delete(&d, &new, None).await;
            tallies["delete"].count("delete", deleted, &through_symlink);
            let data = chunks([inside_w.clone()]);
            let written = store
                .write_file(&d, &del, size, data, expecting(sha_w))
                .await;
            tallies["write_file"].count("write_file", written, &through_symlink);
            let deleted = store.delete(&d, &del, None).await;
            tallies["delete"].count("delete", deleted, &through_symlink);
        };
        let write_files = async {
            let batch = vec![WholeFile {
                path: rel("d/batch"),
                data: inside_w.clone().into(),
                digest: sha_w,
            }];
            for written in store.write_files(&d, batch).await {
                tallies["write_files"].count("write_files", written, &through_symlink);
            }
        };
        let list = async {
            let listed: Result<Vec<_>, ServiceError> = match store.list(&d, None, true).await {
                Ok(entries) => entries.try_collect().await,
                Err(e) => Err(e),
            };
            for entry in listed.iter().flatten() {
                assert!(
                    !outside_inodes.contains(&entry.stamp.inode)
                        && !entry.path.as_str().ends_with("only-outside"),
                    "listed a file outside the root: {}",
                    entry.path
                );
            }
            tallies["list"].count("list", listed, &[]);
        };
        futures::join!(
            read,
            hash,
            write,
            finish,
            write_file,
            delete,
            write_files,
            list
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();

    assert!(
        snapshot(outside) == before,
        "the tree outside the root changed"
    );
    let answers: BTreeMap<&str, (u64, u64)> = tallies
        .iter()
        .map(|(call, t)| {
            let (ok, refused) = (&t.ok, &t.refused);
            (
                *call,
                (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed)),
            )
        })
        .collect();
    eprintln!("{rounds} rounds, {swaps} swaps; (ok, refused) by call: {answers:?}");
    // The race ran: calls met both the directory and the symlink.
    let ok: u64 = answers.values().map(|(ok, _)| ok).sum();
    let refused: u64 = answers.values().map(|(_, refused)| refused).sum();
    assert!(swaps > 0 && ok > 0 && refused > 0, "{answers:?}");
}
