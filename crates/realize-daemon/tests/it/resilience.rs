//! Deadlines, signals and network failures: a move stops cleanly, leaves
//! resumable partial files, and a re-run (or a retry) finishes it.

use std::sync::atomic::Ordering;

use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::util::*;

const SIZE: usize = 3_000_000;

struct Setup {
    work: TempDir,
    client: KeyFiles,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
}

impl Setup {
    /// A 3 MB file to move into a daemon.
    async fn new() -> (Setup, Daemon) {
        let work = TempDir::new().unwrap();
        let client = KeyFiles::new(work.path(), "client");
        let (src, dst) = (work.path().join("src"), work.path().join("dst"));
        std::fs::create_dir_all(&dst).unwrap();
        write_file(&src, "big.bin", &random_bytes(11, SIZE));
        let daemon = Daemon::start(work.path(), &[("d", &dst)], &client).await;
        (
            Setup {
                work,
                client,
                src,
                dst,
            },
            daemon,
        )
    }

    fn args(&self, addr: &str, daemon: &Daemon, flags: &[&str]) -> Vec<std::ffi::OsString> {
        let mut args = move_args(
            Side::Path(&self.src),
            Side::Addr(addr),
            &["d"],
            &self.client,
            &[&daemon.key.public],
            self.work.path(),
        );
        args.extend(flags.iter().map(Into::into));
        args
    }

    fn partial(&self) -> std::path::PathBuf {
        self.dst.join(".big.bin.part")
    }

    /// After an interruption: the source intact, no final file, a partial one.
    fn assert_interrupted(&self) {
        assert_eq!(
            std::fs::read(self.src.join("big.bin")).unwrap(),
            random_bytes(11, SIZE)
        );
        assert!(!self.dst.join("big.bin").exists());
        assert!(self.partial().exists(), "no resumable partial file");
    }

    /// A re-run without limits finishes the move with the right content.
    async fn assert_rerun_finishes(&self, daemon: &Daemon) {
        let output = realize(&os(&self.args(&daemon.addr, daemon, &[]))).await;
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(
            std::fs::read(self.dst.join("big.bin")).unwrap(),
            random_bytes(11, SIZE)
        );
        assert!(!self.src.join("big.bin").exists());
    }
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("")
}

#[tokio::test]
async fn deadline_during_a_transfer_interrupts_it_resumably() {
    let (s, daemon) = Setup::new().await;
    let args = s.args(
        &daemon.addr,
        &daemon,
        &["--throttle-up", "1M", "--max-duration", "1s"],
    );
    let output = realize(&os(&args)).await;
    assert_eq!(output.status.code(), Some(11), "{}", stderr(&output));
    assert_eq!(
        last_line(&stderr(&output)),
        "INTERRUPTED 0 moved, 1 interrupted"
    );
    // And where the work left is, for whoever reads the log.
    assert!(
        stderr(&output)
            .contains("1 partial file left at the destination (d: 1): the next run resumes them"),
        "{}",
        stderr(&output)
    );
    s.assert_interrupted();
    s.assert_rerun_finishes(&daemon).await;
    daemon.stop().await;
}

#[tokio::test]
async fn deadline_while_the_daemon_is_unreachable() {
    let (s, daemon) = Setup::new().await;
    // A port where nothing listens.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let output = realize(&os(&s.args(&addr, &daemon, &["--max-duration", "2s"]))).await;
    assert_eq!(output.status.code(), Some(11), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.lines().any(|l| l.starts_with("RETRY     try 2 in ")
            && l.contains(&format!("cannot connect to {addr}"))),
        "{err}"
    );
    assert_eq!(last_line(&err), "INTERRUPTED 0 moved, 0 interrupted");
    assert_eq!(
        std::fs::read(s.src.join("big.bin")).unwrap(),
        random_bytes(11, SIZE)
    );
    daemon.stop().await;
}

async fn signal_mid_transfer(signal: &str, code: i32) {
    let (s, daemon) = Setup::new().await;
    let child = spawn_realize(&os(&s.args(
        &daemon.addr,
        &daemon,
        &["--throttle-up", "1M"],
    )));
    wait_for_file(&s.partial(), 1).await;
    send_signal(&child, signal);
    let output = wait_output(child).await;
    assert_eq!(output.status.code(), Some(code), "{}", stderr(&output));
    assert_eq!(
        last_line(&stderr(&output)),
        "INTERRUPTED 0 moved, 1 interrupted"
    );
    s.assert_interrupted();
    s.assert_rerun_finishes(&daemon).await;
    daemon.stop().await;
}

#[tokio::test]
async fn sigint_mid_transfer_exits_130_and_a_rerun_finishes() {
    signal_mid_transfer("INT", 130).await;
}

#[tokio::test]
async fn sigterm_mid_transfer_exits_143_and_a_rerun_finishes() {
    signal_mid_transfer("TERM", 143).await;
}

#[tokio::test]
async fn sigusr1_lets_the_file_in_flight_finish() {
    let (s, daemon) = Setup::new().await;
    write_file(&s.src, "later.bin", b"not started");
    let child = spawn_realize(&os(&s.args(
        &daemon.addr,
        &daemon,
        &["--throttle-up", "2M", "--parallel", "1"],
    )));
    wait_for_file(&s.partial(), 1).await;
    send_signal(&child, "USR1");
    let output = wait_output(child).await;
    assert_eq!(output.status.code(), Some(11), "{}", stderr(&output));
    assert_eq!(
        last_line(&stderr(&output)),
        "INTERRUPTED 1 moved, 1 interrupted"
    );
    assert_eq!(
        std::fs::read(s.dst.join("big.bin")).unwrap(),
        random_bytes(11, SIZE)
    );
    assert!(s.src.join("later.bin").exists());
    daemon.stop().await;
}

#[tokio::test]
async fn a_daemon_restarted_mid_move_is_retried_and_the_move_completes() {
    let (s, daemon) = Setup::new().await;
    let child = spawn_realize(&os(&s.args(
        &daemon.addr,
        &daemon,
        &["--throttle-up", "1M"],
    )));
    wait_for_file(&s.partial(), 1).await;
    let daemon = daemon.kill_and_restart().await;
    let output = wait_output(child).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("RETRY     try 2 of 11"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(s.dst.join("big.bin")).unwrap(),
        random_bytes(11, SIZE)
    );
    assert!(!s.src.join("big.bin").exists());
    daemon.stop().await;
}

#[tokio::test]
async fn a_cut_connection_is_retried_and_resent_bytes_are_bounded() {
    let (s, daemon) = Setup::new().await;
    let (proxy, sent) = cutting_proxy(daemon.addr.clone(), SIZE as u64 / 3).await;
    let output = realize(&os(&s.args(&proxy, &daemon, &[]))).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("RETRY     try 2 of 11"),
        "{}",
        stderr(&output)
    );
    // Each try counts its own files: the counter never passes the total.
    let out = stdout(&output);
    assert!(out.contains("[1/1] Moved     d/big.bin"), "{out}");
    for line in out.lines().filter(|l| l.starts_with('[')) {
        let counter = &line[1..line.find(']').unwrap()];
        let (n, total) = counter.split_once('/').unwrap();
        assert!(
            n.parse::<u64>().unwrap() <= total.parse().unwrap(),
            "{line}"
        );
    }
    assert_eq!(
        std::fs::read(s.dst.join("big.bin")).unwrap(),
        random_bytes(11, SIZE)
    );
    let total = sent.load(Ordering::Relaxed);
    // What was in flight at the cut is sent again, nothing more: well under
    // half the file on top of it (TLS and gRPC framing included).
    assert!(
        total < SIZE as u64 * 3 / 2,
        "{total} bytes sent for a {SIZE}-byte file"
    );
    daemon.stop().await;
}

/// A source whose reads send one chunk and then nothing: a daemon stuck on
/// a dead disk, or a link that stopped carrying data without closing.
#[derive(Debug)]
struct StallingReads(realize_core::LocalStore);

#[async_trait::async_trait]
impl realize_core::Service for StallingReads {
    async fn info(&self) -> Result<realize_core::ServiceInfo, realize_core::ServiceError> {
        self.0.info().await
    }
    async fn list(
        &self,
        dir: &realize_core::DirId,
        prefix: Option<&realize_core::RelPath>,
        include_partial: bool,
    ) -> Result<realize_core::EntryStream, realize_core::ServiceError> {
        self.0.list(dir, prefix, include_partial).await
    }
    async fn read(
        &self,
        dir: &realize_core::DirId,
        path: &realize_core::RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<realize_core::FileStamp>,
    ) -> Result<realize_core::ByteStream, realize_core::ServiceError> {
        use futures::StreamExt;
        let data = self.0.read(dir, path, offset, length, if_stamp).await?;
        Ok(data.take(1).chain(futures::stream::pending()).boxed())
    }
    async fn write(
        &self,
        _: &realize_core::DirId,
        _: &realize_core::RelPath,
        _: u64,
        _: u64,
        _: realize_core::ByteStream,
    ) -> Result<u64, realize_core::ServiceError> {
        unreachable!("a source is never written")
    }
    async fn write_file(
        &self,
        _: &realize_core::DirId,
        _: &realize_core::RelPath,
        _: u64,
        _: realize_core::ByteStream,
        _: realize_core::ExpectedHash,
    ) -> Result<u64, realize_core::ServiceError> {
        unreachable!("a source is never written")
    }
    async fn signature(
        &self,
        _: &realize_core::DirId,
        _: &realize_core::RelPath,
        _: realize_core::ByteRange,
        _: u32,
    ) -> Result<bytes::Bytes, realize_core::ServiceError> {
        unreachable!("a new file needs no signature")
    }
    async fn diff(
        &self,
        _: &realize_core::DirId,
        _: &realize_core::RelPath,
        _: realize_core::ByteRange,
        _: bytes::Bytes,
    ) -> Result<realize_core::ByteStream, realize_core::ServiceError> {
        unreachable!("a new file needs no delta")
    }
    async fn apply_delta(
        &self,
        _: &realize_core::DirId,
        _: &realize_core::RelPath,
        _: realize_core::ByteRange,
        _: u64,
        _: realize_core::ByteStream,
    ) -> Result<u64, realize_core::ServiceError> {
        unreachable!("a source is never written")
    }
    async fn hash(
        &self,
        dir: &realize_core::DirId,
        path: &realize_core::RelPath,
        kind: realize_core::FileKind,
        range: Option<realize_core::ByteRange>,
        algorithm: realize_core::DigestAlgorithm,
    ) -> Result<realize_core::HashResult, realize_core::ServiceError> {
        self.0.hash(dir, path, kind, range, algorithm).await
    }
    async fn finish(
        &self,
        _: &realize_core::DirId,
        _: &realize_core::RelPath,
        _: Option<realize_core::Digest>,
    ) -> Result<(), realize_core::ServiceError> {
        unreachable!("a source is never finished")
    }
    async fn delete(
        &self,
        dir: &realize_core::DirId,
        path: &realize_core::RelPath,
        if_stamp: Option<realize_core::FileStamp>,
    ) -> Result<(), realize_core::ServiceError> {
        self.0.delete(dir, path, if_stamp).await
    }
}

/// A daemon whose data stops coming fails the stream at `--stall-timeout`,
/// as a cut connection: retried, then given up (exit 10), the source kept.
#[tokio::test]
async fn a_source_whose_data_stops_fails_at_the_stall_timeout() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (root, dst) = (work.path().join("root"), work.path().join("dst"));
    let big = random_bytes(12, SIZE);
    write_file(&root, "big.bin", &big);
    let store = realize_core::LocalStore::new([(dir_id("d"), root.clone())]);
    let daemon = InProcessDaemon::start(
        work.path(),
        std::sync::Arc::new(StallingReads(store)),
        &client,
    )
    .await;
    let mut args = move_args(
        Side::Addr(&daemon.addr),
        Side::Path(&dst),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    args.extend(["--stall-timeout", "1s", "--retries", "0"].map(Into::into));
    let output = realize(&os(&args)).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(10), "{err}");
    assert!(
        last_line(&err).starts_with(&format!(
            "realize: lost the connection to the source daemon at {}: no data from the daemon for 1s (--stall-timeout) (1 try in ",
            daemon.addr
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), big);
    assert!(!dst.join("big.bin").exists());
    daemon.stop().await;
}
