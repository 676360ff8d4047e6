//! `cargo xtask dist`: what a release ships, in target/dist/: the release
//! binaries, man pages (clap_mangen), shell completions (clap_complete) and
//! the systemd unit with its sysusers.d and tmpfiles.d files.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

/// The man pages made from the binaries' flags: (command, section).
fn man_pages() -> Vec<(clap::Command, &'static str)> {
    // realized's flags are still private to its main.rs; realized.8 joins here
    // once they are in its library.
    vec![(realize_cli::flags::Cli::command(), "1")]
}

pub fn dist(root: &Path) -> anyhow::Result<()> {
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "realize-cli",
            "-p",
            "realize-daemon",
        ],
    )?;
    let out = root.join("target/dist");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    for dir in ["bin", "man", "completions", "systemd"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    for binary in ["realize", "realized"] {
        copy(
            &root.join("target/release").join(binary),
            &out.join("bin").join(binary),
        )?;
    }
    for (command, section) in man_pages() {
        let file = out
            .join("man")
            .join(format!("{}.{section}", command.get_name()));
        std::fs::write(&file, man_page(command, section)?)?;
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
        clap_complete::Shell::PowerShell,
    ] {
        clap_complete::generate_to(
            shell,
            &mut realize_cli::flags::Cli::command(),
            "realize",
            out.join("completions"),
        )?;
    }
    for entry in std::fs::read_dir(root.join("dist/systemd"))? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            copy(&path, &out.join("systemd").join(name))?;
        }
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The roff source of `command`'s man page.
fn man_page(command: clap::Command, section: &str) -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section(section)
        .render(&mut page)?;
    Ok(page)
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::process::Command;

    use super::*;

    #[test]
    fn man_pages_render() {
        let dir = tempfile::tempdir().unwrap();
        for (command, section) in man_pages() {
            let name = command.get_name().to_string();
            let page = man_page(command, section).unwrap();
            let text = String::from_utf8(page.clone()).unwrap();
            assert!(
                text.contains(&format!(".TH {name} {section}")),
                "{}",
                &text[..200.min(text.len())]
            );
            let file = dir.path().join(format!("{name}.{section}"));
            std::fs::write(&file, page).unwrap();
            let rendered = match Command::new("man")
                .arg("-l")
                .arg(&file)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80")
                .output()
            {
                Ok(out) => out,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("cannot run man: {e}"),
            };
            assert!(rendered.status.success(), "{rendered:?}");
            let text = String::from_utf8_lossy(&rendered.stdout);
            assert!(
                text.contains("SYNOPSIS") && text.contains("--config"),
                "{text}"
            );
        }
    }

    #[test]
    fn systemd_unit_verifies() {
        let root = crate::workspace_root();
        let dir = tempfile::tempdir().unwrap();
        // verify checks that ExecStart exists; the installed path may not.
        let unit = std::fs::read_to_string(root.join("dist/systemd/realized.service"))
            .unwrap()
            .replace("/usr/bin/realized", "/bin/true");
        let file = dir.path().join("realized.service");
        std::fs::write(&file, unit).unwrap();
        let out = match Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&file)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("cannot run systemd-analyze: {e}"),
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
