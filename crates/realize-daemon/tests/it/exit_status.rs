//! What a script sees when a daemon cannot be reached or is lost: exit 10,
//! one line naming the side, the address, the cause and the tries, the
//! JSON summary saying the same, and every source file still in place.

use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::util::*;

/// A loopback port where nothing listens: connecting is refused.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

/// A listener that accepts every connection and closes it at once, as a
/// daemon whose TLS handshake fails would.
async fn closing_listener() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    addr
}

struct Setup {
    work: TempDir,
    client: KeyFiles,
    daemon_key: KeyFiles,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
}

impl Setup {
    fn new() -> Self {
        let work = TempDir::new().unwrap();
        let client = KeyFiles::new(work.path(), "client");
        let daemon_key = KeyFiles::new(work.path(), "daemon");
        let (src, dst) = (work.path().join("src"), work.path().join("dst"));
        sample_tree(&src);
        Setup {
            work,
            client,
            daemon_key,
            src,
            dst,
        }
    }

    /// Runs `realize` from `src` to `dst` with a short `--connect-timeout`.
    async fn run(&self, src: Side<'_>, dst: Side<'_>, extra: &[&str]) -> std::process::Output {
        self.run_trusting(&self.daemon_key.public, src, dst, extra)
            .await
    }

    async fn run_trusting(
        &self,
        daemon_key: &std::path::Path,
        src: Side<'_>,
        dst: Side<'_>,
        extra: &[&str],
    ) -> std::process::Output {
        let mut args = move_args(
            src,
            dst,
            &["d"],
            &self.client,
            &[daemon_key],
            self.work.path(),
        );
        args.extend(["--connect-timeout", "1s"].map(Into::into));
        args.extend(extra.iter().map(Into::into));
        realize(&os(&args)).await
    }
}

/// Asserts exit 10 and a last stderr line naming what could not be reached.
fn assert_unreachable(output: &std::process::Output, side: &str, addr: &str, cause: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(10), "{err}");
    let last = err.lines().last().unwrap_or("");
    let expected = format!("realize: cannot reach the {side} daemon at {addr}: {cause}");
    assert!(last.starts_with(&expected), "{last:?} is not {expected:?}");
    assert!(last.contains(" tries in ") && last.ends_with(')'), "{last}");
    assert!(!stdout(output).contains("Moved"), "{}", stdout(output));
}

#[tokio::test]
async fn an_unreachable_destination_exits_10_and_keeps_every_source_file() {
    let s = Setup::new();
    let before = manifest(&s.src);
    let addr = closed_port().await;
    let started = Instant::now();
    let output = s.run(Side::Path(&s.src), Side::Addr(&addr), &[]).await;
    assert_unreachable(&output, "destination", &addr, "connection refused");
    // --connect-timeout, not --retries, decides when a daemon never reached is given up.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(manifest(&s.src), before);
    assert!(!s.dst.exists());
}

#[tokio::test]
async fn an_unreachable_source_exits_10_whatever_retries_says() {
    let s = Setup::new();
    std::fs::create_dir(&s.dst).unwrap();
    let addr = closed_port().await;
    let output = s
        .run(Side::Addr(&addr), Side::Path(&s.dst), &["--retries", "0"])
        .await;
    assert_unreachable(&output, "source", &addr, "connection refused");
    assert!(manifest(&s.dst).is_empty());
}

#[tokio::test]
async fn a_failed_handshake_and_an_unknown_host_are_unreachable_too() {
    let s = Setup::new();
    let before = manifest(&s.src);
    let addr = closing_listener().await;
    let output = s.run(Side::Path(&s.src), Side::Addr(&addr), &[]).await;
    assert_unreachable(&output, "destination", &addr, "");
    let output = s
        .run(Side::Path(&s.src), Side::Addr("host.invalid:9771"), &[])
        .await;
    assert_unreachable(&output, "destination", "host.invalid:9771", "");
    assert_eq!(manifest(&s.src), before);
    assert!(!s.dst.exists());
}

#[tokio::test]
async fn the_json_summary_says_the_move_did_not_finish_and_why() {
    let s = Setup::new();
    let addr = closed_port().await;
    let output = s
        .run(Side::Path(&s.src), Side::Addr(&addr), &["--output", "json"])
        .await;
    assert_eq!(output.status.code(), Some(10), "{}", stderr(&output));
    let out = stdout(&output);
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["event"], "summary", "{out}");
    assert_eq!(summary["finished"], false);
    assert_eq!(summary["moved"], 0);
    let error = &summary["error"];
    assert_eq!(error["kind"], "unreachable", "{summary}");
    assert_eq!(error["side"], "destination");
    assert_eq!(error["address"], addr.as_str());
    assert_eq!(error["cause"], "connection refused");
    assert!(error["tries"].as_u64().unwrap() >= 1, "{summary}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach the destination daemon"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_malformed_address_is_a_usage_error_before_any_connection() {
    let s = Setup::new();
    let before = manifest(&s.src);
    for (addr, why) in [
        ("127.0.0.1", "the port is missing"),
        ("127.0.0.1:0", "is not a port"),
        ("127.0.0.1:http", "is not a port"),
        ("realize://host:1", "not a URL"),
    ] {
        let started = Instant::now();
        let output = s.run(Side::Path(&s.src), Side::Addr(addr), &[]).await;
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{addr}: {err}");
        assert!(
            err.starts_with(&format!("realize: error: invalid --dst-addr {addr:?}: "))
                && err.contains(why),
            "{addr}: {err}"
        );
        // Refused before any try: no RETRY, no wait for --connect-timeout.
        assert!(started.elapsed() < Duration::from_secs(1), "{addr}");
    }
    assert_eq!(manifest(&s.src), before);
    assert!(!s.dst.exists());
}

/// A daemon lost after it was reached, with no retries left: exit 10,
/// saying the connection was lost; what moved before stays moved.
#[tokio::test]
async fn a_connection_lost_with_no_retries_left_exits_10() {
    let s = Setup::new();
    let root = s.work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let big = random_bytes(3, 4 << 20);
    write_file(&s.src, "big.bin", &big);
    let daemon = Daemon::start(s.work.path(), &[("d", &root)], &s.client).await;
    let (proxy, _) = cutting_proxy(daemon.addr.clone(), 1 << 20).await;
    let output = s
        .run_trusting(
            &daemon.key.public,
            Side::Path(&s.src),
            Side::Addr(&proxy),
            &["--retries", "0", "--parallel", "1"],
        )
        .await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(10), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "realize: lost the connection to the destination daemon at {proxy}: "
        )) && last.contains("(1 try in "),
        "{err}"
    );
    assert_eq!(std::fs::read(s.src.join("big.bin")).unwrap(), big);
    assert!(!root.join("big.bin").exists());
    daemon.stop().await;
}

/// A destination inside a daemon's root, not created yet, is refused
/// before it is created.
#[tokio::test]
async fn a_destination_inside_the_source_daemon_root_is_refused_before_it_is_created() {
    let s = Setup::new();
    let daemon = Daemon::start(s.work.path(), &[("d", &s.src)], &s.client).await;
    let before = manifest(&s.src);
    let inside = s.src.join("sub");
    let output = s
        .run_trusting(
            &daemon.key.public,
            Side::Addr(&daemon.addr),
            Side::Path(&inside),
            &[],
        )
        .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("same directory or one contains the other"));
    assert!(!inside.exists(), "the refused destination was created");
    assert_eq!(manifest(&s.src), before);
    daemon.stop().await;
}
