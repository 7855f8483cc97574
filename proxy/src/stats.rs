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
use manymodels_contract::pool::{
    HitBucket, Placement, PoolEviction, PoolHotModel, PoolScorer, PoolView, RankedScorer,
    StatisticsFootprint,
};
use manymodels_contract::{CacheSummary, StatsAnswer, StatsReport, route};
use manymodels_policy::PoolStats;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::choice::replicates;
use crate::pool::{Member, Pool};
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
    pub fn view(&self, pool: &Pool) -> PoolView {
        self.view_of(&pool.members())
    }

    /// The pool view of `members`.
    fn view_of(&self, members: &[Member]) -> PoolView {
        let history = self.history();
        let (hits, misses) = history
            .iter()
            .fold((0, 0), |(h, m), b| (h + b.hits, m + b.misses));
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
        let hottest = top
            .iter()
            .map(|(model, rate)| PoolHotModel {
                model: model.to_string(),
                rate: *rate,
                owner: rank(model, names.iter().copied())
                    .first()
                    .map(|s| s.to_string()),
            })
            .collect();
        let (scorers, evictions) = self.scorers_of(members);
        PoolView {
            proxy: self.instance.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            requests,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            history_bucket_seconds: BUCKET.as_secs(),
            history,
            scorers,
            hottest,
            evictions,
            statistics: StatisticsFootprint {
                tracked_models: tracked,
                memory_bytes: memory,
            },
        }
    }

    /// The hit-ratio history, oldest bucket first.
    fn history(&self) -> Vec<HitBucket> {
        let now = self.started.elapsed().as_secs();
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|b| HitBucket {
                seconds_ago: now.saturating_sub(b.start),
                hits: b.hits,
                misses: b.misses,
            })
            .collect()
    }

    /// Each member with the summary it last answered a push with, and the 30 most recent
    /// evictions of them all.
    fn scorers_of(&self, members: &[Member]) -> (Vec<PoolScorer>, Vec<PoolEviction>) {
        let scorers_state = self.scorers.lock().unwrap_or_else(|p| p.into_inner());
        let mut evictions: Vec<PoolEviction> = Vec::new();
        let scorers = members
            .iter()
            .map(|member| {
                let state = scorers_state.get(&member.name);
                let summary = state.and_then(|s| s.summary.as_ref());
                let since = state
                    .and_then(|s| s.pushed)
                    .map(|at| at.elapsed().as_secs_f64());
                if let (Some(since), Some(summary)) = (since, summary) {
                    evictions.extend(summary.evictions.iter().map(|e| PoolEviction {
                        scorer: member.name.clone(),
                        model: e.model.clone(),
                        version: e.version,
                        bytes: e.bytes,
                        reason: e.reason,
                        seconds_ago: summary.uptime - e.at + since,
                    }));
                }
                PoolScorer {
                    name: member.name.clone(),
                    addr: member.addr.clone(),
                    healthy: member.healthy,
                    pushed_seconds_ago: since,
                    budget_bytes: summary.map(|s| s.budget_bytes),
                    resident_bytes: summary.map(|s| s.resident_bytes),
                    resident_models: summary.map(|s| s.resident_models),
                    hits: summary.map(|s| s.hits),
                    misses: summary.map(|s| s.misses),
                    loads: summary.map(|s| s.loads),
                    loaded_bytes: summary.map(|s| s.loaded_bytes),
                }
            })
            .collect();
        evictions.sort_by(|a, b| a.seconds_ago.total_cmp(&b.seconds_ago));
        evictions.truncate(30);
        (scorers, evictions)
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
    pub fn placement(&self, pool: &Pool, model: &str) -> Placement {
        let owner = pool
            .candidates(model, 1, &[])
            .first()
            .map(|c| c.name.to_string());
        self.placement_of(&pool.members(), model, owner, |name| {
            pool.holds(model, name)
        })
    }

    /// The placement of `model` among `members`, with its `owner` and whether each
    /// member holds it (`holds`, by name).
    fn placement_of(
        &self,
        members: &[Member],
        model: &str,
        owner: Option<String>,
        holds: impl Fn(&str) -> bool,
    ) -> Placement {
        let ranked = rank(model, members.iter().map(|m| m.name.as_str()));
        let ranking = ranked
            .iter()
            .filter_map(|name| members.iter().find(|m| m.name == *name))
            .map(|member| RankedScorer {
                name: member.name.clone(),
                addr: member.addr.clone(),
                healthy: member.healthy,
                hot: holds(&member.name),
            })
            .collect();
        let rate = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hot()
            .find(|(k, _)| &***k == model)
            .map(|(_, rate)| rate);
        Placement {
            model: model.to_string(),
            owner,
            ranking,
            rate,
        }
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
                let authorization = self.pool.authorization_for(&name);
                if let Some(authorization) = &authorization {
                    headers.push(("Authorization", authorization));
                }
                let answer = tokio::time::timeout(
                    self.timeout,
                    crate::http1::call(&addr, "PUT", route::STATS, &headers, &body),
                )
                .await;
                if matches!(answer, Ok(Ok((401, _)))) {
                    self.pool.pool_key_refused(&name, authorization.as_deref());
                }
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

    /// The keys of a JSON object, in order (serde_json's map is sorted).
    fn keys(value: &serde_json::Value) -> Vec<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    fn members() -> [Member; 2] {
        [("s0", 1, true), ("s1", 2, false)].map(|(name, port, healthy)| Member {
            name: name.into(),
            addr: format!("127.0.0.1:{port}"),
            healthy,
        })
    }

    /// The pool view as the proxy answers it (`Reply::json`, what `/v2/mm/pool` sends)
    /// has every key of its public shape and reads back as the contract's type.
    #[test]
    fn the_pool_view_answers_in_the_contract_shape() {
        let stats = Statistics::new(10_000, 10);
        stats.record("m");
        stats.observe(true);
        stats.observe(false);
        let summary = CacheSummary {
            budget_bytes: 100,
            uptime: 10.0,
            evictions: vec![manymodels_contract::Eviction {
                model: "old".into(),
                version: 1,
                bytes: 5,
                reason: manymodels_contract::EvictionReason::Capacity,
                at: 4.0,
            }],
            ..CacheSummary::default()
        };
        let pushed = ScorerState {
            addr: "127.0.0.1:1".into(),
            healthy: true,
            pushed: Some(Instant::now()),
            summary: Some(summary),
        };
        stats.scorers.lock().unwrap().insert("s0".into(), pushed);
        let reply = crate::reject::Reply::json(200, &stats.view_of(&members()));
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            keys(&json),
            [
                "evictions",
                "history",
                "history_bucket_seconds",
                "hit_ratio",
                "hottest",
                "proxy",
                "requests",
                "scorers",
                "statistics",
                "uptime_seconds"
            ]
        );
        let scorer_keys = [
            "addr",
            "budget_bytes",
            "healthy",
            "hits",
            "loaded_bytes",
            "loads",
            "misses",
            "name",
            "pushed_seconds_ago",
            "resident_bytes",
            "resident_models",
        ];
        assert_eq!(keys(&json["scorers"][0]), scorer_keys);
        assert_eq!(keys(&json["scorers"][1]), scorer_keys);
        assert_eq!(json["scorers"][1]["budget_bytes"], serde_json::Value::Null);
        assert_eq!(keys(&json["history"][0]), ["hits", "misses", "seconds_ago"]);
        assert_eq!(keys(&json["hottest"][0]), ["model", "owner", "rate"]);
        assert_eq!(
            keys(&json["evictions"][0]),
            [
                "bytes",
                "model",
                "reason",
                "scorer",
                "seconds_ago",
                "version"
            ]
        );
        assert_eq!(
            keys(&json["statistics"]),
            ["memory_bytes", "tracked_models"]
        );

        let view: PoolView = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!((view.requests, view.hit_ratio), (1, Some(0.5)));
        assert_eq!(view.scorers[0].budget_bytes, Some(100));
        assert_eq!(view.scorers[1].pushed_seconds_ago, None);
        assert_eq!(
            (view.hottest[0].model.as_str(), view.hottest.len()),
            ("m", 1)
        );
        let eviction = &view.evictions[0];
        assert_eq!(
            (eviction.scorer.as_str(), eviction.model.as_str()),
            ("s0", "old")
        );
        assert!(eviction.seconds_ago >= 6.0, "{eviction:?}");
    }

    /// A placement as the proxy answers it reads back as the contract's type: every
    /// member in rendezvous order, which one holds it hot, and the rate counted.
    #[test]
    fn a_placement_answers_in_the_contract_shape() {
        let stats = Statistics::new(10_000, 10);
        stats.record("m");
        let placement = stats.placement_of(&members(), "m", Some("s0".into()), |n| n == "s0");
        let reply = crate::reject::Reply::json(200, &placement);
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(keys(&json), ["model", "owner", "ranking", "rate"]);
        assert_eq!(
            keys(&json["ranking"][0]),
            ["addr", "healthy", "hot", "name"]
        );
        let read: Placement = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(read, placement);
        let order: Vec<&str> = read.ranking.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, rank("m", ["s0", "s1"]));
        assert!(read.ranking.iter().all(|s| s.hot == (s.name == "s0")));
        assert!(read.rate.is_some());
        let cold = stats.placement_of(&members(), "never-asked", None, |_| false);
        assert_eq!((cold.owner, cold.rate), (None, None));
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
