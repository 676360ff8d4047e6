//! A parsed command line run to its exit code: the subcommands, and a move
//! with its metrics, deadline and signals.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use realize_core::Stop;
use realize_net::telemetry::Telemetry;

use crate::config_file::{self, ConfigFile};
use crate::flags::{Cli, Command, OutputFormat, RemoteCommand};
use crate::output::{Format, Output};
use crate::remote_add::AddRemote;
use crate::stopping::{Reason, StopReason, watch_deadline, watch_signals};
use crate::{CutoffMode, Ending, UsageError};

/// Exit codes of SPEC §5.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
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

/// Parses the command line; usage errors and --help/--version are printed
/// here and become the exit code.
pub fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse_ordered(std::env::args_os()) {
        Ok(cli) => Ok(cli),
        Err(e) if e.use_stderr() => {
            // Every error of the command starts `realize: error:`, so a
            // script's log says which program failed.
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("realize: error: {text}");
            Err(ExitCode::from(EXIT_USAGE))
        }
        // --help and --version.
        Err(e) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
    }
}

/// The output the flags ask for.
pub fn output(cli: &Cli) -> Output {
    let format = match cli.output {
        OutputFormat::Text => Format::Text,
        OutputFormat::Json => Format::Json,
    };
    let terminal = std::io::stdout().is_terminal();
    // A dry run's per-file lines are its output: no bars.
    Output::new(format, cli.quiet, terminal && !cli.dry_run).with_dry_run(cli.dry_run)
}

/// The log filter by -v count; per-file outcomes are the output's job, the
/// log repeats them from -v on.
pub fn log_level(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn,realize_core::mover=off",
        1 => "info",
        _ => "debug",
    }
}

/// Runs the subcommand, or the move.
pub fn execute(
    cli: Cli,
    output: Output,
    runtime: tokio::runtime::Runtime,
    telemetry: Telemetry,
) -> ExitCode {
    let location = match config_file::locate(cli.config.as_deref()) {
        Ok(location) => location,
        Err(UsageError(message)) => return usage_or_failure(EXIT_USAGE, format_args!("{message}")),
    };
    let result = match &cli.command {
        None => return run(cli, location, output, runtime, telemetry),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "realize",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Some(Command::Keygen {
            out,
            show_fingerprint,
        }) => match (out, show_fingerprint) {
            (_, Some(file)) => crate::fingerprints(file).map(|fingerprints| {
                for fingerprint in fingerprints {
                    println!("{fingerprint}  {}", file.display());
                }
            }),
            (out, None) => {
                crate::keygen_into(out.as_deref(), &location.path).map(|(files, fingerprint)| {
                    for file in files {
                        println!("wrote {}", file.display());
                    }
                    println!("fingerprint {fingerprint}");
                })
            }
        },
        Some(Command::Remote(RemoteCommand::Add {
            name,
            address,
            fingerprint,
            inline,
        })) => runtime.block_on(crate::remote_add::add(
            &location,
            &AddRemote {
                name,
                address,
                fingerprint: fingerprint.as_deref(),
                inline: *inline,
            },
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => usage_or_failure(EXIT_FAILED, format_args!("{e:#}")),
    }
}

fn run(
    cli: Cli,
    location: config_file::Location,
    output: Output,
    runtime: tokio::runtime::Runtime,
    mut telemetry: Telemetry,
) -> ExitCode {
    let config = match ConfigFile::load(&location)
        .and_then(|file| crate::resolve::resolve(&cli, &file))
    {
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
        let run = crate::run_move(&config, &output, &stop, rpc_deadline).await;
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
