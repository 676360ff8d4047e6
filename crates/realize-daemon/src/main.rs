//! `realized`: flags, logging, signals and the exit code; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use realize_daemon::config::ConfigSource;
use realize_daemon::logging::{EscapedFields, LogFilter};
use realize_daemon::{Control, Exit};
use realize_net::keys::PrivateKey;
use realize_net::telemetry::{self, Build, Settings, Telemetry};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, reload};

/// Exit code when a second SIGTERM or SIGINT cut the shutdown short (as for
/// a shell's Ctrl-C).
const FORCED_EXIT: i32 = 130;

/// How long exiting may wait for blocking work (a file write under way) once
/// the daemon has shut down.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

/// Serves named directories to realize peers over gRPC on mutual TLS.
#[derive(Parser, Debug)]
#[command(name = "realized", version)]
struct Args {
    /// TOML config file (see docs/operations.md).
    #[arg(long)]
    config: PathBuf,
    /// HOST:PORT to listen on, instead of the config's `address`.
    #[arg(long)]
    address: Option<String>,
    /// ed25519 private key (PEM), instead of the config's `privkey`.
    #[arg(long)]
    privkey: Option<PathBuf>,
    /// Print this daemon's TLS certificate (PEM) and exit, for gRPC clients
    /// in other languages that need it as their trusted root.
    #[arg(long)]
    print_cert: bool,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Export traces and metrics to this OpenTelemetry collector (OTLP over
    /// gRPC, e.g. http://localhost:4317); calls join the trace of the
    /// `realize` run that made them.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Log format on stderr: `text` for people, `json` (one object per line) for machines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log detail: -v debug, -vv trace (RUST_LOG overrides; the config's
    /// log_level overrides both).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let default = std::env::var("RUST_LOG")
        .ok()
        .filter(|filter| EnvFilter::try_new(filter).is_ok())
        .unwrap_or_else(|| level.to_string());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&default));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("realized: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = match args.log_format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(telemetry::log_layer(format, std::io::stderr, EscapedFields));
    let settings = Settings {
        build: Build {
            binary: "realized",
            version: env!("CARGO_PKG_VERSION"),
        },
        metrics_addr: args.metrics_addr.clone(),
        pushgateway: None,
        otlp_endpoint: args.otlp_endpoint.clone(),
        // The log filter, which the config may change, decides for spans too.
        trace_level: None,
    };
    let telemetry = match telemetry::init(settings, subscriber, runtime.handle()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("realized: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log_format = args.log_format;
    match run(args, runtime, LogFilter::new(handle, default), telemetry) {
        Ok(code) => code,
        Err(e) => {
            // The log is stderr: the error is said once, in the log's format.
            match log_format {
                LogFormat::Text => eprintln!("realized: error: {e:#}"),
                LogFormat::Json => tracing::error!("{e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(
    args: Args,
    runtime: tokio::runtime::Runtime,
    log: LogFilter,
    telemetry: Telemetry,
) -> anyhow::Result<ExitCode> {
    // A local, so that an early return flushes it before the runtime, a
    // parameter, is dropped.
    let mut telemetry = telemetry;
    let source = ConfigSource {
        path: args.config,
        address: args.address,
        privkey: args.privkey,
    };
    if args.print_cert {
        let config = source.load()?;
        let key = PrivateKey::load(&config.privkey)?;
        print!("{}", key.certificate_pem()?);
        return Ok(ExitCode::SUCCESS);
    }
    let exit = runtime.block_on(async {
        let controls = signals()?;
        telemetry.start().await?;
        let exit = realize_daemon::run(source, Some(log), controls).await;
        // A forced exit waits for nothing, not even a collector: it leaves
        // with the telemetry unfinished and not dropped.
        if !matches!(exit, Ok(Exit::Forced)) {
            telemetry.finish().await?;
        }
        anyhow::Ok(exit?)
    })?;
    let code = match exit {
        // "At once": not even waiting for blocking work; a write cut here only
        // leaves a shorter partial file, which the next run resumes.
        Exit::Forced => std::process::exit(FORCED_EXIT),
        Exit::Clean => ExitCode::SUCCESS,
        Exit::CleanupFailed => ExitCode::FAILURE,
    };
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    Ok(code)
}

/// SIGTERM and SIGINT ask for a shutdown (a second one forces it), SIGHUP for a
/// reload. The handlers are installed before anything is bound, so a signal
/// never finds the default action (death) while the daemon serves.
fn signals() -> anyhow::Result<ReceiverStream<Control>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                Some(()) = terminate.recv() => Control::Shutdown,
                Some(()) = interrupt.recv() => Control::Shutdown,
                Some(()) = hangup.recv() => Control::Reload,
                else => return,
            };
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
