//! Membership: which scorers are in the pool, re-resolved every `pool.refresh`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use manymodels_config::proxy::PoolSource;
use pingora::lb::Backend;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::{Error, ErrorType};

use super::admission::Admission;
use super::srv::SrvLookup;
use crate::ranking::ScorerName;

/// Resolves the configured scorers into backends: static names re-resolved, every address
/// of a DNS name, or the records of a DNS SRV name (`srv`). A static name keeps its name as
/// its rendezvous identity whatever address it resolves to (a StatefulSet pod keeps its
/// share across restarts), and so does an SRV record's `<target>:<port>`; scorers found as
/// the addresses of one DNS name are identified by address.
///
/// Every backend is handed to Pingora disabled until it passed a readiness check (see
/// [`Admission`]).
pub(super) struct Discovery {
    source: PoolSource,
    srv: SrvLookup,
    admission: Arc<Admission>,
}

impl Discovery {
    pub(super) fn new(source: PoolSource, admission: Arc<Admission>) -> Self {
        Discovery {
            source,
            srv: SrvLookup::default(),
            admission,
        }
    }
}

/// A backend named `name` (its rendezvous identity) at `addr`.
pub(super) fn backend(name: &str, addr: std::net::SocketAddr) -> Backend {
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
                // An Err (no records, a failed or slow server) keeps the last membership.
                for (scorer, addr) in self.srv.members(name, *resolver).await? {
                    backends.insert(backend(&scorer, addr));
                }
            }
        }
        let enablement = self.admission.enablement(&backends);
        Ok((backends, enablement))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use manymodels_tests::dns::{DnsServer, Headless};

    use super::*;
    use crate::ranking::name_of;

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

    #[test]
    fn discovery_forgets_a_draining_scorer_that_left_the_membership() {
        let admission = Admission::default();
        admission.draining().set("scorer-0:8001", true);
        admission.draining().set("scorer-1:8001", true);
        let members: BTreeSet<Backend> =
            [backend("scorer-1:8001", "127.0.0.1:8001".parse().unwrap())]
                .into_iter()
                .collect();
        admission.enablement(&members);
        let names: Vec<String> = admission
            .draining()
            .names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["scorer-1:8001"]);
        admission.enablement(&BTreeSet::new());
        assert!(admission.draining().names().is_empty());
        assert!(!admission.draining().contains("scorer-1:8001"));
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
            started.elapsed() < super::super::srv::SRV_ROUND_TIMEOUT + Duration::from_millis(500),
            "a silent server holds discovery (and so the health checks) up for a bounded time: {:?}",
            started.elapsed()
        );
        dns.answer(true);
        assert_eq!(members(&discovery).await.unwrap().len(), 1);
    }
}
