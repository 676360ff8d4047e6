//! `realize`: flags, output and exit codes; the work is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser, Subcommand};
use realize_cli::output::{Format, Output};
use realize_cli::stopping::{Reason, StopReason, watch_deadline, watch_signals};
use realize_cli::{BandwidthLimits, Config, CutoffMode, Ending, Endpoint, UsageError};
use realize_core::DirId;
use realize_core::Stop;
use realize_net::telemetry::{self, Build, Pushgateway, Settings};
use realize_net::throttle::parse_rate;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Exit codes of SPEC §5.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
/// A daemon could not be reached, or was lost and the retries ran out.
const EXIT_UNREACHABLE: u8 = 10;
/// Stopped before the end (--max-duration or SIGUSR1) with files left:
/// running the same command again finishes the move.
const EXIT_STOPPED: u8 = 11;

/// Moved, but the metrics push failed.
const EXIT_METRICS_PUSH: u8 = 12;

/// How long after --max-duration a call to a daemon times out.
const RPC_DEADLINE_GRACE: Duration = Duration::from_secs(1);
/// How long exiting waits for tasks still running.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(500);

/// Moves files between realize daemons and local directories, verifying
/// every file by SHA-256 before deleting its source.
#[derive(Parser, Debug)]
#[command(
    name = "realize",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    group(ArgGroup::new("src").required(true).args(["src_path", "src_addr"])),
    group(ArgGroup::new("dst").required(true).args(["dst_path", "dst_addr"])),
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Directory ids to move: exactly one when a side is a local path
    /// (default `dir` when both are).
    #[arg(value_name = "DIR_ID")]
    dirs: Vec<DirId>,
    /// Source: a local directory, served in-process.
    #[arg(long, value_name = "PATH")]
    src_path: Option<PathBuf>,
    /// Source: a daemon at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    src_addr: Option<String>,
    /// Destination: a local directory, served in-process.
    #[arg(long, value_name = "PATH")]
    dst_path: Option<PathBuf>,
    /// Destination: a daemon at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    dst_addr: Option<String>,
    /// Our ed25519 private key (PEM); needed if a side is a daemon.
    #[arg(long, value_name = "FILE")]
    privkey: Option<PathBuf>,
    /// PEM file of the public keys of the daemons we trust.
    #[arg(long, value_name = "FILE")]
    peers: Option<PathBuf>,
    /// Limit on what this command sends and what daemons send to it, in
    /// bytes/s: 1M = 10^6, 1MiB = 2^20, 512k, 1500 (also limits a local copy).
    #[arg(long, value_name = "RATE", value_parser = parse_rate, conflicts_with_all = ["throttle_up", "throttle_down"])]
    throttle: Option<u64>,
    /// Limit on what this command sends, in bytes/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    throttle_up: Option<u64>,
    /// Limit on what daemons send to this command, in bytes/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    throttle_down: Option<u64>,
    /// Stop after this long (wall clock), e.g. 30s, 5m, 2h: what is in
    /// flight stops as --cutoff-mode says and the run exits with 11.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_duration: Option<Duration>,
    /// At --max-duration: `hard` interrupts files in flight, `soft` lets
    /// them finish, `cautious` also starts no file that cannot finish in time.
    #[arg(long, value_enum, default_value_t = Cutoff::Hard)]
    cutoff_mode: Cutoff,
    /// Tries after the first when the connection to a daemon is lost (each
    /// waits longer, up to a minute; --max-duration ends them too).
    #[arg(long, value_name = "N", default_value_t = 10)]
    retries: u32,
    /// Give up on a daemon never reached after trying this long, e.g. 30s,
    /// 2m (exit 10).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    connect_timeout: Duration,
    /// A data stream from a daemon that brings no byte for this long fails
    /// like a cut connection, and is retried, e.g. 30s, 5m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2m")]
    stall_timeout: Duration,
    /// Files in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    parallel: usize,
    /// Print only errors and the summary.
    #[arg(short, long)]
    quiet: bool,
    /// `text` for people (bars on a terminal), `json` for scripts (one
    /// object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics while the move runs.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Push the final metrics to this Prometheus Pushgateway (http://HOST:PORT).
    #[arg(long, value_name = "URL")]
    metrics_pushgateway: Option<String>,
    /// The `job` label of pushed metrics.
    #[arg(long, value_name = "NAME", default_value = "realize")]
    metrics_job: String,
    /// The `instance` label of pushed metrics (default: this host's name).
    #[arg(long, value_name = "NAME")]
    metrics_instance: Option<String>,
    /// Export traces and metrics to this OpenTelemetry collector (OTLP over
    /// gRPC, e.g. http://localhost:4317); the daemons' spans join the same trace.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Log format on stderr: `text` for people, `json` (one object per line) for machines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log detail on stderr: -v info, -vv debug (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Cutoff {
    Hard,
    Soft,
    Cautious,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an ed25519 key pair: PREFIX.key, PREFIX.pub.pem and PREFIX.crt.
    #[command(group(ArgGroup::new("what").required(true).args(["out", "show_fingerprint"])))]
    Keygen {
        /// Write PREFIX.key (mode 0600), PREFIX.pub.pem and PREFIX.crt;
        /// refuses to overwrite an existing file.
        #[arg(long, value_name = "PREFIX")]
        out: Option<PathBuf>,
        /// Print the fingerprint of the key(s) in FILE (private or public PEM)
        /// instead, to compare by eye with the one a peer or a daemon's log shows.
        #[arg(long, value_name = "FILE")]
        show_fingerprint: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // Every error of the command starts `realize: error:`, so a
            // script's log says which program failed.
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("realize: error: {text}");
            return ExitCode::from(EXIT_USAGE);
        }
        // --help and --version.
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let format = match cli.output {
        OutputFormat::Text => Format::Text,
        OutputFormat::Json => Format::Json,
    };
    let output = Output::new(format, cli.quiet, std::io::stdout().is_terminal());
    // Per-file outcomes are the output's job; the log repeats them from -v on.
    let level = match cli.verbose {
        0 => "warn,realize_core::mover=off",
        1 => "info",
        _ => "debug",
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            return usage_or_failure(EXIT_FAILED, format_args!("cannot start the runtime: {e}"));
        }
    };
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
        metrics_addr: cli.metrics_addr,
        pushgateway: cli.metrics_pushgateway.map(|url| Pushgateway {
            url,
            job: cli.metrics_job,
            instance: cli.metrics_instance,
        }),
        otlp_endpoint: cli.otlp_endpoint,
        // Spans are traced from INFO whatever the log filter says.
        trace_level: Some(LevelFilter::INFO),
    };
    let mut telemetry = match telemetry::init(settings, subscriber, runtime.handle()) {
        Ok(telemetry) => telemetry,
        Err(e) => return usage_or_failure(EXIT_FAILED, format_args!("{e}")),
    };
    if let Some(Command::Keygen {
        out,
        show_fingerprint,
    }) = cli.command
    {
        let result = match (out, show_fingerprint) {
            (_, Some(file)) => realize_cli::fingerprints(&file).map(|fingerprints| {
                for fingerprint in fingerprints {
                    println!("{fingerprint}  {}", file.display());
                }
            }),
            (Some(out), None) => realize_cli::keygen(&out).map(|(files, fingerprint)| {
                for file in files {
                    println!("wrote {}", file.display());
                }
                println!("fingerprint {fingerprint}");
            }),
            // clap's required group makes this unreachable.
            (None, None) => Ok(()),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => usage_or_failure(EXIT_FAILED, format_args!("{e:#}")),
        };
    }
    let endpoint = |path: Option<PathBuf>, addr: Option<String>| match (path, addr) {
        (Some(path), _) => Endpoint::Local(path),
        (None, Some(addr)) => Endpoint::Remote(addr),
        // clap's required groups make this unreachable; say so if it happens.
        (None, None) => Endpoint::Remote(String::new()),
    };
    let config = Config {
        source: endpoint(cli.src_path, cli.src_addr),
        destination: endpoint(cli.dst_path, cli.dst_addr),
        dirs: cli.dirs,
        privkey: cli.privkey,
        peers: cli.peers,
        parallel: cli.parallel,
        limits: BandwidthLimits {
            upload: cli.throttle.or(cli.throttle_up),
            download: cli.throttle.or(cli.throttle_down),
        },
        max_duration: cli.max_duration,
        cutoff: match cli.cutoff_mode {
            Cutoff::Hard => CutoffMode::Hard,
            Cutoff::Soft => CutoffMode::Soft,
            Cutoff::Cautious => CutoffMode::Cautious,
        },
        retries: cli.retries,
        connect_timeout: cli.connect_timeout,
        stall_timeout: cli.stall_timeout,
    };
    let config = match config.validate() {
        Ok(config) => config,
        Err(UsageError(message)) => return usage_or_failure(EXIT_USAGE, format_args!("{message}")),
    };
    let started = Instant::now();
    let deadline = config.max_duration.map(|d| started + d);
    let mut stop = Stop::new();
    if let (Some(deadline), CutoffMode::Cautious) = (deadline, config.cutoff) {
        stop = stop.with_predicted_deadline(deadline);
    }
    let reason = Reason::default();
    let result = runtime.block_on(async {
        watch_signals(stop.clone(), reason.clone())?;
        telemetry.start().await?;
        let mut rpc_deadline = None;
        if let Some(deadline) = deadline {
            watch_deadline(stop.clone(), reason.clone(), deadline, config.cutoff);
            // A little after the stop, so calls are dropped by it rather
            // than failed by their timeout; the timeout is for the daemon.
            if config.cutoff == CutoffMode::Hard {
                rpc_deadline = Some(deadline + RPC_DEADLINE_GRACE);
            }
        }
        let run = realize_cli::run_move(&config, &output, &stop, rpc_deadline).await;
        let pushed = telemetry.finish().await;
        run.map(|run| (run, pushed))
    });
    // Unfinished after an error: flushed now, while the runtime still runs.
    drop(telemetry);
    // Whatever is still running (a blocking read, a listing) must not hold
    // the exit back.
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    let reason = reason.get();
    match result {
        Ok((run, pushed)) => {
            output.summary(&run, started.elapsed());
            let code = match (reason.and_then(StopReason::signal_exit_code), &run.ending) {
                (Some(code), _) => code,
                (None, Ending::GaveUp(_)) => EXIT_UNREACHABLE,
                (None, _) if !run.summary.failures.is_empty() => EXIT_FAILED,
                (None, Ending::CutShort) => EXIT_STOPPED,
                (None, _) if run.summary.files_interrupted > 0 => EXIT_STOPPED,
                (None, _) => 0,
            };
            if let Err(e) = pushed {
                output.fatal(&anyhow::Error::new(e));
                if code == 0 {
                    return ExitCode::from(EXIT_METRICS_PUSH);
                }
            }
            ExitCode::from(code)
        }
        Err(e) => {
            output.fatal(&e);
            ExitCode::from(
                reason
                    .and_then(StopReason::signal_exit_code)
                    .unwrap_or(EXIT_FAILED),
            )
        }
    }
}

/// Errors before any move starts: printed plainly, whatever the output format.
fn usage_or_failure(code: u8, message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("realize: error: {message}");
    ExitCode::from(code)
}
