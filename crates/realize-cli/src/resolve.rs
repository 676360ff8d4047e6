//! The command line and the client config made into one [`Config`]: flags
//! override the file, positional sides name remotes from it.

use realize_core::{DirId, ErrorChain, FilterRules, Rule, Subtree};

use crate::config_file::ConfigFile;
use crate::flags::{Cli, Cutoff, FilterFlag};
use crate::sides::{DirPath, SideArg};
use crate::{BandwidthLimits, Config, CutoffMode, Endpoint, UsageError};

/// Builds the move `cli` asks for, with `file`'s keys and remotes where the
/// flags say nothing, and checks it.
pub fn resolve(cli: &Cli, file: &ConfigFile) -> Result<Config, UsageError> {
    let flags = [&cli.src_path, &cli.dst_path].iter().any(|p| p.is_some())
        || [&cli.src_addr, &cli.dst_addr].iter().any(|a| a.is_some());
    let (source, destination, roots) = if flags {
        from_flags(cli)?
    } else {
        match cli.args.as_slice() {
            [src, dst] => from_sides(file, &SideArg::parse(src)?, &SideArg::parse(dst)?)?,
            [] => {
                return Err(UsageError(
                    "give SRC and DST (or --src-path/--src-addr and --dst-path/--dst-addr); \
                     see realize --help"
                        .into(),
                ));
            }
            args => {
                return Err(UsageError(format!(
                    "expected SRC and DST, got {} arguments",
                    args.len()
                )));
            }
        }
    };
    // Keys from flags first; else the config's key and the keys of its remotes,
    // every one of them trusted for either side.
    let server_keys = match &cli.peers {
        Some(_) => Vec::new(),
        None => file.remotes.values().map(|r| r.key.clone()).collect(),
    };
    Config {
        source,
        destination,
        roots,
        privkey: cli.privkey.clone().or_else(|| file.privkey.clone()),
        peers: cli.peers.clone(),
        server_keys,
        parallel: cli.parallel,
        filter: filter_rules(&cli.filters)?,
        dry_run: cli.dry_run,
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
        digest: cli.digest,
    }
    .validate()
}

type Resolved = (Endpoint, Endpoint, Vec<Subtree>);

/// The filter flags made into rules, in the order given; each line of an
/// --exclude-from file is an --exclude at that place.
fn filter_rules(flags: &[FilterFlag]) -> Result<FilterRules, UsageError> {
    let mut rules = Vec::new();
    for flag in flags {
        match flag {
            FilterFlag::Include(glob) => rules.push(Rule::Include(glob.clone())),
            FilterFlag::Exclude(glob) => rules.push(Rule::Exclude(glob.clone())),
            FilterFlag::ExcludeFrom(file) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    UsageError(format!(
                        "cannot read --exclude-from {}: {e}",
                        file.display()
                    ))
                })?;
                rules.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty() && !line.starts_with('#'))
                        .map(|line| Rule::Exclude(line.to_string())),
                );
            }
        }
    }
    FilterRules::new(rules).map_err(|e| UsageError(ErrorChain(&e).to_string()))
}

/// `--src-*`/`--dst-*` with DIR_ID arguments, as before positional sides.
fn from_flags(cli: &Cli) -> Result<Resolved, UsageError> {
    let endpoint = |path: &Option<_>, addr: &Option<String>, which: &str| match (path, addr) {
        (Some(path), _) => Ok(Endpoint::Local(std::path::PathBuf::clone(path))),
        (None, Some(addr)) => Ok(Endpoint::Remote(addr.clone())),
        (None, None) => Err(UsageError(format!(
            "--{which}-path or --{which}-addr is required with the --src-*/--dst-* flags"
        ))),
    };
    let source = endpoint(&cli.src_path, &cli.src_addr, "src")?;
    let destination = endpoint(&cli.dst_path, &cli.dst_addr, "dst")?;
    let roots = cli
        .args
        .iter()
        .map(|id| {
            DirId::new(id)
                .map(Subtree::from)
                .map_err(|e| UsageError(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok((source, destination, roots))
}

fn from_sides(file: &ConfigFile, src: &SideArg, dst: &SideArg) -> Result<Resolved, UsageError> {
    let (source, src_at) = endpoint(file, src)?;
    let (destination, dst_at) = endpoint(file, dst)?;
    // A local side is a directory served under the daemon side's id, so its
    // path is its root: only a daemon side has a sub-path.
    let root = |dir: &DirId, src: Option<&DirPath>, dst: Option<&DirPath>| Subtree {
        dir: dir.clone(),
        source: src.and_then(|at| at.sub.clone()),
        destination: dst.and_then(|at| at.sub.clone()),
    };
    let roots = match (src_at, dst_at) {
        (None, None) => Vec::new(),
        (Some(at), None) => vec![root(&at.dir, Some(at), None)],
        (None, Some(at)) => vec![root(&at.dir, None, Some(at))],
        (Some(a), Some(b)) => {
            if a.dir != b.dir {
                return Err(UsageError(format!(
                    "both daemons must name the same directory id, not {} and {}",
                    a.dir, b.dir
                )));
            }
            vec![root(&a.dir, Some(a), Some(b))]
        }
    };
    Ok((source, destination, roots))
}

fn endpoint<'a>(
    file: &ConfigFile,
    side: &'a SideArg,
) -> Result<(Endpoint, Option<&'a DirPath>), UsageError> {
    Ok(match side {
        SideArg::Local(path) => (Endpoint::Local(path.clone()), None),
        SideArg::Url { address, at } => (Endpoint::Remote(address.clone()), Some(at)),
        SideArg::Named { remote, at } => {
            let Some(found) = file.remotes.get(remote) else {
                return Err(UsageError(format!(
                    "no remote {remote:?} in the client config (add it with \
                     `realize remote add {remote} HOST:PORT`)"
                )));
            };
            (Endpoint::Remote(found.address.clone()), Some(at))
        }
    })
}
