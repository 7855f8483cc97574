//! Prometheus metrics of one scorer. No metric carries a model id: with 10,000 models a
//! per-model label would explode the series count. Labels are bounded sets (route, status
//! code, error kind, engine, image event, eviction reason, statistics refusal, canary arm,
//! shadow outcome);
//! docs/metrics.md lists every metric with its labels' values, generated from this file
//! (`cargo xtask docs`).

use manymodels_boot::{Registry, exponential_buckets};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

/// The `arm` label's values of `mm_scorer_canary_requests_total`, both registered up front.
pub const CANARY_ARMS: [&str; 2] = ["stable", "canary"];

/// The `outcome` label's values of `mm_scorer_capture_total`, all registered up front:
/// sampled lines put in the queue, dropped at a full queue, written to the store, and
/// dropped after failing to be written (`capture`).
pub const CAPTURE_OUTCOMES: [&str; 4] = ["queued", "dropped", "written", "failed"];

/// The `outcome` label's values of `mm_scorer_shadow_runs_total`, all registered up front,
/// in [`Metrics::shadow_runs`]' order: a shadow run whose answer agreed with the live one,
/// disagreed, failed (the candidate's load or run), or was skipped (the queue was full, or
/// the candidate could not be in memory without evicting a live model; `cache::shadow`).
pub const SHADOW_OUTCOMES: [&str; 4] = ["agreed", "disagreed", "error", "skipped"];

/// The `outcome` label's values of `mm_scorer_explanations_total`, in
/// [`Metrics::explanations`]' order: explained, refused (the model cannot be explained:
/// 422), failed (the inputs did not fit, the deadline passed).
pub const EXPLANATION_OUTCOMES: [&str; 3] = ["explained", "unexplainable", "failed"];

/// The values of `mm_scorer_loads_started_total`'s `priority` label, in
/// [`Metrics::loads_started`]' order (`contract::Priority`).
pub const LOAD_PRIORITIES: [&str; 2] = ["interactive", "batch"];

pub struct Metrics {
    registry: Registry,
    /// By `route` (the label `http::finish` and `grpc::Front::finish` are given: `infer`,
    /// `records`, `metadata`, `ready`, `index`, `load`, `unload`, `explain`, `stats`, `shadows`, `admin`,
    /// `unauthorized` (refused by the key check), `other`, and `grpc_<call>` for gRPC) and
    /// `code` (the HTTP status code; a gRPC call's REST-equivalent status).
    pub requests: IntCounterVec,
    /// Error answers by `kind` (`ScorerError::kind`: a bounded set).
    pub errors: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub loads: IntCounter,
    /// Successful loads by `engine` (`onnxruntime`, `native`).
    pub engine_loads: IntCounterVec,
    pub loaded_bytes: IntCounter,
    /// Native images by `event` (`loaded`, `written`, `stale`, `corrupt`, `evicted`).
    pub images: IntCounterVec,
    pub warmup_loads: IntCounter,
    /// Warm-up loads that left memory (or were never admitted) before serving a request.
    pub warmup_wasted: IntCounter,
    /// Loads refused because the model can never fit in the budget.
    pub too_large: IntCounter,
    /// Bytes reserved by loads in flight and by models that left the cache while requests
    /// still used them.
    pub reserved_bytes: IntGauge,
    pub stats_pushes: IntCounter,
    /// Statistics pushes refused, by `reason` (`StatsRefusal::REASONS`).
    pub stats_refused: IntCounterVec,
    pub version_swaps: IntCounter,
    pub version_refusals: IntCounter,
    /// Inference requests naming no version of models with a canary, by `arm`:
    /// `[stable, canary]` (the split is this scorer's, `cache::canary`).
    pub canary_requests: [IntCounter; 2],
    pub load_failures: IntCounter,
    /// Requests answered from a remembered load failure without loading again.
    pub failed_fast: IntCounter,
    /// By `reason` (the contract's `EvictionReason`): `capacity`
    /// (displaced by a model of higher priority), `not_admitted` (served, not kept),
    /// `unload` (the repository API), `replaced` (a new live version took over).
    pub evictions: IntCounterVec,
    pub loads_in_progress: IntGauge,
    /// Loads that took a load slot, by the priority of the request that started them, in
    /// [`LOAD_PRIORITIES`]' order.
    pub loads_started: [IntCounter; 2],
    /// Inference calls (either engine) run on the async worker because they were measured
    /// to be short.
    pub inline_runs: IntCounter,
    pub load_duration: Histogram,
    pub inference_duration: Histogram,
    pub resident_bytes: IntGauge,
    pub resident_models: IntGauge,
    pub budget_bytes: IntGauge,
    /// The bytes this scorer's share wants resident (`cache::ModelCache::working_set`).
    pub working_set_bytes: IntGauge,
    /// Captured lines by `outcome`, in [`CAPTURE_OUTCOMES`]' order.
    pub capture: [IntCounter; 4],
    /// Bytes captured and not yet written (in the queue or a batch), at most
    /// `capture.queue_bytes`.
    pub capture_queue_bytes: IntGauge,
    /// Shadow runs by `outcome`, in [`SHADOW_OUTCOMES`]' order (no model label: each
    /// model's counts are in `GET /v2/mm/shadows`).
    pub shadow_runs: [IntCounter; 4],
    /// Requests that asked for contributions (`parameters.contributions`), by `outcome`
    /// in [`EXPLANATION_OUTCOMES`]' order.
    pub explanations: [IntCounter; 3],
}

impl Metrics {
    pub fn new(budget_bytes: u64) -> Self {
        let registry = Registry::new();
        let metrics = Metrics {
            requests: registry.counter_vec(
                "mm_scorer_requests_total",
                "HTTP requests by route and status code.",
                &["route", "code"],
            ),
            errors: registry.counter_vec(
                "mm_scorer_errors_total",
                "Error answers by kind (not_found, invalid_input, load_failed, too_large_for_budget, ...).",
                &["kind"],
            ),
            cache_hits: registry.counter(
                "mm_scorer_cache_hits_total",
                "Model look-ups answered from the hot cache.",
            ),
            cache_misses: registry.counter(
                "mm_scorer_cache_misses_total",
                "Model look-ups that were not in the hot cache.",
            ),
            loads: registry.counter(
                "mm_scorer_model_loads_total",
                "Models loaded (from a native image, or the file read and compiled natively or made an ONNX Runtime session).",
            ),
            engine_loads: registry.counter_vec(
                "mm_scorer_engine_loads_total",
                "Models loaded, by the engine that serves them (onnxruntime, native).",
                &["engine"],
            ),
            images: registry.counter_vec(
                "mm_scorer_images_total",
                "Native images: loaded (a load that read an image), written, stale or corrupt (compiled again), evicted from the image directory.",
                &["event"],
            ),
            loaded_bytes: registry.counter(
                "mm_scorer_loaded_bytes_total",
                "Memory charged to every model loaded (the byte-miss volume).",
            ),
            warmup_loads: registry.counter(
                "mm_scorer_warmup_loads_total",
                "Models loaded ahead of demand from the pool's statistics.",
            ),
            warmup_wasted: registry.counter(
                "mm_scorer_warmup_wasted_total",
                "Warm-up loads evicted (or not admitted) before serving any request.",
            ),
            too_large: registry.counter(
                "mm_scorer_too_large_total",
                "Loads refused because the model can never fit in the cache budget.",
            ),
            reserved_bytes: registry.gauge(
                "mm_scorer_reserved_bytes",
                "Memory reserved by model loads in flight (file, transient and model).",
            ),
            stats_pushes: registry.counter(
                "mm_scorer_stats_pushes_total",
                "Pool statistics pushes received from proxies.",
            ),
            stats_refused: {
                let refused = registry.counter_vec(
                    "mm_scorer_stats_refused_total",
                    "Statistics pushes refused for breaking a bound, by reason.",
                    &["reason"],
                );
                for reason in manymodels_contract::StatsRefusal::REASONS {
                    refused.with_label_values(&[reason]);
                }
                refused
            },
            version_swaps: registry.counter(
                "mm_scorer_version_swaps_total",
                "Live versions replaced in memory by a newer, pinned or unpinned one.",
            ),
            version_refusals: registry.counter(
                "mm_scorer_version_refusals_total",
                "New live versions refused (load, smoke inference or signature failed); the old one kept serving.",
            ),
            canary_requests: {
                let arms = registry.counter_vec(
                    "mm_scorer_canary_requests_total",
                    "Inference requests naming no version of models with a canary, by the arm they went to (stable: the live version; canary).",
                    &["arm"],
                );
                CANARY_ARMS.map(|arm| arms.with_label_values(&[arm]))
            },
            load_failures: registry.counter(
                "mm_scorer_model_load_failures_total",
                "Model loads that failed.",
            ),
            failed_fast: registry.counter(
                "mm_scorer_failed_fast_total",
                "Requests answered with a remembered load failure, without loading again.",
            ),
            evictions: registry.counter_vec(
                "mm_scorer_cache_evictions_total",
                "Models removed from the hot cache, by reason.",
                &["reason"],
            ),
            inline_runs: registry.counter(
                "mm_scorer_inference_inline_total",
                "Inference calls run on the async worker (measured shorter than inference.inline_max).",
            ),
            loads_in_progress: registry.gauge("mm_scorer_loads_in_progress", "Model loads running now."),
            loads_started: {
                let priorities = registry.counter_vec(
                    "mm_scorer_loads_started_total",
                    "Model loads that took a load slot, by the priority of the request that started them (x-mm-priority: interactive, batch; warm-ups and version checks count as interactive).",
                    &["priority"],
                );
                LOAD_PRIORITIES.map(|priority| priorities.with_label_values(&[priority]))
            },
            load_duration: registry.histogram(
                "mm_scorer_model_load_duration_seconds",
                "Time to load a model once it has a load slot (its image mapped, or its file read and compiled or made an ONNX Runtime session), waits for memory included.",
                exponential_buckets(0.0005, 2.0, 16),
            ),
            inference_duration: registry.histogram(
                "mm_scorer_inference_duration_seconds",
                "Time in the engine (native or ONNX Runtime) per request.",
                exponential_buckets(0.000_002, 2.0, 20),
            ),
            resident_bytes: registry.gauge(
                "mm_scorer_resident_bytes",
                "Memory charged to the models in the hot cache.",
            ),
            resident_models: registry.gauge("mm_scorer_resident_models", "Models in the hot cache."),
            budget_bytes: registry.gauge("mm_scorer_budget_bytes", "The hot cache's byte budget."),
            working_set_bytes: registry.gauge(
                "mm_scorer_working_set_bytes",
                "The fewest bytes that would serve 95% of this scorer's share of the pool's traffic from memory (its pushed models, hottest first, at their sizes): the signal the pool scales on, against mm_scorer_budget_bytes.",
            ),
            capture: {
                let outcomes = registry.counter_vec(
                    "mm_scorer_capture_total",
                    "Payload capture lines by outcome: queued (sampled and queued), dropped (sampled but the queue was full), written (to the store), failed (dropped after every write attempt failed).",
                    &["outcome"],
                );
                CAPTURE_OUTCOMES.map(|outcome| outcomes.with_label_values(&[outcome]))
            },
            capture_queue_bytes: registry.gauge(
                "mm_scorer_capture_queue_bytes",
                "Payload capture bytes waiting to be written (queued or batched), bounded by capture.queue_bytes.",
            ),
            shadow_runs: {
                let outcomes = registry.counter_vec(
                    "mm_scorer_shadow_runs_total",
                    "Shadow runs (a model's candidate version run after the live answer, and compared) by outcome: agreed, disagreed, error (the candidate failed to load or run), skipped (the queue was full, or the candidate could not be loaded without evicting a live model).",
                    &["outcome"],
                );
                SHADOW_OUTCOMES.map(|outcome| outcomes.with_label_values(&[outcome]))
            },
            explanations: {
                let outcomes = registry.counter_vec(
                    "mm_scorer_explanations_total",
                    "Inference requests that asked for per-feature contributions (parameters.contributions, a record's contributions), by outcome: explained, unexplainable (422: the model cannot be explained), failed.",
                    &["outcome"],
                );
                EXPLANATION_OUTCOMES.map(|outcome| outcomes.with_label_values(&[outcome]))
            },
            registry,
        };
        metrics.budget_bytes.set(budget_bytes as i64);
        // Labelled families exist from the first scrape, at 0, so dashboards and alerts
        // see "0" rather than "no data".
        for reason in manymodels_contract::EvictionReason::ALL {
            metrics.evictions.with_label_values(&[reason.as_str()]);
        }
        metrics.requests.with_label_values(&["infer", "200"]);
        metrics
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}
