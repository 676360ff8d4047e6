//! Test fixtures: temp trees, key pairs, a running `realized`, and `realize` runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use realize_core::testing::{manifest, random_bytes, write_file};
use realize_core::{DirId, Service};
use realize_net::keys::{PrivateKey, PublicKey};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// Longest any binary may run in a test before it counts as hung.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

pub fn realized_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_realized"))
}

/// `realize` is built next to `realized` by `cargo test --workspace`.
pub fn realize_bin() -> PathBuf {
    let path = realized_bin().with_file_name("realize");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p realize-cli`) first",
        path.display()
    );
    path
}

/// The sample tree of the move tests: nested directories, an empty file and
/// a file of several MiB.
pub fn sample_tree(root: &Path) {
    write_file(root, "top.txt", b"top level\n");
    write_file(root, "empty", b"");
    write_file(root, "a/b/c/deep.txt", b"deep\n");
    write_file(root, "a/big.bin", &random_bytes(1, 5 * 1024 * 1024 + 17));
    write_file(root, "a/b/mid.bin", &random_bytes(2, 70_000));
}

/// A key pair written to `DIR/NAME.key` and `DIR/NAME.pub.pem`.
pub struct KeyFiles {
    pub key: PrivateKey,
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyFiles {
    pub fn new(dir: &Path, name: &str) -> Self {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = PrivateKey::generate().unwrap();
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub.pem"));
        // As `realize keygen` writes it: a key others may read makes a warning.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&private)
            .and_then(|mut f| f.write_all(key.to_pem().as_bytes()))
            .unwrap();
        std::fs::write(&public, key.public_key().to_pem()).unwrap();
        KeyFiles {
            key,
            private,
            public,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
}

/// What a test daemon's config file says, and the log filter it runs with.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub address: String,
    pub privkey: PathBuf,
    /// Directory id → root.
    pub dirs: Vec<(String, PathBuf)>,
    /// Peer id → public key file.
    pub peers: Vec<(String, PathBuf)>,
    /// Peer id → more lines for its `[peers.ID]` table (`dirs`, `access`).
    pub peer_options: Vec<(String, String)>,
    /// Lines of the `[limits]` table.
    pub limits: Vec<String>,
    pub grace_period: Option<String>,
    pub log_level: Option<String>,
    /// `RUST_LOG` for the process; not part of the file.
    pub rust_log: String,
    /// More flags for `realized`.
    pub args: Vec<String>,
    /// More environment variables for the process.
    pub env: Vec<(String, String)>,
}

impl DaemonConfig {
    pub fn render(&self) -> String {
        let mut text = format!(
            "address = {:?}\nprivkey = {:?}\n",
            self.address, self.privkey
        );
        if let Some(level) = &self.log_level {
            text.push_str(&format!("log_level = {level:?}\n"));
        }
        text.push_str("[dirs]\n");
        for (id, path) in &self.dirs {
            text.push_str(&format!("{id} = {path:?}\n"));
        }
        for (id, key) in &self.peers {
            text.push_str(&format!("[peers.{id}]\npublic_key_file = {key:?}\n"));
            for (_, options) in self.peer_options.iter().filter(|(peer, _)| peer == id) {
                text.push_str(&format!("{options}\n"));
            }
        }
        if !self.limits.is_empty() {
            text.push_str(&format!("[limits]\n{}\n", self.limits.join("\n")));
        }
        if let Some(grace) = &self.grace_period {
            text.push_str(&format!("[shutdown]\ngrace_period = {grace:?}\n"));
        }
        text
    }
}

/// A `realized` process on an ephemeral loopback port.
pub struct Daemon {
    child: Child,
    pub addr: String,
    pub key: KeyFiles,
    pub config: DaemonConfig,
    pub config_path: PathBuf,
    log: Arc<Mutex<String>>,
    new_line: Arc<Notify>,
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `realized` serving `dirs` to the peer `client`, and waits for
    /// its "listening on" line.
    pub async fn start(work: &Path, dirs: &[(&str, &Path)], client: &KeyFiles) -> Daemon {
        Daemon::start_with(work, dirs, client, |_| {}).await
    }

    /// Like [`Daemon::start`], with the config changed by `adjust` first.
    pub async fn start_with(
        work: &Path,
        dirs: &[(&str, &Path)],
        client: &KeyFiles,
        adjust: impl FnOnce(&mut DaemonConfig),
    ) -> Daemon {
        let name = format!(
            "daemon{}",
            dirs.len() + std::fs::read_dir(work).unwrap().count()
        );
        let key = KeyFiles::new(work, &name);
        let mut config = DaemonConfig {
            address: "127.0.0.1:0".to_string(),
            privkey: key.private.clone(),
            dirs: dirs
                .iter()
                .map(|(id, path)| (id.to_string(), path.to_path_buf()))
                .collect(),
            peers: vec![("client".to_string(), client.public.clone())],
            peer_options: Vec::new(),
            limits: Vec::new(),
            grace_period: None,
            log_level: None,
            rust_log: "info".to_string(),
            args: Vec::new(),
            env: Vec::new(),
        };
        adjust(&mut config);
        let config_path = work.join(format!("{name}.toml"));
        std::fs::write(&config_path, config.render()).unwrap();
        Self::spawn(config_path, key, config, &[]).await
    }

    /// Kills the daemon (SIGKILL: no clean shutdown) and starts it again
    /// with the same config, key and address.
    pub async fn kill_and_restart(self) -> Daemon {
        let Daemon {
            mut child,
            addr,
            key,
            config,
            config_path,
            ..
        } = self;
        child.kill().await.unwrap();
        Self::spawn(config_path, key, config, &["--address", &addr]).await
    }

    async fn spawn(
        config_path: PathBuf,
        key: KeyFiles,
        config: DaemonConfig,
        args: &[&str],
    ) -> Daemon {
        let mut child = Command::new(realized_bin())
            .arg("--config")
            .arg(&config_path)
            .args(&config.args)
            .args(args)
            .env("RUST_LOG", &config.rust_log)
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let addr = tokio::time::timeout(PROCESS_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("listening on ").nth(1) {
                    // Text or JSON logs: the address ends at a space or a quote.
                    let end = |c: char| c.is_whitespace() || c == '"';
                    return rest.split(end).next().unwrap().to_string();
                }
            }
            panic!("realized exited before listening:\n{}", log.lock().unwrap());
        })
        .await
        .expect("realized did not start listening");
        let (drain, new_line) = (Arc::clone(&log), Arc::new(Notify::new()));
        let notify = Arc::clone(&new_line);
        let drain = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                drain.lock().unwrap().push_str(&format!("{line}\n"));
                notify.notify_waiters();
            }
        });
        Daemon {
            child,
            addr,
            key,
            config,
            config_path,
            log,
            new_line,
            drain: Some(drain),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the daemon has logged a line containing `text`; false if
    /// it has not within the process timeout.
    pub async fn wait_for_log(&self, text: &str) -> bool {
        self.wait_for_line(&[text]).await
    }

    /// Waits until the daemon has logged a line containing every one of
    /// `parts`; false if it has not within the process timeout.
    pub async fn wait_for_line(&self, parts: &[&str]) -> bool {
        self.wait_until(|log| {
            log.lines()
                .any(|line| parts.iter().all(|part| line.contains(part)))
        })
        .await
    }

    /// Waits until the log so far satisfies `done`; false if it does not
    /// within the process timeout.
    pub async fn wait_until(&self, done: impl Fn(&str) -> bool) -> bool {
        tokio::time::timeout(PROCESS_TIMEOUT, async {
            loop {
                let notified = self.new_line.notified();
                tokio::pin!(notified);
                // Registered before looking, so no line can slip between the two.
                notified.as_mut().enable();
                if done(&self.log()) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }

    /// The first line logged so far that contains every one of `parts`.
    pub fn log_line(&self, parts: &[&str]) -> Option<String> {
        self.log()
            .lines()
            .find(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_string)
    }

    /// The process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("realized has already exited")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = self.child.id().expect("realized has already exited");
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Replaces the config file; the daemon reads it at its next SIGHUP.
    pub fn write_config(&mut self, config: DaemonConfig) {
        std::fs::write(&self.config_path, config.render()).unwrap();
        self.config = config;
    }

    /// Waits for the process to exit, and for its last log line.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("realized did not exit:\n{}", self.log()))
            .unwrap();
        if let Some(drain) = self.drain.take() {
            drain.await.unwrap();
        }
        status
    }

    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Stops the daemon gracefully (SIGTERM) and starts it again on the same
    /// address with `key` as its private key, as an operator rotating the
    /// daemon's key does.
    pub async fn restart_with_key(mut self, key: KeyFiles) -> Daemon {
        let mut config = self.config.clone();
        config.privkey = key.private.clone();
        self.write_config(config);
        self.signal(rustix::process::Signal::TERM);
        assert!(self.wait_exit().await.success(), "{}", self.log());
        let Daemon {
            addr,
            config,
            config_path,
            ..
        } = self;
        Self::spawn(config_path, key, config, &["--address", &addr]).await
    }
}

/// Runs `realize` with `args` and returns its output.
/// `realize` blind to the machine's client config (a broken
/// ~/.config/realize/config.toml must not fail the tests), as a fresh user.
fn realize_command() -> Command {
    let mut command = Command::new(realize_bin());
    command
        .env("XDG_CONFIG_HOME", "/nonexistent/realize-tests")
        .env_remove("REALIZE_CONFIG");
    command
}

pub async fn realize(args: &[&std::ffi::OsStr]) -> Output {
    let output = realize_command()
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PROCESS_TIMEOUT, output)
        .await
        .expect("realize hung")
        .unwrap()
}

/// `realize` with `home` as HOME and no other config location.
pub async fn realize_at(home: &Path, args: &[&str]) -> Output {
    let output = Command::new(realize_bin())
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("REALIZE_CONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PROCESS_TIMEOUT, output)
        .await
        .expect("realize hung")
        .unwrap()
}

/// A throwaway HOME with a key and the remote `server`, a daemon serving
/// `box` from the returned root and trusting that key; `add_args` go to
/// `realize remote add`.
pub async fn home_with_server(home: &Path, add_args: &[&str]) -> (Daemon, PathBuf) {
    let keygen = realize_at(home, &["keygen"]).await;
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let ours = home.join(".config/realize/client.pub.pem");
    let placeholder = KeyFiles::new(home, "placeholder");
    let root = home.join("served");
    std::fs::create_dir(&root).unwrap();
    let daemon = Daemon::start_with(home, &[("box", &root)], &placeholder, |config| {
        config.peers = vec![("laptop".to_string(), ours.clone())];
    })
    .await;
    let fingerprint = daemon.key.public_key().fingerprint();
    let mut args = vec![
        "remote",
        "add",
        "server",
        &daemon.addr,
        "--fingerprint",
        &fingerprint,
    ];
    args.extend_from_slice(add_args);
    let added = realize_at(home, &args).await;
    assert!(added.status.success(), "{}", stderr(&added));
    (daemon, root)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A side of a move, as `realize` flags.
pub enum Side<'a> {
    Path(&'a Path),
    Addr(&'a str),
}

/// Builds a `realize` command line moving `dirs` from `src` to `dst` as `client`.
pub fn move_args(
    src: Side<'_>,
    dst: Side<'_>,
    dirs: &[&str],
    client: &KeyFiles,
    trusted: &[&Path],
    work: &Path,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (side, path_flag, addr_flag) in [
        (src, "--src-path", "--src-addr"),
        (dst, "--dst-path", "--dst-addr"),
    ] {
        match side {
            Side::Path(p) => {
                args.push(path_flag.into());
                args.push(p.into());
            }
            Side::Addr(addr) => {
                args.push(addr_flag.into());
                args.push(addr.into());
            }
        }
    }
    if !trusted.is_empty() {
        let peers = work.join("peers.pem");
        let pems: Vec<String> = trusted
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        std::fs::write(&peers, pems.concat()).unwrap();
        args.push("--privkey".into());
        args.push(client.private.clone().into());
        args.push("--peers".into());
        args.push(peers.into());
    }
    args.extend(dirs.iter().map(|d| (*d).into()));
    args
}

pub fn os(args: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    args.iter().map(|a| a.as_os_str()).collect()
}

/// A daemon served in-process by the library, for tests that need to wrap
/// its store (fault injection); `realize` still runs as a real process.
pub struct InProcessDaemon {
    pub addr: String,
    pub key: KeyFiles,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessDaemon {
    pub async fn start(work: &Path, service: Arc<dyn Service>, client: &KeyFiles) -> Self {
        let key = KeyFiles::new(work, "inprocess");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let peers = BTreeMap::from([("client".to_string(), client.public_key())]);
        let server_key = PrivateKey::from_pem(&key.key.to_pem()).unwrap();
        let task = tokio::spawn(async move {
            let exit = realize_daemon::serve(listener, &server_key, &peers, service, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
            assert_eq!(exit, realize_daemon::Exit::Clean);
        });
        InProcessDaemon {
            addr,
            key,
            shutdown: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap();
    }
}

pub fn dir_id(id: &str) -> DirId {
    DirId::new(id).unwrap()
}

/// Starts `realize` with `args` without waiting for it, its stdout piped.
pub fn spawn_realize(args: &[&std::ffi::OsStr]) -> Child {
    realize_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for a child's exit and output, within the process timeout.
pub async fn wait_output(child: Child) -> Output {
    tokio::time::timeout(PROCESS_TIMEOUT, child.wait_with_output())
        .await
        .expect("realize hung")
        .unwrap()
}

/// Waits until `path` exists with at least `size` bytes. The filesystem has
/// no readiness signal to await, so this polls, briefly and with a timeout.
pub async fn wait_for_file(path: &Path, size: u64) {
    tokio::time::timeout(PROCESS_TIMEOUT, async {
        loop {
            if std::fs::metadata(path).is_ok_and(|m| m.len() >= size) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never reached {size} bytes", path.display()));
}

/// Sends `signal` (e.g. "INT") to a child process.
pub fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the process already exited");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Forwards connections to `target`, counting what clients send; the first
/// connection is cut once it has carried `cut_after` bytes.
pub async fn cutting_proxy(target: String, cut_after: u64) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        let first = Arc::new(AtomicBool::new(true));
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&target).await.unwrap();
            let limit = first.swap(false, Ordering::SeqCst).then_some(cut_after);
            tokio::spawn(pump(client, server, Arc::clone(&counter), limit));
        }
    });
    (addr, sent)
}

async fn pump(client: TcpStream, server: TcpStream, sent: Arc<AtomicU64>, limit: Option<u64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut carried = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            carried += n as u64;
            sent.fetch_add(n as u64, Ordering::Relaxed);
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if limit.is_some_and(|limit| carried >= limit) {
                // The cut: both directions end here, as with a dead link.
                return;
            }
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        () = upstream => {}
        _ = downstream => {}
    }
}

/// The resident memory (VmRSS) of process `pid`, in bytes.
pub fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .map(|n| n.trim().parse().unwrap())
        .expect("no VmRSS in /proc/PID/status");
    kib * 1024
}

/// A gRPC channel to `daemon` as `client`, over mutual TLS.
pub async fn channel(
    daemon: &Daemon,
    client: &KeyFiles,
) -> Result<tonic::transport::Channel, realize_net::connection::ConnectError> {
    let tls = realize_net::tls::client_config(&client.key, [daemon.key.public_key()]).unwrap();
    realize_net::connection::connect(
        &daemon.addr,
        tls,
        Duration::from_secs(10),
        realize_net::throttle::SendLimit::new(None),
    )
    .await
}

/// The realize.v1 API of `daemon`, as `client`.
pub async fn api(
    daemon: &Daemon,
    client: &KeyFiles,
) -> realize_proto::pb::realize_client::RealizeClient<tonic::transport::Channel> {
    realize_proto::pb::realize_client::RealizeClient::new(channel(daemon, client).await.unwrap())
}
