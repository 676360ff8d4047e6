//! `cargo xtask bench throttle`: how closely moves keep to `--throttle-up` and `--throttle-down`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::fixture::{Binaries, Daemon, Keys, scratch};

struct Bench {
    bins: Binaries,
    keys: Keys,
    work: PathBuf,
}

impl Bench {
    fn new(bins: Binaries) -> anyhow::Result<Self> {
        let work = scratch("bench-throttle")?;
        let keys = Keys::generate(&bins, &work)?;
        Ok(Bench { bins, keys, work })
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
        let config = self.work.join("realized.toml");
        self.keys
            .daemon_config(&config, &[("d", if upload { &dst } else { &src })])?;
        let daemon = Daemon::start(
            &self.bins.realized,
            &config,
            &self.work.join("realized.log"),
        )?;
        let mut command = Command::new(&self.bins.realize);
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
            .arg(&self.keys.client_key)
            .arg("--peers")
            .arg(&self.keys.daemon_pub)
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
pub fn throttle(root: &Path, bins: Binaries) -> anyhow::Result<()> {
    let bench = Bench::new(bins)?;
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
    let machine = crate::cpu_model();
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
