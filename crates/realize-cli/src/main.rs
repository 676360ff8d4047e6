//! `realize`: flags, output and exit codes; the work is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{ArgGroup, Parser, Subcommand};
use realize_cli::output::{Format, Output};
use realize_cli::{Config, Endpoint, Limits, UsageError};
use realize_core::DirId;
use realize_net::throttle::parse_rate;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Exit codes of SPEC §5.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

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
    /// Directory ids to move (one, default `dir`, when a side is a local path).
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
    /// Log detail on stderr: -v info, -vv debug (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an ed25519 key pair: PREFIX.key, PREFIX.pub.pem and PREFIX.crt.
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(output.log_writer())
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(Command::Keygen { out }) = cli.command {
        return match realize_cli::keygen(&out) {
            Ok(files) => {
                for file in files {
                    println!("wrote {}", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => usage_or_failure(EXIT_FAILED, format_args!("{e:#}")),
        };
    }
    let endpoint = |path: Option<PathBuf>, addr: Option<String>| match (path, addr) {
        (Some(path), _) => Endpoint::Local(path),
        (None, Some(addr)) => Endpoint::Remote(addr),
        // clap's required groups make this unreachable; say so if it happens.
        (None, None) => Endpoint::Remote(String::new()),
    };
    let config = match Config::from_args(
        endpoint(cli.src_path, cli.src_addr),
        endpoint(cli.dst_path, cli.dst_addr),
        cli.dirs,
        cli.privkey,
        cli.peers,
        cli.parallel,
        Limits {
            upload: cli.throttle.or(cli.throttle_up),
            download: cli.throttle.or(cli.throttle_down),
        },
    ) {
        Ok(config) => config,
        Err(UsageError(message)) => return usage_or_failure(EXIT_USAGE, format_args!("{message}")),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            return usage_or_failure(EXIT_FAILED, format_args!("cannot start the runtime: {e}"));
        }
    };
    let started = Instant::now();
    let cancel = CancellationToken::new();
    match runtime.block_on(realize_cli::run_move(&config, &output, &cancel)) {
        Ok(summary) => {
            output.summary(&summary, started.elapsed());
            if summary.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            output.fatal(&e);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Errors before any move starts: printed plainly, whatever the output format.
fn usage_or_failure(code: u8, message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("realize: error: {message}");
    ExitCode::from(code)
}
