//! Benchmarks that drive the release binaries the way a user would.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::run;

/// A `realized` on loopback serving one directory `d`, with the keys a
/// client needs to reach it.
struct Daemon {
    child: Child,
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    bin: PathBuf,
    work: PathBuf,
}

impl Bench {
    fn new(root: &Path) -> anyhow::Result<Self> {
        run("cargo", &["build", "--release", "--bins"])?;
        // tmpfs when there is one, so the disk is not what is measured.
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let work = base.join(format!("realize-bench-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let bench = Bench {
            bin: root.join("target/release"),
            work,
        };
        for name in ["client", "daemon"] {
            let status = Command::new(bench.bin.join("realize"))
                .args(["keygen", "--out"])
                .arg(bench.work.join(name))
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("realize keygen failed");
            }
        }
        Ok(bench)
    }

    fn daemon(&self, root: &Path) -> anyhow::Result<Daemon> {
        let config = self.work.join("realized.toml");
        std::fs::write(
            &config,
            format!(
                "address = \"127.0.0.1:0\"\nprivkey = \"daemon.key\"\n[dirs]\nd = {root:?}\n[peers.client]\npublic_key_file = \"client.pub.pem\"\n"
            ),
        )?;
        let mut child = Command::new(self.bin.join("realized"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn,realize_daemon=info")
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start realized")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                bail!("realized exited before listening");
            };
            if let Some(rest) = line?.split("listening on ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Ok(Daemon { child, addr })
    }

    /// Moves one file of `size` bytes and returns the wall time of `realize`.
    fn timed_move(
        &self,
        size: u64,
        upload: bool,
        flag: &str,
        rate: u64,
    ) -> anyhow::Result<Duration> {
        let (src, dst) = (self.work.join("src"), self.work.join("dst"));
        for dir in [&src, &dst] {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
        }
        let data: Vec<u8> = (0..size)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        std::fs::write(src.join("f.bin"), &data)?;
        let daemon = self.daemon(if upload { &dst } else { &src })?;
        let mut command = Command::new(self.bin.join("realize"));
        if upload {
            command
                .arg("--src-path")
                .arg(&src)
                .args(["--dst-addr", &daemon.addr]);
        } else {
            command
                .args(["--src-addr", &daemon.addr])
                .arg("--dst-path")
                .arg(&dst);
        }
        command
            .arg("--privkey")
            .arg(self.work.join("client.key"))
            .arg("--peers")
            .arg(self.work.join("daemon.pub.pem"))
            .args(["--quiet", flag, &rate.to_string(), "d"])
            .stdout(Stdio::null());
        let started = Instant::now();
        let status = command.status()?;
        let elapsed = started.elapsed();
        if !status.success() || std::fs::read(dst.join("f.bin"))? != data {
            bail!("the move failed");
        }
        Ok(elapsed)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// For each limit and direction: a move of 4 s worth of bytes (the rate held
/// once started), and of 0.5 s worth (how much the start bursts).
pub fn throttle(root: &Path) -> anyhow::Result<()> {
    let bench = Bench::new(root)?;
    let mut table = String::from(
        "| direction | limit | 4 s of data: rate | rate / limit | 0.5 s of data: rate | rate / limit |\n|---|---|---|---|---|---|\n",
    );
    for (direction, flag, upload) in [
        ("up (local → daemon)", "--throttle-up", true),
        ("down (daemon → local)", "--throttle-down", false),
    ] {
        for limit in [1_000_000u64, 5_000_000, 20_000_000] {
            let mut row = format!("| {direction} | {} MB/s |", limit / 1_000_000);
            for seconds in [4.0, 0.5] {
                let size = (limit as f64 * seconds) as u64;
                let elapsed = bench.timed_move(size, upload, flag, limit)?;
                let rate = size as f64 / elapsed.as_secs_f64();
                write!(
                    row,
                    " {:.2} MB/s | {:.3} |",
                    rate / 1e6,
                    rate / limit as f64
                )?;
            }
            eprintln!("{row}");
            table.push_str(&row);
            table.push('\n');
        }
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let doc = format!(
        "# Throttle accuracy\n\n\
         Written by `cargo xtask bench throttle`: release binaries, a real `realized` on loopback with TLS, files on tmpfs, {} cores ({machine}).\n\
         The rate is the file's size over the wall time of the whole `realize` run (start-up, TLS handshake, listing and hashing included).\n\
         The target is a rate within 5% of the limit once a transfer is under way (the 4 s column).\n\
         The 0.5 s column shows the start: the token bucket begins with 0.1 s worth of bytes, and the wait owed for the last write is never served, so short transfers run above the limit.\n\n{table}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let path = root.join("docs/bench-throttle.md");
    std::fs::write(&path, doc)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
