//! A private sshd on loopback for rsync over ssh: its own host key, one
//! authorized client key, run as the current user; killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::tools::{Server, free_port, wait_for_port};
use crate::fixture::on_cpu;

/// OpenSSH's server, from Debian's openssh-server. sshd re-executes itself
/// for each connection, so it must be started by its absolute path.
pub const SSHD: &str = "/usr/sbin/sshd";

#[derive(Debug)]
pub struct Sshd {
    server: Server,
    port: u16,
    client_key: PathBuf,
}

impl Sshd {
    /// Starts sshd on a free loopback port with its files in `work/ssh`,
    /// pinned to `cpu` when one is given (the sessions it forks inherit it).
    pub fn start(work: &Path, cpu: Option<usize>) -> anyhow::Result<Self> {
        let dir = work.join("ssh");
        std::fs::create_dir_all(&dir)?;
        let (host_key, client_key) = (dir.join("host_key"), dir.join("client_key"));
        for key in [&host_key, &client_key] {
            if !key.exists() {
                keygen(key)?;
            }
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)
            .context("cannot write authorized_keys")?;
        // sshd insists on its privilege separation directory when run as
        // root, even with nothing to separate; the system's service creates it.
        if rustix::process::geteuid().is_root() {
            std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
        }
        let port = free_port()?;
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
                host = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                authorized = authorized.display(),
            ),
        )?;
        let mut command = Command::new(SSHD);
        // -D: no daemon, so the child is the server to kill and measure; -e: log to stderr.
        command.arg("-D").arg("-e").arg("-f").arg(&config);
        if let Some(cpu) = cpu {
            command = on_cpu(cpu, &command);
        }
        let log = File::create(dir.join("sshd.log")).context("cannot create sshd's log")?;
        let child = command
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {SSHD}"))?;
        let server = Server(child);
        wait_for_port(port)?;
        Ok(Sshd {
            server,
            port,
            client_key,
        })
    }

    pub fn pid(&self) -> u32 {
        self.server.0.id()
    }

    /// The remote shell for `rsync -e`: key auth, no host key checks, no
    /// prompts; rsync splits it on spaces and honours single quotes.
    pub fn rsh(&self) -> String {
        format!(
            "ssh -p {} -i '{}' -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            self.port,
            self.client_key.display()
        )
    }
}

/// An ed25519 key pair without passphrase: `key` and `key.pub`.
fn keygen(key: &Path) -> anyhow::Result<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(key)
        .stdin(Stdio::null())
        .status()
        .context("cannot run ssh-keygen")?;
    if !status.success() {
        bail!("ssh-keygen failed: {status}");
    }
    Ok(())
}
