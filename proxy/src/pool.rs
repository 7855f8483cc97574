//! The live pool of scorers and what the proxy knows about each: membership (static names
//! or a DNS name, re-resolved, or the records of a DNS SRV name, re-queried), health
//! (active checks on `/v2/health/ready` plus passive ejection after connection failures),
//! requests in flight, and which models each one holds hot.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use manymodels_config::proxy::PoolSource;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::{Error, ErrorType};

#[cfg(test)]
use crate::ranking::name_of;
use crate::ranking::{Rendezvous, ScorerName, name_ref};

/// How long one DNS query may take (an SRV query, or a target's address), and how long a
/// whole SRV discovery round may take. Pingora runs discovery and the health checks one
/// after the other on one task, so a DNS server that stopped answering must not hold the
/// health checks up for long: cluster DNS answers in milliseconds.
const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
const SRV_ROUND_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves the configured scorers into backends. A static name keeps its name as its
/// rendezvous identity whatever address it resolves to (a StatefulSet pod keeps its share
/// across restarts), and so does an SRV record's `<target>:<port>`; scorers found as the
/// addresses of one DNS name are identified by address.
///
/// Every backend is handed to Pingora disabled until it passed a readiness check (see
/// [`Admission`]).
pub struct Discovery {
    source: PoolSource,
    /// The SRV source's resolver, made at the first discovery (inside the runtime that
    /// runs its background tasks) and kept.
    resolver: tokio::sync::OnceCell<TokioResolver>,
    admission: Arc<Admission>,
}

impl Discovery {
    pub fn new(source: PoolSource, admission: Arc<Admission>) -> Self {
        Discovery {
            source,
            resolver: tokio::sync::OnceCell::new(),
            admission,
        }
    }

    async fn resolver(
        &self,
        server: Option<std::net::SocketAddr>,
    ) -> pingora::Result<&TokioResolver> {
        self.resolver
            .get_or_try_init(|| async { srv_resolver(server) })
            .await
            .map_err(|e| Error::because(ErrorType::ConnectNoRoute, "making the DNS resolver", e))
    }
}

/// The resolver `pool.srv` is asked through: `pool.resolver` when set, else the system's
/// configuration (`/etc/resolv.conf`). Its answers are not reused across rounds: each
/// round clears the cache (`srv_members`), so `pool.refresh` alone governs how fresh the
/// membership is; what a DNS server itself caches (CoreDNS's `ttl` and `cache`) still
/// applies.
fn srv_resolver(server: Option<std::net::SocketAddr>) -> Result<TokioResolver, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        Some(addr) => {
            let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                .into_iter()
                .map(|mut c| {
                    c.port = addr.port();
                    c
                })
                .collect();
            let server = NameServerConfig::new(addr.ip(), true, connections);
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                provider,
            )
        }
        None => TokioResolver::builder(provider)?,
    };
    let options = builder.options_mut();
    options.timeout = DNS_QUERY_TIMEOUT;
    options.attempts = 1;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // A small cache, cleared every round: within a round it serves nothing twice anyway.
    options.cache_size = 64;
    builder.build()
}

/// Why an SRV round found no membership to apply.
#[derive(Debug)]
enum SrvFailure {
    /// The query failed or timed out: the server cannot be reached, refused, or failed.
    Query(String),
    /// The name has no SRV records (NXDOMAIN, or an answer without them).
    Empty,
}

/// One SRV round: every record of `name` as (`<target>:<port>`, address). A target's
/// address comes from the answer's additional records when the server sent them (CoreDNS
/// does), else from an A/AAAA query through the same resolver. A target that does not
/// resolve (NXDOMAIN: its record outlived its pod) is left out; a target whose query
/// failed fails the round, as the SRV query does, so an unreachable server never shrinks
/// the pool.
async fn srv_members(
    resolver: &TokioResolver,
    name: &str,
) -> Result<Vec<(String, std::net::SocketAddr)>, SrvFailure> {
    resolver.clear_cache();
    let lookup = match resolver.srv_lookup(name).await {
        Ok(lookup) => lookup,
        Err(e) if e.is_no_records_found() => return Err(SrvFailure::Empty),
        Err(e) => return Err(SrvFailure::Query(e.to_string())),
    };
    let records: Vec<(Name, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.clone(), srv.port)),
            _ => None,
        })
        .collect();
    if records.is_empty() {
        return Err(SrvFailure::Empty);
    }
    // Additional A before AAAA, as the fallback query orders them.
    let additional = |target: &Name| {
        let records = lookup.additionals().iter().filter(|r| &r.name == target);
        let v4 = records.clone().find_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            _ => None,
        });
        v4.or_else(|| {
            records.clone().find_map(|r| match &r.data {
                RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                _ => None,
            })
        })
    };
    let resolved = records.iter().map(|(target, port)| async move {
        let ip = match additional(target) {
            Some(ip) => Some(ip),
            None => match resolver.lookup_ip(target.clone()).await {
                Ok(ips) => ips.iter().next(),
                Err(e) if e.is_no_records_found() => None,
                Err(e) => return Err(SrvFailure::Query(format!("{target}: {e}"))),
            },
        };
        let name = format!(
            "{}:{port}",
            target.to_ascii().trim_end_matches('.').to_ascii_lowercase()
        );
        Ok((name, ip.map(|ip| std::net::SocketAddr::new(ip, *port))))
    });
    let mut members = Vec::with_capacity(records.len());
    for result in futures::future::join_all(resolved).await {
        match result? {
            (name, Some(addr)) => members.push((name, addr)),
            (name, None) => {
                tracing::warn!(scorer = %name, "SRV target has no address; left out")
            }
        }
    }
    Ok(members)
}

fn backend(name: &str, addr: std::net::SocketAddr) -> Backend {
    let mut backend = Backend {
        addr: SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    };
    backend.ext.insert(ScorerName(Arc::from(name)));
    backend
}

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        match &self.source {
            PoolSource::Static(names) => {
                for name in names {
                    // A name that does not resolve now (a pod being rescheduled) is left out
                    // until it does; the others keep serving.
                    match tokio::net::lookup_host(name.as_str()).await {
                        Ok(mut addrs) => {
                            if let Some(addr) = addrs.next() {
                                backends.insert(backend(name, addr));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(scorer = %name, error = %e, "cannot resolve scorer")
                        }
                    }
                }
            }
            PoolSource::Dns(name) => {
                // On failure keep the last membership (an Err leaves it unchanged).
                let addrs = tokio::net::lookup_host(name.as_str()).await.map_err(|e| {
                    Error::because(ErrorType::ConnectNoRoute, format!("resolving {name}"), e)
                })?;
                for addr in addrs {
                    backends.insert(backend(&addr.to_string(), addr));
                }
            }
            PoolSource::Srv { name, resolver } => {
                let resolver = self.resolver(*resolver).await?;
                let round = tokio::time::timeout(SRV_ROUND_TIMEOUT, srv_members(resolver, name));
                // An Err leaves the membership as it was. That is the answer to a failed
                // query (the DNS server is down or overloaded: the scorers are not) and
                // also to an empty one (NXDOMAIN, no records). An empty answer is what a
                // scale to zero looks like, but also what a Service being re-created, a
                // CoreDNS replica that has not synced yet or a wrong name look like, while
                // the scorers may well still serve. Keeping them costs nothing at a real
                // scale to zero: the health check takes every departed scorer out of
                // rotation within `health.interval` (the proxy then reports not ready),
                // and the next non-empty answer replaces them all.
                let members = match round.await {
                    Ok(Ok(members)) => members,
                    Ok(Err(SrvFailure::Empty)) => {
                        tracing::warn!(srv = %name, "no SRV records; keeping the last membership");
                        return Error::e_explain(
                            ErrorType::ConnectNoRoute,
                            format!("no SRV records for {name}"),
                        );
                    }
                    Ok(Err(SrvFailure::Query(e))) => {
                        tracing::warn!(srv = %name, error = %e, "SRV query failed; keeping the last membership");
                        return Error::e_explain(
                            ErrorType::ConnectNoRoute,
                            format!("querying {name}: {e}"),
                        );
                    }
                    Err(_) => {
                        tracing::warn!(srv = %name, "SRV discovery timed out; keeping the last membership");
                        return Error::e_explain(
                            ErrorType::ConnectTimedout,
                            format!("querying {name}"),
                        );
                    }
                };
                for (scorer, addr) in members {
                    backends.insert(backend(&scorer, addr));
                }
            }
        }
        let enablement = self.admission.enablement(&backends);
        Ok((backends, enablement))
    }
}

/// Admission to rotation: scorers that passed a readiness check since they joined the
/// pool. Pingora starts every discovered backend healthy until its first check; with a
/// StatefulSet behind a headless Service that publishes not-ready addresses, a pod is
/// discovered as soon as it is scheduled, before it listens, let alone warms. So discovery
/// hands every backend that has not passed a check yet to Pingora disabled, and
/// [`ScorerCheck`] enables it the moment its first check passes. A disabled scorer is a
/// member all the same: the statistics push still gives it its share (so it warms before
/// it reports ready); it only takes no requests. A scorer that leaves is forgotten, so one
/// that comes back on the same address is checked again first.
#[derive(Default)]
pub struct Admission {
    passed: Mutex<HashSet<SocketAddr>>,
    lb: OnceLock<Weak<LoadBalancer<Rendezvous>>>,
    /// The way out of rotation: scorers draining now, set by [`ScorerCheck`], pruned to
    /// the members by discovery, read by routing (`Pool::draining_holder`).
    pub draining: Arc<Draining>,
}

impl Admission {
    /// The load balancer whose backends a first passed check enables (set once it is
    /// built: it owns the discovery and the check that share this).
    pub fn attach(&self, lb: &Arc<LoadBalancer<Rendezvous>>) {
        let _ = self.lb.set(Arc::downgrade(lb));
    }

    /// Pingora's enablement map for a discovered membership (keyed by the backend's hash,
    /// as Pingora's `DefaultHasher` computes it): enabled exactly when it passed a check.
    fn enablement(&self, backends: &BTreeSet<Backend>) -> HashMap<u64, bool> {
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        let present: HashSet<&SocketAddr> = backends.iter().map(|b| &b.addr).collect();
        passed.retain(|addr| present.contains(addr));
        // A scorer that left the membership while draining is no longer checked: forget it.
        self.draining
            .retain(|name| backends.iter().any(|b| name_ref(b) == name));
        backends
            .iter()
            .map(|b| {
                let mut hasher = DefaultHasher::new();
                b.hash(&mut hasher);
                (hasher.finish(), passed.contains(&b.addr))
            })
            .collect()
    }

    /// `backend` passed a readiness check: on its first, it enters rotation.
    fn passed(&self, backend: &Backend) {
        let first = self
            .passed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(backend.addr.clone());
        if first && let Some(lb) = self.lb.get().and_then(Weak::upgrade) {
            lb.backends().set_enable(backend, true);
            tracing::info!(scorer = %name_ref(backend), addr = %backend.addr, "scorer passed its first readiness check");
        }
    }
}

/// Scorers shutting down: their readiness answers 503 with `header::DRAINING` while they
/// keep serving for their `shutdown.drain`. Out of rotation like any scorer that fails its
/// check, but [`Pool::draining_holder`] still offers one for the models it holds hot, so
/// those are served from its memory until their successors hold them (the drain hand-off).
/// Read only for requests no healthy candidate holds the model for, and by admin calls.
#[derive(Default)]
pub struct Draining(RwLock<Vec<Arc<str>>>);

impl Draining {
    fn set(&self, name: &str, draining: bool) {
        let mut names = self.0.write().unwrap_or_else(|p| p.into_inner());
        match (draining, names.iter().position(|n| &**n == name)) {
            (true, None) => {
                tracing::info!(scorer = %name, "scorer draining: serving the models it holds until their successors do");
                names.push(Arc::from(name));
            }
            (false, Some(i)) => {
                names.swap_remove(i);
            }
            _ => {}
        }
    }

    /// Keeps only the names `keep` accepts.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| keep(n));
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| &**n == name)
    }

    /// The names draining now.
    fn names(&self) -> Vec<Arc<str>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The readiness answer of a draining scorer, told apart from any other failure.
const DRAINING: ErrorType = ErrorType::Custom("scorer draining");

/// The active health check: `GET /v2/health/ready` must answer 200 within
/// `health.timeout`. A scorer that answers anything else (503 while it warms or shuts
/// down) or refuses the connection leaves the rotation at once. One that was healthy and
/// merely does not answer in time keeps its place for `health.tolerated_timeouts`
/// consecutive checks: a CPU-throttled or briefly starved scorer is still alive, and
/// dropping it would move its whole share to the next-ranked scorers as cold loads (and
/// requests to a scorer that really died are retried elsewhere at once by passive
/// ejection anyway).
pub struct ScorerCheck {
    http: HttpHealthCheck,
    tolerated: usize,
    admission: Arc<Admission>,
    /// Per backend address: whether its last answered check passed, and the timeouts
    /// since. (Addresses of scorers gone stay: a few bytes each, and a scorer that comes
    /// back on the same address starts from its last state.)
    state: Mutex<HashMap<String, (bool, usize)>>,
}

impl ScorerCheck {
    pub fn new(timeout: Duration, tolerated: usize, admission: Arc<Admission>) -> Self {
        let mut http = HttpHealthCheck::new("localhost", false);
        http.req = pingora::http::RequestHeader::build("GET", b"/v2/health/ready", None)
            .expect("static request");
        let _ = http.req.insert_header("Host", "localhost");
        // Pingora's own rule (any 200 passes), plus: a 503 that says it drains is told
        // apart, so the proxy can keep it for the models it holds.
        http.validator = Some(Box::new(|resp: &pingora::http::ResponseHeader| {
            if resp.status == 200 {
                return Ok(());
            }
            let draining = resp
                .headers
                .get(manymodels_contract::header::DRAINING)
                .is_some_and(|v| v.as_bytes() == b"true");
            if draining {
                Error::e_explain(DRAINING, "during http healthcheck")
            } else {
                Error::e_explain(
                    ErrorType::CustomCode("non 200 code", resp.status.as_u16()),
                    "during http healthcheck",
                )
            }
        }));
        http.peer_template.options.connection_timeout = Some(timeout);
        http.peer_template.options.read_timeout = Some(timeout);
        http.peer_template.options.write_timeout = Some(timeout);
        ScorerCheck {
            http,
            tolerated,
            admission,
            state: Mutex::new(HashMap::new()),
        }
    }
}

fn timed_out(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

#[async_trait]
impl HealthCheck for ScorerCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.http.check(target).await;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A backend never checked counts as healthy, as Pingora starts it.
        let (healthy, timeouts) = state.entry(target.addr.to_string()).or_insert((true, 0));
        match &result {
            Err(e) if timed_out(e) => {
                *timeouts += 1;
                if *healthy && *timeouts <= self.tolerated {
                    tracing::warn!(scorer = %target.addr, timeouts = *timeouts, "health check timed out; tolerated");
                    return Ok(());
                }
                *healthy = false;
            }
            answered => {
                *healthy = answered.is_ok();
                *timeouts = 0;
            }
        }
        drop(state);
        if result.is_ok() {
            self.admission.passed(target);
        }
        // Draining exactly while it answers so. A timed-out check says nothing either way:
        // a draining scorer is the busiest one, and one slow answer must not send its
        // models cold to their successors (a refused connection, or passive ejection,
        // ends the hand-off).
        if !matches!(&result, Err(e) if timed_out(e)) {
            let draining = matches!(&result, Err(e) if e.etype() == &DRAINING);
            self.admission.draining.set(name_ref(target), draining);
        }
        result
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.http.health_threshold(success)
    }
}

/// Where a model was last seen served, per scorer.
#[derive(Default)]
struct HotEntry {
    scorers: Vec<(Arc<str>, Instant)>,
}

/// Models known hot per scorer, learnt from the cache header of answers
/// (`manymodels_contract::header::CACHE`): any 200 from a scorer for a model means that
/// scorer now holds it. Entries expire after `hot_ttl` without an answer (swept every
/// quarter TTL), and the table holds at most `max_models` models
/// (`routing.hot_max_models`): past it the least recently answered tenth is forgotten, so
/// memory is bounded whatever the number of ids in traffic. A model the table forgot is
/// routed to its owner, as a cold one is.
pub struct HotTable {
    ttl: Duration,
    max_models: usize,
    entries: RwLock<HashMap<Arc<str>, HotEntry>>,
    last_sweep: Mutex<Instant>,
}

impl HotTable {
    pub fn new(ttl: Duration, max_models: usize) -> Self {
        HotTable {
            ttl,
            max_models: max_models.max(1),
            entries: RwLock::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Whether `scorer` answered for `model` within the TTL.
    pub fn holds(&self, model: &str, scorer: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(model).is_some_and(|e| {
            e.scorers
                .iter()
                .any(|(s, seen)| &**s == scorer && seen.elapsed() < self.ttl)
        })
    }

    pub fn record(&self, model: &str, scorer: &str) {
        let now = Instant::now();
        {
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            match entries.get_mut(model) {
                Some(entry) => match entry.scorers.iter_mut().find(|(s, _)| &**s == scorer) {
                    Some((_, seen)) => *seen = now,
                    None => entry.scorers.push((Arc::from(scorer), now)),
                },
                None => {
                    entries.insert(
                        Arc::from(model),
                        HotEntry {
                            scorers: vec![(Arc::from(scorer), now)],
                        },
                    );
                    if entries.len() > self.max_models {
                        Self::forget_oldest(&mut entries, self.max_models);
                    }
                }
            }
        }
        self.sweep(now);
    }

    /// Forgets the least recently answered models until a tenth of `max` is free, so the
    /// sort is paid once per `max / 10` new models.
    fn forget_oldest(entries: &mut HashMap<Arc<str>, HotEntry>, max: usize) {
        let keep = max - max / 10;
        let mut by_age: Vec<(Instant, Arc<str>)> = entries
            .iter()
            .filter_map(|(model, e)| {
                Some((e.scorers.iter().map(|(_, t)| *t).max()?, model.clone()))
            })
            .collect();
        let excess = by_age.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        by_age.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
        for (_, model) in &by_age[..excess] {
            entries.remove(model);
        }
    }

    /// Forgets everything a scorer held (it restarted or left).
    pub fn forget_scorer(&self, scorer: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries.values_mut() {
            entry.scorers.retain(|(s, _)| &**s != scorer);
        }
        entries.retain(|_, e| !e.scorers.is_empty());
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self, now: Instant) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(*last) < self.ttl / 4 {
                return;
            }
            *last = now;
        }
        let ttl = self.ttl;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries.values_mut() {
            entry
                .scorers
                .retain(|(_, seen)| now.duration_since(*seen) < ttl);
        }
        entries.retain(|_, e| !e.scorers.is_empty());
    }
}

/// Warm loads the proxy asked for recently, so one is asked at most once per
/// `WARM_BACKOFF` per (model, scorer), and at most `MAX_WARMING` run at once.
const WARM_BACKOFF: Duration = Duration::from_secs(10);
const MAX_WARMING: usize = 4;

type WarmKey = (Arc<str>, Arc<str>);

/// Per-scorer counters and the passive-ejection list.
pub struct Pool {
    pub lb: Arc<LoadBalancer<Rendezvous>>,
    pub hot: Arc<HotTable>,
    /// Scorers draining now, as the health check last saw them (`Admission::draining`).
    pub draining: Arc<Draining>,
    /// When each (model, scorer) warm load was last asked for.
    warming: Mutex<HashMap<WarmKey, Instant>>,
    warm_slots: Arc<tokio::sync::Semaphore>,
    inflight: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    ejected: Mutex<HashMap<String, Instant>>,
    eject_for: Duration,
    /// `Authorization` sent with the proxy's own calls (`Bearer <auth.pool_key>`), if set.
    pub authorization: Option<Arc<str>>,
}

/// One candidate for a request: where it listens and its rendezvous name.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub addr: std::net::SocketAddr,
    pub name: Arc<str>,
}

impl Pool {
    pub fn new(
        lb: Arc<LoadBalancer<Rendezvous>>,
        hot: HotTable,
        eject_for: Duration,
        draining: Arc<Draining>,
    ) -> Self {
        Pool {
            lb,
            hot: Arc::new(hot),
            draining,
            warming: Mutex::new(HashMap::new()),
            warm_slots: Arc::new(tokio::sync::Semaphore::new(MAX_WARMING)),
            inflight: RwLock::new(HashMap::new()),
            ejected: Mutex::new(HashMap::new()),
            eject_for,
            authorization: None,
        }
    }

    /// Up to `n` healthy, non-ejected scorers for `model`, in rendezvous order, skipping
    /// `tried`. One walk of the ranking: the accept callback records every acceptable
    /// backend and declines it, so the walk continues to the end.
    pub fn candidates(&self, model: &str, n: usize, tried: &[Arc<str>]) -> Vec<Candidate> {
        let ejected = self.ejected_now();
        let found: std::cell::RefCell<Vec<Candidate>> =
            std::cell::RefCell::new(Vec::with_capacity(n));
        let all = self.lb.backends().get_backend().len();
        self.lb
            .select_with(model.as_bytes(), all, |backend, healthy| {
                let mut found = found.borrow_mut();
                if found.len() < n && healthy {
                    let name = name_ref(backend);
                    if !tried.iter().any(|t| &**t == name)
                        && !ejected.iter().any(|e| e == name)
                        && let (Some(addr), Some(scorer)) =
                            (backend.addr.as_inet(), backend.ext.get::<ScorerName>())
                    {
                        found.push(Candidate {
                            addr: *addr,
                            name: scorer.0.clone(),
                        });
                    }
                }
                false
            });
        found.into_inner()
    }

    /// A draining scorer that holds `model` hot (not in `tried`, not ejected), if any: the
    /// drain hand-off's candidate (`choice::decide` sends it a request only while the
    /// model's healthy candidates do not hold it).
    pub fn draining_holder(&self, model: &str, tried: &[Arc<str>]) -> Option<Candidate> {
        let draining = self.draining.names();
        if draining.is_empty() {
            return None;
        }
        let ejected = self.ejected_now();
        let backends = self.lb.backends().get_backend();
        backends.iter().find_map(|backend| {
            let name = &backend.ext.get::<ScorerName>()?.0;
            let usable = draining.contains(name)
                && !tried.contains(name)
                && !ejected.iter().any(|e| e.as_str() == &**name)
                && self.hot.holds(model, name);
            usable.then(|| {
                backend.addr.as_inet().map(|addr| Candidate {
                    addr: *addr,
                    name: name.clone(),
                })
            })?
        })
    }

    /// Names ejected now (usually none: then no allocation).
    fn ejected_now(&self) -> Vec<String> {
        let mut ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        if ejected.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        ejected.retain(|_, until| *until > now);
        ejected.keys().cloned().collect()
    }

    /// Skips `name` for `eject_for` after a connection to it failed.
    pub fn eject(&self, name: &str) {
        let until = Instant::now() + self.eject_for;
        self.ejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), until);
        self.hot.forget_scorer(name);
        self.draining.set(name, false);
        tracing::warn!(scorer = %name, for_ms = self.eject_for.as_millis() as u64, "scorer ejected after a connection failure");
    }

    pub fn inflight(&self, name: &str) -> Arc<AtomicUsize> {
        if let Some(counter) = self
            .inflight
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return counter.clone();
        }
        self.inflight
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Mean requests in flight over the scorers that have a counter.
    pub fn mean_inflight(&self) -> f64 {
        let counters = self.inflight.read().unwrap_or_else(|p| p.into_inner());
        let members = self.lb.backends().get_backend().len().max(1);
        let total: usize = counters.values().map(|c| c.load(Ordering::Relaxed)).sum();
        total as f64 / members as f64
    }

    /// (name, in flight) for every scorer with a counter, for metrics.
    pub fn inflight_snapshot(&self) -> Vec<(String, usize)> {
        self.inflight
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, c)| (n.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Asks `scorer` to load `model` in the background (`POST
    /// /v2/repository/models/{id}/load`), unless it was asked recently or too many warm
    /// loads are running. When it answers 200 the scorer counts as holding the model, so
    /// traffic can move there without a cold request. Returns whether a warm load started.
    pub fn warm(&self, model: &str, scorer: &Candidate, timeout: Duration) -> bool {
        // A slot first: a warm load not started for want of one is asked again by the next
        // request, not held off for `WARM_BACKOFF` (a draining scorer's models are asked
        // for in bursts, more than `MAX_WARMING` at once).
        let Ok(slot) = self.warm_slots.clone().try_acquire_owned() else {
            return false;
        };
        let key: WarmKey = (Arc::from(model), scorer.name.clone());
        {
            let mut warming = self.warming.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if warming
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < WARM_BACKOFF)
            {
                return false;
            }
            if warming.len() > 10_000 {
                warming.retain(|_, at| now.duration_since(*at) < WARM_BACKOFF);
            }
            warming.insert(key.clone(), now);
        }
        let addr = scorer.addr;
        let hot = self.hot.clone();
        let authorization = self.authorization.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let path = manymodels_contract::route::REPOSITORY_LOAD.path(&key.0);
            let addr = addr.to_string();
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            let call = crate::http1::call(&addr, "POST", &path, &headers, b"");
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok((200, _))) => hot.record(&key.0, &key.1),
                Ok(Ok((status, _))) => {
                    tracing::debug!(model = %key.0, scorer = %key.1, status, "warm load refused")
                }
                Ok(Err(e)) => {
                    tracing::debug!(model = %key.0, scorer = %key.1, error = %e, "warm load failed")
                }
                Err(_) => tracing::debug!(model = %key.0, scorer = %key.1, "warm load timed out"),
            }
        });
        true
    }

    /// (members, healthy members).
    pub fn size(&self) -> (usize, usize) {
        let backends = self.lb.backends().get_backend();
        let healthy = backends
            .iter()
            .filter(|b| self.lb.backends().ready(b))
            .count();
        (backends.len(), healthy)
    }
}

#[cfg(test)]
mod tests {
    use manymodels_tests::dns::{DnsServer, Headless};

    use super::*;

    #[test]
    fn hot_entries_expire_and_follow_scorers() {
        // A TTL no stall of the test thread reaches, for what must still be held.
        let hot = HotTable::new(Duration::from_secs(60), 1000);
        hot.record("m1", "a");
        hot.record("m1", "b");
        assert!(hot.holds("m1", "a") && hot.holds("m1", "b"));
        assert!(!hot.holds("m1", "c"));
        hot.forget_scorer("a");
        assert!(!hot.holds("m1", "a") && hot.holds("m1", "b"));
        // A short one for what must expire (a stall only makes it more expired).
        let hot = HotTable::new(Duration::from_millis(50), 1000);
        hot.record("m1", "b");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!hot.holds("m1", "b"), "entries expire after the TTL");
        hot.record("m2", "a");
        assert_eq!(hot.len(), 1, "the sweep dropped the expired model");
        // Bounded by count too: past the bound the least recently answered tenth goes.
        let hot = HotTable::new(Duration::from_secs(60), 100);
        for i in 0..100 {
            hot.record(&format!("m{i}"), "a");
        }
        assert_eq!(hot.len(), 100);
        hot.record("m0", "b"); // m0 answered again: now the most recent
        hot.record("m100", "a");
        assert_eq!(hot.len(), 90, "a tenth forgotten at once");
        assert!(hot.holds("m0", "a") && hot.holds("m100", "a"));
        assert!(!hot.holds("m1", "a"), "the oldest are forgotten first");
        assert!(hot.holds("m99", "a"));
        for i in 101..100_000 {
            hot.record(&format!("m{i}"), "a");
        }
        assert!(hot.len() <= 100, "{} models held", hot.len());
    }

    fn discovery_of(source: PoolSource) -> Discovery {
        Discovery::new(source, Arc::new(Admission::default()))
    }

    #[tokio::test]
    async fn dns_discovery_finds_every_address_of_a_name() {
        let discovery = discovery_of(PoolSource::Dns("localhost:8001".into()));
        let (backends, _) = discovery.discover().await.unwrap();
        assert!(
            backends
                .iter()
                .any(|b| b.addr.to_string() == "127.0.0.1:8001"),
            "{backends:?}"
        );
        let discovery = discovery_of(PoolSource::Static(vec!["localhost:8002".into()]));
        let (backends, _) = discovery.discover().await.unwrap();
        let backend = backends.iter().next().unwrap();
        assert_eq!(
            name_of(backend),
            "localhost:8002",
            "a static name is its own identity"
        );
    }

    /// A real HTTP server on loopback that answers its readiness check with 200 (0), 503
    /// (1), 503 saying it drains (3), or not at all (2), as `mode` says.
    async fn readiness_server(mode: Arc<AtomicUsize>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mode = mode.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    let (status, extra) = match mode {
                        0 => ("200 OK", ""),
                        1 => ("503 Service Unavailable", ""),
                        3 => ("503 Service Unavailable", "x-mm-draining: true\r\n"),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            return;
                        }
                    };
                    let _ = stream
                        .write_all(
                            format!("HTTP/1.1 {status}\r\n{extra}content-length: 0\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_slow_scorer_is_tolerated_once_but_a_not_ready_or_refusing_one_leaves_at_once() {
        const OK: usize = 0;
        const NOT_READY: usize = 1;
        const SILENT: usize = 2;
        let mode = Arc::new(AtomicUsize::new(OK));
        let addr = readiness_server(mode.clone()).await;
        let backend = Backend::new(&addr.to_string()).unwrap();
        let check = ScorerCheck::new(Duration::from_millis(200), 1, Default::default());
        let steps = [
            (OK, true, "answers 200"),
            (SILENT, true, "first timeout: tolerated"),
            (SILENT, false, "second timeout in a row: out"),
            (OK, true, "answers again: back"),
            (NOT_READY, false, "503 (warming, draining): out at once"),
            (SILENT, false, "a timeout after a failure is not tolerated"),
            (OK, true, "back"),
            (SILENT, true, "tolerated again once healthy"),
            (OK, true, "still in"),
        ];
        for (i, (answer, passes, why)) in steps.into_iter().enumerate() {
            mode.store(answer, Ordering::SeqCst);
            assert_eq!(
                check.check(&backend).await.is_ok(),
                passes,
                "step {i}: {why}"
            );
        }
        // Nothing listening any more: the connection is refused, which is not a timeout.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let gone = Backend::new(&closed.to_string()).unwrap();
        assert!(
            check.check(&gone).await.is_err(),
            "a refused connection is out at once"
        );
    }

    #[test]
    fn discovery_forgets_a_draining_scorer_that_left_the_membership() {
        let admission = Admission::default();
        admission.draining.set("scorer-0:8001", true);
        admission.draining.set("scorer-1:8001", true);
        let members: BTreeSet<Backend> =
            [backend("scorer-1:8001", "127.0.0.1:8001".parse().unwrap())]
                .into_iter()
                .collect();
        admission.enablement(&members);
        let names: Vec<String> = admission
            .draining
            .names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["scorer-1:8001"]);
        admission.enablement(&BTreeSet::new());
        assert!(admission.draining.names().is_empty());
        assert!(!admission.draining.contains("scorer-1:8001"));
    }

    #[tokio::test]
    async fn a_draining_scorer_leaves_rotation_and_is_known_as_draining_while_it_says_so() {
        const OK: usize = 0;
        const NOT_READY: usize = 1;
        const SILENT: usize = 2;
        const DRAINING: usize = 3;
        let mode = Arc::new(AtomicUsize::new(OK));
        let addr = readiness_server(mode.clone()).await;
        let target = backend("scorer-0:8001", addr);
        let admission = Arc::new(Admission::default());
        let draining = admission.draining.clone();
        // A timeout long enough for a loaded machine: the silent step waits it out.
        let check = ScorerCheck::new(Duration::from_secs(1), 1, admission);
        let steps = [
            (OK, true, false, "ready"),
            (
                DRAINING,
                false,
                true,
                "503 saying it drains: out, and draining",
            ),
            (DRAINING, false, true, "still draining"),
            (SILENT, false, true, "a timed-out check changes nothing"),
            (
                NOT_READY,
                false,
                false,
                "a plain 503 (warming) is not draining",
            ),
            (DRAINING, false, true, "draining again"),
            (OK, true, false, "back"),
        ];
        for (i, (answer, passes, is_draining, why)) in steps.into_iter().enumerate() {
            mode.store(answer, Ordering::SeqCst);
            assert_eq!(
                check.check(&target).await.is_ok(),
                passes,
                "step {i}: {why}"
            );
            let names: Vec<String> = draining.names().iter().map(|n| n.to_string()).collect();
            let expected: &[&str] = if is_draining { &["scorer-0:8001"] } else { &[] };
            assert_eq!(names, expected, "step {i}: {why}");
        }
    }

    /// (name, address) of every discovered backend, sorted by name.
    async fn members(discovery: &Discovery) -> pingora::Result<Vec<(String, String)>> {
        let (backends, _) = discovery.discover().await?;
        let mut members: Vec<(String, String)> = backends
            .iter()
            .map(|b| (name_of(b), b.addr.to_string()))
            .collect();
        members.sort();
        Ok(members)
    }

    fn srv(name: &str, dns: &DnsServer) -> Discovery {
        discovery_of(PoolSource::Srv {
            name: format!("{name}."),
            resolver: Some(dns.addr),
        })
    }

    #[tokio::test]
    async fn srv_discovery_names_each_scorer_by_its_target_and_port() {
        let dns = DnsServer::cluster();
        let service = Headless::new("mm-scorer", "serving");
        let at = |addr: &str| -> std::net::SocketAddr { addr.parse().unwrap() };
        dns.publish(
            &service,
            &[
                ("mm-scorer-0", at("127.0.0.1:8001")),
                ("mm-scorer-1", at("127.0.0.2:8001")),
            ],
        );
        let discovery = srv(&service.srv_name(), &dns);
        assert_eq!(
            members(&discovery).await.unwrap(),
            [
                (
                    "mm-scorer-0.mm-scorer.serving.svc.cluster.local:8001".to_string(),
                    "127.0.0.1:8001".to_string()
                ),
                (
                    "mm-scorer-1.mm-scorer.serving.svc.cluster.local:8001".to_string(),
                    "127.0.0.2:8001".to_string()
                ),
            ],
            "the same names as the static list of the chart's pods"
        );
        // A pod rescheduled on a new address keeps its name; a new pod joins; every round
        // asks again.
        dns.publish(
            &service,
            &[
                ("mm-scorer-0", at("127.0.0.3:8001")),
                ("mm-scorer-1", at("127.0.0.2:8001")),
                ("mm-scorer-2", at("127.0.0.4:8001")),
            ],
        );
        let found = members(&discovery).await.unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(
            found[0],
            (
                "mm-scorer-0.mm-scorer.serving.svc.cluster.local:8001".to_string(),
                "127.0.0.3:8001".to_string()
            )
        );
    }

    #[tokio::test]
    async fn srv_targets_without_additional_records_are_looked_up() {
        // The SRV records in a zone of their own: its answers carry no target addresses,
        // so the resolver asks for each target's A record, which one has not.
        let dns = DnsServer::start(&["_tcp.scorers.test", "test"]);
        dns.set_srv(
            "_http._tcp.scorers.test",
            &[
                ("s-0.scorers.test".into(), 7001),
                ("s-1.scorers.test".into(), 7002),
            ],
        );
        dns.set_a(
            "s-0.scorers.test",
            Some(std::net::Ipv4Addr::new(127, 0, 0, 2)),
        );
        let discovery = srv("_http._tcp.scorers.test", &dns);
        assert_eq!(
            members(&discovery).await.unwrap(),
            [(
                "s-0.scorers.test:7001".to_string(),
                "127.0.0.2:7001".to_string()
            )],
            "a target without an address is left out"
        );
    }

    #[tokio::test]
    async fn an_empty_or_failed_srv_answer_keeps_the_last_membership() {
        let dns = DnsServer::cluster();
        let service = Headless::new("scorers", "ns");
        let discovery = srv(&service.srv_name(), &dns);
        assert!(
            discovery.discover().await.is_err(),
            "NXDOMAIN: an Err, which Pingora answers by keeping the membership"
        );
        dns.publish(
            &service,
            &[("scorers-0", "127.0.0.1:8001".parse().unwrap())],
        );
        assert_eq!(members(&discovery).await.unwrap().len(), 1);
        dns.answer(false);
        let started = Instant::now();
        assert!(discovery.discover().await.is_err(), "a silent server");
        assert!(
            started.elapsed() < SRV_ROUND_TIMEOUT + Duration::from_millis(500),
            "a silent server holds discovery (and so the health checks) up for a bounded time: {:?}",
            started.elapsed()
        );
        dns.answer(true);
        assert_eq!(members(&discovery).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_discovered_scorer_takes_no_request_before_its_first_passed_check() {
        const OK: usize = 0;
        const NOT_READY: usize = 1;
        let mode = Arc::new(AtomicUsize::new(NOT_READY));
        let addr = readiness_server(mode.clone()).await;
        let admission = Arc::new(Admission::default());
        let mut lb = LoadBalancer::<Rendezvous>::from_backends(pingora::lb::Backends::new(
            Box::new(Discovery::new(
                PoolSource::Static(vec![addr.to_string()]),
                admission.clone(),
            )),
        ));
        lb.set_health_check(Box::new(ScorerCheck::new(
            Duration::from_millis(500),
            1,
            admission.clone(),
        )));
        let lb = Arc::new(lb);
        admission.attach(&lb);
        let ready = |lb: &LoadBalancer<Rendezvous>| {
            let backends = lb.backends().get_backend();
            backends.iter().any(|b| lb.backends().ready(b))
        };
        lb.update().await.unwrap();
        assert_eq!(lb.backends().get_backend().len(), 1, "a member at once");
        assert!(
            !ready(&lb),
            "Pingora would start it healthy: not in rotation yet"
        );
        lb.backends().run_health_check(false).await;
        assert!(!ready(&lb), "not ready (503): still out");
        mode.store(OK, Ordering::SeqCst);
        lb.backends().run_health_check(false).await;
        assert!(ready(&lb), "its first passed check admits it");
        lb.update().await.unwrap();
        assert!(ready(&lb), "and discovery keeps it admitted");
        mode.store(NOT_READY, Ordering::SeqCst);
        lb.backends().run_health_check(false).await;
        assert!(!ready(&lb), "after that the health check alone decides");
    }
}
