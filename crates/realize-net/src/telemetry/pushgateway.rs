//! The push of the metrics to a Prometheus Pushgateway, for a run too short to
//! be scraped.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};

use super::TelemetryError;
use super::exporter::{Exporter, TEXT_FORMAT};

/// How long the Pushgateway has to take the metrics.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A Pushgateway and the group the metrics replace there.
#[derive(Clone, Debug)]
pub struct Pushgateway {
    /// `http://HOST:PORT` (http only).
    pub url: String,
    /// The `job` label.
    pub job: String,
    /// The `instance` label; `None`: this host's name.
    pub instance: Option<String>,
}

impl Pushgateway {
    /// Pushes every metric once, grouped under `job` and `instance`;
    /// replaces what that group held.
    pub(super) async fn push(&self, exporter: &Exporter) -> Result<(), TelemetryError> {
        let url = &self.url;
        let instance = self.instance.clone().unwrap_or_else(hostname);
        let target = push_url(url, &self.job, &instance)?;
        let body = exporter.render()?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        let request = Request::builder()
            .method(Method::PUT)
            .uri(&target)
            .header(http::header::CONTENT_TYPE, TEXT_FORMAT)
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| TelemetryError::PushUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| TelemetryError::Push {
            url: url.to_string(),
            source,
        };
        let response = tokio::time::timeout(PUSH_TIMEOUT, client.request(request))
            .await
            .map_err(|e| failed(Box::new(e)))?
            .map_err(|e| failed(Box::new(e)))?;
        if !response.status().is_success() {
            return Err(TelemetryError::PushStatus {
                url: url.to_string(),
                status: response.status(),
            });
        }
        Ok(())
    }
}

/// This machine's name, the default `instance` label.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `URL/metrics/job/JOB/instance/INSTANCE`, with the labels percent-encoded.
fn push_url(url: &str, job: &str, instance: &str) -> Result<http::Uri, TelemetryError> {
    let invalid = |reason: &str| TelemetryError::PushUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if !url.starts_with("http://") {
        return Err(invalid("only http:// is supported"));
    }
    if job.is_empty() || instance.is_empty() {
        return Err(invalid("the job and instance labels must not be empty"));
    }
    format!(
        "{}/metrics/job/{}/instance/{}",
        url.trim_end_matches('/'),
        encode_label(job),
        encode_label(instance)
    )
    .parse()
    .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode_label(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushgateway_urls() {
        assert_eq!(
            push_url("http://127.0.0.1:9091/", "realize", "laptop 1")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9091/metrics/job/realize/instance/laptop%201"
        );
        assert!(push_url("https://gw:9091", "j", "i").is_err());
        assert!(push_url("http://gw:9091", "", "i").is_err());
    }
}
