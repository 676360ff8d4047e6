//! A dry run's output: a line per file saying what the move would do, and
//! `Would move N files (X MB)`.

use std::time::Duration;

use bytesize::ByteSize;
use console::style;
use realize_core::{DirId, Plan, RelPath};
use serde_json::json;

use super::{Mode, Output, files, print_json};
use crate::run::{Ending, Run};

fn plan_word(plan: Plan) -> &'static str {
    match plan {
        Plan::Move => "move",
        Plan::Overwrite => "overwrite",
        Plan::Identical => "identical",
    }
}

impl Output {
    pub(super) fn planned_file(&self, dir: &DirId, path: &RelPath, size: u64, plan: Plan) {
        match self.mode {
            Mode::Json => print_json(json!({
                "event": "planned",
                "action": plan_word(plan),
                "dir": dir.as_str(),
                "path": path.as_str(),
                "size": size,
            })),
            _ => {
                let word = match plan {
                    Plan::Move => "MOVE",
                    Plan::Overwrite => "OVERWRITE",
                    // Nothing to copy; the source would still be deleted.
                    Plan::Identical => "IDENTICAL",
                };
                self.plan_line(word, dir, path, Some(size));
            }
        }
    }

    pub(super) fn plan_line(&self, word: &str, dir: &DirId, path: &RelPath, size: Option<u64>) {
        if let Mode::Lines { quiet: true } = self.mode {
            return;
        }
        let size = size
            .map(|size| format!(" ({})", ByteSize(size).display().si()))
            .unwrap_or_default();
        self.line_out(&format!(
            "{} {dir}/{path}{size}",
            style(format!("{word:<9}")).bold()
        ));
    }

    /// The summary of a dry run that listed everything; false when it was
    /// cut short or failed, which the ordinary summary reports.
    pub(super) fn plan_summary(&self, run: &Run, elapsed: Duration) -> bool {
        let summary = &run.summary;
        if !matches!(run.ending, Ending::Finished) || !summary.failures.is_empty() {
            return false;
        }
        let planned = summary.planned;
        if let Mode::Json = self.mode {
            print_json(json!({
                "event": "summary",
                "dry_run": true,
                "would_move": planned.files(),
                "bytes": planned.bytes,
                "move": planned.moved,
                "overwrite": planned.overwritten,
                "identical": planned.identical,
                "excluded": summary.files_excluded,
                "skipped": summary.files_skipped,
                "duration_ms": elapsed.as_millis() as u64,
            }));
            return true;
        }
        let mut detail = vec![
            format!("{} new", planned.moved),
            format!("{} overwritten", planned.overwritten),
            format!("{} identical", planned.identical),
        ];
        for (n, what) in [
            (summary.files_excluded, "excluded"),
            (summary.files_skipped, "skipped"),
        ] {
            if n > 0 {
                detail.push(format!("{n} {what}"));
            }
        }
        self.line_out(&format!(
            "Would move {} ({}): {}; nothing changed",
            files(planned.files()),
            ByteSize(planned.bytes).display().si(),
            detail.join(", ")
        ));
        true
    }
}
