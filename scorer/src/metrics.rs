//! Prometheus metrics of one scorer. No metric carries a model id: with 10,000 models a
//! per-model label would explode the series count. Labels are bounded enums (route,
//! status class, eviction cause, error kind).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// By `route` (infer, metadata, ready, load, unload, index) and `code` (status code).
    pub requests: IntCounterVec,
    /// Error answers by `kind` (`ScorerError::kind`: a bounded set).
    pub errors: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub loads: IntCounter,
    /// Successful loads by `engine` (`onnxruntime`, `native`).
    pub engine_loads: IntCounterVec,
    pub loaded_bytes: IntCounter,
    pub warmup_loads: IntCounter,
    /// Warm-up loads that left memory (or were never admitted) before serving a request.
    pub warmup_wasted: IntCounter,
    /// Loads refused because the model can never fit in the budget.
    pub too_large: IntCounter,
    /// Bytes reserved by loads in flight.
    pub reserved_bytes: IntGauge,
    pub stats_pushes: IntCounter,
    pub version_swaps: IntCounter,
    pub version_refusals: IntCounter,
    pub load_failures: IntCounter,
    /// Requests answered from a remembered load failure without loading again.
    pub failed_fast: IntCounter,
    /// By `reason`: `size` (evicted for room), `explicit` (unload), `replaced`.
    pub evictions: IntCounterVec,
    pub loads_in_progress: IntGauge,
    /// ONNX Runtime calls run on the async worker because they were measured to be short.
    pub inline_runs: IntCounter,
    pub load_duration: Histogram,
    pub inference_duration: Histogram,
    pub resident_bytes: IntGauge,
    pub resident_models: IntGauge,
    pub budget_bytes: IntGauge,
}

impl Metrics {
    pub fn new(budget_bytes: u64) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let requests = IntCounterVec::new(
            Opts::new(
                "mm_scorer_requests_total",
                "HTTP requests by route and status code.",
            ),
            &["route", "code"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "mm_scorer_errors_total",
                "Error answers by kind (not_found, invalid_input, load_failed, too_large_for_budget, ...).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(errors.clone()))
            .expect("unique metric");
        let engine_loads = IntCounterVec::new(
            Opts::new(
                "mm_scorer_engine_loads_total",
                "Models loaded, by the engine that serves them (onnxruntime, native).",
            ),
            &["engine"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(engine_loads.clone()))
            .expect("unique metric");
        let evictions = IntCounterVec::new(
            Opts::new(
                "mm_scorer_cache_evictions_total",
                "Models removed from the hot cache, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(evictions.clone()))
            .expect("unique metric");
        let metrics = Metrics {
            requests,
            errors,
            cache_hits: counter(
                "mm_scorer_cache_hits_total",
                "Model look-ups answered from the hot cache.",
            ),
            cache_misses: counter(
                "mm_scorer_cache_misses_total",
                "Model look-ups that were not in the hot cache.",
            ),
            loads: counter(
                "mm_scorer_model_loads_total",
                "Models loaded (file read and session created).",
            ),
            engine_loads,
            loaded_bytes: counter(
                "mm_scorer_loaded_bytes_total",
                "Memory charged to every model loaded (the byte-miss volume).",
            ),
            warmup_loads: counter(
                "mm_scorer_warmup_loads_total",
                "Models loaded ahead of demand from the pool's statistics.",
            ),
            warmup_wasted: counter(
                "mm_scorer_warmup_wasted_total",
                "Warm-up loads evicted (or not admitted) before serving any request.",
            ),
            too_large: counter(
                "mm_scorer_too_large_total",
                "Loads refused because the model can never fit in the cache budget.",
            ),
            reserved_bytes: gauge(
                "mm_scorer_reserved_bytes",
                "Memory reserved by model loads in flight (file, transient and model).",
            ),
            stats_pushes: counter(
                "mm_scorer_stats_pushes_total",
                "Pool statistics pushes received from proxies.",
            ),
            version_swaps: counter(
                "mm_scorer_version_swaps_total",
                "Live versions replaced in memory by a newer, pinned or unpinned one.",
            ),
            version_refusals: counter(
                "mm_scorer_version_refusals_total",
                "New live versions refused (load, smoke inference or signature failed); the old one kept serving.",
            ),
            load_failures: counter(
                "mm_scorer_model_load_failures_total",
                "Model loads that failed.",
            ),
            failed_fast: counter(
                "mm_scorer_failed_fast_total",
                "Requests answered with a remembered load failure, without loading again.",
            ),
            evictions,
            inline_runs: counter(
                "mm_scorer_inference_inline_total",
                "Inference calls run on the async worker (measured shorter than inference.inline_max).",
            ),
            loads_in_progress: gauge("mm_scorer_loads_in_progress", "Model loads running now."),
            load_duration: histogram(
                "mm_scorer_model_load_duration_seconds",
                "Time to read a model and create its session.",
                prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
            ),
            inference_duration: histogram(
                "mm_scorer_inference_duration_seconds",
                "Time in ONNX Runtime per request.",
                prometheus::exponential_buckets(0.000_002, 2.0, 20).expect("valid buckets"),
            ),
            resident_bytes: gauge(
                "mm_scorer_resident_bytes",
                "Memory charged to the models in the hot cache.",
            ),
            resident_models: gauge("mm_scorer_resident_models", "Models in the hot cache."),
            budget_bytes: gauge("mm_scorer_budget_bytes", "The hot cache's byte budget."),
            registry,
        };
        metrics.budget_bytes.set(budget_bytes as i64);
        // Labelled families exist from the first scrape, at 0, so dashboards and alerts
        // see "0" rather than "no data".
        for reason in crate::cache::Reason::ALL {
            metrics.evictions.with_label_values(&[reason.as_str()]);
        }
        metrics.requests.with_label_values(&["infer", "200"]);
        metrics
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
