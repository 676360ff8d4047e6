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
        write_file(&src, "big.bin", &pseudo_random(SIZE, 11));
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
            pseudo_random(SIZE, 11)
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
            pseudo_random(SIZE, 11)
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
        pseudo_random(SIZE, 11)
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
        pseudo_random(SIZE, 11)
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
        pseudo_random(SIZE, 11)
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
        pseudo_random(SIZE, 11)
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
