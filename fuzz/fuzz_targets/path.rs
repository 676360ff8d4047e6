//! The path and directory-id validators: whatever they accept can never name
//! anything outside a root, nor a partial file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realize_core::partial_target;
use realize_core::{DirId, RelPath};

fuzz_target!(|input: &str| {
    if let Ok(path) = RelPath::new(input) {
        assert!(!input.is_empty() && !input.starts_with('/') && !input.contains('\0'));
        for component in path.components() {
            assert!(!matches!(component, "" | "." | ".."), "{input:?}");
        }
        assert_eq!(path.as_str(), input);
        assert_eq!(partial_target(path.name()), None, "{input:?}");
        assert_eq!(partial_target(&path.partial_name()), Some(path.name()));
    }
    if let Ok(dir) = DirId::new(input) {
        assert!((1..=64).contains(&dir.as_str().len()));
        // SPEC §2 allows "." and ".." as ids: they are only ever looked up in the
        // config, never joined to a path.
        assert!(
            dir.as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
    }
});
