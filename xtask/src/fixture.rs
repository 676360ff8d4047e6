//! What the bench and the chaos suite share: the built binaries, keys, a `realized` on loopback, seeded data and tree checks.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, bail};

use crate::run;

/// Where cargo puts its builds: `CARGO_TARGET_DIR` if set, as cargo does.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// A scratch directory on tmpfs when there is one, so the disk is not what is measured.
pub fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("realize-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The `realize` and `realized` binaries of one build profile.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub realize: PathBuf,
    pub realized: PathBuf,
}

impl Binaries {
    /// Builds every binary of the workspace, as `cargo xtask demo` does, so
    /// that features are unified the same way each time and nothing is
    /// rebuilt needlessly (a no-op when they are up to date).
    pub fn build(root: &Path, release: bool) -> anyhow::Result<Self> {
        let mut args = vec!["build", "--workspace", "--bins"];
        if release {
            args.push("--release");
        }
        run("cargo", &args)?;
        Ok(Self::of_profile(root, release))
    }

    pub fn of_profile(root: &Path, release: bool) -> Self {
        let dir = target_dir(root).join(if release { "release" } else { "debug" });
        Binaries {
            realize: dir.join("realize"),
            realized: dir.join("realized"),
        }
    }
}

/// A client and a daemon key pair made by `realize keygen` in `work`.
#[derive(Debug)]
pub struct Keys {
    pub client_key: PathBuf,
    pub client_pub: PathBuf,
    pub daemon_key: PathBuf,
    pub daemon_pub: PathBuf,
}

impl Keys {
    pub fn generate(bins: &Binaries, work: &Path) -> anyhow::Result<Self> {
        for name in ["client", "daemon"] {
            keygen(bins, &work.join(name))?;
        }
        Ok(Keys {
            client_key: work.join("client.key"),
            client_pub: work.join("client.pub.pem"),
            daemon_key: work.join("daemon.key"),
            daemon_pub: work.join("daemon.pub.pem"),
        })
    }

    /// A daemon config serving `dirs` to the client, on an ephemeral loopback port.
    pub fn daemon_config(&self, path: &Path, dirs: &[(&str, &Path)]) -> anyhow::Result<()> {
        let mut config = format!(
            "address = \"127.0.0.1:0\"\nprivkey = {:?}\n[dirs]\n",
            self.daemon_key
        );
        for (id, dir) in dirs {
            config.push_str(&format!("{id} = {dir:?}\n"));
        }
        config.push_str(&format!(
            "[peers.client]\npublic_key_file = {:?}\n",
            self.client_pub
        ));
        // The RPC load test opens one connection per client, up to 32: above
        // the per-peer default, which is for real peers; a peer gets at most
        // half of max_connections.
        config.push_str("[limits]\nmax_connections = 128\nmax_connections_per_peer = 64\n");
        std::fs::write(path, config).with_context(|| format!("cannot write {}", path.display()))
    }

    /// `realize` moving the local `src` into the daemon's directory `dir` at `addr`.
    pub fn move_command(&self, bins: &Binaries, src: &Path, addr: &str, dir: &str) -> Command {
        move_command(bins, &self.client_key, &self.daemon_pub, src, addr, dir)
    }
}

/// `realize keygen --out PREFIX`: PREFIX.key, PREFIX.pub.pem and PREFIX.crt.
pub fn keygen(bins: &Binaries, prefix: &Path) -> anyhow::Result<()> {
    let status = Command::new(&bins.realize)
        .args(["keygen", "--out"])
        .arg(prefix)
        .stdout(Stdio::null())
        .status()
        .context("cannot run realize keygen")?;
    if !status.success() {
        bail!("realize keygen failed: {status}");
    }
    Ok(())
}

/// `realize` with the private key `privkey`, trusting the daemon keys in
/// `peers`, moving the local `src` into the daemon's directory `dir` at `addr`.
pub fn move_command(
    bins: &Binaries,
    privkey: &Path,
    peers: &Path,
    src: &Path,
    addr: &str,
    dir: &str,
) -> Command {
    let mut command = Command::new(&bins.realize);
    command
        .arg("--src-path")
        .arg(src)
        .args(["--dst-addr", addr])
        .arg("--privkey")
        .arg(privkey)
        .arg("--peers")
        .arg(peers)
        .arg(dir)
        .stdin(Stdio::null());
    command
}

/// A `realized` process; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub addr: String,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    cpu: Option<usize>,
}

impl Daemon {
    /// Starts `realized --config CONFIG` and waits for its `listening on` line;
    /// its log goes to `log`.
    pub fn start(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_on_cpu(bin, config, log, None)
    }

    /// Like [`Daemon::start`], pinned to `cpu` when one is given.
    pub fn start_on_cpu(
        bin: &Path,
        config: &Path,
        log: &Path,
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        let (child, addr) = spawn_daemon(bin, config, None, log, cpu)?;
        Ok(Daemon {
            child,
            addr,
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            cpu,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no clean shutdown, as in a crash.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("cannot kill realized")?;
        self.child.wait().context("cannot reap realized")?;
        Ok(())
    }

    /// If the daemon has exited on its own, starts it again and returns how it exited.
    pub fn revive(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.try_wait().context("cannot check on realized")? {
            Some(status) => {
                self.restart()?;
                Ok(Some(status))
            }
            None => Ok(None),
        }
    }

    /// Starts the daemon again with the same config on the same address.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        // A daemon that already exited cannot be killed; that is fine here.
        let _ = self.child.kill();
        self.child.wait().context("cannot reap realized")?;
        let (child, _) = spawn_daemon(
            &self.bin,
            &self.config,
            Some(&self.addr),
            &self.log,
            self.cpu,
        )?;
        self.child = child;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_daemon(
    bin: &Path,
    config: &Path,
    address: Option<&str>,
    log: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<(Child, String)> {
    let mut command = Command::new(bin);
    command.arg("--config").arg(config);
    if let Some(address) = address {
        command.args(["--address", address]);
    }
    if let Some(cpu) = cpu {
        command = on_cpu(cpu, &command);
    }
    let mut child = command
        .env("RUST_LOG", "warn,realize_daemon=info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stderr = child.stderr.take().context("realized has no stderr")?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            bail!(
                "realized exited before listening; its log is {}",
                log.display()
            );
        };
        let line = line.context("cannot read the log of realized")?;
        writeln!(file, "{line}")?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    // The rest of the log goes to the file, and the pipe never fills up.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
        }
    });
    Ok((child, addr))
}

/// `command` run by `taskset -c CPU`, which pins it and every thread and
/// process it starts to that CPU. Only the program, arguments, environment
/// and directory carry over: set standard streams on the result.
pub fn on_cpu(cpu: usize, command: &Command) -> Command {
    let mut pinned = Command::new("taskset");
    pinned
        .arg("-c")
        .arg(cpu.to_string())
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => pinned.env(key, value),
            None => pinned.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        pinned.current_dir(dir);
    }
    pinned
}

/// Whether `program` can be run (it answers `--version`).
pub fn runs(program: impl AsRef<OsStr>) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The highest resident set size a process has had (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Empties `dir` and leaves it in place (a daemon may serve it).
pub fn clear_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Copies the tree `from` into `to` (emptied first) with `cp -a`, the fastest
/// way to reset a data set between runs.
pub fn reset_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    clear_dir(to)?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .context("cannot run cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed: {status}", from.display(), to.display());
    }
    Ok(())
}
