//! The proxy's raw serde layer, one struct per section, and its validation into
//! [`ProxyConfig`]. No field has a default of its own: every value, defaults included,
//! comes through [`KEYS`](super::KEYS).

use serde::Deserialize;

use manymodels_contract::batch::IdTemplate;

use super::{ApiKey, BatchConfig, HedgeConfig, KeySettings, PoolSource, ProxyConfig, RateLimit};
use crate::common::{self, RawTrace, at_least, at_least_one, list, positive, secrets};
use crate::units::{ByteSize, HumanDuration};
use crate::{ConfigError, LogConfig, Secret};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    listen: String,
    threads: usize,
    pool: RawPool,
    health: RawHealth,
    routing: RawRouting,
    replication: RawReplication,
    stats: RawStats,
    upstream: RawUpstream,
    hedge: RawHedge,
    http: RawHttp,
    batch: RawBatch,
    auth: RawAuth,
    limits: RawLimits,
    shadow: RawShadow,
    shutdown: RawShutdown,
    log: LogConfig,
    trace: RawTrace,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(deserialize_with = "list")]
    scorers: Vec<String>,
    dns: String,
    srv: String,
    resolver: String,
    refresh: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: HumanDuration,
    timeout: HumanDuration,
    tolerated_timeouts: usize,
    eject_for: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    top_k: usize,
    load_factor: f64,
    min_inflight: usize,
    drain_handoff: bool,
    hot_ttl: HumanDuration,
    hot_max_models: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    threshold: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    push_interval: HumanDuration,
    half_life_requests: u64,
    top_models: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout: HumanDuration,
    read_timeout: HumanDuration,
    retries: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHedge {
    enabled: bool,
    floor: HumanDuration,
    cap: HumanDuration,
    budget: f64,
    burst: f64,
    stalled_after: usize,
}

impl RawHedge {
    fn validate(self) -> Result<HedgeConfig, ConfigError> {
        let floor = positive("hedge.floor", self.floor.0)?;
        let cap = positive("hedge.cap", self.cap.0)?;
        if cap < floor {
            return Err(ConfigError::key(
                "hedge.cap",
                "must be at least hedge.floor",
            ));
        }
        Ok(HedgeConfig {
            enabled: self.enabled,
            floor,
            cap,
            budget: common::within("hedge.budget", self.budget, 0.0..=1.0)?,
            burst: at_least("hedge.burst", self.burst, 1.0)?,
            stalled_after: self.stalled_after,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_body: ByteSize,
    max_upload: ByteSize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    id_template: String,
    #[serde(deserialize_with = "list")]
    key_templates: Vec<String>,
    max_bytes: ByteSize,
    max_records: usize,
    parallelism: usize,
    groups_per_request: usize,
    concurrency: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(deserialize_with = "secrets")]
    api_keys: Vec<Secret>,
    api_keys_file: String,
    #[serde(deserialize_with = "secrets")]
    admin_keys: Vec<Secret>,
    pool_key: Secret,
    pool_key_previous: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(deserialize_with = "list")]
    rate: Vec<String>,
    #[serde(deserialize_with = "list")]
    burst: Vec<String>,
    #[serde(deserialize_with = "list")]
    inflight: Vec<String>,
    #[serde(deserialize_with = "list")]
    priority: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    judge_interval: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace: HumanDuration,
}

impl Raw {
    pub(super) fn validate(self) -> Result<ProxyConfig, ConfigError> {
        let listen = common::listen(&self.listen)?;
        at_least_one("threads", self.threads)?;
        let pool = pool_source(
            self.pool.scorers,
            self.pool.dns,
            self.pool.srv,
            &self.pool.resolver,
        )?;
        positive("health.timeout", self.health.timeout.0)?;
        at_least_one("routing.top_k", self.routing.top_k)?;
        at_least("routing.load_factor", self.routing.load_factor, 1.0)?;
        positive("stats.half_life_requests", self.stats.half_life_requests)?;
        at_least_one("stats.top_models", self.stats.top_models)?;
        at_least("replication.threshold", self.replication.threshold, 0.0)?;
        let mut api_keys = self.auth.api_keys;
        let file_start = api_keys.len();
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
        let api_keys: Vec<ApiKey> = api_keys_of("auth.api_keys", &api_keys[..file_start])?
            .into_iter()
            .chain(api_keys_of("auth.api_keys_file", &api_keys[file_start..])?)
            .collect();
        let batch = self.batch.validate(&api_keys)?;
        let admin_keys = api_keys_of("auth.admin_keys", &self.auth.admin_keys)?;
        let key_settings = self.limits.validate(&api_keys, &admin_keys)?;
        if !self.auth.pool_key_previous.is_empty() && self.auth.pool_key.is_empty() {
            return Err(ConfigError::key(
                "auth.pool_key_previous",
                "needs auth.pool_key (the key that replaces it)",
            ));
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
            drain_handoff: self.routing.drain_handoff,
            hot_ttl: self.routing.hot_ttl.0,
            hot_max_models: at_least_one("routing.hot_max_models", self.routing.hot_max_models)?
                .get(),
            replication_threshold: (self.replication.threshold > 0.0)
                .then_some(self.replication.threshold),
            stats_push_interval: (!self.stats.push_interval.0.is_zero())
                .then_some(self.stats.push_interval.0),
            stats_half_life_requests: self.stats.half_life_requests,
            stats_top_models: self.stats.top_models,
            connect_timeout: self.upstream.connect_timeout.0,
            read_timeout: self.upstream.read_timeout.0,
            retries: self.upstream.retries,
            hedge: self.hedge.validate()?,
            max_body: self.http.max_body,
            max_upload: self.http.max_upload,
            batch,
            api_keys,
            admin_keys,
            key_settings,
            pool_key: self.auth.pool_key,
            pool_key_previous: self.auth.pool_key_previous,
            shadow_judge_interval: (!self.shadow.judge_interval.0.is_zero())
                .then_some(self.shadow.judge_interval.0),
            shutdown_grace: self.shutdown.grace.0,
            log: self.log,
            trace: self.trace.validate()?,
        })
    }
}

impl RawBatch {
    /// The batch section; `keys` are the API key entries, whose names the per-key
    /// templates must use.
    fn validate(self, keys: &[ApiKey]) -> Result<BatchConfig, ConfigError> {
        let template =
            |key: &str, text: &str| IdTemplate::parse(text).map_err(|e| ConfigError::key(key, e));
        let id_template = match self.id_template.trim() {
            "" => None,
            text => Some(template("batch.id_template", text)?),
        };
        let mut key_templates: Vec<(String, IdTemplate)> = Vec::new();
        for entry in &self.key_templates {
            let Some((name, text)) = entry.split_once('=') else {
                return Err(ConfigError::key(
                    "batch.key_templates",
                    format!("`{entry}`: expected `keyname={{template}}`"),
                ));
            };
            let name = name.trim();
            if !keys.iter().any(|k| k.name == name) {
                return Err(ConfigError::key(
                    "batch.key_templates",
                    format!("`{name}` is not the name of a key in auth.api_keys"),
                ));
            }
            if key_templates.iter().any(|(n, _)| n == name) {
                return Err(ConfigError::key(
                    "batch.key_templates",
                    format!("`{name}` has two templates"),
                ));
            }
            key_templates.push((
                name.to_string(),
                template("batch.key_templates", text.trim())?,
            ));
        }
        positive("batch.max_bytes", self.max_bytes.0)?;
        Ok(BatchConfig {
            id_template,
            key_templates,
            max_bytes: self.max_bytes,
            max_records: at_least_one("batch.max_records", self.max_records)?.get(),
            parallelism: at_least_one("batch.parallelism", self.parallelism)?.get(),
            groups_per_request: at_least_one("batch.groups_per_request", self.groups_per_request)?
                .get(),
            concurrency: at_least_one("batch.concurrency", self.concurrency)?.get(),
        })
    }
}

impl RawLimits {
    /// The per-key settings; each name must be a key's in `auth.api_keys` or
    /// `auth.admin_keys`.
    fn validate(self, api: &[ApiKey], admin: &[ApiKey]) -> Result<Vec<KeySettings>, ConfigError> {
        let entries = |config_key: &'static str, list: &[String]| {
            let mut parsed: Vec<(String, String)> = Vec::new();
            for entry in list {
                let Some((name, value)) = entry.split_once('=') else {
                    return Err(ConfigError::key(
                        config_key,
                        format!("`{entry}`: expected `keyname=value`"),
                    ));
                };
                let (name, value) = (name.trim(), value.trim());
                if !api.iter().chain(admin).any(|k| k.name == name) {
                    return Err(ConfigError::key(
                        config_key,
                        format!(
                            "`{name}` is not the name of a key in auth.api_keys or auth.admin_keys"
                        ),
                    ));
                }
                if parsed.iter().any(|(n, _)| n == name) {
                    return Err(ConfigError::key(
                        config_key,
                        format!("`{name}` is given twice"),
                    ));
                }
                parsed.push((name.to_string(), value.to_string()));
            }
            Ok(parsed)
        };
        let rates = entries("limits.rate", &self.rate)?;
        let bursts = entries("limits.burst", &self.burst)?;
        let inflights = entries("limits.inflight", &self.inflight)?;
        let priorities = entries("limits.priority", &self.priority)?;
        let mut settings: Vec<KeySettings> = Vec::new();
        fn entry<'s>(settings: &'s mut Vec<KeySettings>, name: &str) -> &'s mut KeySettings {
            if let Some(i) = settings.iter().position(|s| s.name == name) {
                return &mut settings[i];
            }
            settings.push(KeySettings {
                name: name.to_string(),
                ..KeySettings::default()
            });
            settings.last_mut().expect("just pushed")
        }
        for (name, value) in &rates {
            let rate = value
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| {
                    ConfigError::key(
                        "limits.rate",
                        format!(
                            "`{name}={value}`: a rate is a number of requests per second greater than 0"
                        ),
                    )
                })?;
            entry(&mut settings, name).rate = Some(RateLimit {
                per_second: rate,
                // One second of the rate, at least one request.
                burst: (rate.ceil() as u32).max(1),
            });
        }
        for (name, value) in &bursts {
            let burst = value
                .parse::<u32>()
                .ok()
                .filter(|b| *b >= 1)
                .ok_or_else(|| {
                    ConfigError::key(
                        "limits.burst",
                        format!(
                            "`{name}={value}`: a burst is a whole number of requests, at least 1"
                        ),
                    )
                })?;
            match entry(&mut settings, name).rate.as_mut() {
                Some(rate) => rate.burst = burst,
                None => {
                    return Err(ConfigError::key(
                        "limits.burst",
                        format!("`{name}` has a burst but no rate in limits.rate"),
                    ));
                }
            }
        }
        for (name, value) in &inflights {
            let cap = value
                .parse::<usize>()
                .ok()
                .filter(|c| *c >= 1)
                .ok_or_else(|| {
                    ConfigError::key(
                        "limits.inflight",
                        format!(
                            "`{name}={value}`: a cap is a whole number of requests, at least 1"
                        ),
                    )
                })?;
            entry(&mut settings, name).inflight = Some(cap);
        }
        for (name, value) in &priorities {
            let priority = manymodels_contract::Priority::parse(value).ok_or_else(|| {
                ConfigError::key(
                    "limits.priority",
                    format!("`{name}={value}`: a priority is `interactive` or `batch`"),
                )
            })?;
            entry(&mut settings, name).priority = Some(priority);
        }
        Ok(settings)
    }
}

/// Parses key entries (`key`, `name:key` or `name:key:prefix1|prefix2`). Errors name the
/// key and the entry's position or name, never the key itself.
fn api_keys_of(config_key: &str, entries: &[Secret]) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let fail = |what: &str| ConfigError::key(config_key, format!("entry {}: {what}", i + 1));
        let mut parts = entry.expose().split(':');
        let key = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(key), None, None, None) => ApiKey {
                name: ApiKey::UNNAMED.into(),
                key: Secret::new(key),
                scope: Vec::new(),
            },
            (Some(name), Some(key), scope, None) => {
                let named = |what: &str| fail(&format!("(`{name}`) {what}"));
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                {
                    return Err(fail(
                        "a key name is 1-64 characters from [A-Za-z0-9._-] (`name:key[:prefix|...]`)",
                    ));
                }
                if key.is_empty() {
                    return Err(named("the key is empty"));
                }
                let scope = match scope {
                    None => Vec::new(),
                    Some(scope) => manymodels_contract::model_prefixes(scope).ok_or_else(|| {
                        named(
                            "each model-id prefix must be the start of a valid model id (e.g. `acme-`)",
                        )
                    })?,
                };
                // A name given twice is one client's key being rotated (the new key listed
                // beside the old): both are counted, limited and templated as the one
                // name, so they must reach the same models.
                if keys.iter().any(|k| k.name == name && k.scope != scope) {
                    return Err(named(
                        "the name is used twice with different model-id prefixes (two keys of one name, as in a rotation, must have the same prefixes)",
                    ));
                }
                ApiKey {
                    name: name.into(),
                    key: Secret::new(key),
                    scope,
                }
            }
            _ => {
                return Err(fail(
                    "expected `key`, `name:key` or `name:key:prefix1|prefix2`",
                ));
            }
        };
        keys.push(key);
    }
    Ok(keys)
}

/// Exactly one of `pool.scorers`, `pool.dns` and `pool.srv`; `pool.resolver` only with
/// `pool.srv` (it would be silently ignored otherwise).
fn pool_source(
    scorers: Vec<String>,
    dns: String,
    srv: String,
    resolver: &str,
) -> Result<PoolSource, ConfigError> {
    let set: Vec<&str> = [
        ("pool.scorers", !scorers.is_empty()),
        ("pool.dns", !dns.is_empty()),
        ("pool.srv", !srv.is_empty()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    match set[..] {
        [] => {
            return Err(ConfigError::key(
                "pool.scorers",
                "set one of pool.scorers, pool.dns or pool.srv",
            ));
        }
        [_] => {}
        [first, second, ..] => {
            return Err(ConfigError::key(
                second,
                format!(
                    "set one of pool.scorers, pool.dns or pool.srv, not both {first} and {second}"
                ),
            ));
        }
    }
    if !resolver.is_empty() && srv.is_empty() {
        return Err(ConfigError::key(
            "pool.resolver",
            "applies to pool.srv only (pool.scorers and pool.dns use the system resolver)",
        ));
    }
    if !scorers.is_empty() {
        for scorer in &scorers {
            check_host_port("pool.scorers", scorer)?;
        }
        return Ok(PoolSource::Static(scorers));
    }
    if !dns.is_empty() {
        check_host_port("pool.dns", &dns)?;
        return Ok(PoolSource::Dns(dns));
    }
    let name = dns_name("pool.srv", &srv)?;
    // The resolver is an address, not a name: finding the DNS server cannot depend on DNS.
    let resolver = match resolver {
        "" => None,
        text => Some(text.parse().map_err(|_| {
            ConfigError::key(
                "pool.resolver",
                format!("`{text}` is not ip:port (e.g. 10.0.0.10:53 or [fd00::a]:53)"),
            )
        })?),
    };
    Ok(PoolSource::Srv { name, resolver })
}

/// A DNS name (labels of 1-63 letters, digits, `-` or `_`, 253 characters at most), made
/// fully qualified: with a trailing dot, so no search domain of /etc/resolv.conf is tried
/// first (Kubernetes sets `ndots:5`, which would send four wrong queries before the right
/// one).
fn dns_name(key: &str, value: &str) -> Result<String, ConfigError> {
    let bare = value.strip_suffix('.').unwrap_or(value);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(ConfigError::key(
            key,
            format!(
                "`{value}` is not a DNS name (an SRV name has no port: `_http._tcp.scorers.serving.svc.cluster.local`)"
            ),
        ));
    }
    Ok(format!("{bare}."))
}

fn check_host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::key(key, format!("`{value}` is not host:port"))),
    }
}
