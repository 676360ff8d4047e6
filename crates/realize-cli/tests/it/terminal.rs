//! `realize` on a real terminal (tmux): the bars are drawn while it runs,
//! and the screen it leaves holds only the result lines.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::write_file;

fn tmux(socket: &Path, args: &[&str]) -> String {
    let output = Command::new("tmux")
        .args(["-f", "/dev/null", "-S"])
        .arg(socket)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tmux (install it: apt-get install tmux): {e}"));
    assert!(
        output.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn bars_are_drawn_and_cleared() {
    let work = TempDir::new().unwrap();
    // Big enough for the bars to be drawn at least once.
    let big: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    write_file(work.path(), "src/big.bin", &big);
    write_file(work.path(), "src/small.txt", b"small");
    let socket = work.path().join("tmux.sock");
    let raw = work.path().join("raw.log");
    let tmux_cmd = format!("tmux -f /dev/null -S {}", socket.display());
    // The shell waits for `go`, so the pipe to the raw log is in place before
    // realize runs; after `done` it waits again, so the screen stays for capture.
    let command = format!(
        "{tmux_cmd} wait-for go; cd {} && HOME=. {} --src-path src --dst-path dst --parallel 1; \
         {tmux_cmd} wait-for -S done; {tmux_cmd} wait-for hold",
        work.path().display(),
        env!("CARGO_BIN_EXE_realize"),
    );
    tmux(
        &socket,
        &["new-session", "-d", "-x", "120", "-y", "20", &command],
    );
    tmux(
        &socket,
        &["pipe-pane", "-o", &format!("cat > {}", raw.display())],
    );
    tmux(&socket, &["wait-for", "-S", "go"]);
    tmux(&socket, &["wait-for", "done"]);
    let screen = tmux(&socket, &["capture-pane", "-p"]);
    tmux(&socket, &["kill-server"]);

    let raw = String::from_utf8_lossy(&std::fs::read(&raw).unwrap()).into_owned();
    assert!(raw.contains("Copying"), "no bar was drawn: {raw:?}");
    // The overall line: files done/total, bytes done/total in SI units, ETA.
    assert!(raw.contains("0/2 files, "), "no overall line: {raw:?}");
    assert!(raw.contains("/67.11 MB, "), "no byte total in MB: {raw:?}");
    assert!(raw.contains("ETA "), "no ETA: {raw:?}");
    assert!(
        !raw.contains("MiB"),
        "binary units on the terminal: {raw:?}"
    );
    assert!(
        raw.contains("\u{1b}["),
        "no escape codes on a terminal: {raw:?}"
    );
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{screen}");
    assert_eq!(lines[0].trim_end(), "[1/2] Moved     dir/big.bin");
    assert_eq!(lines[1].trim_end(), "[2/2] Moved     dir/small.txt");
    assert!(
        lines[2].starts_with("Moved 2 files (67.1 MB) in "),
        "{screen}"
    );
    assert_eq!(std::fs::read(work.path().join("dst/big.bin")).unwrap(), big);
}
