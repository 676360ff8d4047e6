//! Usage errors, keygen, and the refusal to move a directory onto itself:
//! each changes nothing on disk.

use tempfile::TempDir;

use crate::{realize, stderr};

/// Runs a command line that must be a usage error naming `expected`, and
/// checks that nothing on disk changed.
fn check_usage_error(args: &[&str], expected: &str) {
    let work = TempDir::new().unwrap();
    std::fs::create_dir(work.path().join("src")).unwrap();
    std::fs::write(work.path().join("src/file"), b"data").unwrap();
    let output = realize(args, work.path());
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?}: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(expected),
        "{args:?}: {:?} lacks {expected:?}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(work.path().join("src/file")).unwrap(),
        b"data"
    );
    assert!(
        !work.path().join("dst").exists(),
        "{args:?} created the destination"
    );
}

#[test]
fn usage_errors() {
    check_usage_error(&["--dst-path", "dst"], "--src-path");
    check_usage_error(&["--src-path", "src"], "--dst-path");
    check_usage_error(
        &[
            "--src-path",
            "src",
            "--src-addr",
            "h:1",
            "--dst-path",
            "dst",
        ],
        "cannot be used with",
    );
    check_usage_error(
        &["--src-path", "src", "--dst-path", "dst", "a", "b"],
        "exactly one DIR_ID, got 2",
    );
    check_usage_error(
        &["--src-path", "src", "--dst-addr", "127.0.0.1:1"],
        "exactly one DIR_ID, got 0",
    );
    check_usage_error(
        &["--src-path", "src", "--dst-addr", "127.0.0.1:1", "d"],
        "--privkey is required",
    );
    check_usage_error(
        &["--src-addr", "127.0.0.1:1", "--dst-addr", "127.0.0.1:2"],
        "at least one DIR_ID",
    );
    check_usage_error(
        &["--src-path", "src", "--dst-path", "dst", "bad/id"],
        "invalid directory id",
    );
    check_usage_error(
        &["--src-path", "src", "--dst-path", "dst", "--parallel", "0"],
        "--parallel must be at least 1",
    );
    let local = ["--src-path", "src", "--dst-path", "dst"];
    let throttle_error = |flags: &[&str], expected: &str| {
        let mut args = local.to_vec();
        args.extend(flags);
        check_usage_error(&args, expected);
    };
    throttle_error(
        &["--throttle", "1M", "--throttle-up", "1M"],
        "cannot be used with",
    );
    throttle_error(
        &["--throttle", "1M", "--throttle-down", "1M"],
        "cannot be used with",
    );
    throttle_error(&["--throttle", "0"], "rate must be greater than zero");
    throttle_error(&["--throttle-up", "fast"], "invalid rate \"fast\"");
    throttle_error(&["--throttle-down=-5k"], "invalid rate");
    throttle_error(&["--throttle", "5000T"], "above the maximum");
    throttle_error(&["--max-duration", "30"], "--max-duration");
    throttle_error(&["--max-duration", "soon"], "--max-duration");
    throttle_error(
        &["--max-duration", "0s"],
        "--max-duration must be longer than zero",
    );
    throttle_error(&["--cutoff-mode", "gentle"], "--cutoff-mode");
}

#[test]
fn moving_a_directory_onto_itself_is_refused() {
    let work = TempDir::new().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/file.txt"), b"hello").unwrap();
    std::fs::write(src.join("top"), b"").unwrap();
    let output = realize(&["--src-path", "src", "--dst-path", "src"], work.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("same directory"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(src.join("a/b/file.txt")).unwrap(), b"hello");
}

#[test]
fn keygen_writes_a_private_key_only_we_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let work = TempDir::new().unwrap();
    let output = realize(&["keygen", "--out", "me"], work.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = |name: &str| {
        std::fs::metadata(work.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("me.key"), 0o600);
    let public = std::fs::read_to_string(work.path().join("me.pub.pem")).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    let cert = std::fs::read_to_string(work.path().join("me.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let key_before = std::fs::read(work.path().join("me.key")).unwrap();
    let again = realize(&["keygen", "--out", "me"], work.path());
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(work.path().join("me.key")).unwrap(),
        key_before
    );
}

#[test]
fn keygen_shows_the_same_fingerprint_for_both_halves() {
    use std::os::unix::fs::PermissionsExt;
    let work = TempDir::new().unwrap();
    let output = realize(&["keygen", "--out", "me"], work.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let fingerprint = stdout
        .lines()
        .find_map(|line| line.strip_prefix("fingerprint "))
        .unwrap_or_else(|| panic!("no fingerprint in {stdout:?}"))
        .to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    for file in ["me.key", "me.pub.pem"] {
        let shown = realize(&["keygen", "--show-fingerprint", file], work.path());
        assert!(shown.status.success(), "{}", stderr(&shown));
        assert_eq!(
            String::from_utf8_lossy(&shown.stdout),
            format!("{fingerprint}  {file}\n")
        );
        assert_eq!(stderr(&shown), "", "a 0600 key warns of nothing");
    }
    // A private key others may read still works, with a warning like ssh's.
    std::fs::set_permissions(
        work.path().join("me.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let loose = realize(&["keygen", "--show-fingerprint", "me.key"], work.path());
    assert!(loose.status.success(), "{}", stderr(&loose));
    assert!(
        stderr(&loose).contains("is accessible by others (mode 0644): run chmod 600"),
        "{}",
        stderr(&loose)
    );
    std::fs::write(work.path().join("junk"), "not a key").unwrap();
    let junk = realize(&["keygen", "--show-fingerprint", "junk"], work.path());
    assert_eq!(junk.status.code(), Some(1), "{}", stderr(&junk));
}
