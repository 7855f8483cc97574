//! The scorer's key table: every key, its one default and its meaning.

use crate::common::{LOG_FORMAT, LOG_LEVEL, TRACE_ENDPOINT, TRACE_SAMPLE_RATIO};
use crate::layer::{KeyDoc, doc, secret};

/// Every scorer key, its default and meaning. The configuration starts from these defaults,
/// docs/configuration.md's table is rendered from them (`cargo xtask docs`), and a test checks
/// that the keys are exactly the fields of the raw layer.
pub const KEYS: &[KeyDoc] = &[
    doc(
        "listen",
        "127.0.0.1:8001",
        "Address the HTTP (Open Inference Protocol) server binds.",
    ),
    doc(
        "name",
        "",
        "Name reported in the `x-mm-scorer` response header and logs; empty means the listen address.",
    ),
    doc(
        "store.kind",
        "local",
        "Model store backend: `local` (a directory) or `azure` (Azure Blob Storage).",
    ),
    doc(
        "store.path",
        "models/demo",
        "Root directory of the local store: `<path>/<model_id>/<version>/model.onnx`.",
    ),
    doc(
        "store.timeout",
        "5s",
        "Deadline of every store call (listing, look-up, read, alias, write): a store that does not answer within it is unavailable (503) for that call, so a hung store cannot hang requests.",
    ),
    doc("store.azure.account", "", "Azure Storage account name."),
    doc(
        "store.azure.container",
        "",
        "Blob container that holds the models.",
    ),
    doc(
        "store.azure.prefix",
        "",
        "Blob name prefix under which `<model_id>/<version>/model.onnx` live.",
    ),
    doc(
        "store.azure.endpoint",
        "",
        "Blob endpoint URL override (Azurite, sovereign clouds); empty means the public endpoint.",
    ),
    doc(
        "store.azure.use_emulator",
        "false",
        "Use Azurite's development account; its URL comes from `AZURITE_BLOB_STORAGE_URL` (default `http://127.0.0.1:10000`).",
    ),
    secret(
        "store.azure.access_key",
        "Storage account key; empty means SAS or workload identity.",
    ),
    secret(
        "store.azure.sas_token",
        "SAS token used instead of an account key.",
    ),
    doc(
        "cache.budget",
        "512MiB",
        "Bytes of loaded models the hot cache may hold.",
    ),
    doc(
        "cache.max_concurrent_loads",
        "auto",
        "Model loads that may run at the same time, each on its own low-priority load thread: `auto` is the CPUs the process may use (its cgroup quota on Kubernetes), or a number.",
    ),
    doc(
        "cache.batch_load_share",
        "0.5",
        "Share of `cache.max_concurrent_loads` that requests sent with `x-mm-priority: batch` may use for cold loads at once (rounded down, at least one slot); while interactive and batch requests both wait for a load slot, interactive ones go first. Between 0 and 1.",
    ),
    doc(
        "cache.failure_ttl",
        "30s",
        "How long a model that failed to load answers its error without retrying.",
    ),
    doc(
        "cache.load_timeout",
        "60s",
        "A load's own deadline, from the store read to the engine's end, separate from any request's: a load past it is abandoned and its waiters answer 503 (its thread finishes on its own, its memory stays reserved until then). It bounds new versions too (version checks, refresh, pin, publish): one past it is refused and the old version keeps serving; a publish past it answers 503 and writes nothing.",
    ),
    doc(
        "cache.max_waiting",
        "2048",
        "Requests that may wait for model loads on this scorer at once; beyond it a request for a model not in memory answers 503 with `Retry-After` at once.",
    ),
    doc(
        "cache.max_waiting_per_model",
        "512",
        "Requests that may wait for the load of one model at once; beyond it 503 with `Retry-After` at once.",
    ),
    doc(
        "cache.weight_overhead",
        "96KiB",
        "Estimated fixed memory of a session, charged when a load overlapped another and could not be measured.",
    ),
    doc(
        "cache.weight_per_file_byte",
        "7.0",
        "Estimated memory per byte of ONNX file, charged with `weight_overhead` when a load could not be measured (ONNX Runtime keeps forests at 5.4-7.1x their file).",
    ),
    doc(
        "images.dir",
        "",
        "Node-local directory where the scorer keeps native images of the models it compiled (a later load reads the image: no protobuf parse, no compile); empty turns images off. Images are the scorer's own cache: never read from or written to the store.",
    ),
    doc(
        "images.max_bytes",
        "2GiB",
        "Disk the images may take; past it the least recently used images are deleted.",
    ),
    doc(
        "policy.half_life_requests",
        "10000",
        "Half-life of the decayed request counts that rank models for eviction and admission, in requests to this scorer (counts decay with traffic, not time, so ranking is the same at any request rate).",
    ),
    doc(
        "policy.size_weight",
        "1.0",
        "Weight of load cost per byte in a model's priority: 0 ranks by request rate alone (best for bytes loaded), 1 by rate × load cost / bytes (best for request hits).",
    ),
    doc(
        "policy.stats_stale_after",
        "15s",
        "A proxy's pool statistics are dropped when it has not pushed for this long.",
    ),
    doc(
        "tenants.shares",
        "",
        "Tenant shares of `cache.budget`: a comma-separated list (or TOML array) of `name=prefix[+prefix...][:floor=F][:cap=C]`, e.g. `b=b-:floor=0.5,a=a-+scan-:cap=0.25`. A model belongs to the tenant with the longest prefix of its id, else to the default tenant (no floor, no cap). `floor` (default 0) is the fraction of the budget the tenant keeps against other tenants' models: eviction for another tenant's model never takes it below it, and under it its own models claim room from tenants above their floors. `cap` (default 1) is the most it may hold: a model that would put it over its cap may evict only its tenant's models, else is served without being kept. Floors sum to at most 1; each cap at least its floor. Empty: no tenants.",
    ),
    doc(
        "warmup.concurrency",
        "2",
        "Background warm-up loads of the hot share that may run at once (they also take `cache.max_concurrent_loads` slots).",
    ),
    doc(
        "warmup.max_fraction",
        "0.8",
        "Warm-up after a statistics push loads at most this fraction of `cache.budget`.",
    ),
    doc(
        "warmup.ready_timeout",
        "10s",
        "A starting scorer reports ready once it has warmed its hot share from the first statistics push, or after this long; 0 means ready at once.",
    ),
    doc(
        "versions.check_interval",
        "1s",
        "How often the scorer asks the store whether the models it holds have a new live version (new upload, pin or unpin).",
    ),
    doc(
        "versions.checks_per_interval",
        "64",
        "Models checked per interval at most, least recently checked first (bounds store calls with many resident models).",
    ),
    secret(
        "auth.admin_keys",
        "Comma-separated bearer keys required on the scorer's admin routes (`/v2/mm/models/...`: publish, pin, refresh; not the records routes, which are scoring and take the pool key alone); empty leaves them open to the cluster network.",
    ),
    secret(
        "auth.pool_key",
        "Bearer key shared by the proxies and the scorers (a Secret): when set, every route except `/v2/health/*` needs it (admin keys also open the admin routes, metrics keys `/metrics`); empty leaves the scorer open to anyone who can reach its port, and it says so at start.",
    ),
    secret(
        "auth.pool_key_previous",
        "The pool key being replaced, during a rotation (a Secret): accepted wherever `auth.pool_key` is, so proxies that still send it keep working while they are upgraded. Set it to the old key in the upgrade that sets the new `auth.pool_key`, and drop it in a later one (docs/operating.md, \"Keys\").",
    ),
    secret(
        "auth.metrics_keys",
        "Comma-separated bearer keys that may read `/metrics` besides the pool key; with neither set `/metrics` is open.",
    ),
    doc(
        "stats.max_report_models",
        "65536",
        "Most models one statistics push may list (413 beyond); at least the proxies' `stats.top_models`.",
    ),
    doc(
        "stats.max_sources",
        "64",
        "Most proxies whose statistics a scorer keeps at once; a push from one more (before the others go stale) gets 422.",
    ),
    doc(
        "stats.max_source_rate",
        "1000000",
        "Most requests per second one proxy's push may claim in total (422 beyond); rates must also be finite and non-negative.",
    ),
    doc(
        "http.max_upload",
        "1GiB",
        "Largest model accepted by the publish route.",
    ),
    doc(
        "http.max_body",
        "32MiB",
        "Largest request body accepted; larger bodies get 413.",
    ),
    doc(
        "http.max_elements",
        "4194304",
        "Largest number of tensor elements in one request; more gets 400.",
    ),
    doc(
        "inference.threads",
        "0",
        "Most blocking threads for the inference calls that do not run inline (`inference.inline_max`), ONNX Runtime and native alike; the runtime allows 4 more for store reads and heap trims. Loads do not use them: they have their own threads (`cache.max_concurrent_loads`). 0 means the CPUs the process may use.",
    ),
    doc(
        "inference.inline_max",
        "20us",
        "A call this model has been measured to finish within this time runs on the async worker instead of a blocking thread; 0 sends every call to a blocking thread.",
    ),
    doc(
        "engine.native",
        "auto",
        "`auto`: a model whose whole graph the native engine covers (tree ensembles, linear models and their exporters' glue) is served by it, anything else by ONNX Runtime; `off`: every model is served by ONNX Runtime.",
    ),
    doc(
        "onnxruntime.library",
        "",
        "Path of libonnxruntime.so; empty means `ORT_DYLIB_PATH`, then `libonnxruntime.so.1` beside the executable, then `.cache/onnxruntime/lib`.",
    ),
    doc(
        "shutdown.drain",
        "2s",
        "On SIGTERM, how long the scorer keeps serving while reporting that it drains (`x-mm-draining`), so proxies drop it from rotation before it stops accepting (at least the proxies' `health.interval`), and hand its hot models over to their next-ranked scorers meanwhile (`routing.drain_handoff`; give it a model load or two more).",
    ),
    doc(
        "shutdown.grace",
        "30s",
        "On SIGTERM, after the drain, how long in-flight requests may take before the process exits.",
    ),
    doc(
        "ledger.hot_models",
        "1024",
        "Models the per-model ledger counts exactly (requests, hits, loads, errors by kind, latency quantiles, rows, version mix), chosen as the hottest by decayed request count; every other model's requests are summed in one tail aggregate and bounded per model by a count-min sketch. The ledger's memory is fixed by this, not by the number of models served (about 6 KiB per model typical, 19 MiB at most with the defaults).",
    ),
    doc(
        "ledger.half_life_requests",
        "1000000",
        "Half-life, in requests to this scorer, of the decayed counts that decide which models the ledger tracks exactly.",
    ),
    doc(
        "ledger.alpha",
        "0.01",
        "Relative accuracy of the ledger's latency quantiles (a mergeable DDSketch-style sketch): a reported quantile is within this fraction of the exact one. Proxies merge only scorers whose `ledger.alpha` and `ledger.max_buckets` agree.",
    ),
    doc(
        "ledger.max_buckets",
        "1024",
        "Most buckets of one latency sketch (8 bytes each); beyond, the lowest latencies are folded together (their quantiles lose accuracy, the high ones never do).",
    ),
    doc(
        "capture.prefix",
        "_captures",
        "Where captured payloads go in the model store: `<prefix>/<model>/<yyyy>/<MM>/<dd>/<HH>/<scorer>-<time>-<n>.jsonl` (under `store.path`, or under `store.azure.prefix` in the container). Which models are captured, and at what rate, is set at runtime (`mmctl capture`, the admin API) and kept in the store.",
    ),
    doc(
        "capture.queue_bytes",
        "16MiB",
        "Bytes of captured requests not yet written (queued, or in a batch, or in a failed batch waiting for another try), at most, counted as the in-memory size of their tensors; a capture that would exceed it is dropped and counted (`mm_scorer_capture_total{outcome=\"dropped\"}`): capture never blocks or slows a request. With the serialized batch being written (about `capture.batch_bytes`), this bounds capture's memory.",
    ),
    doc(
        "capture.flush_interval",
        "10s",
        "How often captured lines are written to the store (sooner when a model's pending lines reach `capture.batch_bytes`).",
    ),
    doc(
        "capture.batch_bytes",
        "4MiB",
        "A model's pending captured lines of one hour are written as one file once they reach this size (as JSON); otherwise at the next `capture.flush_interval`.",
    ),
    doc(
        "shadow.queue_bytes",
        "16MiB",
        "Bytes of shadow jobs waiting to run (a sampled request's inputs and live outputs, counted as the in-memory size of their tensors), at most; a job that would exceed it is dropped and counted skipped (`mm_scorer_shadow_runs_total{outcome=\"skipped\"}`): a shadow never blocks or slows a request. Which models are shadowed, and at what share, is set at runtime (`<id>/shadow.json` in the store, the admin API).",
    ),
    doc(
        "shadow.concurrency",
        "1",
        "Background workers running shadow jobs, each one job at a time (inline when the candidate is measured quick, as live calls are, else on a blocking thread).",
    ),
    LOG_LEVEL,
    LOG_FORMAT,
    TRACE_ENDPOINT,
    TRACE_SAMPLE_RATIO,
];
