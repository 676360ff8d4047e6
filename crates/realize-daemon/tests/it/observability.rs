//! Metrics and logs read by their real consumers: a Prometheus server
//! scraping `realized`, a Pushgateway receiving `realize`'s push, and a
//! parser reading every line of the JSON log.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::util::*;

pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// A free loopback port for a program that wants one on its command line.
pub(crate) async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET; returns the status code and body.
pub(crate) async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Polls `probe` until it returns a value: Prometheus and the Pushgateway
/// offer no readiness signal to await, only their HTTP answers.
pub(crate) async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub(crate) fn spawn(program: &str, args: &[String], dir: &Path) -> Child {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (apt-get install prometheus prometheus-pushgateway): {e}")
        })
}

/// The value of a Prometheus query with a single result.
pub(crate) async fn query(prometheus: &str, expr: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", encode(expr));
    let (status, body) = http_get(prometheus, &path).await?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The address a daemon started with `--metrics-addr 127.0.0.1:0` serves
/// metrics on, from its log.
pub(crate) async fn metrics_addr(daemon: &Daemon) -> String {
    assert!(daemon.wait_for_log("serving metrics").await);
    daemon
        .log()
        .lines()
        .find(|l| l.contains("serving metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn prometheus_scrapes_what_the_daemon_wrote() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let sizes = [100_000usize, 2_000_000, 1];
    for (i, size) in sizes.iter().enumerate() {
        write_file(&src, &format!("f{i}"), &random_bytes(i as u64, *size));
    }
    let total: usize = sizes.iter().sum();
    let daemon = Daemon::start_with(work.path(), &[("d", &dst)], &client, |config| {
        config.args = vec!["--metrics-addr".into(), "127.0.0.1:0".into()];
    })
    .await;
    let metrics_addr = metrics_addr(&daemon).await;
    // Anything but GET /metrics is refused.
    assert_eq!(http_get(&metrics_addr, "/other").await.unwrap().0, 404);

    let prometheus_addr = format!("127.0.0.1:{}", free_port().await);
    std::fs::write(
        work.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: realized\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        "prometheus",
        &[
            "--config.file=prometheus.yml".into(),
            "--storage.tsdb.path=tsdb".into(),
            format!("--web.listen-address={prometheus_addr}"),
        ],
        work.path(),
    );
    eventually("prometheus to be ready", || async {
        http_get(&prometheus_addr, "/-/ready")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;

    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert!(output.status.success(), "{}", stderr(&output));

    let expect = |expr: &'static str, expected: f64| {
        let prometheus_addr = prometheus_addr.clone();
        async move {
            eventually(expr, || async {
                query(&prometheus_addr, expr)
                    .await
                    .filter(|v| *v == expected)
            })
            .await
        }
    };
    expect("realize_store_written_bytes_total", total as f64).await;
    expect("realize_store_finished_total", sizes.len() as f64).await;
    // A new file is written and finished in one call: the large one in a
    // Write of its own, the two small ones together in one WriteFiles.
    expect(
        "sum(realize_rpc_calls_total{side=\"server\",method=\"Write\",code=\"Ok\"})",
        1.0,
    )
    .await;
    expect(
        "sum(realize_rpc_calls_total{side=\"server\",method=\"WriteFiles\",code=\"Ok\"})",
        1.0,
    )
    .await;
    let received = eventually("wire bytes", || async {
        query(&prometheus_addr, "realize_wire_received_bytes_total")
            .await
            .filter(|v| *v >= total as f64)
    })
    .await;
    assert!(
        received < total as f64 * 1.1,
        "{received} bytes on the wire for {total}"
    );
    assert!(
        query(&prometheus_addr, "process_resident_memory_bytes")
            .await
            .unwrap()
            > 0.0
    );
    daemon.stop().await;
}

#[tokio::test]
async fn realize_pushes_its_counters_to_a_pushgateway() {
    let work = TempDir::new().unwrap();
    let gateway = format!("127.0.0.1:{}", free_port().await);
    let _pushgateway = spawn(
        "prometheus-pushgateway",
        &[format!("--web.listen-address={gateway}")],
        work.path(),
    );
    eventually("the pushgateway to be ready", || async {
        http_get(&gateway, "/-/ready")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    for i in 0..3 {
        write_file(
            &src,
            &format!("f{i}"),
            &random_bytes(i as u64, 1000 * (i + 1)),
        );
    }
    let output = realize(&[
        "--src-path".as_ref(),
        src.as_os_str(),
        "--dst-path".as_ref(),
        dst.as_os_str(),
        "--metrics-pushgateway".as_ref(),
        format!("http://{gateway}").as_ref(),
        "--metrics-job".as_ref(),
        "nightly".as_ref(),
        "--metrics-instance".as_ref(),
        "laptop".as_ref(),
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let (_, body) = http_get(&gateway, "/metrics").await.unwrap();
    let line = |name: &str| {
        body.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains("instance=\"laptop\"")
                    && l.contains("job=\"nightly\"")
            })
            .unwrap_or_else(|| panic!("no {name} for job nightly, instance laptop in:\n{body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(line("realize_files_moved_total"), "3");
    assert_eq!(line("realize_moved_bytes_total"), "6000");

    // A push that fails: the move's result still shows, and the exit code says so.
    write_file(&src, "g", b"more");
    let closed = format!("http://127.0.0.1:{}", free_port().await);
    let output = realize(&[
        "--src-path".as_ref(),
        src.as_os_str(),
        "--dst-path".as_ref(),
        dst.as_os_str(),
        "--metrics-pushgateway".as_ref(),
        closed.as_ref(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(12), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("Moved 1 file ("),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("cannot push metrics"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn the_json_log_is_one_object_per_line_with_the_audit_events() {
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    write_file(&src, "new.bin", &random_bytes(1, 50_000));
    write_file(&src, "changed.bin", &random_bytes(2, 40_000));
    write_file(&dst, "changed.bin", &random_bytes(3, 40_000));
    let expected: Vec<(String, usize, String)> = ["changed.bin", "new.bin"]
        .iter()
        .map(|name| {
            let data = std::fs::read(src.join(name)).unwrap();
            (
                name.to_string(),
                data.len(),
                // The default digest, as the audit log writes it.
                realize_core::Digest::of(realize_core::DigestAlgorithm::Blake3, &data).to_string(),
            )
        })
        .collect();
    let daemon = Daemon::start_with(work.path(), &[("d", &dst)], &client, |config| {
        config.args = vec!["--log-format".into(), "json".into()];
    })
    .await;
    let args = move_args(
        Side::Path(&src),
        Side::Addr(&daemon.addr),
        &["d"],
        &client,
        &[&daemon.key.public],
        work.path(),
    );
    let output = realize(&os(&args)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    for (name, _, _) in &expected {
        assert!(daemon.wait_for_log(&format!("\"path\":\"{name}\"")).await);
    }
    assert!(daemon.wait_for_log("\"finished\"").await);
    let events: Vec<serde_json::Value> = daemon
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect();
    let audit = |message: &str, path: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message && e["fields"]["path"] == path)
            .unwrap_or_else(|| panic!("no {message} event for {path}"))
            .clone()
    };
    for (name, size, digest) in &expected {
        let finished = audit("finished", name);
        assert_eq!(finished["level"], "INFO");
        assert_eq!(finished["fields"]["dir"], "d");
        assert_eq!(finished["fields"]["size"], *size as u64);
        assert_eq!(finished["fields"]["digest"], digest.as_str());
        assert_eq!(finished["span"]["peer"], "client", "{finished}");
        // A new small file is finished by the WriteFiles call that carries
        // it; one that was there is overwritten by a resume, then a Finish.
        let method = if name == "new.bin" {
            "WriteFiles"
        } else {
            "Finish"
        };
        assert_eq!(finished["span"]["method"], method);
    }
    let overwrite = audit(
        "overwrite: final file turned back into partial file",
        "changed.bin",
    );
    assert_eq!(overwrite["span"]["peer"], "client");
    assert_eq!(overwrite["fields"]["size"], 40_000);
    daemon.stop().await;
}
