//! The text report of `mmctl import` (`--json` prints the summary and records instead).

use super::{Outcome, Record, Summary};
use crate::table::{self, Table};

/// The import's report for people: the outcomes with their files and bytes, the rate,
/// the entries ignored, and every file refused or failed with why.
pub(super) fn render(summary: &Summary, records: &[Record]) -> String {
    let mut out = String::new();
    let verb = if summary.dry_run {
        "Dry run: nothing written"
    } else {
        "Imported"
    };
    out.push_str(&format!(
        "{verb}: {} files of {} models from {} into {}\n",
        summary.files, summary.models, summary.source, summary.destination
    ));
    let mut table = Table::new(&["OUTCOME", "FILES", "BYTES"]);
    let bytes_of = |o: Outcome| -> u64 {
        records
            .iter()
            .filter(|r| r.outcome == o)
            .map(|r| r.bytes)
            .sum()
    };
    for (name, outcome, n) in [
        ("published", Outcome::Published, summary.published),
        (
            "would publish",
            Outcome::WouldPublish,
            summary.would_publish,
        ),
        ("skipped (already there)", Outcome::Skipped, summary.skipped),
        ("refused", Outcome::Refused, summary.refused),
        ("failed", Outcome::Failed, summary.failed),
    ] {
        if n > 0 || matches!(outcome, Outcome::Published | Outcome::Refused) {
            table.row(vec![
                name.to_string(),
                n.to_string(),
                table::bytes(bytes_of(outcome)),
            ]);
        }
    }
    out.push_str(&table.render());
    out.push_str(&format!(
        "{:.1} s, {:.1} files/s, {}/s\n",
        summary.seconds,
        summary.files_per_second,
        table::bytes((summary.bytes as f64 / summary.seconds.max(1e-9)) as u64)
    ));
    if !summary.ignored_files.is_empty() {
        out.push_str(&format!(
            "ignored {} entries that are neither <id>.onnx, <id>/<version>/model.onnx nor an MLflow model (<id>/MLmodel), e.g. {}\n",
            summary.ignored_files.len(),
            summary.ignored_files[0]
        ));
    }
    let bad: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Refused | Outcome::Failed))
        .collect();
    if !bad.is_empty() {
        out.push('\n');
        let mut table = Table::new(&["MODEL", "VERSION", "OUTCOME", "WHY"]);
        for r in bad {
            table.row(vec![
                r.model.clone(),
                table::opt(r.version),
                if r.outcome == Outcome::Refused {
                    "refused"
                } else {
                    "failed"
                }
                .to_string(),
                format!("{} ({})", r.detail, r.file),
            ]);
        }
        out.push_str(&table.render());
        if summary.failed > 0 {
            out.push_str("failed imports resume where they stopped: run the same command again\n");
        }
    }
    out
}
