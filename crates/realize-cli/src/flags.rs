//! `realize`'s command line, as clap parses it; [`crate::resolve`] turns it,
//! with the client config, into what a run does.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use realize_net::throttle::parse_rate;

/// Moves files between realize daemons and local directories, verifying
/// every file by SHA-256 before deleting its source.
///
/// `realize SRC DST` moves the contents of SRC into DST. Each side is a local
/// path, `REMOTE:DIR` (REMOTE named in the config's `[remotes]`) or
/// `realize://HOST[:PORT]/DIR`; write a local path containing `:` as `./a:b`.
#[derive(Parser, Debug)]
#[command(
    name = "realize",
    version,
    args_conflicts_with_subcommands = true,
    group(ArgGroup::new("src").args(["src_path", "src_addr"])),
    group(ArgGroup::new("dst").args(["dst_path", "dst_addr"])),
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `SRC DST`; with --src-*/--dst-* flags instead, the directory ids to
    /// move: exactly one when a side is a local path (default `dir` when both are).
    #[arg(value_name = "SRC DST | DIR_ID")]
    pub args: Vec<String>,
    /// Client config file [default: $REALIZE_CONFIG, else
    /// $XDG_CONFIG_HOME/realize/config.toml, else ~/.config/realize/config.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Source: a local directory, served in-process.
    #[arg(long, value_name = "PATH")]
    pub src_path: Option<PathBuf>,
    /// Source: a daemon at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub src_addr: Option<String>,
    /// Destination: a local directory, served in-process.
    #[arg(long, value_name = "PATH")]
    pub dst_path: Option<PathBuf>,
    /// Destination: a daemon at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub dst_addr: Option<String>,
    /// Our ed25519 private key (PEM), instead of the config's `privkey`.
    #[arg(long, value_name = "FILE")]
    pub privkey: Option<PathBuf>,
    /// PEM file of the public keys of the daemons we trust, instead of the
    /// keys of the config's `[remotes]`.
    #[arg(long, value_name = "FILE")]
    pub peers: Option<PathBuf>,
    /// Limit on what this command sends and what daemons send to it, in
    /// bytes/s: 1M = 10^6, 1MiB = 2^20, 512k, 1500 (also limits a local copy).
    #[arg(long, value_name = "RATE", value_parser = parse_rate, conflicts_with_all = ["throttle_up", "throttle_down"])]
    pub throttle: Option<u64>,
    /// Limit on what this command sends, in bytes/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub throttle_up: Option<u64>,
    /// Limit on what daemons send to this command, in bytes/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub throttle_down: Option<u64>,
    /// Stop after this long (wall clock), e.g. 30s, 5m, 2h: what is in
    /// flight stops as --cutoff-mode says and the run exits with 11.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_duration: Option<Duration>,
    /// At --max-duration: `hard` interrupts files in flight, `soft` lets
    /// them finish, `cautious` also starts no file that cannot finish in time.
    #[arg(long, value_enum, default_value_t = Cutoff::Hard)]
    pub cutoff_mode: Cutoff,
    /// Tries after the first when the connection to a daemon is lost (each
    /// waits longer, up to a minute; --max-duration ends them too).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub retries: u32,
    /// Give up on a daemon never reached after trying this long, e.g. 30s,
    /// 2m (exit 10).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    pub connect_timeout: Duration,
    /// A data stream from a daemon that brings no byte for this long fails
    /// like a cut connection, and is retried, e.g. 30s, 5m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2m")]
    pub stall_timeout: Duration,
    /// Files in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// The digest that verifies each file before its source is deleted:
    /// `blake3` or `sha256`. Default: BLAKE3 when both sides support it,
    /// else SHA-256; a side that does not support the one given refuses
    /// the move before anything is copied.
    #[arg(long, value_name = "ALGORITHM")]
    pub digest: Option<realize_core::DigestAlgorithm>,
    /// Move only the files matching GLOB (rclone's globs: `*` within a
    /// component, `**` across; `/GLOB` from the moved root, else at any
    /// depth). Repeatable; with --exclude, the first that matches in
    /// command-line order decides, and what none matches stays.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave the files matching GLOB at the source; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// --exclude each line of FILE (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// List what each file would become (move, overwrite, identical,
    /// excluded) and the total, changing nothing on either side.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// --include, --exclude and --exclude-from in the order given, which
    /// decides which rule applies first; filled by [`Cli::try_parse_ordered`].
    #[arg(skip)]
    pub filters: Vec<FilterFlag>,
    /// Print only errors and the summary.
    #[arg(short, long)]
    pub quiet: bool,
    /// `text` for people (bars on a terminal), `json` for scripts (one
    /// object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics while the move runs.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Push the final metrics to this Prometheus Pushgateway (http://HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub metrics_pushgateway: Option<String>,
    /// The `job` label of pushed metrics.
    #[arg(long, value_name = "NAME", default_value = "realize")]
    pub metrics_job: String,
    /// The `instance` label of pushed metrics (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub metrics_instance: Option<String>,
    /// Export traces and metrics to this OpenTelemetry collector (OTLP over
    /// gRPC, e.g. http://localhost:4317); the daemons' spans join the same trace.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Log format on stderr: `text` for people, `json` (one object per line) for machines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log detail on stderr: -v info, -vv debug (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// A filter flag, in command-line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterFlag {
    Include(String),
    Exclude(String),
    ExcludeFrom(PathBuf),
}

impl Cli {
    /// Parses `args` as [`Parser::try_parse_from`] does, and keeps the
    /// order of the filter flags among themselves, which a derived parser
    /// loses (each flag has its own list).
    pub fn try_parse_ordered<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.filters = filter_flags(&matches);
        Ok(cli)
    }
}

fn filter_flags(matches: &ArgMatches) -> Vec<FilterFlag> {
    fn each<T: Clone + Send + Sync + 'static>(
        matches: &ArgMatches,
        id: &str,
        flag: fn(T) -> FilterFlag,
        into: &mut Vec<(usize, FilterFlag)>,
    ) {
        if let (Some(indices), Some(values)) = (matches.indices_of(id), matches.get_many::<T>(id)) {
            into.extend(indices.zip(values.cloned().map(flag)));
        }
    }
    let mut flags = Vec::new();
    each(matches, "include", FilterFlag::Include, &mut flags);
    each(matches, "exclude", FilterFlag::Exclude, &mut flags);
    each(matches, "exclude_from", FilterFlag::ExcludeFrom, &mut flags);
    flags.sort_by_key(|(index, _)| *index);
    flags.into_iter().map(|(_, flag)| flag).collect()
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Cutoff {
    Hard,
    Soft,
    Cautious,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate an ed25519 key pair: PREFIX.key, PREFIX.pub.pem and PREFIX.crt
    /// (without --out, `key` in the config's directory, which the config's
    /// `privkey` then names).
    Keygen {
        /// Write PREFIX.key (mode 0600), PREFIX.pub.pem and PREFIX.crt;
        /// refuses to overwrite an existing file.
        #[arg(long, value_name = "PREFIX")]
        out: Option<PathBuf>,
        /// Print the fingerprint of the key(s) in FILE (private or public PEM)
        /// instead, to compare by eye with the one a peer or a daemon's log shows.
        #[arg(long, value_name = "FILE", conflicts_with = "out")]
        show_fingerprint: Option<PathBuf>,
    },
    /// Manage the daemons named in the client config.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Print a shell completion script, e.g. `realize completions bash >
    /// /etc/bash_completion.d/realize`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Connect to a daemon, show its key's fingerprint and, once confirmed,
    /// save it in the config as NAME (so `NAME:DIR` names its directories).
    Add {
        /// The name to use in `NAME:DIR`.
        name: String,
        /// The daemon's HOST:PORT.
        address: String,
        /// The fingerprint the daemon's key must have (as `realize keygen
        /// --show-fingerprint` prints it on the daemon's host), instead of
        /// asking on the terminal.
        #[arg(long, value_name = "FP")]
        fingerprint: Option<String>,
        /// Save the key inline in the config instead of in NAME.pub.pem
        /// beside it.
        #[arg(long)]
        inline: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_flags_keep_their_command_line_order() {
        let cli = Cli::try_parse_ordered([
            "realize",
            "--exclude",
            "a",
            "--include=b",
            "src",
            "--exclude-from",
            "list",
            "--exclude",
            "c",
            "dst",
        ])
        .unwrap();
        assert_eq!(
            cli.filters,
            [
                FilterFlag::Exclude("a".into()),
                FilterFlag::Include("b".into()),
                FilterFlag::ExcludeFrom("list".into()),
                FilterFlag::Exclude("c".into()),
            ]
        );
        assert_eq!(cli.args, ["src", "dst"]);
    }
}
