//! What `realize` shows: progress bars for a person, plain lines for a log, JSON for a script.
//!
//! [`Output`] implements realize-core's `Progress`. Lines (`Moved`, `ERROR`,
//! the summary) are the same in every text mode; bars are drawn only on a
//! terminal, and `--quiet` keeps only errors and the summary.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use realize_core::ErrorChain;
use realize_core::{DirId, FileProgress, MoveError, Phase, Plan, Progress, RelPath};
use serde_json::json;

use crate::run::{Ending, Run};

mod plan;

/// How to show a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Shows a move's events; see the module docs.
#[derive(Debug)]
pub struct Output {
    mode: Mode,
    started: AtomicU64,
    /// Files finished (moved or failed) in this try: the `[n/total]` counter.
    done: Arc<AtomicU64>,
    total: AtomicU64,
    /// A dry run: each file's plan and a `Would move` summary.
    dry_run: bool,
}

/// Per-file bars drawn at once, for the largest files in flight; the overall
/// line counts every file.
const MAX_FILE_BARS: usize = 8;

#[derive(Debug)]
enum Mode {
    Bars {
        bars: MultiProgress,
        listing: Mutex<Option<ProgressBar>>,
        /// Files done/total, bytes done/total, rate and ETA.
        overall: ProgressBar,
        in_flight: Arc<Mutex<InFlight>>,
    },
    Lines {
        quiet: bool,
    },
    Json,
}

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Hashing => "Hashing",
        Phase::Copying => "Copying",
        Phase::Checking => "Checking",
        Phase::Deleting => "Deleting",
    }
}

/// Writes one line to stdout; a closed stdout (`realize | head`) must not
/// stop a move, so write errors are ignored.
fn print_out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn print_err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn print_json(value: serde_json::Value) {
    print_out(&value.to_string());
}

impl Output {
    /// `terminal`: stdout is a terminal, so bars can be drawn.
    pub fn new(format: Format, quiet: bool, terminal: bool) -> Self {
        let mode = match format {
            Format::Json => Mode::Json,
            Format::Text if terminal && !quiet => Mode::Bars {
                bars: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                listing: Mutex::new(None),
                overall: ProgressBar::hidden(),
                in_flight: Arc::default(),
            },
            Format::Text => Mode::Lines { quiet },
        };
        Output {
            mode,
            started: AtomicU64::new(0),
            done: Arc::default(),
            total: AtomicU64::new(0),
            dry_run: false,
        }
    }

    /// The output of a dry run (`--dry-run`).
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Where log lines go: stderr, with the bars out of the way while each
    /// line is written.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter {
            bars: match &self.mode {
                Mode::Bars { bars, .. } => Some(bars.clone()),
                _ => None,
            },
        }
    }

    /// Prints a line on stdout above the bars, if any.
    fn line_out(&self, line: &str) {
        match &self.mode {
            Mode::Bars { bars, .. } => bars.suspend(|| print_out(line)),
            _ => print_out(line),
        }
    }

    fn line_err(&self, line: &str) {
        match &self.mode {
            Mode::Bars { bars, .. } => bars.suspend(|| print_err(line)),
            _ => print_err(line),
        }
    }

    fn clear_listing(&self) {
        if let Mode::Bars { listing, .. } = &self.mode
            && let Some(spinner) = listing.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            spinner.finish_and_clear();
        }
    }

    fn clear_overall(&self) {
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.finish_and_clear();
        }
    }

    /// A move that could not start at all.
    pub fn fatal(&self, error: &anyhow::Error) {
        self.clear_listing();
        self.clear_overall();
        match self.mode {
            Mode::Json => {
                print_json(json!({"event": "error", "error": ErrorChain(&**error).to_string()}))
            }
            _ => self.line_err(&format!(
                "{} {}",
                style(format!("{:<9}", "ERROR")).bold().red().for_stderr(),
                ErrorChain(&**error)
            )),
        }
    }

    /// A try failed for a network reason; try number `attempt` (of `of`, if
    /// the number of tries is what limits them) starts after `delay`.
    pub fn retrying(&self, attempt: u32, of: Option<u32>, delay: Duration, reason: &str) {
        let delay = Duration::from_millis(delay.as_millis() as u64);
        match self.mode {
            Mode::Json => print_json(json!({
                "event": "retry",
                "attempt": attempt,
                "attempts": of,
                "delay_ms": delay.as_millis() as u64,
                "error": reason,
            })),
            _ => self.line_err(&format!(
                "{} try {attempt}{} in {}: {reason}",
                style(format!("{:<9}", "RETRY"))
                    .bold()
                    .yellow()
                    .for_stderr(),
                of.map(|of| format!(" of {of}")).unwrap_or_default(),
                humantime::format_duration(delay)
            )),
        }
    }

    /// The last line: what moved, what failed, what was left, and the
    /// daemon given up on, if any.
    pub fn summary(&self, run: &Run, elapsed: Duration) {
        self.clear_listing();
        self.clear_overall();
        if self.dry_run && self.plan_summary(run, elapsed) {
            return;
        }
        let summary = &run.summary;
        let failed = summary.failures.len() as u64;
        let gave_up = match &run.ending {
            Ending::GaveUp(gave_up) => Some(gave_up),
            _ => None,
        };
        if let Mode::Json = self.mode {
            let mut value = json!({
                "event": "summary",
                "moved": summary.files_moved,
                "failed": failed,
                "interrupted": summary.files_interrupted,
                "skipped": summary.files_skipped,
                "excluded": summary.files_excluded,
                "finished": matches!(run.ending, Ending::Finished),
                "bytes_moved": summary.bytes_moved,
                "bytes_sent": summary.bytes_sent,
                "duration_ms": elapsed.as_millis() as u64,
            });
            if !run.partial_files_left.is_empty() {
                value["partial_files_left"] = run
                    .partial_files_left
                    .iter()
                    .map(|(dir, n)| (dir.to_string(), json!(n)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            if let Some(gave_up) = gave_up {
                value["error"] = json!({
                    "kind": if gave_up.reached { "connection_lost" } else { "unreachable" },
                    "side": gave_up.side.to_string(),
                    "address": gave_up.address,
                    "cause": gave_up.cause,
                    "tries": gave_up.tries,
                    "elapsed_ms": gave_up.elapsed.as_millis() as u64,
                    "message": gave_up.to_string(),
                });
            }
            print_json(value);
            return;
        }
        if !run.partial_files_left.is_empty() {
            let total: u64 = run.partial_files_left.iter().map(|(_, n)| n).sum();
            let dirs: Vec<String> = run
                .partial_files_left
                .iter()
                .map(|(dir, n)| format!("{dir}: {n}"))
                .collect();
            let noun = if total == 1 {
                "partial file"
            } else {
                "partial files"
            };
            self.line_err(&format!(
                "{total} {noun} left at the destination ({}): the next run resumes them",
                dirs.join(", ")
            ));
        }
        if let Some(gave_up) = gave_up {
            if failed + summary.files_moved > 0 {
                self.line_err(&format!(
                    "{} {failed} failed, {} moved",
                    style("ERROR").bold().red().for_stderr(),
                    summary.files_moved
                ));
            }
            self.line_err(&format!("realize: {gave_up}"));
        } else if failed > 0 {
            self.line_err(&format!(
                "{} {failed} failed, {} moved",
                style("ERROR").bold().red().for_stderr(),
                summary.files_moved
            ));
        } else if summary.files_interrupted > 0 || matches!(run.ending, Ending::CutShort) {
            self.line_err(&format!(
                "{} {} moved, {} interrupted",
                style("INTERRUPTED").bold().yellow().for_stderr(),
                summary.files_moved,
                summary.files_interrupted
            ));
        } else {
            let elapsed = Duration::from_millis(elapsed.as_millis() as u64);
            let mut skipped = match summary.files_skipped {
                0 => String::new(),
                n => format!(", {n} skipped"),
            };
            if summary.files_excluded > 0 {
                skipped += &format!(", {} excluded", summary.files_excluded);
            }
            self.line_out(&format!(
                "Moved {} ({}) in {}{skipped}",
                files(summary.files_moved),
                bytesize::ByteSize(summary.bytes_moved).display().si(),
                humantime::format_duration(elapsed)
            ));
        }
    }
}

/// `1 file`, `2 files`.
fn files(n: u64) -> String {
    match n {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    }
}

impl Progress for Output {
    fn listing(&self, dir: &DirId) {
        if let Mode::Bars { bars, listing, .. } = &self.mode {
            let spinner = bars.add(ProgressBar::new_spinner());
            spinner.set_style(
                ProgressStyle::with_template("{prefix:<9} {msg} [{spinner}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            spinner.set_prefix("Checking");
            spinner.set_message(dir.to_string());
            spinner.enable_steady_tick(Duration::from_millis(100));
            if let Some(previous) = listing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(spinner)
            {
                previous.finish_and_clear();
            }
        }
    }

    fn dir_failed(&self, dir: &DirId, error: &MoveError) {
        match self.mode {
            Mode::Json => print_json(json!({
                "event": "dir_failed",
                "dir": dir.as_str(),
                "error": ErrorChain(error).to_string(),
            })),
            _ => self.line_err(&format!(
                "{} {dir}: {}",
                style(format!("{:<9}", "ERROR")).bold().red().for_stderr(),
                ErrorChain(error)
            )),
        }
    }

    fn skipped(&self, dir: &DirId, path: &RelPath) {
        const WHY: &str = "named like a partial file, not moved";
        match self.mode {
            Mode::Lines { quiet: true } => {}
            Mode::Json => print_json(json!({
                "event": "skipped",
                "dir": dir.as_str(),
                "path": path.as_str(),
                "reason": WHY,
            })),
            _ => self.line_err(&format!(
                "{} {dir}/{path}: {WHY}",
                style(format!("{:<9}", "SKIPPED"))
                    .bold()
                    .yellow()
                    .for_stderr(),
            )),
        }
    }

    fn excluded(&self, dir: &DirId, path: &RelPath) {
        // A text run says how many in its summary, as rclone does, rather
        // than a line per file left by choice; a dry run lists them all.
        match self.mode {
            Mode::Json => print_json(json!({
                "event": "excluded",
                "dir": dir.as_str(),
                "path": path.as_str(),
            })),
            _ if self.dry_run => self.plan_line("EXCLUDED", dir, path, None),
            _ => {}
        }
    }

    fn planned(&self, dir: &DirId, path: &RelPath, size: u64, plan: Plan) {
        self.planned_file(dir, path, size, plan);
    }

    fn totals(&self, files: u64, bytes: u64) {
        self.clear_listing();
        // Each try lists afresh, so its files count from 1 again.
        self.started.store(0, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.total.store(files, Ordering::Relaxed);
        if let Mode::Bars { bars, overall, .. } = &self.mode {
            overall.set_length(bytes);
            overall.set_position(0);
            overall.set_message(format!("0/{files} files"));
            overall.set_style(
                ProgressStyle::with_template(
                    "{msg}, {decimal_bytes}/{decimal_total_bytes}, {decimal_bytes_per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            if overall.is_hidden() {
                bars.insert(0, overall.clone());
            }
        }
    }

    fn file(&self, dir: &DirId, path: &RelPath, size: u64) -> Arc<dyn FileProgress> {
        let index = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.total.load(Ordering::Relaxed);
        let bar = match &self.mode {
            Mode::Json => {
                print_json(json!({
                    "event": "started",
                    "dir": dir.as_str(),
                    "path": path.as_str(),
                    "size": size,
                    "index": index,
                    "total": total,
                }));
                None
            }
            Mode::Bars {
                bars, in_flight, ..
            } => {
                // Hidden until it is among the largest files in flight.
                let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::hidden());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:<9} {msg} [{bar:25}] {decimal_bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(format!("{dir}/{path}"));
                lock(in_flight).start(bars, size, index, bar.clone());
                Some(bar)
            }
            Mode::Lines { .. } => None,
        };
        Arc::new(FileOutput {
            done: Arc::clone(&self.done),
            index,
            total,
            counted: AtomicU64::new(0),
            dir: dir.clone(),
            path: path.clone(),
            size,
            bar,
            output: self.shared(),
        })
    }
}

impl Output {
    /// What a file's output needs from the move's output: a copy of its mode.
    fn shared(&self) -> SharedMode {
        match &self.mode {
            Mode::Bars {
                bars,
                overall,
                in_flight,
                ..
            } => SharedMode::Bars {
                bars: bars.clone(),
                overall: overall.clone(),
                in_flight: Arc::clone(in_flight),
            },
            Mode::Lines { quiet } => SharedMode::Lines { quiet: *quiet },
            Mode::Json => SharedMode::Json,
        }
    }
}

#[derive(Debug, Clone)]
enum SharedMode {
    Bars {
        bars: MultiProgress,
        overall: ProgressBar,
        in_flight: Arc<Mutex<InFlight>>,
    },
    Lines {
        quiet: bool,
    },
    Json,
}

/// The files in flight with their (possibly hidden) bars; only the
/// [`MAX_FILE_BARS`] largest are drawn.
#[derive(Debug, Default)]
struct InFlight {
    /// Size, the file's index in this try, its bar.
    files: Vec<(u64, u64, ProgressBar)>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl InFlight {
    fn start(&mut self, bars: &MultiProgress, size: u64, index: u64, bar: ProgressBar) {
        self.files.push((size, index, bar));
        self.arrange(bars);
    }

    fn finish(&mut self, bars: &MultiProgress, index: u64, bar: &ProgressBar) {
        self.files.retain(|(_, i, _)| *i != index);
        bars.remove(bar);
        self.arrange(bars);
    }

    /// Draws the largest files' bars, hides the others.
    fn arrange(&mut self, bars: &MultiProgress) {
        self.files
            .sort_by_key(|(size, _, _)| std::cmp::Reverse(*size));
        for (rank, (_, _, bar)) in self.files.iter().enumerate() {
            match (rank < MAX_FILE_BARS, bar.is_hidden()) {
                (true, true) => {
                    bars.add(bar.clone());
                }
                (false, false) => {
                    bars.remove(bar);
                    bar.set_draw_target(ProgressDrawTarget::hidden());
                }
                _ => {}
            }
        }
    }
}

struct FileOutput {
    /// Files finished in this try, shared by all files, and how many there are.
    done: Arc<AtomicU64>,
    /// The file's place among those started in this try.
    index: u64,
    total: u64,
    /// Bytes of this file added to the overall line so far.
    counted: AtomicU64,
    dir: DirId,
    path: RelPath,
    size: u64,
    bar: Option<ProgressBar>,
    output: SharedMode,
}

impl FileOutput {
    /// Ends the file's bar and, if it moved or failed, counts it done; returns
    /// the `[n/total]` counter.
    fn finish_bar(&self, finished: bool) -> String {
        let done = if finished {
            self.done.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.done.load(Ordering::Relaxed)
        };
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            if let SharedMode::Bars {
                bars,
                overall,
                in_flight,
            } = &self.output
            {
                lock(in_flight).finish(bars, self.index, bar);
                if finished {
                    // A file sent as a delta, or not at all, still counts whole.
                    let counted = self.counted.swap(self.size, Ordering::Relaxed);
                    overall.inc(self.size.saturating_sub(counted));
                }
                overall.set_message(format!("{done}/{} files", self.total));
            }
        }
        format!("[{done}/{}]", self.total)
    }

    fn print_json(&self, event: &str, error: Option<&MoveError>) {
        let mut value = json!({
            "event": event,
            "dir": self.dir.as_str(),
            "path": self.path.as_str(),
            "size": self.size,
        });
        if let Some(error) = error {
            value["error"] = ErrorChain(error).to_string().into();
        }
        print_json(value);
    }
}

impl FileProgress for FileOutput {
    fn phase(&self, phase: Phase) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(phase_word(phase));
        }
    }

    fn bytes(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            if let SharedMode::Bars { overall, .. } = &self.output {
                // Hashing and checking report bytes too: the overall line
                // counts each byte of the file once.
                let before = self.counted.load(Ordering::Relaxed);
                let now = bar.position().min(self.size);
                if now > before {
                    self.counted.store(now, Ordering::Relaxed);
                    overall.inc(now - before);
                }
            }
        }
    }

    fn moved(&self) {
        let counter = self.finish_bar(true);
        let line = || {
            format!(
                "{} {} {}/{}",
                counter,
                style(format!("{:<9}", "Moved")).bold().green(),
                self.dir,
                self.path
            )
        };
        match &self.output {
            SharedMode::Bars { bars, .. } => bars.suspend(|| print_out(&line())),
            SharedMode::Lines { quiet: false } => print_out(&line()),
            SharedMode::Lines { quiet: true } => {}
            SharedMode::Json => self.print_json("moved", None),
        }
    }

    fn failed(&self, error: &MoveError) {
        let counter = self.finish_bar(true);
        let line = || {
            format!(
                "{} {} {}/{}: {}",
                counter,
                style(format!("{:<9}", "ERROR")).bold().red().for_stderr(),
                self.dir,
                self.path,
                ErrorChain(error)
            )
        };
        match &self.output {
            SharedMode::Bars { bars, .. } => bars.suspend(|| print_err(&line())),
            SharedMode::Lines { .. } => print_err(&line()),
            SharedMode::Json => self.print_json("failed", Some(error)),
        }
    }

    fn interrupted(&self) {
        self.finish_bar(false);
        if let SharedMode::Json = self.output {
            self.print_json("interrupted", None);
        }
    }
}

/// A `tracing` writer to stderr that keeps log lines from tearing the bars.
#[derive(Clone, Debug)]
pub struct LogWriter {
    bars: Option<MultiProgress>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.bars {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}
