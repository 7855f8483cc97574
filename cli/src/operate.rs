//! The commands that operate a running pool through its proxy: each is one or two calls
//! of the admin or pool API, printed as a table for people or as JSON (`--json`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::{Context, bail};
use manymodels_contract::explain::ScorerExplain;
use manymodels_contract::ledger::PoolModelLedger;
use manymodels_contract::oip::IndexEntry;
use manymodels_contract::pool::{Placement, PoolView};
use manymodels_contract::shadow::PoolShadows;
use manymodels_contract::versions::{
    CanaryAnswer, CanaryDropped, CanaryPromoted, CanaryRequest, PinRequest, Refresh, VersionStatus,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::client::Client;
use crate::table::{self, Table, opt};

/// What a command prints: the JSON for `--json`, the text otherwise.
pub struct Output {
    pub json: Value,
    pub text: String,
}

impl Output {
    /// `view` (an answer as mmctl read it) for `--json`, `text` otherwise.
    pub fn of<T: Serialize>(view: &T, text: String) -> anyhow::Result<Output> {
        Ok(Output {
            json: serde_json::to_value(view)?,
            text,
        })
    }
}

pub async fn models(client: &Client, prefix: Option<&str>) -> anyhow::Result<Output> {
    let index: Vec<IndexEntry> = client
        .post("/v2/repository/index", &json!({}))
        .await
        .and_then(|answer| answer.read())
        .context("listing the store")?;
    let names: BTreeSet<String> = index
        .into_iter()
        .map(|entry| entry.name)
        .filter(|n| prefix.is_none_or(|p| n.starts_with(p)))
        .collect();
    let mut text = String::new();
    for name in &names {
        let _ = writeln!(text, "{name}");
    }
    let _ = writeln!(text, "{} models", names.len());
    Output::of(&names, text)
}

pub async fn versions(client: &Client, id: &str) -> anyhow::Result<Output> {
    let status: VersionStatus = client.get_as(&format!("/v2/admin/models/{id}")).await?;
    let canary = status.canary.as_ref();
    let mut table = Table::new(&["VERSION", "LIVE", "PINNED", "CANARY", "IN MEMORY"]);
    for &v in &status.versions {
        let mark = |yes: bool| if yes { "yes" } else { "" }.to_string();
        table.row(vec![
            v.to_string(),
            mark(status.live == Some(v)),
            mark(status.pinned == Some(v)),
            match canary {
                Some(c) if c.version == v => format!("{}%", c.percent),
                _ => String::new(),
            },
            mark(status.resident.contains(&v)),
        ]);
    }
    let mut text = format!("{id}\n{}", table.render());
    if let Some(refused) = &status.refused {
        let _ = writeln!(
            text,
            "version {} was refused {:.0} s ago: {}",
            refused.version, refused.seconds_ago, refused.error
        );
    }
    Output::of(&status, text)
}

pub async fn pin(client: &Client, id: &str, version: Option<u64>) -> anyhow::Result<Output> {
    let answer = match version {
        Some(version) => {
            let path = format!("/v2/admin/models/{id}/pin");
            client.post(&path, &PinRequest { version }).await?
        }
        None => {
            client
                .post(&format!("/v2/admin/models/{id}/unpin"), &json!({}))
                .await?
        }
    };
    let refresh: Refresh = answer.read()?;
    let text = refresh_text(&refresh, version.is_some());
    Output::of(&refresh, text)
}

fn refresh_text(refresh: &Refresh, pinned: bool) -> String {
    let (model, live) = (&refresh.model, refresh.live);
    let mut text = if pinned {
        format!("{model}: pinned, version {live} is live")
    } else {
        format!("{model}: unpinned, version {live} is live")
    };
    if let Some(previous) = refresh.previous {
        let _ = write!(text, " (was {previous})");
    }
    if let Some(refused) = &refresh.refused {
        let _ = write!(
            text,
            "; version {} refused: {}",
            refused.version, refused.error
        );
    }
    text.push('\n');
    text
}

#[derive(Debug, clap::Subcommand)]
pub enum CanaryCommand {
    /// Send PERCENT of ID's requests that name no version to VERSION
    Set {
        id: String,
        version: u64,
        /// 0-100, fractions allowed
        percent: f64,
    },
    /// The canary and what the answering scorer counted for it
    Show { id: String },
    /// Stop the canary: every request gets the live version again
    Drop { id: String },
    /// Pin the canary's version (it becomes live) and drop the canary
    Promote { id: String },
}

pub async fn canary(client: &Client, command: &CanaryCommand) -> anyhow::Result<Output> {
    let path = |id: &str| format!("/v2/admin/models/{id}/canary");
    match command {
        CanaryCommand::Set {
            id,
            version,
            percent,
        } => {
            let (version, percent) = (*version, *percent);
            if !(0.0..=100.0).contains(&percent) {
                bail!("percent must be within 0-100, not {percent}");
            }
            let request = CanaryRequest { version, percent };
            let set: CanaryAnswer = client.put_json(&path(id), &request).await?.read()?;
            let text =
                format!("{id}: {percent}% of unversioned requests go to version {version}\n");
            Output::of(&set, text)
        }
        CanaryCommand::Show { id } => {
            let answer = client.get(&path(id)).await?;
            let shown: CanaryAnswer = answer.read()?;
            let c = &shown.canary;
            let text = if !c.active {
                format!(
                    "{id}: canary of version {} ({}%) splits nothing: that version has left the store (drop it)\n",
                    c.version, c.percent,
                )
            } else {
                format!(
                    "{id}: version {} takes {}% of unversioned requests; {} of {} counted by {} went to it\n",
                    c.version,
                    c.percent,
                    c.to_canary,
                    c.requests,
                    answer.scorer.as_deref().unwrap_or("the answering scorer"),
                )
            };
            Output::of(&shown, text)
        }
        CanaryCommand::Drop { id } => {
            let dropped: CanaryDropped = client.delete(&path(id)).await?.read()?;
            Output::of(&dropped, format!("{id}: canary dropped\n"))
        }
        CanaryCommand::Promote { id } => {
            let promoted: CanaryPromoted = client
                .post(&format!("{}/promote", path(id)), &json!({}))
                .await?
                .read()?;
            let text = format!(
                "{id}: version {} promoted: pinned and live; canary dropped\n",
                promoted.promoted.version
            );
            Output::of(&promoted, text)
        }
    }
}

pub async fn status(client: &Client) -> anyhow::Result<Output> {
    let view: PoolView = client.get_as("/v2/mm/pool").await?;
    let text = status_text(&view, 10);
    Output::of(&view, text)
}

/// The fill of a scorer's memory, `resident` of `budget`, when both are known.
pub fn fill(resident: Option<u64>, budget: Option<u64>) -> Option<f64> {
    match (resident, budget) {
        (Some(r), Some(b)) if b > 0 => Some(r as f64 / b as f64),
        _ => None,
    }
}

/// The pool view as text: the header line, the scorers, the hottest models and the
/// recent evictions (at most `rows` of each list).
pub fn status_text(view: &PoolView, rows: usize) -> String {
    let mut text = String::new();
    let ratio = view
        .hit_ratio
        .map_or("-".to_string(), |r| format!("{r:.3}"));
    let _ = writeln!(
        text,
        "proxy {} · up {} · {} requests · hit ratio {ratio} (last {} s)",
        view.proxy,
        duration(view.uptime_seconds),
        view.requests,
        view.history.len() as u64 * view.history_bucket_seconds,
    );
    let mut scorers = Table::new(&[
        "SCORER", "ADDR", "HEALTHY", "RESIDENT", "BUDGET", "FILL", "MODELS", "HITS", "MISSES",
        "LOADS",
    ]);
    for s in &view.scorers {
        scorers.row(vec![
            s.name.clone(),
            s.addr.clone(),
            if s.healthy { "yes" } else { "no" }.to_string(),
            s.resident_bytes.map_or("-".into(), table::bytes),
            s.budget_bytes.map_or("-".into(), table::bytes),
            fill(s.resident_bytes, s.budget_bytes)
                .map_or("-".into(), |f| format!("{:.0}%", 100.0 * f)),
            opt(s.resident_models),
            opt(s.hits),
            opt(s.misses),
            opt(s.loads),
        ]);
    }
    text.push_str(&scorers.render());
    let mut hottest = Table::new(&["HOTTEST", "REQ/S", "OWNER"]);
    for h in view.hottest.iter().take(rows) {
        hottest.row(vec![
            h.model.clone(),
            format!("{:.2}", h.rate),
            h.owner.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if !hottest.is_empty() {
        text.push('\n');
        text.push_str(&hottest.render());
    }
    let mut evictions = Table::new(&["EVICTED", "VERSION", "BYTES", "REASON", "SCORER", "AGO"]);
    for e in view.evictions.iter().take(rows) {
        evictions.row(vec![
            e.model.clone(),
            e.version.to_string(),
            table::bytes(e.bytes),
            e.reason.as_str().to_string(),
            e.scorer.clone(),
            duration(e.seconds_ago),
        ]);
    }
    if !evictions.is_empty() {
        text.push('\n');
        text.push_str(&evictions.render());
    }
    text
}

/// What `explain --json` prints: the proxy's placement and the scorer's explanation.
#[derive(Serialize)]
struct Explained {
    placement: Placement,
    scorer: ScorerExplain,
    /// `None` when the ledger could not be read.
    ledger: Option<PoolModelLedger>,
    /// The model's shadow, pool-wide; absent without one (or when it could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<PoolShadows>,
}

pub async fn explain(client: &Client, id: &str) -> anyhow::Result<Output> {
    let placement: Placement = client
        .get_as(&format!("/v2/mm/pool/models/{id}"))
        .await
        .context("asking the proxy where it lives")?;
    let scorer: ScorerExplain = client
        .get_as(&format!("/v2/admin/models/{id}/explain"))
        .await
        .context("asking the scorer")?;
    // The ledger is a view beside the placement: an explain works without it.
    let ledger: Option<PoolModelLedger> = match client.get_as(&format!("/v2/mm/ledger/{id}")).await
    {
        Ok(ledger) => Some(ledger),
        Err(e) => {
            eprintln!("mmctl: the ledger could not be read: {e}");
            None
        }
    };
    // So is the shadow, shown only when the model has one.
    let shadow: Option<PoolShadows> = match client
        .get_as::<PoolShadows>(&format!("/v2/admin/models/{id}/shadow"))
        .await
    {
        Ok(shadow) => Some(shadow).filter(|s| !s.shadows.is_empty()),
        Err(e) => {
            eprintln!("mmctl: the shadow could not be read: {e}");
            None
        }
    };
    let mut text = explain_text(id, &placement, &scorer);
    if let Some(ledger) = &ledger {
        text.push_str(&crate::ledger::model_text(ledger, crate::ledger::now()));
    }
    if let Some(shadow) = &shadow {
        text.push_str("shadow (pool-wide):\n");
        text.push_str(&crate::shadow::show_text(shadow));
    }
    Output::of(
        &Explained {
            placement,
            scorer,
            ledger,
            shadow,
        },
        text,
    )
}

fn explain_text(id: &str, placement: &Placement, scorer: &ScorerExplain) -> String {
    let explain = &scorer.explain;
    let versions: Vec<String> = explain.versions.iter().map(u64::to_string).collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{id}: live version {}, versions {}",
        opt(explain.live),
        versions.join(", ")
    );
    let ranking: Vec<String> = placement
        .ranking
        .iter()
        .map(|s| {
            let mut name = s.name.clone();
            if s.hot {
                name.push_str(" (hot)");
            }
            if !s.healthy {
                name.push_str(" (unhealthy)");
            }
            name
        })
        .collect();
    let _ = writeln!(
        text,
        "where: owner {}; rendezvous order {}; pool rate {} req/s (this proxy's count)",
        placement.owner.as_deref().unwrap_or("none"),
        ranking.join(", "),
        placement.rate.map_or("-".into(), |r| format!("{r:.3}")),
    );
    let _ = writeln!(text, "on {}: {}", scorer.scorer, explain.verdict);
    let mut resident = Table::new(&[
        "RESIDENT",
        "ENGINE",
        "BYTES",
        "PRIORITY",
        "EVICT RANK",
        "IDLE",
        "REQ/S",
        "POOL REQ/S",
    ]);
    for r in &explain.resident {
        resident.row(vec![
            format!("v{}", r.view.version),
            r.view.engine.clone(),
            table::bytes(r.view.bytes),
            format!("{:.2}", r.view.priority),
            format!("{} of {}", r.evict_rank, r.residents),
            duration(r.view.idle_seconds),
            format!("{:.3}", r.view.rate),
            format!("{:.3}", r.view.pool_rate),
        ]);
    }
    if !resident.is_empty() {
        text.push_str(&resident.render());
    }
    let mut evictions = Table::new(&["EVICTED", "BYTES", "REASON", "AGO"]);
    for e in &explain.evictions {
        evictions.row(vec![
            format!("v{}", e.version),
            table::bytes(e.bytes),
            e.reason.as_str().to_string(),
            duration(e.seconds_ago),
        ]);
    }
    if !evictions.is_empty() {
        text.push_str(&evictions.render());
    }
    text
}

/// Seconds for people: `42 s`, `3m05s`, `2h07m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s < 60 {
        format!("{seconds:.0} s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}
