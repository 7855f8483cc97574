//! Configuration of `mm-proxy`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::layer::{self, KeyDoc, Sources};
use crate::units::{ByteSize, HumanDuration};
use crate::{ConfigError, Secret};

/// Prefix of the environment variables that override proxy keys.
pub const ENV_PREFIX: &str = "MM_PROXY_";

/// Every proxy key, its default and meaning (README.md's table is rendered from this).
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
        "A DNS name `host:port` (a Kubernetes headless Service) whose addresses are the scorers, re-resolved every `pool.refresh`.",
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
        "routing.hot_ttl",
        "120s",
        "How long a scorer counts as holding a model after it last answered for it.",
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
        "http.max_body",
        "32MiB",
        "Largest request body accepted; larger bodies get 413 without reaching a scorer.",
    ),
    doc(
        "http.max_upload",
        "1GiB",
        "Largest model accepted by the admin publish route (`PUT /v2/admin/models/{id}/versions/{v}`).",
    ),
    secret(
        "auth.api_keys",
        "Comma-separated bearer keys accepted for scoring; empty disables auth.",
    ),
    doc(
        "auth.api_keys_file",
        "",
        "File with one bearer key per line (a mounted Secret), added to `auth.api_keys`.",
    ),
    secret(
        "auth.admin_keys",
        "Comma-separated bearer keys for repository load/unload; empty means the API keys.",
    ),
    doc(
        "shutdown.grace",
        "10s",
        "On SIGTERM, how long in-flight requests may take before the process exits.",
    ),
    doc(
        "log.level",
        "info",
        "Log filter (tracing `EnvFilter` syntax).",
    ),
];

const fn doc(key: &'static str, default: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc::new(key, default, doc)
}

const fn secret(key: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc::secret(key, doc)
}

/// The validated proxy configuration.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub pool: PoolSource,
    pub pool_refresh: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub tolerated_timeouts: usize,
    pub eject_for: Duration,
    pub top_k: usize,
    pub load_factor: f64,
    pub min_inflight: usize,
    pub hot_ttl: Duration,
    /// Requests per second that make a model hot enough to replicate; `None` disables.
    pub replication_threshold: Option<f64>,
    /// `None`: statistics are kept but not pushed.
    pub stats_push_interval: Option<Duration>,
    /// In requests through this proxy.
    pub stats_half_life_requests: u64,
    pub stats_top_models: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: usize,
    pub max_body: ByteSize,
    pub max_upload: ByteSize,
    pub api_keys: Vec<Secret>,
    pub admin_keys: Vec<Secret>,
    pub shutdown_grace: Duration,
    pub log_level: String,
}

/// Where the scorers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSource {
    /// Named scorers (`host:port`); the name is the rendezvous identity.
    Static(Vec<String>),
    /// Every address a DNS name resolves to; the address is the identity.
    Dns(String),
}

impl ProxyConfig {
    pub fn load(sources: &Sources<'_>) -> Result<Self, ConfigError> {
        let raw: Raw = layer::merge(KEYS, ENV_PREFIX, sources)?;
        raw.validate()
    }
}

/// A list given as a TOML array or as one comma-separated string (handy in env vars).
pub(crate) fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::List(items) => items,
        Raw::Text(text) => text.split(',').map(str::to_string).collect(),
    }
    .into_iter()
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
    .collect())
}

pub(crate) fn secrets<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    Ok(list(deserializer)?.into_iter().map(Secret::new).collect())
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    listen: String,
    threads: usize,
    pool: RawPool,
    health: RawHealth,
    routing: RawRouting,
    replication: RawReplication,
    stats: RawStats,
    upstream: RawUpstream,
    http: RawHttp,
    auth: RawAuth,
    shutdown: RawShutdown,
    log: RawLog,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            listen: "127.0.0.1:8080".into(),
            threads: 2,
            pool: RawPool::default(),
            health: RawHealth::default(),
            routing: RawRouting::default(),
            replication: RawReplication::default(),
            stats: RawStats::default(),
            upstream: RawUpstream::default(),
            http: RawHttp::default(),
            auth: RawAuth::default(),
            shutdown: RawShutdown::default(),
            log: RawLog::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPool {
    #[serde(deserialize_with = "list")]
    scorers: Vec<String>,
    dns: String,
    refresh: HumanDuration,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            scorers: Vec::new(),
            dns: String::new(),
            refresh: HumanDuration(Duration::from_secs(5)),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHealth {
    interval: HumanDuration,
    timeout: HumanDuration,
    tolerated_timeouts: usize,
    eject_for: HumanDuration,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval: HumanDuration(Duration::from_secs(1)),
            timeout: HumanDuration(Duration::from_millis(500)),
            tolerated_timeouts: 1,
            eject_for: HumanDuration(Duration::from_secs(5)),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRouting {
    top_k: usize,
    load_factor: f64,
    min_inflight: usize,
    hot_ttl: HumanDuration,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            top_k: 2,
            load_factor: 2.0,
            min_inflight: 8,
            hot_ttl: HumanDuration(Duration::from_secs(120)),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawReplication {
    threshold: f64,
}

impl Default for RawReplication {
    fn default() -> Self {
        RawReplication { threshold: 200.0 }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStats {
    push_interval: HumanDuration,
    half_life_requests: u64,
    top_models: usize,
}

impl Default for RawStats {
    fn default() -> Self {
        RawStats {
            push_interval: HumanDuration(Duration::from_secs(2)),
            half_life_requests: 10_000,
            top_models: 16_384,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUpstream {
    connect_timeout: HumanDuration,
    read_timeout: HumanDuration,
    retries: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout: HumanDuration(Duration::from_secs(1)),
            read_timeout: HumanDuration(Duration::from_secs(60)),
            retries: 1,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHttp {
    max_body: ByteSize,
    max_upload: ByteSize,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            max_body: ByteSize::mib(32),
            max_upload: ByteSize::mib(1024),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAuth {
    #[serde(deserialize_with = "secrets")]
    api_keys: Vec<Secret>,
    api_keys_file: String,
    #[serde(deserialize_with = "secrets")]
    admin_keys: Vec<Secret>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawShutdown {
    grace: HumanDuration,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            grace: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
        }
    }
}

impl Raw {
    fn validate(self) -> Result<ProxyConfig, ConfigError> {
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::key("listen", format!("`{}`: {e}", self.listen)))?;
        if self.threads == 0 {
            return Err(ConfigError::key("threads", "must be at least 1"));
        }
        let pool = match (self.pool.scorers.is_empty(), self.pool.dns.is_empty()) {
            (false, true) => {
                for scorer in &self.pool.scorers {
                    check_host_port("pool.scorers", scorer)?;
                }
                PoolSource::Static(self.pool.scorers)
            }
            (true, false) => {
                check_host_port("pool.dns", &self.pool.dns)?;
                PoolSource::Dns(self.pool.dns)
            }
            (true, true) => {
                return Err(ConfigError::key(
                    "pool.scorers",
                    "set pool.scorers or pool.dns",
                ));
            }
            (false, false) => {
                return Err(ConfigError::key(
                    "pool.dns",
                    "set pool.scorers or pool.dns, not both",
                ));
            }
        };
        if self.health.timeout.0.is_zero() {
            return Err(ConfigError::key("health.timeout", "must be greater than 0"));
        }
        if self.routing.top_k == 0 {
            return Err(ConfigError::key("routing.top_k", "must be at least 1"));
        }
        if !(self.routing.load_factor.is_finite() && self.routing.load_factor >= 1.0) {
            return Err(ConfigError::key(
                "routing.load_factor",
                "must be a number ≥ 1",
            ));
        }
        if self.stats.half_life_requests == 0 {
            return Err(ConfigError::key(
                "stats.half_life_requests",
                "must be greater than 0",
            ));
        }
        if self.stats.top_models == 0 {
            return Err(ConfigError::key("stats.top_models", "must be at least 1"));
        }
        if !(self.replication.threshold.is_finite() && self.replication.threshold >= 0.0) {
            return Err(ConfigError::key(
                "replication.threshold",
                "must be a number ≥ 0",
            ));
        }
        let mut api_keys = self.auth.api_keys;
        if !self.auth.api_keys_file.is_empty() {
            let text = std::fs::read_to_string(&self.auth.api_keys_file).map_err(|e| {
                ConfigError::key(
                    "auth.api_keys_file",
                    format!("{}: {e}", self.auth.api_keys_file),
                )
            })?;
            api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(Secret::new),
            );
        }
        Ok(ProxyConfig {
            listen,
            threads: self.threads,
            pool,
            pool_refresh: self.pool.refresh.0,
            health_interval: self.health.interval.0,
            health_timeout: self.health.timeout.0,
            tolerated_timeouts: self.health.tolerated_timeouts,
            eject_for: self.health.eject_for.0,
            top_k: self.routing.top_k,
            load_factor: self.routing.load_factor,
            min_inflight: self.routing.min_inflight,
            hot_ttl: self.routing.hot_ttl.0,
            replication_threshold: (self.replication.threshold > 0.0)
                .then_some(self.replication.threshold),
            stats_push_interval: (!self.stats.push_interval.0.is_zero())
                .then_some(self.stats.push_interval.0),
            stats_half_life_requests: self.stats.half_life_requests,
            stats_top_models: self.stats.top_models,
            connect_timeout: self.upstream.connect_timeout.0,
            read_timeout: self.upstream.read_timeout.0,
            retries: self.upstream.retries,
            max_body: self.http.max_body,
            max_upload: self.http.max_upload,
            api_keys,
            admin_keys: self.auth.admin_keys,
            shutdown_grace: self.shutdown.grace.0,
            log_level: self.log.level,
        })
    }
}

fn check_host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::key(key, format!("`{value}` is not host:port"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], sets: &[&str]) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::load(&Sources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn scorers_come_from_a_comma_list_or_an_array() {
        let config = load(
            &[(
                "MM_PROXY_POOL_SCORERS",
                "127.0.0.1:8001, scorer-1.scorers:8001",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(
            config.pool,
            PoolSource::Static(vec![
                "127.0.0.1:8001".into(),
                "scorer-1.scorers:8001".into()
            ])
        );
        let config = load(&[], &[r#"pool.scorers=["a:1","b:2"]"#]).unwrap();
        assert_eq!(
            config.pool,
            PoolSource::Static(vec!["a:1".into(), "b:2".into()])
        );
    }

    #[test]
    fn a_pool_is_required_and_keys_are_checked() {
        assert!(
            load(&[], &[])
                .unwrap_err()
                .to_string()
                .contains("pool.scorers")
        );
        assert!(
            load(&[], &["pool.scorers=nonsense"])
                .unwrap_err()
                .to_string()
                .contains("host:port")
        );
        assert!(
            load(&[], &["pool.scorers=a:1", "pool.dns=b:2"])
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        assert!(
            load(&[], &["pool.dns=s:1", "routing.load_factor=0.5"])
                .unwrap_err()
                .to_string()
                .contains("routing.load_factor")
        );
    }

    #[test]
    fn readme_documents_every_key_with_its_env_var() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        assert!(
            readme.contains(&crate::markdown_table(KEYS, ENV_PREFIX)),
            "README.md's proxy key table is out of date: paste the output of `cargo xtask config-table`"
        );
    }

    #[test]
    fn api_keys_are_secret_and_merge_with_a_key_file() {
        let path = std::env::temp_dir().join(format!("mm-keys-{}", std::process::id()));
        std::fs::write(&path, "# rotated weekly\nfile-key\n\n").unwrap();
        let file = format!("auth.api_keys_file={}", path.display());
        let config = load(
            &[("MM_PROXY_AUTH_API_KEYS", "k1,k2")],
            &["pool.dns=s:1", &file],
        )
        .unwrap();
        let keys: Vec<&str> = config.api_keys.iter().map(Secret::expose).collect();
        assert_eq!(keys, ["k1", "k2", "file-key"]);
        assert!(!format!("{config:?}").contains("k1"));
        std::fs::remove_file(path).unwrap();
    }
}
