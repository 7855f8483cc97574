//! The proxy's Prometheus metrics. Labels are bounded: outcome, scorer (the pool is small),
//! key name (the configured keys), never a model id. docs/metrics.md lists every metric
//! with its labels' values, generated from this file (`cargo xtask docs`).

use manymodels_boot::{Registry, exponential_buckets};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

/// Outcomes, the values of `mm_proxy_requests_total`'s label.
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "client_error",
    "rejected",
    "upstream_error",
    "unavailable",
    "local",
    "client_closed",
];

/// The values of `mm_proxy_batch_records_total`'s label.
pub const BATCH_OUTCOMES: [&str; 2] = ["ok", "failed"];

/// The values of `mm_proxy_shadow_verdicts_total`'s labels: the rule's verdict and what
/// the rule says to do then.
pub const SHADOW_VERDICTS: [&str; 2] = ["met", "failed"];
pub const SHADOW_ACTIONS: [&str; 2] = ["promote", "report"];

/// The values of `mm_proxy_shadow_promotions_total`'s label: this proxy promoted, another
/// judge (or an operator) already had (409 or 404), or the call failed (retried next round).
pub const SHADOW_PROMOTIONS: [&str; 3] = ["promoted", "already_done", "failed"];

pub struct Metrics {
    registry: Registry,
    /// `requests` resolved once per outcome, so counting costs no label hashing.
    outcomes: [IntCounter; 7],
    /// By `outcome` (`reject::outcome`): `ok` (2xx), `client_error` (4xx from a scorer),
    /// `rejected` (4xx from the proxy), `unavailable` (503 without reaching a scorer),
    /// `upstream_error` (any other answer: a 5xx from a scorer, or the proxy's 502/504 for
    /// one), `local` (health and metrics), `client_closed` (the client hung up first).
    pub requests: IntCounterVec,
    pub upstream_latency: Histogram,
    pub retries: IntCounter,
    /// Hedges: copies of a slow request sent to the next candidate, those whose answer
    /// came first, those the budget refused, and scorers ejected as stalled after enough
    /// requests were hedged away from them without an answer.
    pub hedges_sent: IntCounter,
    pub hedges_won: IntCounter,
    pub hedges_over_budget: IntCounter,
    pub stall_ejections: IntCounter,
    /// Requests sent past the first-ranked scorer because it was overloaded.
    pub spills: IntCounter,
    /// Requests sent to a lower-ranked scorer because it held the model hot.
    pub hot_routes: IntCounter,
    /// Requests sent to a draining scorer that held the model (the drain hand-off).
    pub drain_routes: IntCounter,
    pub warm_triggers: IntCounter,
    /// Scorer answers that came from memory (cache header `hit`): the pool hit ratio is
    /// `cache_hits / (cache_hits + cache_misses)`.
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Statistics pushes sent to scorers (one per scorer per round, failed ones included),
    /// and the bytes of their bodies: bytes per push is `stats_push_bytes / stats_pushes`.
    pub stats_pushes: IntCounter,
    pub stats_push_bytes: IntCounter,
    /// Statistics pushes to scorers that failed (unreachable, timed out, not 200).
    pub stats_push_failures: IntCounter,
    pub pool_size: IntGauge,
    pub healthy_scorers: IntGauge,
    pub inflight: IntGaugeVec,
    pub hot_models: IntGauge,
    /// By `key` (the configured key name; `none` when no key matched) and `outcome`
    /// (`allowed`, `out_of_scope`, `unauthorized`, or `rate_limited`/`inflight_limited`
    /// for an allowed key over its `limits.*`). Counted only when keys are set.
    pub requests_by_key: IntCounterVec,
    /// Records of many-model requests by `outcome`: `ok` or `failed` (the record's own
    /// error: unreadable, out of the key's scope, or its group's scorer refused or failed).
    pub batch_records: IntCounterVec,
    /// Model groups of many-model requests (one request to a scorer each, retries aside).
    pub batch_groups: IntCounter,
    /// Shadows this proxy's judge saw meet or fail their rule, once per shadow (model and
    /// `since_ms`) and proxy, by `verdict` and the rule's `action`.
    pub shadow_verdicts: IntCounterVec,
    /// The judge's promotion calls by `result` (`SHADOW_PROMOTIONS`).
    pub shadow_promotions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = registry.counter_vec(
            "mm_proxy_requests_total",
            "Requests by outcome.",
            &["outcome"],
        );
        Metrics {
            outcomes: OUTCOMES.map(|outcome| requests.with_label_values(&[outcome])),
            requests,
            upstream_latency: registry.histogram(
                "mm_proxy_upstream_duration_seconds",
                "Time from choosing a scorer to the end of its answer.",
                exponential_buckets(0.000_05, 2.0, 18),
            ),
            retries: registry.counter(
                "mm_proxy_retries_total",
                "Requests retried on the next candidate after a scorer failed.",
            ),
            hedges_sent: registry.counter(
                "mm_proxy_hedges_total",
                "Copies of a slow inference request sent to the next candidate (hedges).",
            ),
            hedges_won: registry.counter(
                "mm_proxy_hedges_won_total",
                "Hedges whose answer came first (the first scorer's attempt was cancelled).",
            ),
            hedges_over_budget: registry.counter(
                "mm_proxy_hedges_over_budget_total",
                "Hedges not sent because the hedge budget was spent.",
            ),
            stall_ejections: registry.counter(
                "mm_proxy_stall_ejections_total",
                "Scorers ejected after requests were hedged away from them without an answer.",
            ),
            spills: registry.counter(
                "mm_proxy_spills_total",
                "Requests spilled past an overloaded first choice.",
            ),
            hot_routes: registry.counter(
                "mm_proxy_hot_routes_total",
                "Requests sent to a lower-ranked scorer that already held the model hot.",
            ),
            drain_routes: registry.counter(
                "mm_proxy_drain_routes_total",
                "Requests sent to a draining scorer that held the model while its successor warmed it.",
            ),
            warm_triggers: registry.counter(
                "mm_proxy_warm_triggers_total",
                "Warm loads the proxy asked a scorer for.",
            ),
            cache_hits: registry.counter(
                "mm_proxy_scorer_cache_hits_total",
                "Model answers a scorer served from memory.",
            ),
            cache_misses: registry.counter(
                "mm_proxy_scorer_cache_misses_total",
                "Model answers a scorer had to load for.",
            ),
            stats_pushes: registry.counter(
                "mm_proxy_stats_pushes_total",
                "Statistics pushes sent to scorers, failed ones included.",
            ),
            stats_push_bytes: registry.counter(
                "mm_proxy_stats_push_bytes_total",
                "Bytes of the statistics push bodies sent to scorers.",
            ),
            stats_push_failures: registry.counter(
                "mm_proxy_stats_push_failures_total",
                "Statistics pushes to scorers that failed.",
            ),
            pool_size: registry.gauge("mm_proxy_pool_size", "Scorers in the pool."),
            healthy_scorers: registry
                .gauge("mm_proxy_healthy_scorers", "Scorers passing health checks."),
            hot_models: registry.gauge(
                "mm_proxy_hot_models",
                "Models the proxy knows to be hot somewhere.",
            ),
            inflight: registry.gauge_vec(
                "mm_proxy_scorer_inflight",
                "Requests in flight per scorer.",
                &["scorer"],
            ),
            requests_by_key: registry.counter_vec(
                "mm_proxy_requests_by_key_total",
                "Requests by the name of the key they carried and the auth or limit outcome.",
                &["key", "outcome"],
            ),
            batch_records: registry.counter_vec(
                "mm_proxy_batch_records_total",
                "Records of many-model requests by outcome (ok, failed).",
                &["outcome"],
            ),
            batch_groups: registry.counter(
                "mm_proxy_batch_groups_total",
                "Model groups of many-model requests sent to scorers.",
            ),
            shadow_verdicts: registry.counter_vec(
                "mm_proxy_shadow_verdicts_total",
                "Shadows the judge saw meet or fail their rule (once per shadow), by verdict and the rule's action.",
                &["verdict", "action"],
            ),
            shadow_promotions: registry.counter_vec(
                "mm_proxy_shadow_promotions_total",
                "Promotions of a shadow's candidate the judge asked for, by result.",
                &["result"],
            ),
            registry,
        }
        .registered()
    }

    /// Registers every value of the bounded labels up front, so each series shows from
    /// zero.
    fn registered(self) -> Self {
        for verdict in SHADOW_VERDICTS {
            for action in SHADOW_ACTIONS {
                self.shadow_verdicts.with_label_values(&[verdict, action]);
            }
        }
        for result in SHADOW_PROMOTIONS {
            self.shadow_promotions.with_label_values(&[result]);
        }
        self
    }

    /// Counts one request with `outcome` (one of [`OUTCOMES`]).
    pub fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
        }
    }

    /// Counts a many-model request's records: `ok` of them answered, `failed` not.
    pub fn count_records(&self, ok: usize, failed: usize) {
        for (outcome, n) in BATCH_OUTCOMES.into_iter().zip([ok, failed]) {
            self.batch_records
                .with_label_values(&[outcome])
                .inc_by(n as u64);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
