//! The exact events a move reports, recorded from real moves between local stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{FileProgress, Phase, Progress};
use crate::mover::{MoveError, MoveOptions, move_files};
use crate::path::{DirId, RelPath};
use crate::stop::Stop;
use crate::store::LocalStore;
use crate::testing::{Fault, Faulty};
use crate::testing::{random_bytes, write_file};

const KIB: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Enter(Phase),
    /// Consecutive byte reports, summed.
    Bytes(u64),
    Moved,
    Failed,
    Interrupted,
}

/// Records the move-level events in order, and each file's events apart,
/// since files run concurrently.
#[derive(Default)]
struct Recorder {
    moves: Mutex<Vec<String>>,
    files: Arc<Mutex<BTreeMap<String, Vec<Event>>>>,
}

struct FileRecorder {
    path: String,
    files: Arc<Mutex<BTreeMap<String, Vec<Event>>>>,
}

impl FileRecorder {
    fn push(&self, event: Event) {
        let mut files = self.files.lock().unwrap();
        let events = files.entry(self.path.clone()).or_default();
        match (events.last_mut(), &event) {
            (Some(Event::Bytes(sum)), Event::Bytes(more)) => *sum += more,
            _ => events.push(event),
        }
    }
}

impl Progress for Recorder {
    fn listing(&self, dir: &DirId) {
        self.moves.lock().unwrap().push(format!("listing {dir}"));
    }
    fn dir_failed(&self, dir: &DirId, _error: &MoveError) {
        self.moves.lock().unwrap().push(format!("failed {dir}"));
    }
    fn totals(&self, files: u64, bytes: u64) {
        self.moves
            .lock()
            .unwrap()
            .push(format!("totals {files} files {bytes} bytes"));
    }
    fn file(&self, dir: &DirId, path: &RelPath, size: u64) -> Arc<dyn FileProgress> {
        self.moves
            .lock()
            .unwrap()
            .push(format!("file {dir}/{path} {size}"));
        Arc::new(FileRecorder {
            path: path.to_string(),
            files: Arc::clone(&self.files),
        })
    }
}

impl FileProgress for FileRecorder {
    fn phase(&self, phase: Phase) {
        self.push(Event::Enter(phase));
    }
    fn bytes(&self, bytes: u64) {
        self.push(Event::Bytes(bytes));
    }
    fn moved(&self) {
        self.push(Event::Moved);
    }
    fn failed(&self, _error: &MoveError) {
        self.push(Event::Failed);
    }
    fn interrupted(&self) {
        self.push(Event::Interrupted);
    }
}

fn dir() -> DirId {
    DirId::new("d").unwrap()
}

fn store(root: &Path) -> LocalStore {
    LocalStore::new([(dir(), root.to_path_buf())])
}

fn options() -> MoveOptions {
    let mut options = MoveOptions::default();
    options.parallel = 1;
    options.range_size = 64 * KIB as u64;
    options.block_size = 1024;
    options
}

#[tokio::test]
async fn events_of_copied_resumed_present_and_failed_files() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src_root, dst_root) = (src.path(), dst.path());
    // Copied: nothing at the destination; more than one 256 KiB chunk.
    write_file(src_root, "copied", &random_bytes(1, 300 * KIB));
    // Resumed: the destination's partial file holds the first 100 KiB.
    let resumed = random_bytes(2, 200 * KIB);
    write_file(src_root, "resumed", &resumed);
    write_file(dst_root, ".resumed.part", &resumed[..100 * KIB]);
    // Already present, identical.
    write_file(src_root, "present", &random_bytes(3, 10 * KIB));
    write_file(dst_root, "present", &random_bytes(3, 10 * KIB));
    // Failed: the destination has a file where the source has a directory.
    write_file(src_root, "sub/failed", b"0123456789");
    write_file(dst_root, "sub", b"in the way");

    let recorder = Recorder::default();
    let summary = move_files(
        &store(src_root),
        &store(dst_root),
        &[dir().into()],
        &options(),
        &recorder,
        &Stop::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.files_moved,
            summary.files_failed,
            summary.files_interrupted
        ),
        (3, 1, 0)
    );

    let total = (300 + 200 + 10) * KIB + 10;
    let moves = recorder.moves.lock().unwrap().clone();
    assert_eq!(
        moves,
        [
            "listing d".to_string(),
            format!("totals 4 files {total} bytes"),
            format!("file d/copied {}", 300 * KIB),
            format!("file d/present {}", 10 * KIB),
            format!("file d/resumed {}", 200 * KIB),
            "file d/sub/failed 10".to_string(),
        ]
    );
    use super::Phase::*;
    use Event::*;
    let files = recorder.files.lock().unwrap().clone();
    assert_eq!(
        files["copied"],
        [
            Enter(Copying),
            Bytes(300 * KIB as u64),
            Enter(Checking),
            Enter(Deleting),
            Moved
        ]
    );
    // The 100 KiB already there are compared (in ranges of 64 KiB and
    // 36 KiB) and found equal; the rest is copied.
    assert_eq!(
        files["resumed"],
        [
            Enter(Hashing),
            Bytes(100 * KIB as u64),
            Enter(Copying),
            Bytes(100 * KIB as u64),
            Enter(Checking),
            Enter(Deleting),
            Moved
        ]
    );
    assert_eq!(files["present"], [Enter(Hashing), Enter(Deleting), Moved]);
    assert_eq!(files["sub/failed"], [Enter(Copying), Failed]);
}

#[tokio::test]
async fn cancelling_interrupts_the_file_in_flight_and_starts_no_other() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Files too large to be batched, each moving on its own.
    for name in ["a", "b", "c"] {
        write_file(src.path(), name, &random_bytes(4, 300 * KIB));
    }
    let stop = Stop::new();
    let destination = Faulty::stopping(dst.path(), Fault::HardStopOnWrite, stop.clone());
    let recorder = Recorder::default();
    let summary = move_files(
        &store(src.path()),
        &destination,
        &[dir().into()],
        &options(),
        &recorder,
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.files_moved,
            summary.files_failed,
            summary.files_interrupted
        ),
        (0, 0, 3)
    );
    let files = recorder.files.lock().unwrap().clone();
    assert_eq!(files.len(), 1, "only one file may start: {files:?}");
    assert_eq!(
        files["a"],
        [Event::Enter(Phase::Copying), Event::Interrupted]
    );
    for name in ["a", "b", "c"] {
        assert_eq!(
            std::fs::read(src.path().join(name)).unwrap(),
            random_bytes(4, 300 * KIB)
        );
    }
}

#[tokio::test]
async fn a_cancelled_move_changes_nothing_before_it_starts() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_file(src.path(), "a", b"a");
    let stop = Stop::new();
    stop.hard();
    let result = move_files(
        &store(src.path()),
        &store(dst.path()),
        &[dir().into()],
        &options(),
        &Recorder::default(),
        &stop,
    )
    .await;
    assert!(matches!(result, Err(MoveError::Cancelled)), "{result:?}");
    assert_eq!(std::fs::read(src.path().join("a")).unwrap(), b"a");
    assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_soft_stop_lets_the_file_in_flight_finish_and_starts_no_other() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for name in ["a", "b", "c"] {
        write_file(src.path(), name, &random_bytes(5, 300 * KIB));
    }
    let stop = Stop::new();
    let destination = Faulty::stopping(dst.path(), Fault::SoftStopOnWrite, stop.clone());
    let summary = move_files(
        &store(src.path()),
        &destination,
        &[dir().into()],
        &options(),
        &Recorder::default(),
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.files_moved,
            summary.files_failed,
            summary.files_interrupted
        ),
        (1, 0, 2)
    );
    assert_eq!(
        std::fs::read(dst.path().join("a")).unwrap(),
        random_bytes(5, 300 * KIB)
    );
    assert!(!src.path().join("a").exists());
    assert!(src.path().join("b").exists() && src.path().join("c").exists());
}

#[tokio::test]
async fn a_file_that_cannot_finish_before_the_deadline_does_not_start() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for name in ["a", "b", "c"] {
        write_file(src.path(), name, &random_bytes(6, 300 * KIB));
    }
    // Nothing is measured before the first file, so it starts; by then the
    // deadline has passed, so no other file can make it.
    let stop = Stop::new().with_predicted_deadline(std::time::Instant::now());
    let recorder = Recorder::default();
    let summary = move_files(
        &store(src.path()),
        &store(dst.path()),
        &[dir().into()],
        &options(),
        &recorder,
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.files_moved,
            summary.files_failed,
            summary.files_interrupted
        ),
        (1, 0, 2)
    );
    assert_eq!(
        recorder.files.lock().unwrap().len(),
        1,
        "only one file started"
    );
}
