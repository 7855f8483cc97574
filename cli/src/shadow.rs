//! `mmctl shadow`: run a model's candidate version on a share of its live requests,
//! compare the answers, and show, promote or drop it. The shadow lives in the model store;
//! changes are forwarded by the proxy to one scorer (which then has every scorer look), and
//! a view is the pool's: every scorer's counts summed by the proxy (docs/shadows.md).

use std::fmt::Write as _;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use manymodels_contract::shadow::{
    PoolShadows, RuleAction, ShadowDropped, ShadowPromoted, ShadowRule, ShadowSpec, ShadowView,
    Verdict, default_tolerance,
};
use serde_json::{Value, json};

use crate::client::Client;
use crate::operate::Output;
use crate::table::{Table, opt};

#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Run VERSION of ID on PERCENT of its live requests (those naming no version) and
    /// compare its answers with the live ones; the client always gets the live answer
    Set {
        id: String,
        version: u64,
        /// The share of live requests the candidate also runs on, above 0, at most 100
        #[arg(long)]
        percent: f64,
        /// Two float outputs agree when every element differs by at most this
        #[arg(long, default_value_t = default_tolerance())]
        tolerance: f64,
        /// The rule: judged once at least this many requests were compared, pool-wide
        #[arg(long, requires = "min_agreement")]
        min_requests: Option<u64>,
        /// The rule: the share of compared requests that must agree, 0-1 (0.995: 99.5%)
        #[arg(long, requires = "min_requests")]
        min_agreement: Option<f64>,
        /// The rule: the most candidate errors allowed
        #[arg(long, requires = "min_requests", default_value_t = 0)]
        max_errors: u64,
        /// The rule: what the proxies' judge does when it is met
        #[arg(long, value_enum, requires = "min_requests", default_value_t = Action::Report)]
        action: Action,
    },
    /// The pool's counts of ID's shadow (without ID: every shadow your key may see)
    Show { id: Option<String> },
    /// Pin the candidate (it becomes live) and drop the shadow
    Promote { id: String },
    /// Stop the shadow: the candidate runs no more
    Drop { id: String },
}

/// What the judge does when the rule is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Promote,
    Report,
}

fn path(id: &str) -> String {
    format!("/v2/admin/models/{id}/shadow")
}

pub async fn shadow(client: &Client, command: &ShadowCommand) -> anyhow::Result<Output> {
    match command {
        ShadowCommand::Set {
            id,
            version,
            percent,
            tolerance,
            min_requests,
            min_agreement,
            max_errors,
            action,
        } => {
            let spec = spec(
                *version,
                *percent,
                *tolerance,
                min_requests.zip(*min_agreement),
                *max_errors,
                *action,
            )?;
            let answer: Value = client.put_json(&path(id), &spec).await?.read()?;
            let text = set_text(id, &spec);
            Output::of(&answer, text)
        }
        ShadowCommand::Show { id } => {
            let view: PoolShadows = match id {
                Some(id) => client.get_as(&path(id)).await?,
                None => client.get_as("/v2/admin/shadows").await?,
            };
            let text = match id {
                Some(id) if view.shadows.is_empty() => {
                    let mut text = format!("{id}: no shadow\n");
                    text.push_str(&missing_text(&view.missing));
                    text
                }
                _ => show_text(&view),
            };
            Output::of(&view, text)
        }
        ShadowCommand::Promote { id } => {
            let promoted: ShadowPromoted = client
                .post(&format!("{}/promote", path(id)), &json!({}))
                .await?
                .read()?;
            let text = format!(
                "{id}: version {} promoted: pinned and live; shadow dropped\n",
                promoted.promoted.version
            );
            Output::of(&promoted, text)
        }
        ShadowCommand::Drop { id } => {
            let dropped: ShadowDropped = client.delete(&path(id)).await?.read()?;
            let text = match &dropped.dropped {
                Some(spec) => format!("{id}: shadow of version {} dropped\n", spec.version),
                None => format!("{id}: no shadow was set\n"),
            };
            Output::of(&dropped, text)
        }
    }
}

/// The spec `set` sends, its numbers checked as the scorer would.
fn spec(
    version: u64,
    percent: f64,
    tolerance: f64,
    rule: Option<(u64, f64)>,
    max_errors: u64,
    action: Action,
) -> anyhow::Result<ShadowSpec> {
    if !(percent > 0.0 && percent <= 100.0) {
        bail!("--percent must be above 0 and at most 100, not {percent}");
    }
    if !(tolerance >= 0.0 && tolerance.is_finite()) {
        bail!("--tolerance must be a finite number of at least 0, not {tolerance}");
    }
    let rule = match rule {
        None => None,
        Some((_, agreement)) if !(0.0..=1.0).contains(&agreement) => {
            bail!("--min-agreement is a fraction within 0-1 (0.995 for 99.5%), not {agreement}")
        }
        Some((min_requests, min_agreement)) => Some(ShadowRule {
            min_requests,
            min_agreement,
            max_errors,
            action: match action {
                Action::Promote => RuleAction::Promote,
                Action::Report => RuleAction::Report,
            },
        }),
    };
    Ok(ShadowSpec {
        version,
        percent,
        tolerance,
        rule,
        since_ms: 0,
    })
}

fn set_text(id: &str, spec: &ShadowSpec) -> String {
    let mut text = format!(
        "{id}: version {} shadows {}% of live requests (tolerance {})\n",
        spec.version, spec.percent, spec.tolerance
    );
    if let Some(rule) = &spec.rule {
        let _ = writeln!(text, "rule: {}", rule_text(rule));
    }
    text
}

fn rule_text(rule: &ShadowRule) -> String {
    format!(
        "at least {} compared, agreement at least {}, at most {} errors, then {}",
        rule.min_requests,
        pct(rule.min_agreement),
        rule.max_errors,
        match rule.action {
            RuleAction::Promote => "promote",
            RuleAction::Report => "report",
        }
    )
}

/// A fraction as a percentage, to 0.01%.
fn pct(fraction: f64) -> String {
    format!("{}%", (fraction * 1e4).round() / 1e2)
}

pub fn verdict_text(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::NoRule => "no rule",
        Verdict::Collecting => "collecting",
        Verdict::Met => "met",
        Verdict::Failed => "failed",
    }
}

/// Every shadow as a table, the rules below it, then the scorers whose counts are missing.
pub fn show_text(view: &PoolShadows) -> String {
    let mut text = String::new();
    if view.shadows.is_empty() {
        text.push_str("no shadows\n");
    } else {
        text.push_str(&table(&view.shadows));
        for shadow in &view.shadows {
            if let Some(rule) = &shadow.spec.rule {
                let _ = writeln!(text, "{}: rule: {}", shadow.model, rule_text(rule));
            }
        }
    }
    text.push_str(&missing_text(&view.missing));
    text
}

fn missing_text(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!("not counted (did not answer): {}\n", missing.join(", "))
    }
}

/// The shadows' counts, one row each.
pub fn table(shadows: &[ShadowView]) -> String {
    let mut table = Table::new(&[
        "MODEL",
        "LIVE",
        "CANDIDATE",
        "SHARE",
        "COMPARED",
        "AGREEMENT",
        "FLIPS",
        "MEAN DIFF",
        "MAX DIFF",
        "LATENCY DIFF",
        "ERRORS",
        "SKIPPED",
        "VERDICT",
    ]);
    for s in shadows {
        let c = &s.counts;
        table.row(vec![
            s.model.clone(),
            opt(s.live),
            s.spec.version.to_string(),
            format!("{}%", s.spec.percent),
            c.compared.to_string(),
            c.agreement().map_or("-".into(), pct),
            c.label_flips.to_string(),
            c.mean_abs_diff().map_or("-".into(), |d| format!("{d:.3e}")),
            if c.elements > 0 {
                format!("{:.3e}", c.max_abs_diff)
            } else {
                "-".into()
            },
            c.latency_diff_micros()
                .map_or("-".into(), |d| format!("{d:+.1} µs")),
            c.errors.to_string(),
            c.skipped.to_string(),
            verdict_text(s.verdict).to_string(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use manymodels_contract::shadow::ShadowCounts;

    use super::*;

    #[test]
    fn set_checks_its_numbers_and_builds_the_rule() {
        assert!(spec(2, 0.0, 1e-6, None, 0, Action::Report).is_err());
        assert!(spec(2, 101.0, 1e-6, None, 0, Action::Report).is_err());
        assert!(spec(2, 50.0, -1.0, None, 0, Action::Report).is_err());
        assert!(spec(2, 50.0, 1e-6, Some((40, 99.0)), 0, Action::Report).is_err());
        let plain = spec(2, 50.0, 1e-6, None, 3, Action::Promote).unwrap();
        assert_eq!(plain.rule, None);
        let ruled = spec(2, 50.0, 1e-6, Some((40, 0.99)), 1, Action::Promote).unwrap();
        assert_eq!(
            ruled.rule,
            Some(ShadowRule {
                min_requests: 40,
                min_agreement: 0.99,
                max_errors: 1,
                action: RuleAction::Promote,
            })
        );
        let text = set_text("m", &ruled);
        assert!(text.contains("99% ") || text.contains("99%,"), "{text}");
        assert!(text.contains("then promote"), "{text}");
    }

    #[test]
    fn the_view_shows_every_figure_and_who_is_missing() {
        let counts = ShadowCounts {
            compared: 40,
            agreed: 38,
            label_flips: 2,
            errors: 1,
            skipped: 3,
            elements: 80,
            sum_abs_diff: 0.08,
            max_abs_diff: 0.25,
            live_micros: 400,
            shadow_micros: 480,
        };
        let view = PoolShadows {
            shadows: vec![ShadowView {
                model: "acme-1".into(),
                live: Some(1),
                spec: spec(2, 50.0, 1e-6, Some((40, 0.99)), 0, Action::Promote).unwrap(),
                counts,
                verdict: Verdict::Failed,
                resident: true,
            }],
            missing: vec!["s3:8001".into()],
        };
        let text = show_text(&view);
        for figure in [
            "acme-1", "50%", "95%", "1.000e-3", "2.500e-1", "+2.0 µs", "failed", "s3:8001",
        ] {
            assert!(text.contains(figure), "{figure} in {text}");
        }
        assert!(
            show_text(&PoolShadows {
                shadows: vec![],
                missing: vec![]
            })
            .starts_with("no shadows")
        );
    }
}
