//! Tidy checks in the style of rust-analyzer's: tests that keep
//! ARCHITECTURE.md true as the code moves.
//!
//! - Every source file of each crate and of xtask is named in its section
//!   of the code map (`` `store/read.rs` `` under `` ### `crates/realize-core` ``);
//!   tests (`tests.rs`, `tests/`) apart.
//! - realize-core depends on none of tonic, prost, rustls and hyper (its
//!   invariant: no network, no protobuf).

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The text of the code map's section whose heading names `place`.
    fn section(map: &str, place: &str) -> String {
        let heading = format!("### `{place}`");
        let start = map
            .find(&heading)
            .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {heading}"));
        let rest = &map[start + heading.len()..];
        let end = rest.find("\n### ").unwrap_or(rest.len());
        rest[..end].to_string()
    }

    /// Source files under `src`, as paths relative to it, tests apart.
    fn sources(src: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![src.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    if name != "tests" {
                        dirs.push(path);
                    }
                } else if name.ends_with(".rs") && name != "tests.rs" {
                    let rel = path.strip_prefix(src).unwrap_or(&path);
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn the_code_map_names_every_source_file() {
        let root = root();
        let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap_or_default();
        let mut places: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("crates"))
            .unwrap_or_else(|e| panic!("crates/: {e}"))
            .flatten()
            .map(|crate_dir| {
                let name = crate_dir.file_name().to_string_lossy().into_owned();
                (format!("crates/{name}"), crate_dir.path().join("src"))
            })
            .collect();
        places.push(("xtask".into(), root.join("xtask/src")));
        let mut unnamed = Vec::new();
        for (place, src) in &places {
            let section = section(&map, place);
            for file in sources(src) {
                if !section.contains(&format!("`{file}`")) {
                    unnamed.push(format!("{place}: {file}"));
                }
            }
        }
        assert!(
            unnamed.is_empty(),
            "ARCHITECTURE.md's code map does not name these files (say in one line what each does):\n{}",
            unnamed.join("\n")
        );
    }

    #[test]
    fn realize_core_has_no_network_and_no_protobuf() {
        let manifest = std::fs::read_to_string(root().join("crates/realize-core/Cargo.toml"))
            .unwrap_or_default();
        let manifest: toml::Table = manifest.parse().unwrap_or_else(|e| panic!("{e}"));
        for table in ["dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(table).and_then(toml::Value::as_table) else {
                continue;
            };
            for forbidden in ["tonic", "prost", "rustls", "hyper"] {
                let found: Vec<&String> = deps
                    .keys()
                    .filter(|name| {
                        name.as_str() == forbidden || name.starts_with(&format!("{forbidden}-"))
                    })
                    .collect();
                assert!(
                    found.is_empty(),
                    "realize-core's [{table}] has {found:?}: the core never does network I/O nor sees a protobuf type (ARCHITECTURE.md)"
                );
            }
        }
    }
}
