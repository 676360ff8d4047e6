//! The daemon's config parser: any text is accepted or refused with an error,
//! never a panic, and what it accepts is within the documented limits.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use realize_daemon::config::{Config, MAX_MESSAGE_SIZE, MIN_MESSAGE_SIZE};

fuzz_target!(|text: &str| {
    // A base directory that does not exist: `public_key_file` can read nothing.
    let base = Path::new("/nonexistent/realize-fuzz");
    if let Ok(config) = Config::parse(text, Path::new("fuzz.toml"), base, None) {
        let limits = config.limits;
        assert!(limits.max_connections >= 1 && limits.max_connections_per_peer >= 1);
        assert!(limits.max_calls_per_connection >= 1);
        assert!((MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&limits.max_message_size));
        assert!(!config.peers.is_empty());
        for peer in config.peers.values() {
            for dir in peer.dirs.iter().flatten() {
                assert!(config.dirs.contains_key(dir));
            }
        }
    }
});
