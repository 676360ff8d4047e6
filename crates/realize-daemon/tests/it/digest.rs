//! The digest a move verifies with: BLAKE3 unless told otherwise, SHA-256
//! on request (resumes included), and an unknown name refused before
//! anything moves. The daemon's audit line names the digest it checked.

use std::path::Path;

use realize_core::{Digest, DigestAlgorithm};
use tempfile::TempDir;

use crate::util::*;

/// Moves `src` into the daemon's `photos` with `extra` arguments.
async fn push(
    work: &Path,
    client: &KeyFiles,
    daemon: &Daemon,
    src: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = move_args(
        Side::Path(src),
        Side::Addr(&daemon.addr),
        &["photos"],
        client,
        &[&daemon.key.public],
        work,
    );
    args.extend(extra.iter().map(Into::into));
    realize(&os(&args)).await
}

/// The audit line of `path` says it was checked against `digest`.
async fn assert_audited(daemon: &Daemon, path: &str, digest: Digest) {
    let line = format!("path={path} size=");
    assert!(daemon.wait_for_log(&line).await, "{}", daemon.log());
    let audited = daemon
        .log()
        .lines()
        .find(|l| l.contains(&line))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        audited.contains(&format!("digest={digest}")),
        "expected {digest} in: {audited}"
    );
}

#[tokio::test]
async fn blake3_by_default_sha256_on_request() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let daemon = Daemon::start(work.path(), &[("photos", &dst)], &client).await;

    let big = random_bytes(5, 3 * 1024 * 1024 + 5);
    write_file(&src, "default/big.bin", &big);
    write_file(&src, "default/small.txt", b"small");
    let output = push(work.path(), &client, &daemon, &src, &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let blake3 = |data: &[u8]| Digest::of(DigestAlgorithm::Blake3, data);
    assert_audited(&daemon, "default/big.bin", blake3(&big)).await;
    assert_audited(&daemon, "default/small.txt", blake3(b"small")).await;

    // A half-written partial file: the resume compares ranges with SHA-256 too.
    write_file(&src, "forced/big.bin", &big);
    write_file(&dst, "forced/.big.bin.part", &big[..big.len() / 2]);
    let output = push(work.path(), &client, &daemon, &src, &["--digest", "sha256"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(dst.join("forced/big.bin")).unwrap(), big);
    assert!(!src.join("forced/big.bin").exists());
    let sha256 = Digest::of(DigestAlgorithm::Sha256, &big);
    assert_audited(&daemon, "forced/big.bin", sha256).await;
    daemon.stop().await;
}

#[tokio::test]
async fn an_unknown_digest_is_a_usage_error_and_moves_nothing() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    sample_tree(&src);
    let before = manifest(&src);
    let daemon = Daemon::start(work.path(), &[("photos", &dst)], &client).await;

    let output = push(work.path(), &client, &daemon, &src, &["--digest", "md5"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("unknown digest \"md5\": expected blake3 or sha256"),
        "{}",
        stderr(&output)
    );
    assert_eq!(manifest(&src), before);
    assert!(manifest(&dst).is_empty());
    daemon.stop().await;
}
