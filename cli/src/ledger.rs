//! `mmctl ledger`: the pool's per-model ledger (`/v2/mm/ledger`, merged by the proxy from
//! every scorer's) as a table: each tracked model's requests, error share and kinds,
//! latency quantiles, rows, cold loads, canary share and when it last scored; and the
//! one-model section `mmctl explain` prints (`/v2/mm/ledger/{id}`).

use std::fmt::Write as _;

use anyhow::bail;
use manymodels_contract::ledger::{Counts, ModelLedger, PoolLedger, PoolModelLedger};

use crate::client::Client;
use crate::operate::{Output, duration};
use crate::table::Table;

/// How the table is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Most requests first (the proxy's order).
    Requests,
    /// Highest error share first.
    Errors,
    /// Slowest p99 first.
    P99,
}

pub async fn ledger(client: &Client, top: usize, sort: Sort) -> anyhow::Result<Output> {
    if !(1..=10_000).contains(&top) {
        bail!("--top must be between 1 and 10000");
    }
    let mut view: PoolLedger = client.get_as(&format!("/v2/mm/ledger?top={top}")).await?;
    sort_models(&mut view.report.models, sort);
    let text = ledger_text(&view, now());
    Output::of(&view, text)
}

/// Unix seconds now (the ledger's times are unix seconds).
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn sort_models(models: &mut [ModelLedger], sort: Sort) {
    let key = |m: &ModelLedger| match sort {
        Sort::Requests => m.counts.requests as f64,
        Sort::Errors => error_share(&m.counts),
        Sort::P99 => m.counts.quantiles.map_or(0.0, |q| q.p99),
    };
    models.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then_with(|| a.model.cmp(&b.model))
    });
}

/// Failed requests over requests (0 without requests).
pub fn error_share(counts: &Counts) -> f64 {
    let errors: u64 = counts.errors.values().sum();
    if counts.requests == 0 {
        0.0
    } else {
        errors as f64 / counts.requests as f64
    }
}

/// Seconds as milliseconds for people: `0.42 ms`, `12.3 ms`, `1520 ms`.
pub fn ms(seconds: f64) -> String {
    let ms = seconds * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The error kinds of `counts`, most first: `deadline 3, invalid 1`; `-` without errors.
pub fn error_kinds(counts: &Counts) -> String {
    let mut kinds: Vec<(&String, &u64)> = counts.errors.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    if kinds.is_empty() {
        return "-".into();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The newest version's share of the requests that named one: the canary's share while a
/// canary runs, 100% otherwise.
pub fn newest_share(model: &ModelLedger) -> String {
    let total: u64 =
        model.versions.versions.iter().map(|(_, n)| n).sum::<u64>() + model.versions.older;
    match model.versions.versions.first() {
        Some((version, n)) if total > 0 => {
            format!("v{version} {:.0}%", 100.0 * *n as f64 / total as f64)
        }
        _ => "-".into(),
    }
}

fn quantile(
    counts: &Counts,
    pick: impl Fn(&manymodels_contract::ledger::Quantiles) -> f64,
) -> String {
    counts.quantiles.map_or("-".into(), |q| ms(pick(&q)))
}

fn ledger_text(view: &PoolLedger, now: f64) -> String {
    let mut text = String::new();
    let pool = &view.pool;
    let _ = writeln!(
        text,
        "pool: {} requests, {:.2}% failed, p50 {}, p99 {}; {} models tracked exactly, {} requests in the tail; from {} scorer(s)",
        pool.requests,
        100.0 * error_share(pool),
        quantile(pool, |q| q.p50),
        quantile(pool, |q| q.p99),
        view.report.models.len(),
        view.report.tail.requests,
        view.scorers.len(),
    );
    for missing in &view.missing {
        let _ = writeln!(text, "not counted: {}: {}", missing.scorer, missing.error);
    }
    let mut table = Table::new(&[
        "MODEL", "REQUESTS", "ERR %", "ERRORS", "P50", "P99", "MAX", "ROWS", "LOADS", "NEWEST",
        "LAST",
    ]);
    for model in &view.report.models {
        let c = &model.counts;
        table.row(vec![
            model.model.clone(),
            c.requests.to_string(),
            format!("{:.2}", 100.0 * error_share(c)),
            error_kinds(c),
            quantile(c, |q| q.p50),
            quantile(c, |q| q.p99),
            quantile(c, |q| q.max),
            c.rows.to_string(),
            c.loads.to_string(),
            newest_share(model),
            c.last_scored
                .map_or("-".into(), |t| format!("{} ago", duration(now - t))),
        ]);
    }
    if !table.is_empty() {
        text.push_str(&table.render());
    }
    text
}

/// `mmctl explain`'s ledger section for one model.
pub fn model_text(view: &PoolModelLedger, now: f64) -> String {
    let report = &view.report;
    let Some(model) = &report.tracked else {
        return format!(
            "ledger: not among the hottest models tracked exactly; at most {} requests and {} errors since the scorers started (count-min bounds)\n",
            report.requests_at_most, report.errors_at_most
        );
    };
    let c = &model.counts;
    let versions: Vec<String> = model
        .versions
        .versions
        .iter()
        .map(|(v, n)| format!("v{v} {n}"))
        .collect();
    format!(
        "ledger (since {} ago, {} scorer(s)): {} requests ({} hits, {} cold loads), {} rows, errors: {}; latency p50 {}, p90 {}, p99 {}, max {}; versions: {}; last scored {}\n",
        duration(now - model.since),
        view.scorers.len(),
        c.requests,
        c.hits,
        c.loads,
        c.rows,
        error_kinds(c),
        quantile(c, |q| q.p50),
        quantile(c, |q| q.p90),
        quantile(c, |q| q.p99),
        quantile(c, |q| q.max),
        if versions.is_empty() {
            "-".into()
        } else {
            versions.join(", ")
        },
        c.last_scored
            .map_or("never".into(), |t| format!("{} ago", duration(now - t))),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use manymodels_contract::ledger::{ModelReport, Quantiles, VersionMix};

    use super::*;

    fn model(name: &str, requests: u64, errors: u64, p99: f64) -> ModelLedger {
        ModelLedger {
            model: name.into(),
            since: 1000.0,
            counts: Counts {
                requests,
                hits: requests,
                errors: BTreeMap::from([("deadline".to_string(), errors)]),
                rows: requests * 2,
                last_scored: Some(1090.0),
                quantiles: Some(Quantiles {
                    p50: p99 / 2.0,
                    p90: p99 / 1.5,
                    p99,
                    max: p99 * 2.0,
                }),
                ..Default::default()
            },
            versions: VersionMix {
                versions: vec![(3, requests / 4), (2, requests - requests / 4)],
                older: 0,
            },
        }
    }

    #[test]
    fn the_table_sorts_by_what_was_asked_and_shows_shares() {
        let mut models = vec![
            model("a", 100, 1, 0.002),
            model("b", 10, 5, 0.001),
            model("c", 50, 0, 0.030),
        ];
        sort_models(&mut models, Sort::Errors);
        assert_eq!(models[0].model, "b");
        sort_models(&mut models, Sort::P99);
        assert_eq!(models[0].model, "c");
        sort_models(&mut models, Sort::Requests);
        assert_eq!(models[0].model, "a");
        assert_eq!(newest_share(&models[0]), "v3 25%");
        let view = PoolLedger {
            scorers: vec!["s1".into()],
            report: manymodels_contract::ledger::LedgerReport {
                models,
                tail: Counts::default(),
            },
            ..Default::default()
        };
        let text = ledger_text(&view, 1100.0);
        assert!(text.contains("deadline 5"), "{text}");
        assert!(text.contains("30.0 ms"), "{text}");
        assert!(text.contains("10 s ago"), "{text}");
    }

    #[test]
    fn an_untracked_model_says_so_with_its_bounds() {
        let view = PoolModelLedger {
            scorers: vec!["s1".into()],
            missing: Vec::new(),
            report: ModelReport {
                model: "m".into(),
                tracked: None,
                requests_at_most: 12,
                errors_at_most: 1,
            },
        };
        let text = model_text(&view, 0.0);
        assert!(text.contains("at most 12 requests"), "{text}");
        let tracked = PoolModelLedger {
            report: ModelReport {
                tracked: Some(model("m", 8, 2, 0.004)),
                ..view.report.clone()
            },
            ..view
        };
        let text = model_text(&tracked, 1100.0);
        assert!(
            text.contains("8 requests") && text.contains("p99 4.00 ms"),
            "{text}"
        );
        assert!(text.contains("v3 2, v2 6"), "{text}");
    }
}
