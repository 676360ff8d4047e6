//! Moves that succeed, in every combination of local and remote sides.

use std::path::Path;

use tempfile::TempDir;

use crate::util::*;

struct Setup {
    work: TempDir,
    client: KeyFiles,
}

impl Setup {
    fn new() -> Self {
        let work = TempDir::new().unwrap();
        let client = KeyFiles::new(work.path(), "client");
        Setup { work, client }
    }

    fn dir(&self, name: &str) -> std::path::PathBuf {
        let path = self.work.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }
}

/// Moves `src` to `dst` and checks the outcome a user expects: exit 0, the
/// summary line, every file at the destination with its hash, the source
/// emptied (its root kept).
fn assert_moved(
    output: &std::process::Output,
    before: &std::collections::BTreeMap<String, realize_core::Digest>,
    src: &Path,
    dst: &Path,
) {
    assert!(
        output.status.success(),
        "realize failed: {}",
        stderr(output)
    );
    let out = stdout(output);
    assert!(
        out.contains(&match before.len() {
            1 => "Moved 1 file (".to_string(),
            n => format!("Moved {n} files ("),
        }),
        "unexpected summary: {out}"
    );
    assert_eq!(&manifest(dst), before);
    assert!(
        manifest(src).is_empty(),
        "source not emptied: {:?}",
        manifest(src)
    );
    assert!(src.exists(), "source root removed");
    assert_eq!(
        std::fs::read_dir(src).unwrap().count(),
        0,
        "emptied source directories left"
    );
}

#[tokio::test]
async fn local_to_local() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.work.path().join("dst"));
    sample_tree(&src);
    let before = manifest(&src);
    let args = move_args(
        Side::Path(&src),
        Side::Path(&dst),
        &[],
        &s.client,
        &[],
        s.work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_moved(&output, &before, &src, &dst);
}

#[tokio::test]
async fn local_to_remote() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    sample_tree(&src);
    let before = manifest(&src);
    let daemon = Daemon::start(s.work.path(), &[("photos", &dst)], &s.client).await;
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["photos"],
        &s.client,
        &[&daemon.key.public],
        s.work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_moved(&output, &before, &src, &dst);
    for line in [
        "connection accepted peer=client",
        "finished dir=photos path=a/big.bin",
    ] {
        assert!(daemon.wait_for_log(line).await, "{}", daemon.log());
    }
    daemon.stop().await;
}

#[tokio::test]
async fn remote_to_local() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    sample_tree(&src);
    let before = manifest(&src);
    let daemon = Daemon::start(s.work.path(), &[("photos", &src)], &s.client).await;
    let args = move_args(
        Side::Addr(&daemon.addr),
        Side::Path(&dst),
        &["photos"],
        &s.client,
        &[&daemon.key.public],
        s.work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_moved(&output, &before, &src, &dst);
    daemon.stop().await;
}

#[tokio::test]
async fn remote_to_remote_several_dirs() {
    let s = Setup::new();
    let (src_a, src_b, dst_a, dst_b) = (
        s.dir("src_a"),
        s.dir("src_b"),
        s.dir("dst_a"),
        s.dir("dst_b"),
    );
    sample_tree(&src_a);
    write_file(&src_b, "only/in/b.txt", b"b\n");
    let (before_a, before_b) = (manifest(&src_a), manifest(&src_b));
    let source = Daemon::start(s.work.path(), &[("a", &src_a), ("b", &src_b)], &s.client).await;
    let destination =
        Daemon::start(s.work.path(), &[("a", &dst_a), ("b", &dst_b)], &s.client).await;
    let args = move_args(
        Side::Addr(&source.addr),
        Side::Addr(&destination.addr),
        &["a", "b"],
        &s.client,
        &[&source.key.public, &destination.key.public],
        s.work.path(),
    );
    let output = realize(&os(&args)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains(&format!("Moved {} files", before_a.len() + before_b.len())));
    assert_eq!(manifest(&dst_a), before_a);
    assert_eq!(manifest(&dst_b), before_b);
    assert!(manifest(&src_a).is_empty() && manifest(&src_b).is_empty());
    source.stop().await;
    destination.stop().await;
}

#[tokio::test]
async fn identical_and_differing_files_at_destination() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    let same = random_bytes(3, 300_000);
    write_file(&src, "same.bin", &same);
    write_file(&dst, "same.bin", &same);
    write_file(&src, "differs.bin", &random_bytes(4, 300_000));
    write_file(&dst, "differs.bin", &random_bytes(5, 200_000));
    let before = manifest(&src);
    let daemon = Daemon::start(s.work.path(), &[("d", &dst)], &s.client).await;
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &s.client,
        &[&daemon.key.public],
        s.work.path(),
    );
    let output = realize(&os(&args)).await;
    assert_moved(&output, &before, &src, &dst);
    daemon.stop().await;
}

/// Reads the `bytes_sent=N` of each file's "moved" log line.
fn bytes_sent(log: &str, path: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains(&format!(" path={path}}}")) && l.contains(" moved "))
        .unwrap_or_else(|| panic!("no moved line for {path} in:\n{log}"));
    line.split("bytes_sent=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn interrupted_copy_resumes_sending_only_the_missing_part() {
    let s = Setup::new();
    let (src, dst) = (s.dir("src"), s.dir("dst"));
    let size = 20 * 1024 * 1024;
    let data = random_bytes(6, size);
    write_file(&src, "sub/big.bin", &data);
    // What an interrupted copy leaves: the first 60% in the partial file.
    write_file(&dst, "sub/.big.bin.part", &data[..size * 6 / 10]);
    let before = manifest(&src);
    let daemon = Daemon::start(s.work.path(), &[("d", &dst)], &s.client).await;
    let mut args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &s.client,
        &[&daemon.key.public],
        s.work.path(),
    );
    args.push("-v".into());
    let output = realize(&os(&args)).await;
    assert_moved(&output, &before, &src, &dst);
    let sent = bytes_sent(&stderr(&output), "sub/big.bin");
    let missing = (size - size * 6 / 10) as u64;
    assert!(sent >= missing, "sent {sent} < missing {missing}");
    assert!(
        sent < missing + missing / 20,
        "sent {sent} bytes to finish {missing} missing ones"
    );
    daemon.stop().await;
}
