//! What stops a run early: SIGINT, SIGTERM, SIGUSR1 and `--max-duration`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use realize_core::Stop;
use tokio::signal::unix::{SignalKind, signal};

use crate::CutoffMode;

/// Why a run stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT: a hard stop, exit 130.
    Interrupt,
    /// SIGTERM: a hard stop, exit 143.
    Terminate,
    /// `--max-duration` reached.
    Deadline,
    /// SIGUSR1: finish the files in flight, start no other.
    SoftStop,
}

impl StopReason {
    /// The exit code a signal imposes, whatever happened to the files.
    pub fn signal_exit_code(self) -> Option<u8> {
        match self {
            StopReason::Interrupt => Some(130),
            StopReason::Terminate => Some(143),
            StopReason::Deadline | StopReason::SoftStop => None,
        }
    }
}

/// The first reason a run was told to stop, if any.
#[derive(Clone, Debug, Default)]
pub struct Reason(Arc<Mutex<Option<StopReason>>>);

impl Reason {
    pub fn get(&self) -> Option<StopReason> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `reason` unless one is recorded; returns the one before.
    fn record(&self, reason: StopReason) -> Option<StopReason> {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = *current;
        current.get_or_insert(reason);
        before
    }
}

/// Turns signals into stops: SIGINT and SIGTERM stop hard (a second one
/// exits at once, with no summary), SIGUSR1 stops softly. Must run inside
/// the tokio runtime.
pub fn watch_signals(stop: Stop, reason: Reason) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut soft = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            let got = tokio::select! {
                Some(()) = interrupt.recv() => StopReason::Interrupt,
                Some(()) = terminate.recv() => StopReason::Terminate,
                Some(()) = soft.recv() => StopReason::SoftStop,
                else => return,
            };
            let before = reason.record(got);
            match got.signal_exit_code() {
                Some(code) if before.is_some_and(|b| b.signal_exit_code().is_some()) => {
                    // The second Ctrl-C: the user does not want to wait.
                    std::process::exit(i32::from(code));
                }
                Some(_) => {
                    tracing::info!(signal = ?got, "stopping: files in flight are interrupted");
                    stop.hard();
                }
                None => {
                    tracing::info!("stopping after the files in flight");
                    stop.soft();
                }
            }
        }
    });
    Ok(())
}

/// Stops the run at `deadline` as `mode` says. Must run inside the tokio runtime.
pub fn watch_deadline(stop: Stop, reason: Reason, deadline: Instant, mode: CutoffMode) {
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        reason.record(StopReason::Deadline);
        tracing::info!(?mode, "--max-duration reached");
        match mode {
            CutoffMode::Hard => stop.hard(),
            CutoffMode::Soft | CutoffMode::Cautious => stop.soft(),
        }
    });
}
