//! The positional sides of `realize SRC DST`: a local path, `REMOTE:DIR[/SUB]`
//! or `realize://HOST[:PORT]/DIR[/SUB]`.

use std::path::PathBuf;

use realize_core::{DirId, RelPath};

use crate::UsageError;

/// The port of `realize://HOST/DIR` when none is given (the daemon's default).
pub const DEFAULT_PORT: u16 = 9771;
const SCHEME: &str = "realize://";

/// One side as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideArg {
    Local(PathBuf),
    /// `REMOTE:DIR[/SUB]`, REMOTE a name from the config's `[remotes]`.
    Named {
        remote: String,
        at: DirPath,
    },
    /// `realize://HOST[:PORT]/DIR[/SUB]`.
    Url {
        address: String,
        at: DirPath,
    },
}

/// A directory id and the sub-path under it (`None` for the whole directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPath {
    pub dir: DirId,
    pub sub: Option<RelPath>,
}

impl SideArg {
    pub fn parse(arg: &str) -> Result<SideArg, UsageError> {
        let invalid = |why: String| UsageError(format!("invalid side {arg:?}: {why}"));
        if let Some(rest) = arg.strip_prefix(SCHEME) {
            let (host, path) = rest
                .split_once('/')
                .ok_or_else(|| invalid(format!("expected {SCHEME}HOST[:PORT]/DIR")))?;
            let address = if has_port(host) {
                host.to_string()
            } else {
                format!("{host}:{DEFAULT_PORT}")
            };
            crate::check_address(&address).map_err(invalid)?;
            let at = DirPath::parse(path).map_err(invalid)?;
            return Ok(SideArg::Url { address, at });
        }
        // `NAME:...` with no `/` before the colon; `./a:b` and `/x:y` are paths.
        match arg.split_once(':') {
            Some((name, path)) if !name.is_empty() && !name.contains('/') => {
                crate::config_file::check_remote_name(name).map_err(invalid)?;
                let at = DirPath::parse(path).map_err(invalid)?;
                Ok(SideArg::Named {
                    remote: name.to_string(),
                    at,
                })
            }
            _ if arg.is_empty() => Err(invalid("empty".into())),
            _ => Ok(SideArg::Local(PathBuf::from(arg))),
        }
    }
}

/// Whether `HOST[:PORT]` has the port (an IPv6 host is in brackets).
fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        Some((before, _)) => !before.starts_with('[') || before.ends_with(']'),
        None => false,
    }
}

impl DirPath {
    fn parse(path: &str) -> Result<DirPath, String> {
        let path = path.trim_end_matches('/');
        let (dir, sub) = match path.split_once('/') {
            Some((dir, sub)) => (dir, Some(sub)),
            None => (path, None),
        };
        if dir.is_empty() {
            return Err("the directory id is missing".into());
        }
        let dir = DirId::new(dir).map_err(|e| e.to_string())?;
        let sub = sub
            .map(|sub| RelPath::new(sub).map_err(|e| e.to_string()))
            .transpose()?;
        Ok(DirPath { dir, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(dir: &str, sub: Option<&str>) -> DirPath {
        DirPath {
            dir: DirId::new(dir).unwrap(),
            sub: sub.map(|s| RelPath::new(s).unwrap()),
        }
    }

    #[test]
    fn sides() {
        let local = |p: &str| SideArg::Local(PathBuf::from(p));
        let named = |r: &str, a| SideArg::Named {
            remote: r.into(),
            at: a,
        };
        let url = |addr: &str, a| SideArg::Url {
            address: addr.into(),
            at: a,
        };
        for (arg, expected) in [
            ("photos", local("photos")),
            ("./a:b", local("./a:b")),
            ("/abs/x:y", local("/abs/x:y")),
            ("server:photos", named("server", at("photos", None))),
            ("server:photos/", named("server", at("photos", None))),
            (
                "server:photos/2024/may",
                named("server", at("photos", Some("2024/may"))),
            ),
            ("realize://h/d", url("h:9771", at("d", None))),
            ("realize://h:1/d/s", url("h:1", at("d", Some("s")))),
            ("realize://[::1]/d", url("[::1]:9771", at("d", None))),
            ("realize://[::1]:5/d", url("[::1]:5", at("d", None))),
        ] {
            assert_eq!(SideArg::parse(arg).unwrap(), expected, "{arg}");
        }
        for (arg, why) in [
            ("server:", "directory id is missing"),
            ("server:bad id", "invalid directory id"),
            ("server:d/../x", "invalid path"),
            ("server:d//x", "invalid path"),
            ("realize://h", "expected realize://"),
            ("realize://h:0/d", "not a port"),
            ("realize:///d", "host is missing"),
            ("a b:d", "not a remote name"),
        ] {
            let error = SideArg::parse(arg).unwrap_err().0;
            assert!(error.contains(why), "{arg}: {error}");
        }
    }
}
