//! CPU time of the processes a run involves, from `/proc/PID/stat`: a
//! process's own threads plus the children it has reaped, so a tool that
//! forks (rsync, ssh, sshd) is counted whole.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// User and system time of `pid`: (its own threads, the children it reaped).
fn times(pid: &str) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name, in parentheses, may hold spaces: fields start after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14–17 of proc(5) (utime, stime, cutime, cstime); `rest` starts at field 3.
    let ticks = |field: usize| -> anyhow::Result<u64> {
        fields
            .get(field - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {field} in /proc/{pid}/stat"))
    };
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let seconds = |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz);
    Ok((
        seconds(ticks(14)? + ticks(15)?),
        seconds(ticks(16)? + ticks(17)?),
    ))
}

/// CPU time of every child this process has waited for: read before and
/// after a command to get the command's, its own children included.
pub fn reaped_by_self() -> anyhow::Result<Duration> {
    Ok(times("self")?.1)
}

/// CPU time of the server `pid`, the connections it forked and reaped included.
pub fn server(pid: u32) -> anyhow::Result<Duration> {
    let (own, reaped) = times(&pid.to_string())?;
    Ok(own + reaped)
}

/// Waits until the server `pid` has reaped every child (such as the process
/// an rsync daemon or sshd forks per connection, which ends a little after
/// the client), so its CPU time counts them.
pub fn wait_for_children(pid: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    while has_children(pid)? {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("process {pid} still has children 30 s after the client ended");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn has_children(pid: u32) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let name = entry?.file_name();
        let Some(name) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(pid) {
            return Ok(true);
        }
    }
    Ok(false)
}
