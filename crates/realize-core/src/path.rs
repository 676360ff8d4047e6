//! Directory ids and relative paths, validated before any filesystem call.

use std::fmt;
use std::str::FromStr;

/// A name that a daemon maps to a local root: `[A-Za-z0-9._-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirId(String);

/// Why a directory id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid directory id {id:?}: must be 1 to 64 characters from A-Z a-z 0-9 . _ -")]
pub struct InvalidDirId {
    /// The id as given.
    pub id: String,
}

impl DirId {
    /// Validates `id`: 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub fn new(id: &str) -> Result<Self, InvalidDirId> {
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(DirId(id.to_string()))
        } else {
            Err(InvalidDirId { id: id.to_string() })
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DirId {
    type Err = InvalidDirId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DirId::new(s)
    }
}

impl fmt::Display for DirId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `/`-separated path relative to a directory root, that can never name
/// anything outside it and never names a partial file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

/// Why a relative path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?}: {reason}")]
pub struct InvalidPath {
    /// The path as given.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const PARTIAL_PREFIX: &str = ".";
const PARTIAL_SUFFIX: &str = ".part";

impl RelPath {
    /// Validates `path`: relative, `/`-separated, no empty, `.` or `..` component, no NUL, not the name of a partial file.
    pub fn new(path: &str) -> Result<Self, InvalidPath> {
        let reject = |reason| {
            Err(InvalidPath {
                path: path.to_string(),
                reason,
            })
        };
        if path.is_empty() {
            return reject("empty path");
        }
        if path.contains('\0') {
            return reject("contains NUL");
        }
        if path.starts_with('/') {
            return reject("absolute path");
        }
        for component in path.split('/') {
            match component {
                "" => return reject("empty component"),
                "." | ".." => return reject("'.' or '..' component"),
                _ => {}
            }
        }
        if let Some(name) = path.rsplit('/').next()
            && partial_target(name).is_some()
        {
            return reject("name reserved for partial files (.NAME.part)");
        }
        Ok(RelPath(path.to_string()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Path components, from the root down.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The file name of the partial form: `.NAME.part`.
    pub fn partial_name(&self) -> String {
        format!("{PARTIAL_PREFIX}{}{PARTIAL_SUFFIX}", self.name())
    }

    /// The partial form of this path, in the same directory: `a/.b.part`.
    pub fn partial_path(&self) -> RelPath {
        let parent = self
            .0
            .rsplit_once('/')
            .map(|(parent, _)| RelPath(parent.to_string()));
        RelPath::join_unchecked(parent.as_ref(), &self.partial_name())
    }

    /// `self` below `parent`; `self` itself without one.
    pub fn under(&self, parent: Option<&RelPath>) -> RelPath {
        match parent {
            Some(parent) => RelPath(format!("{}/{}", parent.0, self.0)),
            None => self.clone(),
        }
    }

    /// The rest of `self` below `parent` (`self` itself without one), or
    /// `None` if `self` is not below it.
    pub fn below(&self, parent: Option<&RelPath>) -> Option<RelPath> {
        let Some(parent) = parent else {
            return Some(self.clone());
        };
        self.0
            .strip_prefix(&parent.0)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| RelPath(rest.to_string()))
    }

    /// `self` joined with a child component that the caller read from disk.
    pub(crate) fn join_unchecked(parent: Option<&RelPath>, name: &str) -> RelPath {
        match parent {
            Some(p) => RelPath(format!("{}/{name}", p.0)),
            None => RelPath(name.to_string()),
        }
    }
}

/// If `name` is the partial form `.X.part`, returns `X`.
pub fn partial_target(name: &str) -> Option<&str> {
    let target = name
        .strip_prefix(PARTIAL_PREFIX)?
        .strip_suffix(PARTIAL_SUFFIX)?;
    (!target.is_empty()).then_some(target)
}

impl FromStr for RelPath {
    type Err = InvalidPath;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RelPath::new(s)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expected: Result<(), &str>) {
        let got = RelPath::new(path).map(|_| ()).map_err(|e| e.reason);
        assert_eq!(got, expected, "{path:?}");
    }

    #[test]
    fn paths_under_and_below_a_parent() {
        let p = |s: &str| RelPath::new(s).unwrap();
        assert_eq!(p("b/c").under(Some(&p("a"))), p("a/b/c"));
        assert_eq!(p("b").under(None), p("b"));
        assert_eq!(p("a/b/c").below(Some(&p("a"))), Some(p("b/c")));
        assert_eq!(p("a/b").below(None), Some(p("a/b")));
        // A sibling that starts with the same letters is not below it.
        assert_eq!(p("ab/c").below(Some(&p("a"))), None);
        assert_eq!(p("a").below(Some(&p("a"))), None);
    }

    #[test]
    fn relative_paths() {
        check("a", Ok(()));
        check("a/b/c.txt", Ok(()));
        check(".hidden", Ok(()));
        check("a/..b", Ok(()));
        check("a/.part", Ok(()));
        check("", Err("empty path"));
        check("/etc/passwd", Err("absolute path"));
        check("../x", Err("'.' or '..' component"));
        check("a/../../x", Err("'.' or '..' component"));
        check("a/./b", Err("'.' or '..' component"));
        check("a//b", Err("empty component"));
        check("a/", Err("empty component"));
        check("a\0b", Err("contains NUL"));
        check(
            "a/.b.part",
            Err("name reserved for partial files (.NAME.part)"),
        );
    }

    #[test]
    fn partial_paths() {
        assert_eq!(
            RelPath::new("b").unwrap().partial_path().as_str(),
            ".b.part"
        );
        assert_eq!(
            RelPath::new("a/c/b").unwrap().partial_path().as_str(),
            "a/c/.b.part"
        );
    }

    #[test]
    fn partial_names() {
        let p = RelPath::new("a/b/name.txt").unwrap();
        assert_eq!(p.partial_name(), ".name.txt.part");
        assert_eq!(partial_target(".name.txt.part"), Some("name.txt"));
        assert_eq!(partial_target(".part"), None);
        assert_eq!(partial_target("name.part"), None);
    }

    #[test]
    fn dir_ids() {
        assert!(DirId::new("photos-2024_v1.0").is_ok());
        assert!(DirId::new("").is_err());
        assert!(DirId::new("a/b").is_err());
        assert!(DirId::new(&"x".repeat(65)).is_err());
        assert!(DirId::new(&"x".repeat(64)).is_ok());
    }
}
