//! The tools compared, their servers on loopback, and the command each runs to move a tree.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::ssh::{SSHD, Sshd};
use crate::fixture::{Binaries, Daemon, Keys, on_cpu, runs};
use crate::run;

/// The tools compared; the names are those of `--tools`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    /// realize pushing into realized, with the default digest.
    Realize,
    /// realize pulling from realized.
    RealizePull,
    /// realize pushing with `--digest sha256` (when realize has the flag).
    RealizeSha256,
    /// rsync into an rsync daemon.
    Rsync,
    /// rsync --fsync into an rsync daemon: realize's durability.
    RsyncFsync,
    /// rsync over ssh into a private sshd: the encrypted peer.
    RsyncSsh,
    /// rclone moving into `rclone serve webdav`.
    Rclone,
    /// cp -a: the physical reference.
    Cp,
}

impl Tool {
    pub const ALL: [Tool; 8] = [
        Tool::Realize,
        Tool::RealizePull,
        Tool::RealizeSha256,
        Tool::Rsync,
        Tool::RsyncFsync,
        Tool::RsyncSsh,
        Tool::Rclone,
        Tool::Cp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Realize => "realize",
            Tool::RealizePull => "realize pull",
            Tool::RealizeSha256 => "realize --digest sha256",
            Tool::Rsync => "rsync daemon",
            Tool::RsyncFsync => "rsync --fsync",
            Tool::RsyncSsh => "rsync over ssh",
            Tool::Rclone => "rclone",
            Tool::Cp => "cp",
        }
    }

    /// A label short enough for the chart's axis.
    pub fn short(self) -> &'static str {
        match self {
            Tool::Realize => "realize",
            Tool::RealizePull => "pull",
            Tool::RealizeSha256 => "sha256",
            Tool::Rsync => "rsyncd",
            Tool::RsyncFsync => "fsync",
            Tool::RsyncSsh => "ssh",
            Tool::Rclone => "rclone",
            Tool::Cp => "cp",
        }
    }

    /// Whether the tool removes the source (cp only copies: it is the
    /// physical reference, not a competitor).
    pub fn moves(self) -> bool {
        self != Tool::Cp
    }
}

/// Installs rsync, rclone and sshd with apt when they are missing.
pub fn install_missing() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = ["rsync", "rclone"]
        .into_iter()
        .filter(|&tool| !runs(tool))
        .collect();
    if !Path::new(SSHD).exists() {
        missing.push("openssh-server");
    }
    if missing.is_empty() {
        return Ok(());
    }
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    run("apt-get", &args)
}

/// A server process, killed when dropped.
#[derive(Debug)]
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The servers the chosen tools need, each on its own loopback port; all
/// write into the same destination, and realized also serves the source
/// (directory `s`) for pulls.
#[derive(Debug)]
pub struct Servers {
    pub realized: Daemon,
    rsync: Option<(Server, u16)>,
    sshd: Option<Sshd>,
    rclone: Option<(Server, u16)>,
    src: PathBuf,
    dst: PathBuf,
}

impl Servers {
    /// Starts the servers of `tools`, pinned to `cpu` when one is given.
    pub fn start(
        bins: &Binaries,
        keys: &Keys,
        work: &Path,
        (src, dst): (&Path, &Path),
        tools: &[Tool],
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        let config = work.join("realized.toml");
        keys.daemon_config(&config, &[("d", dst), ("s", src)])?;
        let realized =
            Daemon::start_on_cpu(&bins.realized, &config, &work.join("realized.log"), cpu)?;
        let needs = |wanted: &[Tool]| tools.iter().any(|t| wanted.contains(t));
        let rsync = if needs(&[Tool::Rsync, Tool::RsyncFsync]) {
            Some(rsync_daemon(work, dst, cpu)?)
        } else {
            None
        };
        let sshd = if needs(&[Tool::RsyncSsh]) {
            Some(Sshd::start(work, cpu)?)
        } else {
            None
        };
        let rclone = if needs(&[Tool::Rclone]) {
            Some(serve_webdav(dst, cpu)?)
        } else {
            None
        };
        Ok(Servers {
            realized,
            rsync,
            sshd,
            rclone,
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
        })
    }

    /// Starts `rclone serve webdav` afresh. Its directory cache would
    /// otherwise remember the files of the previous run, emptied behind its
    /// back, and `rclone move` would skip them as already there.
    pub fn restart_rclone(&mut self, cpu: Option<usize>) -> anyhow::Result<()> {
        self.rclone = None;
        self.rclone = Some(serve_webdav(&self.dst, cpu)?);
        Ok(())
    }

    /// The server process whose CPU time counts with `tool`'s (None for cp).
    pub fn pid(&self, tool: Tool) -> Option<u32> {
        match tool {
            Tool::Realize | Tool::RealizePull | Tool::RealizeSha256 => Some(self.realized.pid()),
            Tool::Rsync | Tool::RsyncFsync => self.rsync.as_ref().map(|(s, _)| s.0.id()),
            Tool::RsyncSsh => self.sshd.as_ref().map(Sshd::pid),
            Tool::Rclone => self.rclone.as_ref().map(|(s, _)| s.0.id()),
            Tool::Cp => None,
        }
    }

    /// The command that moves (or, for cp, copies) the source tree into the destination.
    pub fn command(&self, tool: Tool, bins: &Binaries, keys: &Keys) -> anyhow::Result<Command> {
        let (src, dst) = (&self.src, &self.dst);
        let not_started = || anyhow::anyhow!("the server of {} was not started", tool.name());
        let command = match tool {
            Tool::Realize | Tool::RealizeSha256 => {
                let mut command = keys.move_command(bins, src, &self.realized.addr, "d");
                command.arg("--quiet");
                if tool == Tool::RealizeSha256 {
                    command.args(["--digest", "sha256"]);
                }
                command
            }
            Tool::RealizePull => {
                let mut command = Command::new(&bins.realize);
                command
                    .args(["--src-addr", &self.realized.addr])
                    .arg("--dst-path")
                    .arg(dst)
                    .arg("--privkey")
                    .arg(&keys.client_key)
                    .arg("--peers")
                    .arg(&keys.daemon_pub)
                    .args(["--quiet", "s"]);
                command
            }
            Tool::Rsync | Tool::RsyncFsync => {
                let (_, port) = self.rsync.as_ref().ok_or_else(not_started)?;
                let mut command = Command::new("rsync");
                command.args(["-a", "--remove-source-files", "--sockopts=TCP_NODELAY"]);
                if tool == Tool::RsyncFsync {
                    command.arg("--fsync");
                }
                command
                    .arg(format!("{}/", src.display()))
                    .arg(format!("rsync://127.0.0.1:{port}/d/"));
                command
            }
            Tool::RsyncSsh => {
                let sshd = self.sshd.as_ref().ok_or_else(not_started)?;
                let mut command = Command::new("rsync");
                command
                    .args(["-a", "--remove-source-files", "-e", &sshd.rsh()])
                    .arg(format!("{}/", src.display()))
                    .arg(format!("127.0.0.1:{}/", dst.display()));
                command
            }
            Tool::Rclone => {
                let (_, port) = self.rclone.as_ref().ok_or_else(not_started)?;
                let mut command = Command::new("rclone");
                command
                    .args(["move", "-q", "--config", ""])
                    .arg(src)
                    .arg(":webdav:")
                    .arg(format!("--webdav-url=http://127.0.0.1:{port}/"));
                command
            }
            Tool::Cp => {
                let mut command = Command::new("cp");
                command
                    .arg("-a")
                    .arg(format!("{}/.", src.display()))
                    .arg(dst);
                command
            }
        };
        Ok(command)
    }
}

/// An rsync daemon serving `dst` as module `d`, with TCP_NODELAY on both
/// ends as realize sets it: without it rsync's small-file exchanges wait on
/// Nagle's algorithm.
fn rsync_daemon(work: &Path, dst: &Path, cpu: Option<usize>) -> anyhow::Result<(Server, u16)> {
    let rsyncd = work.join("rsyncd.conf");
    std::fs::write(
        &rsyncd,
        format!(
            "use chroot = false\nsocket options = TCP_NODELAY\n[d]\npath = {}\nread only = false\nuid = 0\ngid = 0\n",
            dst.display()
        ),
    )?;
    let port = free_port()?;
    let mut command = Command::new("rsync");
    command
        .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
        .arg(format!("--config={}", rsyncd.display()))
        .arg(format!("--port={port}"))
        .arg(format!("--log-file={}", work.join("rsyncd.log").display()));
    let child = pinned(command, cpu)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the rsync daemon")?;
    let server = Server(child);
    wait_for_port(port)?;
    Ok((server, port))
}

/// `command`, pinned to `cpu` when one is given.
pub fn pinned(command: Command, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => on_cpu(cpu, &command),
        None => command,
    }
}

fn serve_webdav(dst: &Path, cpu: Option<usize>) -> anyhow::Result<(Server, u16)> {
    let port = free_port()?;
    let mut command = Command::new("rclone");
    command
        .args(["serve", "webdav", "-q", "--config", ""])
        .arg(format!("--addr=127.0.0.1:{port}"))
        .arg(dst);
    let child = pinned(command, cpu)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start rclone serve webdav")?;
    let server = Server(child);
    wait_for_port(port)?;
    Ok((server, port))
}

/// A loopback port nothing listens on (for servers that cannot report the port they bound).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// rsync, sshd and rclone say nothing when they are ready, so this polls the port.
pub fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 30 s")
}
