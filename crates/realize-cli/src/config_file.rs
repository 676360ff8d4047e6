//! The client config: where it is, what it says, and `remote add`'s edit of it.
//!
//! ```toml
//! privkey = "laptop.key"
//! [remotes.server]
//! address = "server.example:9771"
//! public_key_file = "server.pub.pem"   # or public_key = """-----BEGIN PUBLIC KEY-----..."""
//! ```
//!
//! Paths in it are relative to the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use realize_net::keys::PublicKey;
use serde::Deserialize;
use toml::Spanned;

use crate::UsageError;

/// The config file's name in its directory.
const FILE_NAME: &str = "config.toml";

/// Where the config is, and whether it was asked for by name (then it must exist
/// for a move to use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub explicit: bool,
}

/// `--config FILE`, else `$REALIZE_CONFIG`, else
/// `$XDG_CONFIG_HOME/realize/config.toml`, else `~/.config/realize/config.toml`.
pub fn locate(flag: Option<&Path>) -> Result<Location, UsageError> {
    let explicit = |path: PathBuf| Location {
        path,
        explicit: true,
    };
    if let Some(path) = flag {
        return Ok(explicit(path.to_owned()));
    }
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var("REALIZE_CONFIG") {
        return Ok(explicit(PathBuf::from(path)));
    }
    let dir = match (var("XDG_CONFIG_HOME"), var("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => Path::new(&home).join(".config"),
        (None, None) => {
            return Err(UsageError(
                "no config location: set HOME, XDG_CONFIG_HOME or REALIZE_CONFIG, or give --config"
                    .into(),
            ));
        }
    };
    Ok(Location {
        path: dir.join("realize").join(FILE_NAME),
        explicit: false,
    })
}

/// A daemon named in `[remotes]`.
#[derive(Debug, Clone)]
pub struct Remote {
    pub address: String,
    pub key: PublicKey,
}

/// What the config says, its paths made absolute.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub privkey: Option<PathBuf>,
    pub remotes: BTreeMap<String, Remote>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    privkey: Option<Spanned<PathBuf>>,
    #[serde(default)]
    remotes: BTreeMap<String, RawRemote>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    address: Spanned<String>,
    public_key_file: Option<Spanned<PathBuf>>,
    public_key: Option<Spanned<String>>,
}

impl ConfigFile {
    /// Reads the config at `location`; a missing file is an empty config unless
    /// it was named. Every error names the file, line and field.
    pub fn load(location: &Location) -> Result<ConfigFile, UsageError> {
        let path = &location.path;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !location.explicit => {
                return Ok(ConfigFile::default());
            }
            Err(e) => {
                return Err(UsageError(format!(
                    "cannot read the config {}: {e}",
                    path.display()
                )));
            }
        };
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<ConfigFile, UsageError> {
        let at = |span: std::ops::Range<usize>, field: &str, why: &dyn std::fmt::Display| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            UsageError(format!("{}:{line}: {field}: {why}", path.display()))
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            match e.span() {
                Some(span) => at(span, "invalid config", &message),
                None => UsageError(format!("{}: {message}", path.display())),
            }
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut config = ConfigFile {
            privkey: raw.privkey.map(|p| dir.join(p.into_inner())),
            remotes: BTreeMap::new(),
        };
        for (name, remote) in raw.remotes {
            let field = |f: &str| format!("remotes.{name}.{f}");
            check_remote_name(&name).map_err(|why| at(remote.address.span(), "remotes", &why))?;
            crate::check_address(remote.address.get_ref())
                .map_err(|why| at(remote.address.span(), &field("address"), &why))?;
            let key = match (remote.public_key_file, remote.public_key) {
                (Some(file), None) => {
                    let span = file.span();
                    let keys = PublicKey::load_all(&dir.join(file.into_inner()))
                        .map_err(|e| at(span.clone(), &field("public_key_file"), &chain(&e)))?;
                    one_key(keys).map_err(|why| at(span, &field("public_key_file"), &why))?
                }
                (None, Some(pem)) => PublicKey::from_pem(pem.get_ref())
                    .map_err(|e| at(pem.span(), &field("public_key"), &chain(&e)))?,
                _ => {
                    return Err(at(
                        remote.address.span(),
                        &format!("remotes.{name}"),
                        &"give exactly one of public_key_file and public_key",
                    ));
                }
            };
            let address = remote.address.into_inner();
            config.remotes.insert(name, Remote { address, key });
        }
        Ok(config)
    }
}

fn one_key(mut keys: Vec<PublicKey>) -> Result<PublicKey, String> {
    match keys.len() {
        1 => Ok(keys.remove(0)),
        n => Err(format!("expected one public key, found {n}")),
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A remote's name is what comes before `:` in `NAME:DIR`, so it cannot hold
/// `:` or `/` (which would make it a path) and is not empty.
pub fn check_remote_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.is_empty() || !name.chars().all(valid) {
        return Err(format!(
            "{name:?} is not a remote name (letters, digits, '.', '-', '_')"
        ));
    }
    Ok(())
}

/// Reads the config at `path` for editing; a missing file is an empty one.
fn edit(path: &Path) -> anyhow::Result<toml_edit::DocumentMut> {
    use anyhow::Context;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.parse()
        .with_context(|| format!("invalid config {}", path.display()))
}

/// Sets `privkey = "FILE"` in the config at `path` (created if missing) unless
/// it names a key already; true if it was written.
pub fn set_default_privkey(path: &Path, file: &str) -> anyhow::Result<bool> {
    use anyhow::Context;
    let mut doc = edit(path)?;
    if doc.contains_key("privkey") {
        return Ok(false);
    }
    // At the top, before any table, where a bare key belongs.
    doc.insert("privkey", toml_edit::value(file));
    std::fs::write(path, doc.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// Adds `[remotes.NAME]` to the config at `path` (created if missing), keeping
/// what is there, comments included; the key goes inline or into `NAME.pub.pem`
/// beside the config. Refuses to replace a remote.
pub fn add_remote(
    path: &Path,
    name: &str,
    address: &str,
    key: &PublicKey,
    inline: bool,
) -> anyhow::Result<()> {
    use anyhow::{Context, bail};
    let mut doc = edit(path)?;
    let remotes = doc
        .entry("remotes")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            toml_edit::Item::Table(table)
        })
        .as_table_mut()
        .with_context(|| format!("{}: `remotes` is not a table", path.display()))?;
    if remotes.contains_key(name) {
        bail!(
            "{} already has a remote {name}; remove it first to replace it",
            path.display()
        );
    }
    let mut table = toml_edit::Table::new();
    table["address"] = toml_edit::value(address);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if inline {
        // toml_edit writes a string with line breaks as a multi-line string.
        table["public_key"] = toml_edit::value(key.to_pem());
    } else {
        let file = format!("{name}.pub.pem");
        let key_path = dir.join(&file);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&key_path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, key.to_pem().as_bytes()))
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        table["public_key_file"] = toml_edit::value(file);
    }
    remotes.insert(name, toml_edit::Item::Table(table));
    std::fs::write(path, doc.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_line_and_field() {
        let path = Path::new("/cfg/config.toml");
        let bad = [
            ("privkey = 3\n", ":1: invalid config"),
            (
                "\n[remotes.s]\naddress = \"nohost\"\npublic_key = \"x\"\n",
                ":3: remotes.s.address",
            ),
            (
                "[remotes.s]\naddress = \"h:1\"\n\npublic_key = \"x\"\n",
                ":4: remotes.s.public_key: no PUBLIC KEY block",
            ),
            (
                "[remotes.s]\naddress = \"h:1\"\n",
                ":2: remotes.s: give exactly one",
            ),
            (
                "[remotes.s]\naddres = \"h:1\"\n",
                ":2: invalid config: unknown field",
            ),
        ];
        for (text, expected) in bad {
            let error = ConfigFile::parse(path, text).unwrap_err().0;
            assert!(
                error.starts_with("/cfg/config.toml:") && error.contains(expected),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn paths_are_relative_to_the_file_and_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = realize_net::keys::PrivateKey::generate()
            .unwrap()
            .public_key();
        std::fs::write(dir.path().join("s.pub.pem"), key.to_pem()).unwrap();
        let path = dir.path().join("config.toml");
        add_remote(&path, "t", "h:2", &key, true).unwrap();
        let text = format!(
            "# mine\nprivkey = \"me.key\"\n[remotes.s]\naddress = \"h:1\"\npublic_key_file = \"s.pub.pem\"\n{}",
            std::fs::read_to_string(&path).unwrap()
        );
        std::fs::write(&path, &text).unwrap();
        add_remote(&path, "u", "h:3", &key, false).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.starts_with(&text), "{written}");
        let config = ConfigFile::parse(&path, &written).unwrap();
        assert_eq!(config.privkey, Some(dir.path().join("me.key")));
        let addresses: Vec<_> = config
            .remotes
            .values()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(addresses, ["h:1", "h:2", "h:3"]);
        assert!(config.remotes.values().all(|r| r.key == key));
        assert!(add_remote(&path, "s", "h:9", &key, true).is_err());
    }
}
