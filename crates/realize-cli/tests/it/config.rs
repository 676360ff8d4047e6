//! The client config (found by --config, $REALIZE_CONFIG, $XDG_CONFIG_HOME or
//! HOME, overridden by flags, its errors located), `SRC DST` sides, keygen's
//! default key, completions and the man page.

use std::path::Path;

use tempfile::TempDir;

use crate::{realize, realize_with, stderr, stdout, write_file};

/// A config naming `key.key` (written by keygen) and a remote `s` at a port
/// where nothing listens, in `dir`.
fn config_in(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let keygen = realize(
        &["keygen", "--out", &dir.join("key").to_string_lossy()],
        dir,
    );
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    std::fs::write(
        dir.join("config.toml"),
        "privkey = \"key.key\"\n[remotes.s]\naddress = \"127.0.0.1:1\"\npublic_key_file = \"key.pub.pem\"\n",
    )
    .unwrap();
}

/// Moves `src` to `s:d`: a config that was found makes it try the remote
/// (and give up on it, exit 10); one that was not is a usage error.
fn push(work: &Path, extra: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut args = vec!["src", "s:d", "--connect-timeout", "200ms"];
    args.extend(extra);
    realize_with(&args, work, env)
}

#[test]
fn the_config_is_found_each_way() {
    let work = TempDir::new().unwrap();
    write_file(work.path(), "src/f", b"data");
    let not_found = push(work.path(), &[], &[]);
    assert_eq!(not_found.status.code(), Some(2), "{}", stderr(&not_found));
    assert!(
        stderr(&not_found).contains("no remote \"s\""),
        "{}",
        stderr(&not_found)
    );

    let home = work.path().join(".config/realize");
    let xdg = work.path().join("xdg");
    let named = work.path().join("named");
    for dir in [&home, &xdg.join("realize"), &named] {
        config_in(dir);
    }
    let file = named.join("config.toml");
    for (how, extra, env) in [
        ("HOME", vec![], vec![]),
        (
            "XDG_CONFIG_HOME",
            vec![],
            vec![("XDG_CONFIG_HOME", xdg.as_path())],
        ),
        (
            "REALIZE_CONFIG",
            vec![],
            vec![("REALIZE_CONFIG", file.as_path())],
        ),
        ("--config", vec!["--config", file.to_str().unwrap()], vec![]),
    ] {
        let found = push(work.path(), &extra, &env);
        assert_eq!(found.status.code(), Some(10), "{how}: {}", stderr(&found));
        assert!(
            stderr(&found).contains("cannot reach the destination daemon at 127.0.0.1:1"),
            "{how}: {}",
            stderr(&found)
        );
    }
    // A named config that is missing is an error, not an empty config.
    let missing = push(work.path(), &["--config", "absent.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("absent.toml"),
        "{}",
        stderr(&missing)
    );
    assert_eq!(std::fs::read(work.path().join("src/f")).unwrap(), b"data");
}

#[test]
fn flags_override_the_config() {
    let work = TempDir::new().unwrap();
    write_file(work.path(), "src/f", b"data");
    config_in(&work.path().join(".config/realize"));
    let missing = push(work.path(), &["--privkey", "absent.key"], &[]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("absent.key"),
        "{}",
        stderr(&missing)
    );
    // --peers replaces the config's keys: one not a key file fails the same way.
    std::fs::write(work.path().join("junk.pem"), "junk").unwrap();
    let junk = push(work.path(), &["--peers", "junk.pem"], &[]);
    assert_eq!(junk.status.code(), Some(1), "{}", stderr(&junk));
    assert!(stderr(&junk).contains("junk.pem"), "{}", stderr(&junk));
}

#[test]
fn a_bad_config_names_the_file_line_and_field() {
    let work = TempDir::new().unwrap();
    write_file(work.path(), "src/f", b"data");
    let file = work.path().join("bad.toml");
    for (text, expected) in [
        (
            "privkey = \"k\"\n[remotes.s]\naddress = \"nohost\"\n",
            ":3: remotes.s.address",
        ),
        (
            "privkey = \"k\"\n\n[remotes.s]\nadress = \"h:1\"\n",
            ":4: invalid config: unknown field",
        ),
        ("privkey = [\n", ":1: invalid config"),
    ] {
        std::fs::write(&file, text).unwrap();
        let output = push(work.path(), &["--config", file.to_str().unwrap()], &[]);
        assert_eq!(output.status.code(), Some(2), "{text}: {}", stderr(&output));
        let expected = format!("{}{expected}", file.display());
        assert!(
            stderr(&output).contains(&expected),
            "{text}: {} lacks {expected}",
            stderr(&output)
        );
    }
}

#[test]
fn local_sides_move_contents_and_bad_sides_are_usage_errors() {
    let work = TempDir::new().unwrap();
    write_file(work.path(), "a:b/x/f", b"data");
    // A path with a colon is written ./a:b; contents of SRC go into DST.
    let moved = realize(&["./a:b", "dst"], work.path());
    assert!(moved.status.success(), "{}", stderr(&moved));
    assert_eq!(std::fs::read(work.path().join("dst/x/f")).unwrap(), b"data");

    config_in(&work.path().join(".config/realize"));
    for (args, expected) in [
        (vec!["dst", "s:d/../x"], "invalid path"),
        (vec!["dst", "nope:d"], "realize remote add nope"),
        (vec!["dst"], "expected SRC and DST, got 1"),
        (
            vec!["realize://127.0.0.1:1/a", "realize://127.0.0.1:2/b"],
            "same directory id",
        ),
    ] {
        let output = realize(&args, work.path());
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert_eq!(std::fs::read(work.path().join("dst/x/f")).unwrap(), b"data");
}

#[test]
fn keygen_without_out_writes_the_default_key_once() {
    let work = TempDir::new().unwrap();
    let first = realize(&["keygen"], work.path());
    assert!(first.status.success(), "{}", stderr(&first));
    let dir = work.path().join(".config/realize");
    assert!(dir.join("client.key").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        "privkey = \"client.key\"\n"
    );
    let again = realize(&["keygen"], work.path());
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn completions_for_every_shell() {
    let work = TempDir::new().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef realize"),
        ("fish", "complete -c realize"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let output = realize(&["completions", shell], work.path());
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("remote"), "{shell} lacks the subcommands");
    }
}
