//! `realized`: flags, logging, and the exit code; the work is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use realize_daemon::config::Config;
use realize_net::keys::PrivateKey;
use tracing_subscriber::EnvFilter;

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
    /// More log detail: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("realized: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config, args.privkey)?;
    if let Some(address) = args.address {
        config.address = address;
    }
    if args.print_cert {
        let key = PrivateKey::load(&config.privkey)?;
        print!("{}", key.certificate_pem()?);
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(realize_daemon::run(config, std::future::pending()))?;
    Ok(())
}
