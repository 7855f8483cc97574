//! Documentation generated from the code: the configuration tables
//! (`docs/configuration.md`, from `config/src/*/keys.rs`) and the metrics tables
//! (`docs/metrics.md`, from the registrations in `scorer/src/metrics.rs` and
//! `proxy/src/metrics.rs`). Each lives in its page between two marker lines; everything
//! outside the markers is prose written by hand. `cargo xtask docs` rewrites the regions,
//! `cargo xtask docs --check` (and this module's tests, part of `cargo xtask test`) fails
//! when a committed page differs from what the code says.

mod config;
mod metrics;
#[cfg(test)]
mod tests;

use std::path::Path;

use anyhow::{Context, Result, bail};

/// One generated region of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The configuration keys of both binaries (`docs/configuration.md`).
    Config,
    /// The metrics of both binaries (`docs/metrics.md`).
    Metrics,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Config, Table::Metrics];

    /// The page, relative to the workspace root.
    pub fn page(self) -> &'static str {
        match self {
            Table::Config => "docs/configuration.md",
            Table::Metrics => "docs/metrics.md",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Table::Config => "config-table",
            Table::Metrics => "metrics-table",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Table::Config => "config/src/scorer/keys.rs and config/src/proxy/keys.rs",
            Table::Metrics => "scorer/src/metrics.rs and proxy/src/metrics.rs",
        }
    }

    /// The region's text as the code at `root` says it, without the marker lines.
    pub fn render(self, root: &Path) -> Result<String> {
        match self {
            Table::Config => Ok(config::render()),
            Table::Metrics => metrics::render(root),
        }
    }

    fn begin(self) -> String {
        format!(
            "<!-- BEGIN GENERATED: {} (`cargo xtask docs` from {}; edit those, not this) -->",
            self.name(),
            self.source()
        )
    }

    fn end(self) -> String {
        format!("<!-- END GENERATED: {} -->", self.name())
    }
}

/// Rewrites (or with `check`, compares) the generated region of each of `tables`' pages.
pub fn run(root: &Path, tables: &[Table], check: bool) -> Result<()> {
    let mut stale = Vec::new();
    for &table in tables {
        let path = root.join(table.page());
        let page = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let updated = replace_region(&page, table, &table.render(root)?)?;
        if updated == page {
            continue;
        }
        if check {
            stale.push(table.page());
        } else {
            std::fs::write(&path, updated)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("updated {}", table.page());
        }
    }
    if !stale.is_empty() {
        bail!(
            "{} out of date with the code: run `cargo xtask docs`",
            stale.join(", ")
        );
    }
    Ok(())
}

/// `page` with the text between `table`'s markers replaced by `body`.
pub fn replace_region(page: &str, table: Table, body: &str) -> Result<String> {
    let (before, _, after) = split_region(page, table)?;
    Ok(format!(
        "{before}{}\n{body}{}\n{after}",
        table.begin(),
        table.end()
    ))
}

/// The text before the begin marker's line, the region between the markers, and the text
/// after the end marker's line.
pub fn split_region(page: &str, table: Table) -> Result<(&str, &str, &str)> {
    let begin_prefix = format!("<!-- BEGIN GENERATED: {} ", table.name());
    let end = table.end();
    let Some(start) = page.find(&begin_prefix) else {
        bail!(
            "{} has no line starting `{begin_prefix}`: put the markers where the table goes",
            table.page()
        );
    };
    let body_start = page[start..]
        .find('\n')
        .map(|n| start + n + 1)
        .with_context(|| format!("{}: nothing after the begin marker", table.page()))?;
    let Some(body_len) = page[body_start..].find(&end) else {
        bail!("{} has no `{end}` after its begin marker", table.page());
    };
    let end_start = body_start + body_len;
    let after = page[end_start + end.len()..]
        .strip_prefix('\n')
        .unwrap_or(&page[end_start + end.len()..]);
    Ok((&page[..start], &page[body_start..end_start], after))
}

/// A Markdown table cell: `|` would end the cell, a line break the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
