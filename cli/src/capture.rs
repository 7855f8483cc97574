//! `mmctl capture`: turn payload capture on or off for a model-id prefix (or one model)
//! at runtime, and show the rules and the answering scorer's counters. The rules live in
//! the model store; the proxy forwards each call to a scorer and has every scorer read
//! the rules again after a change (docs/capture.md).

use std::fmt::Write as _;

use anyhow::bail;
use clap::Subcommand;
use manymodels_contract::capture::{CaptureSet, CaptureView};
use manymodels_contract::route;
use serde_json::json;

use crate::client::Client;
use crate::operate::Output;

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Capture RATE of the requests of every model whose id starts with PREFIX (with
    /// --exact: of the model PREFIX alone)
    Set {
        prefix: String,
        /// The share of requests captured, 0-1
        #[arg(long)]
        rate: f64,
        /// Only the model named PREFIX, not every model it starts
        #[arg(long)]
        exact: bool,
    },
    /// The rules (those your key may see) and the answering scorer's counters
    Show,
    /// Stop capturing PREFIX (its prefix rule and its exact rule)
    Drop { prefix: String },
    /// Make every scorer read the rules from the store now
    Refresh,
}

pub async fn capture(client: &Client, command: &CaptureCommand) -> anyhow::Result<Output> {
    match command {
        CaptureCommand::Set {
            prefix,
            rate,
            exact,
        } => {
            if !(0.0..=1.0).contains(rate) {
                bail!("--rate must be within 0-1, not {rate}");
            }
            let body = CaptureSet {
                rate: *rate,
                exact: *exact,
            };
            let view: CaptureView = client
                .put_json(&route::capture_rule(prefix), &body)
                .await?
                .read()?;
            let what = if *exact {
                "model"
            } else {
                "models starting with"
            };
            let text = format!(
                "capturing {} of the requests of {what} {prefix}\n",
                percent(*rate)
            );
            Output::of(&view, text)
        }
        CaptureCommand::Show => {
            let view: CaptureView = client.get(route::CAPTURE).await?.read()?;
            let text = show_text(&view);
            Output::of(&view, text)
        }
        CaptureCommand::Drop { prefix } => {
            let view: CaptureView = client.delete(&route::capture_rule(prefix)).await?.read()?;
            Output::of(&view, format!("{prefix}: capture dropped\n"))
        }
        CaptureCommand::Refresh => {
            let view: CaptureView = client
                .post(route::CAPTURE_REFRESH, &json!({}))
                .await?
                .read()?;
            Output::of(&view, "every scorer reads the capture rules again\n".into())
        }
    }
}

fn percent(rate: f64) -> String {
    format!("{}%", (rate * 1e6).round() / 1e4)
}

/// The rules, then the answering scorer's counters.
pub fn show_text(view: &CaptureView) -> String {
    let mut text = String::new();
    if view.rules.is_empty() {
        text.push_str("no capture rules: nothing is captured\n");
    } else {
        let _ = writeln!(text, "{:<40} {:>8}  match", "prefix", "rate");
        for rule in &view.rules {
            let _ = writeln!(
                text,
                "{:<40} {:>8}  {}",
                rule.prefix,
                percent(rule.rate),
                if rule.exact { "exact" } else { "prefix" }
            );
        }
    }
    let c = &view.counters;
    let _ = writeln!(
        text,
        "scorer {}: {} queued, {} dropped (queue full), {} written, {} failed; {} bytes waiting; written under {}/",
        view.scorer, c.queued, c.dropped, c.written, c.failed, c.queue_bytes, view.prefix
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use manymodels_contract::capture::{CaptureCounters, CaptureRule};

    #[test]
    fn the_view_lists_rules_and_counters() {
        let view = CaptureView {
            rules: vec![
                CaptureRule::new("acme-", 0.1, false).unwrap(),
                CaptureRule::new("acme-7", 1.0, true).unwrap(),
            ],
            prefix: "_captures".into(),
            scorer: "s1".into(),
            counters: CaptureCounters {
                queued: 5,
                dropped: 1,
                written: 4,
                failed: 0,
                queue_bytes: 0,
            },
        };
        let text = show_text(&view);
        assert!(
            text.contains("acme-") && text.contains("10%") && text.contains("exact"),
            "{text}"
        );
        assert!(text.contains("5 queued, 1 dropped"), "{text}");
        assert!(show_text(&CaptureView::default()).starts_with("no capture rules"));
    }
}
