//! The tools compared, their servers on loopback, and the command each runs to move a tree.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::fixture::{Binaries, Daemon, Keys};
use crate::run;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Realize,
    Rsync,
    Rclone,
    Cp,
}

impl Tool {
    pub const ALL: [Tool; 4] = [Tool::Realize, Tool::Rsync, Tool::Rclone, Tool::Cp];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Realize => "realize",
            Tool::Rsync => "rsync",
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

/// Installs rsync and rclone with apt when they are missing.
pub fn install_missing() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["rsync", "rclone"]
        .into_iter()
        .filter(|tool| Command::new(tool).arg("--version").output().is_err())
        .collect();
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
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The three servers, each on its own loopback port, all writing into the same destination directory.
#[derive(Debug)]
pub struct Servers {
    pub realized: Daemon,
    _rsync: Server,
    rsync_port: u16,
    rclone: Server,
    rclone_port: u16,
    dst: PathBuf,
}

impl Servers {
    pub fn start(bins: &Binaries, keys: &Keys, work: &Path, dst: &Path) -> anyhow::Result<Self> {
        let config = work.join("realized.toml");
        keys.daemon_config(&config, &[("d", dst)])?;
        let realized = Daemon::start(&bins.realized, &config, &work.join("realized.log"))?;

        // TCP_NODELAY on both ends, as realize sets it: without it rsync's
        // small-file exchanges wait on Nagle's algorithm.
        let rsyncd = work.join("rsyncd.conf");
        std::fs::write(
            &rsyncd,
            format!(
                "use chroot = false\nsocket options = TCP_NODELAY\n[d]\npath = {}\nread only = false\nuid = 0\ngid = 0\n",
                dst.display()
            ),
        )?;
        let rsync_port = free_port()?;
        let rsync = Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
            .arg(format!("--config={}", rsyncd.display()))
            .arg(format!("--port={rsync_port}"))
            .arg(format!("--log-file={}", work.join("rsyncd.log").display()))
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the rsync daemon")?;
        let rsync = Server(rsync);
        wait_for_port(rsync_port)?;

        let (rclone, rclone_port) = serve_webdav(dst)?;
        Ok(Servers {
            realized,
            _rsync: rsync,
            rsync_port,
            rclone,
            rclone_port,
            dst: dst.to_path_buf(),
        })
    }

    /// Starts `rclone serve webdav` afresh. Its directory cache would
    /// otherwise remember the files of the previous run, emptied behind its
    /// back, and `rclone move` would skip them as already there.
    pub fn restart_rclone(&mut self) -> anyhow::Result<()> {
        let (rclone, port) = serve_webdav(&self.dst)?;
        self.rclone = rclone;
        self.rclone_port = port;
        Ok(())
    }

    /// The command that moves (or, for cp, copies) the tree `src` into the destination.
    pub fn command(
        &self,
        tool: Tool,
        bins: &Binaries,
        keys: &Keys,
        src: &Path,
        dst: &Path,
    ) -> Command {
        match tool {
            Tool::Realize => {
                let mut command = keys.move_command(bins, src, &self.realized.addr, "d");
                command.arg("--quiet");
                command
            }
            Tool::Rsync => {
                let mut command = Command::new("rsync");
                command
                    .args(["-a", "--remove-source-files", "--sockopts=TCP_NODELAY"])
                    .arg(format!("{}/", src.display()))
                    .arg(format!("rsync://127.0.0.1:{}/d/", self.rsync_port));
                command
            }
            Tool::Rclone => {
                let mut command = Command::new("rclone");
                command
                    .args(["move", "-q", "--config", ""])
                    .arg(src)
                    .arg(":webdav:")
                    .arg(format!(
                        "--webdav-url=http://127.0.0.1:{}/",
                        self.rclone_port
                    ));
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
        }
    }
}

fn serve_webdav(dst: &Path) -> anyhow::Result<(Server, u16)> {
    let port = free_port()?;
    let child = Command::new("rclone")
        .args(["serve", "webdav", "-q", "--config", ""])
        .arg(format!("--addr=127.0.0.1:{port}"))
        .arg(dst)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start rclone serve webdav")?;
    let server = Server(child);
    wait_for_port(port)?;
    Ok((server, port))
}

/// A loopback port nothing listens on (for servers that cannot report the port they bound).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// rsync and rclone say nothing when they are ready, so this polls the port.
fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 30 s")
}
