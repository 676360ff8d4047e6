//! What `dist/` ships, checked by the programs that read it: the alert rules
//! by promtool, and the alert rules and the Grafana dashboard's expressions by
//! a real Prometheus scraping a daemon and a Pushgateway after two moves.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use crate::observability::*;
use crate::util::*;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist")
}

/// Runs promtool; missing, it fails the test (`.ci/run` installs it).
fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dist().join("prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (apt-get install prometheus): {e}"));
    assert!(
        output.status.success(),
        "promtool {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "realize.rules.yml"]);
    promtool(&["test", "rules", "realize.rules.test.yml"]);
}

/// The result vector of an instant query, if Prometheus accepted it.
async fn query_vector(prometheus: &str, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let path = format!("/api/v1/query?query={}", encode(expr));
    let (status, body) = http_get(prometheus, &path)
        .await
        .ok_or("no answer from prometheus")?;
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {}", json["error"]));
    }
    match json["data"]["result"].as_array() {
        Some(result) => Ok(result.clone()),
        None => Err(format!("not an instant vector: {body}")),
    }
}

/// Polls until `expr` has a result with at least one number (NaN is not one:
/// a quantile of nothing); a query Prometheus refuses fails at once.
async fn has_data(prometheus: &str, expr: &str) {
    eventually(expr, || async {
        let result = query_vector(prometheus, expr)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        let number = |sample: &serde_json::Value| {
            sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| !v.is_nan())
        };
        result.iter().any(number).then_some(())
    })
    .await
}

/// One instant query's single value, polled until it passes `check`.
async fn value(prometheus: &str, expr: &str, check: impl Fn(f64) -> bool) -> f64 {
    eventually(expr, || async {
        query(prometheus, expr).await.filter(|v| check(*v))
    })
    .await
}

/// Every expression of the dashboard, with Grafana's variables replaced the way
/// Grafana would for "all daemons" over a short range.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(dist().join("grafana/realize.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let grafana = |expr: &str| {
        expr.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
    };
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(grafana(target["expr"].as_str().unwrap()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(SELECTOR, LABEL): the selector must find series.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _)| selector)
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            exprs.push(grafana(selector));
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    exprs
}

#[tokio::test]
async fn prometheus_sees_both_binaries_and_every_dashboard_panel_has_data() {
    let exprs = dashboard_expressions();
    let work = TempDir::new().unwrap();
    let client = KeyFiles::new(work.path(), "client");
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let daemon = Daemon::start_with(work.path(), &[("d", &dst)], &client, |config| {
        config.args = vec!["--metrics-addr".into(), "127.0.0.1:0".into()];
    })
    .await;
    let metrics_addr = metrics_addr(&daemon).await;
    let gateway = format!("127.0.0.1:{}", free_port().await);
    let _pushgateway = spawn(
        "prometheus-pushgateway",
        &[format!("--web.listen-address={gateway}")],
        work.path(),
    );
    let prometheus = format!("127.0.0.1:{}", free_port().await);
    let rules = dist().join("prometheus/realize.rules.yml");
    std::fs::write(
        work.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n\
             \x20 - job_name: realized\n    static_configs: [{{targets: ['{metrics_addr}']}}]\n\
             \x20 - job_name: pushgateway\n    honor_labels: true\n    static_configs: [{{targets: ['{gateway}']}}]\n",
            rules.display()
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        "prometheus",
        &[
            "--config.file=prometheus.yml".into(),
            "--storage.tsdb.path=tsdb".into(),
            format!("--web.listen-address={prometheus}"),
        ],
        work.path(),
    );
    for server in [&gateway, &prometheus] {
        eventually("prometheus and the pushgateway to be ready", || async {
            http_get(server, "/-/ready")
                .await
                .filter(|(s, _)| *s == 200)
        })
        .await;
    }

    // Two moves, the second once Prometheus has seen the first, so that rates
    // and latency quantiles have an increase to show.
    let mut moves = Vec::new();
    for round in 0..2u64 {
        let dir = src.join(format!("round{round}"));
        write_file(
            &dir,
            &format!("big{round}"),
            &random_bytes(round, 1_000_000),
        );
        write_file(&dir, &format!("small{round}"), &random_bytes(round, 1_000));
        let mut args = move_args(
            Side::Path(&dir),
            Side::Addr(&daemon.addr),
            &["d"],
            &client,
            &[&daemon.key.public],
            work.path(),
        );
        args.extend(
            [
                "--metrics-pushgateway".to_string(),
                format!("http://{gateway}"),
                "--metrics-job".into(),
                "nightly".into(),
                "--metrics-instance".into(),
                "laptop".into(),
            ]
            .map(Into::into),
        );
        moves.push(args);
    }
    let output = realize(&os(&moves[0])).await;
    assert!(output.status.success(), "{}", stderr(&output));
    value(
        &prometheus,
        "sum(realize_rpc_calls_total{job=\"realized\", method=\"Write\"})",
        |v| v == 1.0,
    )
    .await;
    // A connection that is not TLS at all: refused, for the refusals panel.
    let mut garbage = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    drop(garbage);
    let output = realize(&os(&moves[1])).await;
    assert!(output.status.success(), "{}", stderr(&output));

    // Both binaries: their build info, and the standard process metrics
    // under the standard names (the old realize_process_* ones are gone).
    for job in ["realized", "nightly"] {
        let binary = if job == "realized" {
            "realized"
        } else {
            "realize"
        };
        let info = format!(
            "realize_build_info{{job=\"{job}\", binary=\"{binary}\", version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        value(&prometheus, &info, |v| v == 1.0).await;
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            value(&prometheus, &format!("{name}{{job=\"{job}\"}}"), |v| {
                v > 0.0
            })
            .await;
        }
        // Whole seconds in the prometheus crate: a short run may have used none.
        value(
            &prometheus,
            &format!("process_cpu_seconds_total{{job=\"{job}\"}}"),
            |v| v >= 0.0,
        )
        .await;
        value(
            &prometheus,
            &format!("time() - process_start_time_seconds{{job=\"{job}\"}}"),
            |age| (0.0..600.0).contains(&age),
        )
        .await;
    }
    assert_eq!(
        query_vector(&prometheus, "{__name__=~\"realize_process_.*\"}").await,
        Ok(vec![])
    );
    value(
        &prometheus,
        "realize_files_moved_total{job=\"nightly\", instance=\"laptop\"}",
        |v| v == 2.0,
    )
    .await;

    for expr in &exprs {
        has_data(&prometheus, expr).await;
    }

    // Prometheus loaded every alert rule and evaluates it without error.
    let rules = eventually("every rule evaluated", || async {
        let (_, body) = http_get(&prometheus, "/api/v1/rules").await?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<serde_json::Value> = json["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules
            .iter()
            .all(|rule| rule["health"] != "unknown")
            .then_some(rules)
    })
    .await;
    assert_eq!(rules.len(), 8);
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // A healthy run fires nothing.
    let firing: Vec<_> = rules
        .iter()
        .filter(|rule| rule["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "{firing:?}");
    daemon.stop().await;
}
