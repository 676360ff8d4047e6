//! Include and exclude rules: which listed files a move takes, as rclone's
//! `--include`/`--exclude` decide it.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::path::RelPath;

/// One rule, its glob as the operator wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Move the files the glob matches.
    Include(String),
    /// Leave the files the glob matches at the source.
    Exclude(String),
}

/// A glob that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid pattern {pattern:?}")]
pub struct InvalidRule {
    /// The glob as given.
    pub pattern: String,
    #[source]
    /// Why globset refused it.
    pub source: globset::Error,
}

/// Rules in order; the first whose glob matches a file's path (relative to
/// the moved root) decides. A file no rule matches is moved, unless there
/// is an include rule: then it is excluded, as rclone does (`--include`
/// means "only these").
///
/// Globs are rclone's: `*` and `?` stay within one path component, `**`
/// crosses them, `{a,b}` and `[a-z]` as usual. A glob starting with `/`
/// matches from the moved root; any other matches the end of the path
/// (`*.tmp` matches `a.tmp` and `x/y/a.tmp`). A glob ending with `/`
/// matches everything under such a directory (`cache/` is `cache/**`).
#[derive(Clone, Debug, Default)]
pub struct FilterRules {
    rules: Vec<Rule>,
    set: GlobSet,
    /// The rule each glob of `set` comes from.
    rule_of: Vec<usize>,
}

impl FilterRules {
    /// The rules, in the order they are tried; a glob that does not parse is refused.
    pub fn new(rules: Vec<Rule>) -> Result<FilterRules, InvalidRule> {
        let mut set = GlobSetBuilder::new();
        let mut rule_of = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let (Rule::Include(pattern) | Rule::Exclude(pattern)) = rule;
            for glob in globs(pattern) {
                let glob = GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|source| InvalidRule {
                        pattern: pattern.clone(),
                        source,
                    })?;
                set.add(glob);
                rule_of.push(index);
            }
        }
        let set = set.build().map_err(|source| InvalidRule {
            pattern: String::new(),
            source,
        })?;
        Ok(FilterRules {
            rules,
            set,
            rule_of,
        })
    }

    /// Whether the file at `relative` (to the moved root) is moved.
    pub fn includes(&self, relative: &RelPath) -> bool {
        // Glob indices come in ascending order, and a rule's globs are
        // added together: the first match is the first rule that matches.
        match self.set.matches(relative.as_str()).first() {
            Some(&glob) => matches!(self.rules[self.rule_of[glob]], Rule::Include(_)),
            None => !self.rules.iter().any(|r| matches!(r, Rule::Include(_))),
        }
    }
}

/// The globs that implement one of rclone's patterns.
fn globs(pattern: &str) -> Vec<String> {
    let pattern = match pattern.strip_suffix('/') {
        Some(dir) => format!("{dir}/**"),
        None => pattern.to_string(),
    };
    match pattern.strip_prefix('/') {
        Some(anchored) => vec![anchored.to_string()],
        None => vec![pattern.clone(), format!("**/{pattern}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rules: &[Rule], moved: &[&str], kept: &[&str]) {
        let filter = FilterRules::new(rules.to_vec()).unwrap();
        for path in moved {
            assert!(filter.includes(&RelPath::new(path).unwrap()), "{path}");
        }
        for path in kept {
            assert!(!filter.includes(&RelPath::new(path).unwrap()), "{path}");
        }
    }

    fn include(p: &str) -> Rule {
        Rule::Include(p.into())
    }

    fn exclude(p: &str) -> Rule {
        Rule::Exclude(p.into())
    }

    #[test]
    fn no_rule_moves_everything() {
        check(&[], &["a", "x/y/z.tmp"], &[]);
    }

    #[test]
    fn an_unanchored_glob_matches_at_any_depth_and_star_stays_in_a_component() {
        check(
            &[exclude("*.tmp")],
            &["a.txt", "tmp", "a.tmp/x"],
            &["a.tmp", "x/y/a.tmp"],
        );
        check(&[exclude("b/*.c")], &["b/x/y.c"], &["b/y.c", "a/b/y.c"]);
        check(&[exclude("/top.txt")], &["a/top.txt"], &["top.txt"]);
        check(
            &[exclude("cache/")],
            &["cache", "cachex/a"],
            &["cache/a", "x/cache/a/b"],
        );
        check(&[exclude("/a/**")], &["b/a/c"], &["a/b", "a/b/c"]);
    }

    #[test]
    fn the_first_matching_rule_decides() {
        // Include then exclude: keep.tmp is moved, the other .tmp files stay.
        let rules = [include("keep.tmp"), exclude("*.tmp")];
        check(&rules, &["keep.tmp", "d/keep.tmp"], &["other.tmp"]);
        // The other order: the exclude matches first.
        let rules = [exclude("*.tmp"), include("keep.tmp")];
        check(&rules, &[], &["keep.tmp", "other.tmp"]);
    }

    #[test]
    fn with_an_include_rule_what_nothing_matches_stays() {
        check(
            &[include("*.jpg")],
            &["a.jpg", "x/b.jpg"],
            &["a.png", "x/y"],
        );
        check(
            &[exclude("*.tmp"), include("/2024/**")],
            &["2024/a", "2024/x/b"],
            &["2023/a", "2024/a.tmp"],
        );
    }

    #[test]
    fn a_bad_glob_is_refused_with_its_pattern() {
        let error = FilterRules::new(vec![include("a[")]).unwrap_err();
        assert_eq!(error.pattern, "a[");
    }
}
