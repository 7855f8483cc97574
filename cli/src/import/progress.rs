//! `mmctl import`'s progress bar: bytes done of all the files, and the counts of files
//! done, skipped, refused and failed under it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Outcome, Record};

/// Counters the progress bar shows.
#[derive(Default)]
pub(super) struct Progress {
    done: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

impl Progress {
    /// Counts one model's records, advances the bar by their bytes and shows the totals
    /// (of `files` in all) under it.
    pub(super) fn count(&self, records: &[Record], bar: &ProgressBar, files: usize) {
        for record in records {
            let counter = match record.outcome {
                Outcome::Refused => Some(&self.refused),
                Outcome::Failed => Some(&self.failed),
                Outcome::Skipped => Some(&self.skipped),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Relaxed);
            bar.inc(record.bytes);
        }
        bar.set_message(format!(
            "{}/{files} files · {} skipped · {} refused · {} failed",
            self.done.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        ));
    }
}

/// The bar over all the files' bytes, drawn on stderr unless `hidden`.
pub(super) fn progress_bar(hidden: bool, total_bytes: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total_bytes),
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(4)
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}\n  {msg}",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}
