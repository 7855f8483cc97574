//! The live pool of scorers and what the proxy knows about each, one concern a file:
//!
//! - `discovery` (and `srv`): membership, static names re-resolved, every address of a DNS
//!   name, or the records of a DNS SRV name, re-queried every `pool.refresh`;
//! - `admission`: a discovered scorer takes requests only from its first passed readiness
//!   check;
//! - `health`: the active check on `/v2/health/ready` (tolerated timeouts, draining told
//!   apart);
//! - `drain`: the scorers draining now;
//! - `hot`: which models each scorer answered for recently;
//! - `warm`: background warm loads;
//! - `rotation`: which pool key each scorer takes while a rotation is under way;
//!
//! and here the [`Pool`] itself, the one face of all that to the rest of the proxy:
//! candidates in rendezvous order, the drain hand-off's holder, passive ejection after
//! connection failures, and requests in flight. [`build`] makes it from the configuration.

mod admission;
mod discovery;
mod drain;
mod health;
mod hot;
pub mod rotation;
mod srv;
mod warm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use manymodels_config::proxy::{PoolSource, ProxyConfig};
use pingora::lb::{Backends, LoadBalancer};
use pingora::services::background::{GenBackgroundService, background_service};

use self::admission::Admission;
use self::discovery::Discovery;
use self::drain::Draining;
use self::health::ScorerCheck;
use self::hot::HotTable;
use self::rotation::PoolKeys;
use self::warm::Warmer;
use crate::ranking::{Rendezvous, ScorerName, name_of, name_ref};

/// The pool `config` describes, and the Pingora background service that keeps its
/// membership and health (discovery every `pool.refresh`, health checks every
/// `health.interval`, in parallel): serve the pool's users after it has started, since the
/// selector is empty until the first discovery. Each scorer is sent the pool key it takes
/// (`auth.pool_key`, or during a rotation `auth.pool_key_previous`: [`rotation`]).
pub fn build(config: &ProxyConfig) -> (GenBackgroundService<LoadBalancer<Rendezvous>>, Pool) {
    let keys = Arc::new(PoolKeys::new(&config.pool_key, &config.pool_key_previous));
    let (mut lb, admission) = load_balancer(
        config.pool.clone(),
        config.health_timeout,
        config.tolerated_timeouts,
        keys.clone(),
    );
    lb.health_check_frequency = Some(config.health_interval);
    lb.update_frequency = Some(config.pool_refresh);
    lb.parallel_health_check = true;
    let service = background_service("scorer pool", lb);
    let lb = service.task();
    admission.attach(&lb);
    let hot = Arc::new(HotTable::new(config.hot_ttl, config.hot_max_models));
    let pool = Pool {
        lb,
        warmer: Warmer::new(hot.clone(), keys.clone()),
        hot,
        // The drain hand-off: the health check marks draining scorers, routing reads them.
        draining: admission.draining().clone(),
        inflight: RwLock::new(HashMap::new()),
        ejected: Mutex::new(HashMap::new()),
        eject_for: config.eject_for,
        keys,
    };
    (service, pool)
}

/// A load balancer over `source` whose discovery hands new scorers over disabled and whose
/// health check admits each one at its first passed check (attach it to the returned
/// admission once it is shared).
fn load_balancer(
    source: PoolSource,
    health_timeout: Duration,
    tolerated_timeouts: usize,
    keys: Arc<PoolKeys>,
) -> (LoadBalancer<Rendezvous>, Arc<Admission>) {
    let admission = Arc::new(Admission::default());
    let mut lb = LoadBalancer::<Rendezvous>::from_backends(Backends::new(Box::new(
        Discovery::new(source, admission.clone()),
    )));
    lb.set_health_check(Box::new(ScorerCheck::new(
        health_timeout,
        tolerated_timeouts,
        admission.clone(),
        keys,
    )));
    (lb, admission)
}

/// The scorers, and what the proxy knows about each.
pub struct Pool {
    lb: Arc<LoadBalancer<Rendezvous>>,
    hot: Arc<HotTable>,
    /// Scorers draining now, as the health check last saw them.
    draining: Arc<Draining>,
    warmer: Warmer,
    inflight: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    ejected: Mutex<HashMap<String, Instant>>,
    eject_for: Duration,
    /// The pool keys, and which one each scorer takes.
    keys: Arc<PoolKeys>,
}

/// One candidate for a request: where it listens and its rendezvous name.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub addr: std::net::SocketAddr,
    pub name: Arc<str>,
}

/// One member of the pool, in rotation (`healthy`) or not.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub addr: String,
    pub healthy: bool,
}

impl Pool {
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
        self.skip(name);
        self.draining.set(name, false);
        tracing::warn!(scorer = %name, for_ms = self.eject_for.as_millis() as u64, "scorer ejected after a connection failure");
    }

    /// Skips `name` for `eject_for` after requests were hedged away from it without an
    /// answer (`hedge.stalled_after`): it is frozen, or its host is.
    pub fn eject_stalled(&self, name: &str) {
        self.skip(name);
        tracing::warn!(scorer = %name, for_ms = self.eject_for.as_millis() as u64, "scorer ejected: requests were hedged away from it without an answer");
    }

    /// Skips `name` for `eject_for`, and forgets what it held.
    fn skip(&self, name: &str) {
        let until = Instant::now() + self.eject_for;
        self.ejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), until);
        self.hot.forget_scorer(name);
    }

    /// The requests in flight to `name` (a counter made at its first use): the request
    /// path holds it, adding one while a request is with the scorer.
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
        self.warmer.warm(model, &scorer.name, scorer.addr, timeout)
    }

    /// Whether `scorer` answered for `model` recently (within `routing.hot_ttl`).
    pub fn holds(&self, model: &str, scorer: &str) -> bool {
        self.hot.holds(model, scorer)
    }

    /// `scorer` answered for `model` (its `x-mm-cache` header said so): it holds it now.
    pub fn record_hot(&self, model: &str, scorer: &str) {
        self.hot.record(model, scorer);
    }

    /// How many models the hot table knows a holder for.
    pub fn hot_models(&self) -> usize {
        self.hot.len()
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

    /// Every member: its name, address and whether it is in rotation.
    pub fn members(&self) -> Vec<Member> {
        let backends = self.lb.backends().get_backend();
        backends
            .iter()
            .map(|b| Member {
                name: name_of(b),
                addr: b.addr.to_string(),
                healthy: self.lb.backends().ready(b),
            })
            .collect()
    }

    /// Every scorer in rotation or draining (a draining one still serves the models it
    /// holds), but `except`: its address and the `Authorization` it takes
    /// ([`Pool::authorization_for`]).
    pub fn serving(&self, except: Option<&str>) -> Vec<(String, Option<Arc<str>>)> {
        let backends = self.lb.backends().get_backend();
        backends
            .iter()
            .filter(|b| self.lb.backends().ready(b) || self.draining.contains(name_ref(b)))
            .filter(|b| except != Some(name_ref(b)))
            .map(|b| (b.addr.to_string(), self.authorization_for(name_ref(b))))
            .collect()
    }

    /// The `Authorization` to send the scorer named `scorer` (its rendezvous name, as in
    /// `Candidate::name`), on forwarded requests and the proxy's own calls alike:
    /// `Bearer <auth.pool_key>`, or during a rotation `Bearer <auth.pool_key_previous>` for
    /// a scorer learnt to take only that one; `None` without a pool key (then a forwarded
    /// request carries the client's own header).
    pub fn authorization_for(&self, scorer: &str) -> Option<Arc<str>> {
        self.keys.authorization_for(scorer)
    }

    /// Sends `GET path` to every scorer in rotation at once, each with the pool key it
    /// takes and `prefixes` as `x-mm-model-prefixes` when given, each waiting at most
    /// `timeout` (the proxy's views merged from every scorer: the ledger, the shadows).
    /// Answers each asked scorer's name with its 200 body or why not, and the names of the
    /// scorers out of rotation (unhealthy or draining), which are not asked.
    pub async fn get_from_all(
        &self,
        path: &str,
        prefixes: Option<&str>,
        timeout: Duration,
    ) -> (Vec<(String, Result<Vec<u8>, String>)>, Vec<String>) {
        let (members, out): (Vec<_>, Vec<_>) = self.members().into_iter().partition(|m| m.healthy);
        let authorizations: Vec<Option<Arc<str>>> = members
            .iter()
            .map(|m| self.authorization_for(&m.name))
            .collect();
        let calls = members
            .iter()
            .zip(&authorizations)
            .map(|(member, authorization)| {
                let mut headers: Vec<(&str, &str)> = Vec::new();
                if let Some(authorization) = authorization {
                    headers.push(("Authorization", authorization));
                }
                if let Some(prefixes) = prefixes.filter(|p| !p.is_empty()) {
                    headers.push((manymodels_contract::header::MODEL_PREFIXES, prefixes));
                }
                let addr = &member.addr;
                async move {
                    tokio::time::timeout(
                        timeout,
                        crate::http1::call(addr, "GET", path, &headers, b""),
                    )
                    .await
                }
            });
        let answers = futures::future::join_all(calls).await;
        let asked = members
            .into_iter()
            .zip(answers)
            .map(|(member, answer)| {
                let body = match answer {
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                    Ok(Err(e)) => Err(format!("unreachable: {e}")),
                    Ok(Ok((200, body))) => Ok(body),
                    Ok(Ok((status, _))) => Err(format!("answered {status}")),
                };
                (member.name, body)
            })
            .collect();
        (asked, out.into_iter().map(|m| m.name).collect())
    }

    /// `scorer` answered 401 to `sent` (the `Authorization` sent to it): during a rotation,
    /// switch it to the other pool key now (the next health check confirms).
    pub fn pool_key_refused(&self, scorer: &str, sent: Option<&str>) {
        self.keys.refused(scorer, sent);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::health::tests::readiness_server;
    use super::*;

    #[tokio::test]
    async fn a_discovered_scorer_takes_no_request_before_its_first_passed_check() {
        const OK: usize = 0;
        const NOT_READY: usize = 1;
        let mode = Arc::new(AtomicUsize::new(NOT_READY));
        let addr = readiness_server(mode.clone()).await;
        let (lb, admission) = load_balancer(
            PoolSource::Static(vec![addr.to_string()]),
            Duration::from_millis(500),
            1,
            Default::default(),
        );
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
