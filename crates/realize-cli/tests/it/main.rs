//! Tests of the `realize` binary on its own: usage errors, keygen, and
//! local-to-local moves. Moves through daemons are tested in realize-daemon,
//! which builds `realized`.
#![allow(clippy::unwrap_used)]

mod output;
mod refusals;
mod terminal;
mod usage;

use std::path::Path;
use std::process::{Command, Output};

pub fn realize(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realize"))
        .args(args)
        .current_dir(cwd)
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
