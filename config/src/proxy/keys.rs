//! The proxy's key table: every key, its one default and its meaning.

use crate::common::{LOG_FORMAT, LOG_LEVEL, TRACE_ENDPOINT, TRACE_SAMPLE_RATIO};
use crate::layer::{KeyDoc, doc, secret};

/// Every proxy key, its default and meaning. The configuration starts from these defaults,
/// docs/configuration.md's table is rendered from them (`cargo xtask docs`), and a test checks
/// that the keys are exactly the fields of the raw layer.
pub const KEYS: &[KeyDoc] = &[
    doc(
        "listen",
        "127.0.0.1:8080",
        "Address the proxy listens on (Open Inference Protocol, Azure ML scoring).",
    ),
    doc("threads", "2", "Worker threads of the proxy service."),
    doc(
        "pool.scorers",
        "",
        "Scorers as a comma-separated list (or TOML array) of `host:port`; names are re-resolved every `pool.refresh` and are the rendezvous identity.",
    ),
    doc(
        "pool.dns",
        "",
        "A DNS name `host:port` whose addresses are the scorers, re-resolved every `pool.refresh`; each scorer is identified by its address, so one that restarts on a new address moves its models (`pool.srv` keeps names).",
    ),
    doc(
        "pool.srv",
        "",
        "A DNS SRV name (a Kubernetes headless Service's named port: `_http._tcp.<service>.<namespace>.svc.cluster.local`) whose records are the scorers, each named `<target>:<port>` (its rendezvous identity), re-queried every `pool.refresh`. An empty answer or a failed query keeps the last membership. Exactly one of `pool.scorers`, `pool.dns` and `pool.srv` is set.",
    ),
    doc(
        "pool.resolver",
        "",
        "The DNS server `pool.srv` is asked, as `ip:port` (e.g. the cluster DNS Service's address); empty: the servers in /etc/resolv.conf.",
    ),
    doc(
        "pool.refresh",
        "5s",
        "How often the pool membership is re-resolved.",
    ),
    doc(
        "health.interval",
        "1s",
        "How often each scorer's `/v2/health/ready` is checked.",
    ),
    doc(
        "health.timeout",
        "500ms",
        "How long a health check may take to connect and answer.",
    ),
    doc(
        "health.tolerated_timeouts",
        "1",
        "Consecutive health checks a healthy scorer may leave unanswered (timed out) and stay in rotation; a scorer that answers anything but 200 (warming, shutting down) or refuses the connection leaves at once.",
    ),
    doc(
        "health.eject_for",
        "5s",
        "How long a scorer is skipped after a connection to it failed (passive ejection).",
    ),
    doc(
        "routing.top_k",
        "2",
        "Candidates (in rendezvous order) searched for a scorer that already holds the model hot.",
    ),
    doc(
        "routing.load_factor",
        "2.0",
        "Spill a request to the next candidate when the chosen scorer has more than this factor times the pool's mean requests in flight (plus `routing.min_inflight`).",
    ),
    doc(
        "routing.min_inflight",
        "8",
        "In-flight requests a scorer may always take before spilling is considered.",
    ),
    doc(
        "routing.drain_handoff",
        "true",
        "While a scorer drains (its readiness answers 503 with `x-mm-draining`), send it the requests for models it holds hot until their next-ranked scorer holds them (warmed in the background), instead of a cold load there. A request that finds it gone is retried on the next candidate (`upstream.retries`).",
    ),
    doc(
        "routing.hot_ttl",
        "120s",
        "How long a scorer counts as holding a model after it last answered for it.",
    ),
    doc(
        "routing.hot_max_models",
        "32768",
        "Most models the hot table (which scorers hold which model, from their answers) remembers; past it the least recently answered are forgotten and routed to their owner, so the proxy's memory does not grow with the number of ids in traffic (about 450 bytes a model).",
    ),
    doc(
        "replication.threshold",
        "200",
        "Requests per second on one model above which it is also warmed on the second-ranked scorer and spread over both; 0 disables.",
    ),
    doc(
        "stats.push_interval",
        "2s",
        "How often the proxy pushes each scorer the pool-wide request rates of the models it owns (0 disables pushes).",
    ),
    doc(
        "stats.half_life_requests",
        "10000",
        "Half-life of the proxy's decayed per-model request counts, in requests through this proxy (rates are still pushed in requests per second).",
    ),
    doc(
        "stats.top_models",
        "16384",
        "Hottest models whose ids and rates the proxy keeps and pushes; colder ones are estimated by a fixed-size sketch.",
    ),
    doc(
        "upstream.connect_timeout",
        "1s",
        "Timeout to connect to a scorer.",
    ),
    doc(
        "upstream.read_timeout",
        "60s",
        "Timeout for each read from a scorer (covers cold loads).",
    ),
    doc(
        "upstream.retries",
        "1",
        "Times a request is retried on the next candidate when its scorer could not be reached or died before answering.",
    ),
    doc(
        "hedge.enabled",
        "true",
        "Hedge inference requests (REST `infer` and Azure ML scoring naming a model, with a declared body of at most 1 MiB): one with no answer from its scorer after the hedge delay is sent to the next candidate too; the first answer wins and the other is cancelled. Admin calls, uploads, gRPC and the many-model route are never hedged.",
    ),
    doc(
        "hedge.floor",
        "20ms",
        "The shortest hedge delay. The delay is the scorer's recent latency for the model (smoothed mean plus four mean deviations, as TCP sets its retransmission timeout), or the scorer's for all models it answered from memory (or for its cold loads, when it is not known to hold the model), kept between `hedge.floor` and `hedge.cap`.",
    ),
    doc(
        "hedge.cap",
        "1s",
        "The longest hedge delay (also the delay when nothing is known yet).",
    ),
    doc(
        "hedge.budget",
        "0.05",
        "Hedges allowed per request (a token bucket: each request adds this much, a hedge takes one, at most `hedge.burst` saved), so hedging never doubles the load of an overloaded pool.",
    ),
    doc(
        "hedge.burst",
        "10",
        "Hedges the budget can save up for a burst (the bucket starts full).",
    ),
    doc(
        "hedge.stalled_after",
        "3",
        "Requests hedged away from a scorer, with no answer from it in between, after which it is ejected for `health.eject_for` (a frozen scorer stops getting requests before its health checks time out); 0 never ejects for this.",
    ),
    doc(
        "http.max_body",
        "32MiB",
        "Largest request body accepted; larger bodies get 413 without reaching a scorer.",
    ),
    doc(
        "http.max_upload",
        "1GiB",
        "Largest model accepted by the admin publish route (`PUT /v2/admin/models/{id}/versions/{v}`).",
    ),
    doc(
        "batch.id_template",
        "",
        "The many-model route's model-id template (`POST /v2/mm/batch`, and Azure ML's scoring route without `x-mm-model`): `{field}` placeholders filled from each record's key fields, e.g. `{store}_{brand}_{model_type}`; empty: records name their model in `model`.",
    ),
    doc(
        "batch.key_templates",
        "",
        "Per-tenant id templates: comma-separated `keyname={template}` entries; a request made with that key (its name in `auth.api_keys`) uses that template instead of `batch.id_template`.",
    ),
    doc(
        "batch.max_bytes",
        "16MiB",
        "Largest many-model request body; larger ones get 413 before any record is read.",
    ),
    doc(
        "batch.max_records",
        "10000",
        "Most records in one many-model request; more get 413.",
    ),
    doc(
        "batch.parallelism",
        "16",
        "Requests to scorers one many-model request has in flight at once (each carries up to `batch.groups_per_request` model groups).",
    ),
    doc(
        "batch.groups_per_request",
        "16",
        "Model groups the many-model route sends a scorer in one request (`POST /v2/mm/records`); a scorer chosen for more gets several requests, which it serves in parallel.",
    ),
    doc(
        "batch.concurrency",
        "4",
        "Many-model requests the proxy reads and serves at once (bounding its memory: each holds its body and answer); more wait for a turn within their deadline, then get 503.",
    ),
    secret(
        "auth.api_keys",
        "Comma-separated bearer keys accepted for scoring; empty disables auth. Each entry is `key`, `name:key` (metrics count by name) or `name:key:prefixes` (the key may only use model ids starting with one of the prefixes, several joined by a vertical bar: `acme:k1:acme-`; 403 otherwise). See docs/operating.md, \"Keys\".",
    ),
    doc(
        "auth.api_keys_file",
        "",
        "File with one bearer key per line in the same forms as `auth.api_keys` (a mounted Secret), added to `auth.api_keys`.",
    ),
    secret(
        "auth.admin_keys",
        "Comma-separated bearer keys for the admin routes (repository load/unload, `/v2/admin/...`, a model's placement `/v2/mm/pool/models/{id}`), in the same forms as `auth.api_keys` (a scoped admin key may only administer its models); empty means the API keys.",
    ),
    secret(
        "auth.pool_key",
        "Bearer key shared with the scorers (their `auth.pool_key`, a Secret): sent as `Authorization` on every forwarded request (replacing the client's, already checked here) and on the proxy's own calls; empty sends the client's header on and none of its own.",
    ),
    secret(
        "auth.pool_key_previous",
        "The pool key being replaced, during a rotation (a Secret): the proxy learns per scorer, by a cheap authenticated call at each health check, whether it takes `auth.pool_key` or only this one, and sends each scorer the key it takes (a 401 from a scorer makes it look again). Set it to the old key in the upgrade that sets the new `auth.pool_key`, and drop it in a later one. See docs/operating.md, \"Keys\".",
    ),
    doc(
        "limits.rate",
        "",
        "Per-key request rates: comma-separated `keyname=N` entries (requests per second, a token bucket; `N` may be fractional), one per key name in `auth.api_keys` or `auth.admin_keys`; over it a request gets 429 with `Retry-After`. Empty: no rate limit.",
    ),
    doc(
        "limits.burst",
        "",
        "Per-key bursts of `limits.rate`: comma-separated `keyname=N` entries (the bucket's size, whole requests); a key with a rate but no burst gets one second of its rate (at least 1).",
    ),
    doc(
        "limits.inflight",
        "",
        "Per-key caps on requests in flight through this proxy: comma-separated `keyname=N` entries (N at least 1), counted from admission to the end of the answer; over it a request gets 429 with `Retry-After: 1`.",
    ),
    doc(
        "limits.priority",
        "",
        "Per-key request priority: comma-separated `keyname=interactive|batch` entries; a key's priority is sent to the scorers as `x-mm-priority` and wins over the client's own header.",
    ),
    doc(
        "shadow.judge_interval",
        "5s",
        "How often the proxy judges every shadow's promotion rule on the pool's merged counts (`GET /v2/mm/shadows` on every scorer), promoting or reporting a met rule (0 disables the judge; the shadow views still judge on request).",
    ),
    doc(
        "shutdown.grace",
        "10s",
        "On SIGTERM, how long in-flight requests may take before the process exits.",
    ),
    LOG_LEVEL,
    LOG_FORMAT,
    TRACE_ENDPOINT,
    TRACE_SAMPLE_RATIO,
];
