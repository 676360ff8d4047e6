//! `realize`: flags parsed, logging set up, then the library's [`app`] runs it.

use std::io::IsTerminal;
use std::process::ExitCode;

use realize_cli::app::{self, EXIT_FAILED};
use realize_cli::flags::LogFormat;
use realize_cli::output::Output;
use realize_net::traces::TraceExport;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    let level = app::log_level(cli.verbose);
    let traces = match telemetry(
        &output,
        level,
        cli.log_format,
        cli.otlp_endpoint.as_deref(),
        &runtime,
    ) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("realize: error: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    app::execute(cli, output, runtime, traces)
}

/// Logs on stderr (through the output, so they do not tear its bars) and,
/// with an OTLP endpoint, spans exported from INFO whatever the log filter says.
fn telemetry(
    output: &Output,
    level: &str,
    log_format: LogFormat,
    otlp_endpoint: Option<&str>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<TraceExport>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let logs = tracing_subscriber::fmt::layer().with_writer(output.log_writer());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match log_format {
        LogFormat::Text => Box::new(
            logs.with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter),
        ),
        LogFormat::Json => Box::new(logs.json().with_filter(filter)),
    };
    let subscriber = tracing_subscriber::registry().with(logs);
    match otlp_endpoint {
        Some(endpoint) => {
            let _runtime = runtime.enter();
            let (layer, export) = TraceExport::otlp(endpoint, "realize")?;
            subscriber.with(layer.with_filter(LevelFilter::INFO)).init();
            Ok(Some(export))
        }
        None => {
            subscriber.init();
            Ok(None)
        }
    }
}
