//! The audit trail cannot be forged: a file name made of log lines is
//! written, finished and deleted through the real daemon, and each event is
//! still one line of its text log, with the name escaped.

use realize_core::testing::sha256;
use std::time::Duration;

use bytes::Bytes;
use realize_net::connection::connect;
use realize_net::throttle::SendLimit;
use realize_net::tls::client_config;
use realize_proto::pb;
use realize_proto::pb::realize_client::RealizeClient;
use tempfile::TempDir;

use crate::util::*;

/// A name that, printed raw, ends its line and starts a forged audit line
/// saying another peer deleted another file; then a carriage return, a tab,
/// a right-to-left override and a terminal escape.
const FORGED: &str = "x.txt size=1 sha256=00\n1999-01-01T00:00:00.000000Z  INFO \
    rpc{method=\"Delete\" peer=admin addr=10.0.0.1:1}: realize_core::store: deleted dir=rw \
    path=payroll.xlsx kind=Final size=1\rcover\tstory\u{202E}gpj.exe\u{1b}[2K";

/// How the text log prints it.
const ESCAPED: &str = "x.txt size=1 sha256=00\\n1999-01-01T00:00:00.000000Z  INFO \
    rpc{method=\"Delete\" peer=admin addr=10.0.0.1:1}: realize_core::store: deleted dir=rw \
    path=payroll.xlsx kind=Final size=1\\rcover\\tstory\\u{202e}gpj.exe\\u{1b}[2K";

#[tokio::test]
async fn a_file_name_made_of_log_lines_stays_on_its_event_line() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = Daemon::start(work.path(), &[("d", &root)], &client).await;
    let tls = client_config(&client.key, [daemon.key.public_key()]).unwrap();
    let channel = connect(
        &daemon.addr,
        tls,
        Duration::from_secs(10),
        SendLimit::new(None),
    )
    .await
    .unwrap();
    let mut api = RealizeClient::new(channel);

    let content = b"forged\n";
    let digest = Some(sha256(content).into());
    let mut answers = api
        .write_files(futures::stream::iter([pb::WriteFilesRequest {
            dir: "d".into(),
            path: FORGED.into(),
            data: Bytes::from_static(content),
            digest,
        }]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.code, 0, "{}", answer.message);
    assert_eq!(std::fs::read(root.join(FORGED)).unwrap(), content);
    api.delete(pb::DeleteRequest {
        dir: "d".into(),
        path: FORGED.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!root.join(FORGED).exists());
    assert!(
        daemon.wait_for_line(&["deleted", "payroll.xlsx"]).await,
        "{}",
        daemon.log()
    );

    let log = daemon.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("payroll.xlsx")).collect();
    assert_eq!(lines.len(), 2, "one line per event:\n{log}");
    let peer = "peer=client";
    assert!(
        lines[0].contains(peer)
            && lines[0].contains(&format!(
                ": finished dir=d path={ESCAPED} size=7 digest=sha256:"
            )),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(peer)
            && lines[1].contains(&format!(": deleted dir=d path={ESCAPED} kind=Final size=7")),
        "{}",
        lines[1]
    );
    for line in log.lines() {
        assert!(!line.starts_with("1999-"), "a forged line: {line}");
    }
    for raw in ['\r', '\t', '\u{202E}', '\u{1b}'] {
        assert!(!log.contains(raw), "{raw:?} printed raw:\n{log}");
    }
    daemon.stop().await;
}
