//! What a typo or a mistaken command line meets: a clear error naming what
//! was wrong, and nothing created or changed on disk.

use tempfile::TempDir;

use crate::{realize, stderr, stdout, write_file};

fn source(work: &std::path::Path) {
    write_file(work, "src/a/file.txt", b"hello");
}

/// Asserts exit 1, an error containing `expected`, the source untouched.
fn assert_refused(output: &std::process::Output, work: &std::path::Path, expected: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", stderr(output));
    assert!(
        stderr(output).contains(expected),
        "{:?} lacks {expected:?}",
        stderr(output)
    );
    assert_eq!(
        std::fs::read(work.join("src/a/file.txt")).unwrap(),
        b"hello"
    );
}

#[test]
fn a_destination_inside_the_source_is_refused_before_it_is_created() {
    let work = TempDir::new().unwrap();
    source(work.path());
    let output = realize(&["--src-path", "src", "--dst-path", "src/new"], work.path());
    assert_refused(
        &output,
        work.path(),
        "same directory or one contains the other",
    );
    assert!(!work.path().join("src/new").exists(), "created src/new");
}

#[test]
fn a_destination_whose_parent_is_missing_is_an_error_naming_the_parent() {
    let work = TempDir::new().unwrap();
    source(work.path());
    let output = realize(
        &["--src-path", "src", "--dst-path", "typo/x/dst"],
        work.path(),
    );
    assert_refused(
        &output,
        work.path(),
        "cannot create the destination typo/x/dst: its parent typo/x is missing",
    );
    assert!(!work.path().join("typo").exists(), "created typo/");
    // Only the last component is created, as rsync does.
    let output = realize(&["--src-path", "src", "--dst-path", "dst"], work.path());
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(work.path().join("dst/a/file.txt")).unwrap(),
        b"hello"
    );
}

#[test]
fn a_destination_that_is_a_file_is_not_a_directory() {
    let work = TempDir::new().unwrap();
    source(work.path());
    write_file(work.path(), "dst", b"a file");
    let output = realize(&["--src-path", "src", "--dst-path", "dst"], work.path());
    assert_refused(
        &output,
        work.path(),
        "the destination dst is not a directory",
    );
    assert_eq!(std::fs::read(work.path().join("dst")).unwrap(), b"a file");
}

#[test]
fn a_source_file_named_like_a_partial_file_is_reported_and_kept() {
    let work = TempDir::new().unwrap();
    write_file(work.path(), "src/a/.b.part", b"a user's file");
    write_file(work.path(), "src/c", b"moves");
    let output = realize(&["--src-path", "src", "--dst-path", "dst"], work.path());
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "SKIPPED   dir/a/.b.part: named like a partial file, not moved\n"
    );
    let out = stdout(&output);
    let summary = out.lines().last().unwrap();
    assert!(
        summary.starts_with("Moved 1 file (5 B) in ") && summary.ends_with(", 1 skipped"),
        "{summary}"
    );
    assert_eq!(
        std::fs::read(work.path().join("src/a/.b.part")).unwrap(),
        b"a user's file"
    );
    assert!(!work.path().join("dst/a/.b.part").exists());

    let output = realize(
        &["--src-path", "src", "--dst-path", "dst", "--output", "json"],
        work.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let events: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "skipped", "{events:?}");
    assert_eq!(events[0]["path"], "a/.b.part");
    let summary = events.last().unwrap();
    assert_eq!(summary["skipped"], 1, "{summary}");
    assert_eq!(summary["finished"], true);
}

#[test]
fn usage_errors_start_with_the_program_name() {
    let work = TempDir::new().unwrap();
    let output = realize(&["--src-path", "src", "--dst-pat", "dst"], work.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).starts_with("realize: error: unexpected argument '--dst-pat'"),
        "{}",
        stderr(&output)
    );
    let help = realize(&["keygen", "--help"], work.path());
    assert!(help.status.success());
    let help = stdout(&help);
    let out = help
        .lines()
        .find(|l| l.trim_start().starts_with("--out"))
        .unwrap();
    assert!(out.contains("Write PREFIX.key"), "{help}");
}
