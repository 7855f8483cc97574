//! Pool-wide hit statistics: counted per request, pushed to the scorers, shown on
//! `/v2/mm/pool` and `/status`.
//!
//! Every model request increments the model's decayed count in a [`PoolStats`] (fixed
//! memory: a count-min sketch plus the `stats.top_models` hottest ids). Every
//! `stats.push_interval`, [`Pusher`] sends each scorer (`PUT /v2/mm/stats`) the rates of
//! the hot models it owns: the models whose first healthy scorer it is, the models it
//! ranks first for even while it is not ready (so a restarting scorer warms its share
//! before it takes traffic), and its replicas of models above the replication threshold.
//! The scorer answers with its cache summary, which the pool view shows. Several proxies
//! each push their own counts under their own instance id; the scorers sum them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use manymodels_contract::{CacheSummary, StatsAnswer, StatsReport, route};
use manymodels_policy::PoolStats;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{Value, json};

use crate::choice::replicates;
use crate::pool::Pool;
use crate::ranking::rank;

/// Width of one bucket of the hit-ratio history, and how many are kept (10 minutes).
const BUCKET: Duration = Duration::from_secs(10);
const BUCKETS: usize = 60;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    start: u64,
    hits: u64,
    misses: u64,
}

struct ScorerState {
    addr: String,
    healthy: bool,
    pushed: Option<Instant>,
    summary: Option<CacheSummary>,
}

pub struct Statistics {
    started: Instant,
    instance: String,
    counts: Mutex<PoolStats<Arc<str>>>,
    history: Mutex<VecDeque<Bucket>>,
    scorers: Mutex<BTreeMap<String, ScorerState>>,
}

impl Statistics {
    /// `half_life` in requests through this proxy.
    pub fn new(half_life: u64, top_models: usize) -> Self {
        Statistics {
            started: Instant::now(),
            instance: instance_id(),
            counts: Mutex::new(PoolStats::new(half_life as f64, top_models, 0.0)),
            history: Mutex::new(VecDeque::new()),
            scorers: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Counts one request for `model`; returns its pool-wide rate (req/s) including it.
    pub fn record(&self, model: &str) -> f64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(model)
    }

    /// The model's pool-wide rate without counting a request.
    pub fn rate(&self, model: &str) -> f64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rate(model)
    }

    /// Counts a scorer's answer: from its cache (`hit`) or after a load.
    pub fn observe(&self, hit: bool) {
        let now = self.started.elapsed().as_secs() / BUCKET.as_secs() * BUCKET.as_secs();
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.back().is_none_or(|b| b.start != now) {
            history.push_back(Bucket {
                start: now,
                ..Bucket::default()
            });
            if history.len() > BUCKETS {
                history.pop_front();
            }
        }
        let bucket = history.back_mut().expect("just pushed");
        if hit {
            bucket.hits += 1;
        } else {
            bucket.misses += 1;
        }
    }

    fn tick(&self) {
        let now = self.started.elapsed().as_secs_f64();
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(now);
    }

    /// Who gets which rates: see the module documentation.
    fn shares(
        &self,
        members: &[(String, bool)],
        replication: Option<f64>,
    ) -> HashMap<String, Vec<(String, f64)>> {
        let hot: Vec<(Arc<str>, f64)> = {
            let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts.hot().map(|(k, r)| (k.clone(), r)).collect()
        };
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        let healthy: std::collections::HashSet<&str> = members
            .iter()
            .filter(|(_, h)| *h)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut shares: HashMap<String, Vec<(String, f64)>> = HashMap::new();
        for (model, rate) in hot {
            let ranked = rank(&model, names.iter().copied());
            let mut owners: Vec<&str> = Vec::with_capacity(3);
            if let Some(first) = ranked.first() {
                owners.push(first);
            }
            let serving: Vec<&str> = ranked
                .iter()
                .copied()
                .filter(|n| healthy.contains(n))
                .take(if replicates(rate, replication) { 2 } else { 1 })
                .collect();
            for name in serving {
                if !owners.contains(&name) {
                    owners.push(name);
                }
            }
            for owner in owners {
                shares
                    .entry(owner.to_string())
                    .or_default()
                    .push((model.to_string(), rate));
            }
        }
        for share in shares.values_mut() {
            share.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        shares
    }

    /// The pool view served on `/v2/mm/pool` (and drawn by `/status`).
    pub fn view(&self, pool: &Pool) -> Value {
        let now = self.started.elapsed().as_secs();
        let history: Vec<Value> = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|b| json!({ "seconds_ago": now.saturating_sub(b.start), "hits": b.hits, "misses": b.misses }))
            .collect();
        let (hits, misses) = history.iter().fold((0, 0), |(h, m), b| {
            (
                h + b["hits"].as_u64().unwrap_or(0),
                m + b["misses"].as_u64().unwrap_or(0),
            )
        });
        let members = pool.members();
        let (top, tracked, memory, requests) = {
            let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            (
                counts.top(20),
                counts.tracked(),
                counts.memory_bytes(),
                counts.requests(),
            )
        };
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let hottest: Vec<Value> = top
            .iter()
            .map(|(model, rate)| {
                let owner = rank(model, names.iter().copied())
                    .first()
                    .map(|s| s.to_string());
                json!({ "model": &**model, "rate": rate, "owner": owner })
            })
            .collect();
        let scorers_state = self.scorers.lock().unwrap_or_else(|p| p.into_inner());
        let mut evictions: Vec<(f64, Value)> = Vec::new();
        let scorers: Vec<Value> = members
            .iter()
            .map(|member| {
                let (name, addr, healthy) = (&member.name, &member.addr, member.healthy);
                let state = scorers_state.get(name);
                let summary = state.and_then(|s| s.summary.as_ref());
                let since = state
                    .and_then(|s| s.pushed)
                    .map(|at| at.elapsed().as_secs_f64());
                if let (Some(since), Some(summary)) = (since, summary) {
                    for e in &summary.evictions {
                        let ago = summary.uptime - e.at + since;
                        evictions.push((
                            ago,
                            json!({
                                "scorer": name, "model": e.model, "version": e.version,
                                "bytes": e.bytes, "reason": e.reason, "seconds_ago": ago,
                            }),
                        ));
                    }
                }
                json!({
                    "name": name,
                    "addr": addr,
                    "healthy": healthy,
                    "pushed_seconds_ago": since,
                    "budget_bytes": summary.map(|s| s.budget_bytes),
                    "resident_bytes": summary.map(|s| s.resident_bytes),
                    "resident_models": summary.map(|s| s.resident_models),
                    "hits": summary.map(|s| s.hits),
                    "misses": summary.map(|s| s.misses),
                    "loads": summary.map(|s| s.loads),
                    "loaded_bytes": summary.map(|s| s.loaded_bytes),
                })
            })
            .collect();
        evictions.sort_by(|a, b| a.0.total_cmp(&b.0));
        evictions.truncate(30);
        json!({
            "proxy": self.instance,
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "requests": requests,
            "hit_ratio": if hits + misses > 0 { Some(hits as f64 / (hits + misses) as f64) } else { None },
            "history_bucket_seconds": BUCKET.as_secs(),
            "history": history,
            "scorers": scorers,
            "hottest": hottest,
            "evictions": evictions.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
            "statistics": { "tracked_models": tracked, "memory_bytes": memory },
        })
    }
}

impl Statistics {
    /// Where `model` lives from this proxy's view (`/v2/mm/pool/models/{id}`): every
    /// member in the model's rendezvous order (its owner is the first one in rotation,
    /// healthy and not ejected: where admin calls about it go, and its requests unless
    /// another scorer holds it hot or takes a spill; `null` when none is), whether this
    /// proxy believes each holds it hot (a recent answer for it, `Pool::hot`), and the pool-wide
    /// rate this proxy counts for it (`null` when it is not among the models tracked
    /// exactly: a sketch estimate would only bound it from above).
    pub fn placement(&self, pool: &Pool, model: &str) -> Value {
        let members = pool.members();
        let ranked = rank(model, members.iter().map(|m| m.name.as_str()));
        let ranking: Vec<Value> = ranked
            .iter()
            .filter_map(|name| members.iter().find(|m| m.name == *name))
            .map(|member| {
                json!({
                    "name": member.name,
                    "addr": member.addr,
                    "healthy": member.healthy,
                    "hot": pool.holds(model, &member.name),
                })
            })
            .collect();
        let rate = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hot()
            .find(|(k, _)| &***k == model)
            .map(|(_, rate)| rate);
        let owner = pool
            .candidates(model, 1, &[])
            .first()
            .map(|c| c.name.to_string());
        json!({
            "model": model,
            "owner": owner,
            "ranking": ranking,
            "rate": rate,
        })
    }
}

fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("proxy-{:016x}", h.finish())
}

/// The background service that pushes statistics every `interval`.
pub struct Pusher {
    pub pool: Arc<Pool>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub stats: Arc<Statistics>,
    pub interval: Duration,
    pub replication: Option<f64>,
    pub timeout: Duration,
}

#[async_trait]
impl BackgroundService for Pusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut last_push = Instant::now() - self.interval;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            self.stats.tick();
            if last_push.elapsed() >= self.interval {
                last_push = Instant::now();
                self.push().await;
            }
        }
    }
}

impl Pusher {
    async fn push(&self) {
        let members = self.pool.members();
        let flags: Vec<(String, bool)> = members
            .iter()
            .map(|m| (m.name.clone(), m.healthy))
            .collect();
        let mut shares = self.stats.shares(&flags, self.replication);
        let pushes = members.into_iter().map(|member| {
            let (name, addr, healthy) = (member.name, member.addr, member.healthy);
            let report = StatsReport {
                proxy: self.stats.instance.clone(),
                models: shares.remove(&name).unwrap_or_default(),
            };
            async move {
                let body = serde_json::to_vec(&report).unwrap_or_default();
                self.metrics.stats_pushes.inc();
                self.metrics.stats_push_bytes.inc_by(body.len() as u64);
                let mut headers = vec![("Content-Type", "application/json")];
                if let Some(authorization) = self.pool.authorization() {
                    headers.push(("Authorization", authorization));
                }
                let answer = tokio::time::timeout(
                    self.timeout,
                    crate::http1::call(&addr, "PUT", route::STATS, &headers, &body),
                )
                .await;
                (name, addr, healthy, answer)
            }
        });
        let answers = futures::future::join_all(pushes).await;
        let mut scorers = self.stats.scorers.lock().unwrap_or_else(|p| p.into_inner());
        let live: std::collections::HashSet<String> = answers.iter().map(|a| a.0.clone()).collect();
        scorers.retain(|name, _| live.contains(name));
        for (name, addr, healthy, answer) in answers {
            let entry = scorers.entry(name.clone()).or_insert(ScorerState {
                addr: addr.clone(),
                healthy,
                pushed: None,
                summary: None,
            });
            entry.addr = addr;
            entry.healthy = healthy;
            match answer {
                Ok(Ok((200, body))) => match serde_json::from_slice::<StatsAnswer>(&body) {
                    Ok(answer) => {
                        entry.pushed = Some(Instant::now());
                        entry.summary = Some(answer.cache);
                    }
                    Err(error) => {
                        self.metrics.stats_push_failures.inc();
                        tracing::warn!(scorer = %name, %error, "a scorer answered a statistics push with a summary this proxy cannot read");
                    }
                },
                other => {
                    self.metrics.stats_push_failures.inc();
                    tracing::debug!(scorer = %name, result = ?other.map(|r| r.map(|(s, _)| s)), "statistics push failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_go_to_the_serving_scorer_and_the_first_ranked_one() {
        let stats = Statistics::new(10_000, 1_000);
        for i in 0..300 {
            for _ in 0..(1 + i % 3) {
                stats.record(&format!("m{i}"));
            }
        }
        let names: Vec<String> = (0..3).map(|i| format!("s{i}")).collect();
        let all_up: Vec<(String, bool)> = names.iter().map(|n| (n.clone(), true)).collect();
        let shares = stats.shares(&all_up, None);
        let total: usize = shares.values().map(Vec::len).sum();
        assert_eq!(
            total, 300,
            "each model goes to exactly one scorer when all are up"
        );
        for (scorer, models) in &shares {
            for (model, _) in models {
                assert_eq!(rank(model, names.iter().map(String::as_str))[0], scorer);
            }
        }
        // s1 is down: its models go to their next scorer too, and s1 still gets its own
        // share so it can warm before it reports ready.
        let one_down: Vec<(String, bool)> = names.iter().map(|n| (n.clone(), n != "s1")).collect();
        let shares = stats.shares(&one_down, None);
        let s1 = shares["s1"].len();
        let total: usize = shares.values().map(Vec::len).sum();
        assert_eq!(total, 300 + s1);
        // Replication: everything above the threshold goes to two healthy scorers.
        let shares = stats.shares(&all_up, Some(0.0));
        let total: usize = shares.values().map(Vec::len).sum();
        assert_eq!(total, 600);
    }

    #[test]
    fn the_history_counts_hits_and_misses() {
        let stats = Statistics::new(10_000, 10);
        stats.observe(true);
        stats.observe(true);
        stats.observe(false);
        let history = stats.history.lock().unwrap();
        assert_eq!((history[0].hits, history[0].misses), (2, 1));
    }
}
