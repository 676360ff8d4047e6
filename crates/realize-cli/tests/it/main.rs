//! Tests of the `realize` binary on its own: usage errors, keygen, and
//! local-to-local moves. Moves through daemons are tested in realize-daemon,
//! which builds `realized`.
#![allow(clippy::unwrap_used)]

mod config;
mod output;
mod refusals;
mod terminal;
mod usage;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `realize` in `cwd`, which is also its HOME, so the client config it
/// finds is the test's own.
pub fn realize(args: &[&str], cwd: &Path) -> Output {
    realize_with(args, cwd, &[])
}

pub fn realize_with(args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realize"))
        .args(args)
        .current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("REALIZE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}
