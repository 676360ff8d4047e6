//! `realize`: flags parsed, logging set up, then the library's [`app`] runs it.

use std::process::ExitCode;

use realize_cli::app::{self, EXIT_FAILED};
use realize_cli::flags::{Cli, LogFormat};
use realize_cli::output::Output;
use realize_net::telemetry::{self, Build, Pushgateway, Settings, Telemetry, TelemetryError};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

fn main() -> ExitCode {
    let cli = match app::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let output = app::output(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("realize: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let telemetry = match telemetry(&cli, &output, &runtime) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("realize: error: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    app::execute(cli, output, runtime, telemetry)
}

/// Logs on stderr (through the output, so they do not tear its bars) and,
/// with an OTLP endpoint, spans exported from INFO whatever the log filter says.
fn telemetry(
    cli: &Cli,
    output: &Output,
    runtime: &tokio::runtime::Runtime,
) -> Result<Telemetry, TelemetryError> {
    let level = app::log_level(cli.verbose);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let log_format = match cli.log_format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    let logs = telemetry::log_layer(log_format, output.log_writer(), DefaultFields::new());
    let subscriber = tracing_subscriber::registry().with(logs.with_filter(filter));
    let settings = Settings {
        build: Build {
            binary: "realize",
            version: env!("CARGO_PKG_VERSION"),
        },
        metrics_addr: cli.metrics_addr.clone(),
        pushgateway: cli.metrics_pushgateway.clone().map(|url| Pushgateway {
            url,
            job: cli.metrics_job.clone(),
            instance: cli.metrics_instance.clone(),
        }),
        otlp_endpoint: cli.otlp_endpoint.clone(),
        trace_level: Some(LevelFilter::INFO),
    };
    telemetry::init(settings, subscriber, runtime.handle())
}
