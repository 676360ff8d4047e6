//! Tests of the move algorithm between two local stores on temporary roots.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::stop::Stop;

use super::{MoveError, MoveOptions, MoveSummary, Side, move_files};
use crate::digest::DigestAlgorithm;
use crate::error::ErrorCode;
use crate::path::{DirId, RelPath};
use crate::progress::NoProgress;
use crate::store::LocalStore;
use crate::testing::{Fault, Faulty, exists, random_bytes, read_file, tree, write_file};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn dir() -> DirId {
    DirId::new("d").unwrap()
}

fn store(root: &Path) -> LocalStore {
    LocalStore::new([(dir(), root.to_path_buf())])
}

/// Small ranges and blocks, so a few MiB exercise many ranges.
fn options() -> MoveOptions {
    MoveOptions {
        parallel: 3,
        range_size: 64 * KIB as u64,
        block_size: 1024,
        ..MoveOptions::default()
    }
}

/// Every file under `root` with its content.
fn contents(root: &Path) -> Vec<(String, Vec<u8>)> {
    tree(root)
        .into_iter()
        .filter(|p| root.join(p).is_file())
        .map(|p| {
            let data = read_file(root, &p);
            (p, data)
        })
        .collect()
}

/// Two temporary roots, the source and the destination of a move.
struct Sides {
    src: tempfile::TempDir,
    dst: tempfile::TempDir,
}

impl Sides {
    fn new() -> Self {
        Sides {
            src: tempfile::tempdir().unwrap(),
            dst: tempfile::tempdir().unwrap(),
        }
    }

    fn src(&self) -> &Path {
        self.src.path()
    }

    fn dst(&self) -> &Path {
        self.dst.path()
    }

    async fn run(&self) -> MoveSummary {
        self.run_with(&options()).await
    }

    async fn run_with(&self, options: &MoveOptions) -> MoveSummary {
        let (src, dst) = (store(self.src()), store(self.dst()));
        move_files(
            &src,
            &dst,
            &[dir().into()],
            options,
            &NoProgress,
            &Stop::new(),
        )
        .await
        .unwrap()
    }
}

fn assert_all_moved(summary: &MoveSummary, files: u64) {
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.files_failed, 0);
    assert_eq!(summary.files_moved, files);
}

// ---------------------------------------------------------------- moves

#[tokio::test]
async fn a_tree_is_moved_and_the_source_emptied() {
    let sides = Sides::new();
    let files = [
        ("top.txt", random_bytes(1, 10)),
        ("empty", Vec::new()),
        ("big.bin", random_bytes(2, 3 * MIB + 777)),
        ("a/x.txt", random_bytes(3, 5000)),
        ("a/b/c/deep.bin", random_bytes(4, 200 * KIB)),
        ("a/b/c/empty", Vec::new()),
        ("z/only.bin", random_bytes(5, 64 * KIB)),
    ];
    for (path, data) in &files {
        write_file(sides.src(), path, data);
    }
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();

    let summary = sides.run().await;

    assert_all_moved(&summary, files.len() as u64);
    assert_eq!(summary.bytes_moved, total);
    // Nothing was at the destination: every byte was sent once.
    assert_eq!(summary.bytes_sent, total);
    for (path, data) in &files {
        assert!(read_file(sides.dst(), path) == *data, "{path}");
    }
    assert_eq!(
        tree(sides.dst()),
        [
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/deep.bin",
            "a/b/c/empty",
            "a/x.txt",
            "big.bin",
            "empty",
            "top.txt",
            "z",
            "z/only.bin"
        ]
    );
    // Subdirectories emptied by the move are gone; the root stays.
    assert!(sides.src().is_dir());
    assert!(tree(sides.src()).is_empty(), "{:?}", tree(sides.src()));
}

#[tokio::test]
async fn many_small_files_move_in_parallel_and_one_at_a_time() {
    for parallel in [1, 16] {
        let sides = Sides::new();
        let mut expected = Vec::new();
        for i in 0..60 {
            let path = format!("d{}/e{}/f{i}", i % 4, i % 3);
            let data = random_bytes(100 + i, (i as usize * 37) % 3000);
            write_file(sides.src(), &path, &data);
            expected.push((path, data));
        }
        expected.sort();
        let options = MoveOptions {
            parallel,
            ..options()
        };
        let summary = sides.run_with(&options).await;
        assert_all_moved(&summary, 60);
        assert_eq!(contents(sides.dst()), expected);
        assert!(tree(sides.src()).is_empty(), "{:?}", tree(sides.src()));
    }
}

#[tokio::test]
async fn symlinks_fifos_and_partial_files_are_not_moved_and_stay() {
    let sides = Sides::new();
    write_file(sides.src(), "sub/file", b"moves");
    write_file(sides.src(), "part/.stale.part", b"never a source file");
    symlink(sides.src().join("sub/file"), sides.src().join("sub/link")).unwrap();
    symlink(sides.src().join("sub"), sides.src().join("dirlink")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(sides.src().join("sub/fifo"))
        .status()
        .unwrap();
    assert!(status.success());

    let summary = sides.run().await;

    assert_all_moved(&summary, 1);
    assert_eq!(tree(sides.dst()), ["sub", "sub/file"]);
    assert_eq!(
        tree(sides.src()),
        [
            "dirlink",
            "part",
            "part/.stale.part",
            "sub",
            "sub/fifo",
            "sub/link"
        ]
    );
}

#[tokio::test]
async fn an_identical_file_at_the_destination_is_not_sent_again() {
    let sides = Sides::new();
    let data = random_bytes(6, 300 * KIB);
    write_file(sides.src(), "a/f", &data);
    write_file(sides.dst(), "a/f", &data);

    let summary = sides.run().await;

    assert_all_moved(&summary, 1);
    assert_eq!(summary.bytes_moved, data.len() as u64);
    assert_eq!(summary.bytes_sent, 0);
    assert!(read_file(sides.dst(), "a/f") == data);
    assert_eq!(tree(sides.dst()), ["a", "a/f"]);
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_different_file_at_the_destination_is_overwritten_by_the_source() {
    let sides = Sides::new();
    let size = 300 * KIB;
    let sources = [
        ("same-size", random_bytes(7, size)),
        ("dst-smaller", random_bytes(8, size)),
        ("dst-larger", random_bytes(9, size)),
        ("dst-empty", random_bytes(10, 1000)),
        ("src-empty", Vec::new()),
        ("one-byte-differs", random_bytes(11, size)),
    ];
    for (path, data) in &sources {
        write_file(sides.src(), path, data);
    }
    write_file(sides.dst(), "same-size", &random_bytes(12, size));
    write_file(sides.dst(), "dst-smaller", &random_bytes(13, size / 3));
    write_file(sides.dst(), "dst-larger", &random_bytes(14, size * 2));
    write_file(sides.dst(), "dst-empty", b"");
    write_file(sides.dst(), "src-empty", b"not empty");
    let mut almost = sources[5].1.clone();
    almost[size / 2] ^= 0x55;
    write_file(sides.dst(), "one-byte-differs", &almost);

    let summary = sides.run().await;

    assert_all_moved(&summary, sources.len() as u64);
    let mut expected: Vec<(String, Vec<u8>)> = sources
        .iter()
        .map(|(p, d)| (p.to_string(), d.clone()))
        .collect();
    expected.sort();
    // Source wins, and no partial file is left behind.
    assert_eq!(contents(sides.dst()), expected);
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_stale_final_and_a_partial_at_the_destination_give_way_to_the_source() {
    let sides = Sides::new();
    let data = random_bytes(15, 500 * KIB);
    write_file(sides.src(), "f", &data);
    write_file(sides.dst(), "f", &random_bytes(16, 500 * KIB));
    write_file(sides.dst(), ".f.part", &data[..100 * KIB]);

    let summary = sides.run().await;

    assert_all_moved(&summary, 1);
    assert_eq!(contents(sides.dst()), [("f".to_string(), data)]);
    assert!(tree(sides.src()).is_empty());
}

// ---------------------------------------------------------------- resume

#[tokio::test]
async fn a_half_written_partial_is_resumed_sending_about_half() {
    let sides = Sides::new();
    let size = 2 * MIB;
    let data = random_bytes(17, size);
    write_file(sides.src(), "sub/f", &data);
    write_file(sides.dst(), "sub/.f.part", &data[..size / 2]);

    let summary = sides.run().await;

    assert_all_moved(&summary, 1);
    assert_eq!(summary.bytes_moved, size as u64);
    let sent = summary.bytes_sent as f64;
    assert!(sent >= 0.5 * size as f64, "sent {sent}");
    assert!(sent < 0.55 * size as f64, "sent {sent}");
    assert!(read_file(sides.dst(), "sub/f") == data);
    assert_eq!(tree(sides.dst()), ["sub", "sub/f"]);
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_partial_cut_off_mid_range_is_resumed() {
    let sides = Sides::new();
    let size = MIB + 5000;
    let data = random_bytes(18, size);
    write_file(sides.src(), "f", &data);
    // Not a multiple of the range size nor of the block size.
    let done = 600 * KIB + 333;
    write_file(sides.dst(), ".f.part", &data[..done]);

    let summary = sides.run().await;

    assert_all_moved(&summary, 1);
    let missing = (size - done) as u64;
    assert!(summary.bytes_sent >= missing, "{}", summary.bytes_sent);
    assert!(
        summary.bytes_sent < missing + 64 * KIB as u64,
        "{}",
        summary.bytes_sent
    );
    assert!(read_file(sides.dst(), "f") == data);
}

#[tokio::test]
async fn a_corrupted_byte_in_a_complete_partial_is_fixed_cheaply() {
    let sides = Sides::new();
    let size = 2 * MIB;
    let data = random_bytes(19, size);
    write_file(sides.src(), "f", &data);
    let mut corrupted = data.clone();
    corrupted[MIB + 12_345] ^= 0xff;
    write_file(sides.dst(), ".f.part", &corrupted);

    let summary = sides.run().await;

    assert_all_moved(&summary, 1);
    assert!(
        (summary.bytes_sent as f64) < 0.1 * size as f64,
        "sent {}",
        summary.bytes_sent
    );
    assert!(read_file(sides.dst(), "f") == data);
    assert_eq!(tree(sides.dst()), ["f"]);
}

#[tokio::test]
async fn a_corrupted_byte_in_a_half_written_partial_is_fixed_too() {
    let sides = Sides::new();
    let size = 2 * MIB;
    let data = random_bytes(20, size);
    write_file(sides.src(), "f", &data);
    let mut corrupted = data[..size / 2].to_vec();
    corrupted[size / 4 + 7] ^= 0x01;
    write_file(sides.dst(), ".f.part", &corrupted);

    let summary = sides.run().await;

    assert_all_moved(&summary, 1);
    let sent = summary.bytes_sent as f64;
    assert!(sent >= 0.5 * size as f64, "sent {sent}");
    assert!(sent < 0.6 * size as f64, "sent {sent}");
    assert!(read_file(sides.dst(), "f") == data);
}

#[tokio::test]
async fn a_partial_longer_than_the_source_is_truncated() {
    let sides = Sides::new();
    let data = random_bytes(21, 700 * KIB + 11);
    write_file(sides.src(), "f", &data);
    write_file(sides.src(), "g", &data);
    // "f": the source's bytes then garbage; "g": garbage all along.
    write_file(
        sides.dst(),
        ".f.part",
        &[data.clone(), random_bytes(22, 100 * KIB)].concat(),
    );
    write_file(sides.dst(), ".g.part", &random_bytes(23, 900 * KIB));

    let summary = sides.run().await;

    assert_all_moved(&summary, 2);
    assert!(read_file(sides.dst(), "f") == data);
    assert!(read_file(sides.dst(), "g") == data);
    assert_eq!(tree(sides.dst()), ["f", "g"]);
}

/// `MoveOptions` has public fields, so an embedding program can pass a zero
/// range size; resuming must then neither spin forever on empty ranges nor
/// lose anything (refusing the options, or using a sane size, are both fine).
#[tokio::test]
async fn a_zero_range_size_does_not_hang_a_resume() {
    let sides = Sides::new();
    let data = random_bytes(27, 100 * KIB);
    write_file(sides.src(), "f", &data);
    write_file(sides.dst(), ".f.part", &data[..50 * KIB]);
    let (src, dst) = (store(sides.src()), store(sides.dst()));
    let options = MoveOptions {
        range_size: 0,
        ..options()
    };
    let moved = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        move_files(
            &src,
            &dst,
            &[dir().into()],
            &options,
            &NoProgress,
            &Stop::new(),
        ),
    )
    .await;
    let Ok(result) = moved else {
        panic!("move_files with range_size 0 did not finish");
    };
    let on_source = exists(sides.src(), "f") && read_file(sides.src(), "f") == data;
    let on_destination = exists(sides.dst(), "f") && read_file(sides.dst(), "f") == data;
    assert!(on_source || on_destination, "{result:?}");
}

// ---------------------------------------------------------------- failures

#[tokio::test]
async fn one_failing_file_does_not_stop_the_others() {
    let sides = Sides::new();
    write_file(sides.src(), "b.txt", b"b");
    write_file(sides.src(), "c/d.txt", b"d");
    write_file(sides.src(), "sub/a.txt", b"blocked");
    write_file(sides.src(), "z.txt", b"z");
    // A file where the source has a directory: sub/a.txt cannot be written.
    write_file(sides.dst(), "sub", b"a file in the way");

    let summary = sides.run().await;

    assert_eq!(summary.files_moved, 3);
    assert_eq!(summary.files_failed, 1);
    assert_eq!(summary.bytes_moved, 3);
    assert_eq!(summary.failures.len(), 1);
    let failure = &summary.failures[0];
    assert_eq!(failure.dir, dir());
    assert_eq!(failure.path, Some(RelPath::new("sub/a.txt").unwrap()));
    assert!(
        matches!(
            &failure.error,
            MoveError::Service { side: Side::Destination, source }
                if source.code() == ErrorCode::InvalidArgument
        ),
        "{:?}",
        failure.error
    );
    assert_eq!(read_file(sides.src(), "sub/a.txt"), b"blocked");
    assert_eq!(tree(sides.src()), ["sub", "sub/a.txt"]);
    assert_eq!(read_file(sides.dst(), "sub"), b"a file in the way");
    assert_eq!(read_file(sides.dst(), "c/d.txt"), b"d");

    // Once the way is clear, running again finishes the move.
    std::fs::remove_file(sides.dst().join("sub")).unwrap();
    let summary = sides.run().await;
    assert_all_moved(&summary, 1);
    assert_eq!(read_file(sides.dst(), "sub/a.txt"), b"blocked");
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_corrupted_copy_fails_the_hash_check_and_keeps_the_source() {
    let sides = Sides::new();
    let data = random_bytes(24, 600 * KIB);
    write_file(sides.src(), "a/f", &data);
    let src = store(sides.src());
    let dst = Faulty::new(sides.dst(), Fault::FlipWrittenBytes);

    let summary = move_files(
        &src,
        &dst,
        &[dir().into()],
        &options(),
        &NoProgress,
        &Stop::new(),
    )
    .await
    .unwrap();

    assert_eq!(summary.files_moved, 0);
    assert_eq!(summary.files_failed, 1);
    let failure = &summary.failures[0];
    assert_eq!(failure.path, Some(RelPath::new("a/f").unwrap()));
    assert!(
        matches!(&failure.error, MoveError::HashMismatch { path, source_hash, destination_hash, .. }
            if path.as_str() == "a/f" && source_hash != destination_hash),
        "{:?}",
        failure.error
    );
    assert!(read_file(sides.src(), "a/f") == data);
    assert!(!exists(sides.dst(), "a/f"));

    // A healthy run repairs the bad partial file and completes the move.
    let summary = sides.run().await;
    assert_all_moved(&summary, 1);
    assert!(summary.bytes_sent < data.len() as u64 / 2);
    assert!(read_file(sides.dst(), "a/f") == data);
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_source_changed_before_it_is_hashed_is_not_deleted() {
    let sides = Sides::new();
    let data = random_bytes(25, 300 * KIB);
    write_file(sides.src(), "f", &data);
    let src = Faulty::new(sides.src(), Fault::ChangeBeforeRead);
    let dst = store(sides.dst());

    let summary = move_files(
        &src,
        &dst,
        &[dir().into()],
        &options(),
        &NoProgress,
        &Stop::new(),
    )
    .await
    .unwrap();

    assert_eq!(summary.files_moved, 0);
    assert_eq!(summary.files_failed, 1);
    assert!(
        matches!(&summary.failures[0].error, MoveError::SourceChanged { path, .. } if path.as_str() == "f"),
        "{:?}",
        summary.failures[0].error
    );
    let changed = [data.as_slice(), b"!"].concat();
    assert!(read_file(sides.src(), "f") == changed);
    // No final file was claimed at the destination.
    assert!(!exists(sides.dst(), "f"));

    // The next run moves the new content.
    let summary = sides.run().await;
    assert_all_moved(&summary, 1);
    assert!(read_file(sides.dst(), "f") == changed);
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_source_changed_before_it_is_deleted_is_kept() {
    let sides = Sides::new();
    let data = random_bytes(26, 300 * KIB);
    write_file(sides.src(), "sub/f", &data);
    let src = Faulty::new(sides.src(), Fault::ChangeBeforeDelete);
    let dst = store(sides.dst());

    let summary = move_files(
        &src,
        &dst,
        &[dir().into()],
        &options(),
        &NoProgress,
        &Stop::new(),
    )
    .await
    .unwrap();

    assert_eq!(summary.files_moved, 0);
    assert_eq!(summary.files_failed, 1);
    assert!(
        matches!(&summary.failures[0].error, MoveError::SourceChanged { path, .. } if path.as_str() == "sub/f"),
        "{:?}",
        summary.failures[0].error
    );
    let changed = [data.as_slice(), b"!"].concat();
    assert!(read_file(sides.src(), "sub/f") == changed);
    // The destination holds the version that was verified.
    assert!(read_file(sides.dst(), "sub/f") == data);

    let summary = sides.run().await;
    assert_all_moved(&summary, 1);
    assert!(read_file(sides.dst(), "sub/f") == changed);
    assert!(tree(sides.src()).is_empty());
}

// ---------------------------------------------------------------- batches

/// Three small new files, moved as one batch through a store with `fault`.
async fn batch_with(fault: Fault, faulty_source: bool) -> (Sides, Vec<Vec<u8>>, MoveSummary) {
    let sides = Sides::new();
    let data: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(40 + i, 5000)).collect();
    for (i, bytes) in data.iter().enumerate() {
        write_file(sides.src(), &format!("b/f{i}"), bytes);
    }
    let summary = if faulty_source {
        let src = Faulty::new(sides.src(), fault);
        move_files(
            &src,
            &store(sides.dst()),
            &[dir().into()],
            &options(),
            &NoProgress,
            &Stop::new(),
        )
        .await
    } else {
        let dst = Faulty::new(sides.dst(), fault);
        move_files(
            &store(sides.src()),
            &dst,
            &[dir().into()],
            &options(),
            &NoProgress,
            &Stop::new(),
        )
        .await
    };
    (sides, data, summary.unwrap())
}

#[tokio::test]
async fn a_batch_whose_copies_are_corrupted_keeps_every_source() {
    let (sides, data, summary) = batch_with(Fault::FlipWrittenBytes, false).await;
    assert_eq!((summary.files_moved, summary.files_failed), (0, 3));
    for failure in &summary.failures {
        assert!(
            matches!(&failure.error, MoveError::HashMismatch { source_hash, destination_hash, .. } if source_hash != destination_hash),
            "{:?}",
            failure.error
        );
    }
    for (i, bytes) in data.iter().enumerate() {
        assert!(read_file(sides.src(), &format!("b/f{i}")) == *bytes);
        assert!(!exists(sides.dst(), &format!("b/f{i}")));
    }
    // A healthy run moves them all.
    assert_all_moved(&sides.run().await, 3);
    assert!(tree(sides.src()).is_empty());
}

#[tokio::test]
async fn a_file_of_a_batch_changed_before_it_is_read_is_the_only_one_kept() {
    let (sides, data, summary) = batch_with(Fault::ChangeBeforeRead, true).await;
    assert_eq!((summary.files_moved, summary.files_failed), (2, 1));
    let failure = &summary.failures[0];
    assert!(
        matches!(&failure.error, MoveError::SourceChanged { .. }),
        "{:?}",
        failure.error
    );
    let kept = failure.path.clone().unwrap();
    assert_eq!(tree(sides.src()), ["b".to_string(), kept.to_string()]);
    // Nothing was finished for it at the destination; the others arrived.
    assert!(!exists(sides.dst(), kept.as_str()));
    for (i, bytes) in data.iter().enumerate() {
        let path = format!("b/f{i}");
        if path != kept.as_str() {
            assert!(read_file(sides.dst(), &path) == *bytes);
        }
    }
}

#[tokio::test]
async fn a_file_of_a_batch_changed_before_it_is_deleted_is_kept_at_both_ends() {
    let (sides, data, summary) = batch_with(Fault::ChangeBeforeDelete, true).await;
    assert_eq!((summary.files_moved, summary.files_failed), (2, 1));
    let failure = &summary.failures[0];
    assert!(
        matches!(&failure.error, MoveError::SourceChanged { .. }),
        "{:?}",
        failure.error
    );
    let kept = failure.path.clone().unwrap();
    let index: usize = kept.as_str()["b/f".len()..].parse().unwrap();
    // The destination holds the version that was verified; the source, its change.
    assert!(read_file(sides.dst(), kept.as_str()) == data[index]);
    assert!(read_file(sides.src(), kept.as_str()) == [data[index].as_slice(), b"!"].concat());
}

#[tokio::test]
async fn a_batch_stopped_hard_while_it_is_written_deletes_no_source() {
    let sides = Sides::new();
    let data: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(50 + i, 5000)).collect();
    for (i, bytes) in data.iter().enumerate() {
        write_file(sides.src(), &format!("f{i}"), bytes);
    }
    let stop = Stop::new();
    let dst = Faulty::stopping(sides.dst(), Fault::HardStopOnWrite, stop.clone());
    let summary = move_files(
        &store(sides.src()),
        &dst,
        &[dir().into()],
        &options(),
        &NoProgress,
        &stop,
    )
    .await
    .unwrap();
    assert_eq!((summary.files_moved, summary.files_interrupted), (0, 3));
    for (i, bytes) in data.iter().enumerate() {
        assert!(read_file(sides.src(), &format!("f{i}")) == *bytes);
    }
}

// ---------------------------------------------------------------- refusals

#[tokio::test]
async fn a_directory_is_never_moved_onto_itself() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a/f", b"the only copy");
    write_file(root.path(), ".g.part", b"partial");
    let before = contents(root.path());
    let link_parent = tempfile::tempdir().unwrap();
    let link = link_parent.path().join("link");
    symlink(root.path(), &link).unwrap();

    for dst_root in [root.path(), link.as_path()] {
        let (src, dst) = (store(root.path()), store(dst_root));
        let result = move_files(
            &src,
            &dst,
            &[dir().into()],
            &options(),
            &NoProgress,
            &Stop::new(),
        )
        .await;
        assert!(
            matches!(&result, Err(MoveError::Overlap { dir: d }) if *d == dir()),
            "{result:?}"
        );
        assert_eq!(contents(root.path()), before);
    }
}

#[tokio::test]
async fn a_missing_destination_root_fails_the_directory_and_deletes_nothing() {
    let sides = Sides::new();
    write_file(sides.src(), "f", b"stays");
    let src = store(sides.src());
    let dst = store(&sides.dst().join("no-such-root"));

    let summary = move_files(
        &src,
        &dst,
        &[dir().into()],
        &options(),
        &NoProgress,
        &Stop::new(),
    )
    .await
    .unwrap();

    assert_eq!(summary.files_moved, 0);
    assert_eq!(summary.failures.len(), 1);
    let failure = &summary.failures[0];
    assert_eq!(failure.path, None);
    assert!(
        matches!(
            &failure.error,
            MoveError::Service {
                side: Side::Destination,
                ..
            }
        ),
        "{:?}",
        failure.error
    );
    assert_eq!(tree(sides.src()), ["f"]);
}

#[tokio::test]
async fn a_directory_one_side_does_not_serve_is_refused() {
    let sides = Sides::new();
    write_file(sides.src(), "f", b"stays");
    let other = DirId::new("other").unwrap();
    let served = store(sides.src());
    let not_served = LocalStore::new([(other, sides.dst().to_path_buf())]);

    let result = move_files(
        &served,
        &not_served,
        &[dir().into()],
        &options(),
        &NoProgress,
        &Stop::new(),
    )
    .await;
    assert!(
        matches!(&result, Err(MoveError::MissingDir { side: Side::Destination, dir: d }) if *d == dir()),
        "{result:?}"
    );
    let result = move_files(
        &not_served,
        &served,
        &[dir().into()],
        &options(),
        &NoProgress,
        &Stop::new(),
    )
    .await;
    assert!(
        matches!(
            &result,
            Err(MoveError::MissingDir {
                side: Side::Source,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(tree(sides.src()), ["f"]);
    assert!(tree(sides.dst()).is_empty());
}

/// Every content present before, still present somewhere after: the
/// invariant, whatever the move decided to do.
fn assert_nothing_lost(before: &[(String, Vec<u8>)], root: &Path) {
    let after = contents(root);
    for (path, data) in before {
        let left: Vec<_> = after
            .iter()
            .map(|(p, d)| (p, String::from_utf8_lossy(d)))
            .collect();
        assert!(
            after.iter().any(|(_, d)| d == data),
            "the content of {path} is gone; left: {left:?}"
        );
    }
}

/// A root inside the other side's root is the same files under two names:
/// moving one onto the other overwrites source files before they are moved.
/// rclone refuses "overlapping remotes"; refusing like `SameDirectory` is the
/// expected outcome, and in any case no file may be lost.
async fn check_overlap(src_root: &str, dst_root: &str, files: &[(&str, &[u8])]) {
    let root = tempfile::tempdir().unwrap();
    for (path, data) in files {
        write_file(root.path(), path, data);
    }
    let before = contents(root.path());
    let src = store(&root.path().join(src_root));
    let dst = store(&root.path().join(dst_root));
    let one_at_a_time = MoveOptions {
        parallel: 1,
        ..options()
    };
    let result = move_files(
        &src,
        &dst,
        &[dir().into()],
        &one_at_a_time,
        &NoProgress,
        &Stop::new(),
    )
    .await;
    assert_nothing_lost(&before, root.path());
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn a_destination_inside_the_source_loses_no_file() {
    // Source `f` lands on source `sub/f`, which is moved after it.
    check_overlap(
        "",
        "sub",
        &[
            ("f", b"content A, at the top"),
            ("sub/f", b"content B, nested"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_source_inside_the_destination_loses_no_file() {
    // Source `s/z` lands on source `z`, which is moved after it.
    check_overlap(
        "s",
        "",
        &[
            ("s/z", b"content A, at the top of the source"),
            ("s/s/z", b"content B, nested"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_source_file_named_like_a_partial_file_is_skipped_and_counted() {
    let sides = Sides::new();
    write_file(sides.src(), "a/.b.part", b"a user's file");
    write_file(sides.src(), "a/b", b"the real b");
    let summary = sides.run().await;
    assert_all_moved(&summary, 1);
    assert_eq!(summary.files_skipped, 1);
    assert_eq!(read_file(sides.src(), "a/.b.part"), b"a user's file");
    assert_eq!(read_file(sides.dst(), "a/b"), b"the real b");
    assert!(!exists(sides.dst(), "a/.b.part"));
}

#[tokio::test]
async fn a_destination_not_created_yet_inside_the_source_is_refused() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "f", b"kept");
    let (src, dst) = (store(root.path()), store(&root.path().join("new/deeper")));
    let refused = super::check_move(&src, &dst, &[dir()], None).await;
    assert!(
        matches!(refused, Err(MoveError::Overlap { .. })),
        "{refused:?}"
    );
    assert!(!exists(root.path(), "new"));
}

#[tokio::test]
async fn a_partial_file_another_client_finishes_under_the_move_is_looked_at_again() {
    let sides = Sides::new();
    let data = random_bytes(31, 2 * MIB);
    write_file(sides.src(), "f", &data);
    // Another client's half-written version, which it finishes under us.
    write_file(sides.dst(), ".f.part", &random_bytes(32, MIB));
    let src = store(sides.src());
    let dst = Faulty::new(sides.dst(), Fault::FinishedByAnotherClient);
    let summary = move_files(
        &src,
        &dst,
        &[dir().into()],
        &options(),
        &NoProgress,
        &Stop::new(),
    )
    .await
    .unwrap();
    assert_all_moved(&summary, 1);
    assert_eq!(read_file(sides.dst(), "f"), data);
    assert!(!exists(sides.dst(), ".f.part"));
    assert!(!exists(sides.src(), "f"));
}

/// A batch the destination finishes although the move was stopped hard
/// meanwhile is reported as it is on disk: moved, its sources deleted.
#[tokio::test]
async fn a_batch_the_destination_finishes_after_a_hard_stop_is_reported_moved() {
    let sides = Sides::new();
    let data: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(60 + i, 5000)).collect();
    for (i, bytes) in data.iter().enumerate() {
        write_file(sides.src(), &format!("f{i}"), bytes);
    }
    let stop = Stop::new();
    let dst = Faulty::stopping(
        sides.dst(),
        Fault::HardStopOnWriteThatFinishes,
        stop.clone(),
    );
    let summary = move_files(
        &store(sides.src()),
        &dst,
        &[dir().into()],
        &options(),
        &NoProgress,
        &stop,
    )
    .await
    .unwrap();
    assert_eq!((summary.files_moved, summary.files_interrupted), (3, 0));
    for (i, bytes) in data.iter().enumerate() {
        assert!(read_file(sides.dst(), &format!("f{i}")) == *bytes);
        assert!(!exists(sides.src(), &format!("f{i}")));
    }
}

#[test]
fn the_digest_is_the_preferred_both_sides_take_or_the_one_asked_for() {
    use super::listing::choose_digest;
    let info = |digests: &[DigestAlgorithm]| crate::ServiceInfo {
        version: String::new(),
        dirs: Vec::new(),
        digests: digests.to_vec(),
    };
    let (both, sha_only) = (
        info(&DigestAlgorithm::PREFERRED),
        info(&[DigestAlgorithm::Sha256]),
    );
    assert_eq!(
        choose_digest(None, &both, &both).ok(),
        Some(DigestAlgorithm::Blake3)
    );
    assert_eq!(
        choose_digest(None, &both, &sha_only).ok(),
        Some(DigestAlgorithm::Sha256)
    );
    let forced = Some(DigestAlgorithm::Sha256);
    assert_eq!(
        choose_digest(forced, &both, &both).ok(),
        Some(DigestAlgorithm::Sha256)
    );
    let refused = choose_digest(Some(DigestAlgorithm::Blake3), &both, &sha_only).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "destination cannot verify with blake3 (it supports sha256), refusing to move"
    );
    let none = choose_digest(None, &both, &info(&[])).unwrap_err();
    assert_eq!(
        none.to_string(),
        "no digest both sides support (source: blake3, sha256; destination: none), refusing to move"
    );
}

mod selection;
