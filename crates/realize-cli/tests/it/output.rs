//! What `realize` prints for a person and for a script, line by line.

use std::path::Path;

use tempfile::TempDir;

use crate::{realize, stderr, stdout, write_file};

/// A source with three files, and a destination where `a` is a file, so
/// `a/b/file.txt` cannot be written.
fn tree(work: &Path, blocked: bool) {
    write_file(work, "src/a/b/file.txt", b"hello");
    write_file(work, "src/empty", b"");
    write_file(work, "src/top", b"x");
    std::fs::create_dir_all(work.join("dst")).unwrap();
    if blocked {
        write_file(work, "dst/a", b"in the way");
    }
}

const MOVE: &[&str] = &["--src-path", "src", "--dst-path", "dst", "--parallel", "1"];

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// The summary carries a duration; everything before it is exact.
fn assert_summary(line: &str, prefix: &str) {
    assert!(
        line.starts_with(prefix),
        "{line:?} does not start with {prefix:?}"
    );
}

#[test]
fn successful_move() {
    let work = TempDir::new().unwrap();
    tree(work.path(), false);
    let output = realize(MOVE, work.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let out = lines(&out);
    assert_eq!(
        out[..3],
        [
            "[1/3] Moved     dir/a/b/file.txt",
            "[2/3] Moved     dir/empty",
            "[3/3] Moved     dir/top",
        ]
    );
    assert_eq!(out.len(), 4, "{out:?}");
    assert_summary(out[3], "Moved 3 files (6 B) in ");
    assert_eq!(stderr(&output), "", "no escape codes or logs when piped");
}

#[test]
fn partially_failed_move() {
    let work = TempDir::new().unwrap();
    tree(work.path(), true);
    let output = realize(MOVE, work.path());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        lines(&stdout(&output)),
        ["[2/3] Moved     dir/empty", "[3/3] Moved     dir/top"]
    );
    assert_eq!(
        lines(&stderr(&output)),
        [
            "[1/3] ERROR     dir/a/b/file.txt: destination: dir/a/b/file.txt: goes through a symlink or non-directory at \"a\"",
            "ERROR 1 failed, 2 moved",
        ]
    );
    assert_eq!(
        std::fs::read(work.path().join("src/a/b/file.txt")).unwrap(),
        b"hello"
    );
}

#[test]
fn quiet_move_prints_only_errors_and_the_summary() {
    let work = TempDir::new().unwrap();
    tree(work.path(), true);
    let mut args = MOVE.to_vec();
    args.push("--quiet");
    let output = realize(&args, work.path());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    let err = stderr(&output);
    let err = lines(&err);
    assert_eq!(err.len(), 2, "{err:?}");
    assert!(err[0].starts_with("[1/3] ERROR     dir/a/b/file.txt: "));
    assert_eq!(err[1], "ERROR 1 failed, 2 moved");

    let work = TempDir::new().unwrap();
    tree(work.path(), false);
    let output = realize(&args, work.path());
    assert!(output.status.success());
    let out = stdout(&output);
    assert_eq!(lines(&out).len(), 1, "{out:?}");
    assert_summary(&out, "Moved 3 files (6 B) in ");
}

#[test]
fn json_output_is_one_object_per_event() {
    let work = TempDir::new().unwrap();
    tree(work.path(), true);
    let mut args = MOVE.to_vec();
    args.extend(["--output", "json"]);
    let output = realize(&args, work.path());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "");
    let events: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    // Small new files move as one batch: all start, then each ends.
    assert_eq!(
        kinds,
        [
            "started", "started", "started", "failed", "moved", "moved", "summary"
        ]
    );
    assert_eq!(events[0]["path"], "a/b/file.txt");
    assert_eq!(events[0]["dir"], "dir");
    assert_eq!(events[0]["index"], 1);
    assert_eq!(events[0]["total"], 3);
    assert_eq!(events[0]["size"], 5);
    assert!(
        events[3]["error"]
            .as_str()
            .unwrap()
            .contains("goes through a symlink or non-directory"),
        "{}",
        events[3]
    );
    assert_eq!(events[3]["path"], "a/b/file.txt");
    assert_eq!(events[4]["path"], "empty");
    let summary = &events[6];
    assert_eq!(summary["moved"], 2);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["interrupted"], 0);
    assert_eq!(summary["bytes_moved"], 1);
    assert!(summary["duration_ms"].is_u64());
}

#[test]
fn throttle_limits_a_local_copy() {
    let work = TempDir::new().unwrap();
    // 1.5 MB at 1 MB/s, less the 0.1 s the token bucket starts with.
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    write_file(work.path(), "src/f.bin", &data);
    let started = std::time::Instant::now();
    let output = realize(
        &["--src-path", "src", "--dst-path", "dst", "--throttle", "1M"],
        work.path(),
    );
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(work.path().join("dst/f.bin")).unwrap(), data);
    assert!(
        elapsed >= std::time::Duration::from_millis(1400),
        "{elapsed:?}"
    );
}
