//! A real DNS server in the test process: hickory-server (the hickory-dns project's
//! authoritative server, the same project as the proxy's resolver) on 127.0.0.1, UDP and
//! TCP on one port, with in-memory zones the test changes while it runs. It publishes a
//! Kubernetes headless Service the way cluster DNS does (the DNS spec's SRV records for a
//! named port, one per endpoint, whose targets are the pods' stable names with their
//! address records), so a proxy with `pool.srv` and `pool.resolver` pointed here follows a
//! "StatefulSet" of local scorers as it scales. It can also stop answering, as a DNS server
//! that is down or overloaded does.
//!
//! The server runs on a runtime of its own, so a test may block or run its own runtime;
//! every change is applied before the call returns.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

use crate::process::ProxyProcess;

/// The TTL of every record: CoreDNS's `kubernetes` plugin default. (The proxy's resolver
/// does not reuse answers across rounds whatever it is.)
pub const TTL: u32 = 5;

/// The cluster domain the zones of [`DnsServer::cluster`] are under.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// A Kubernetes headless Service named `service` in `namespace`, as cluster DNS names it.
#[derive(Clone, Debug)]
pub struct Headless {
    pub service: String,
    pub namespace: String,
}

impl Headless {
    pub fn new(service: &str, namespace: &str) -> Self {
        Headless {
            service: service.into(),
            namespace: namespace.into(),
        }
    }

    /// The SRV name of its port named `http` over TCP, what `pool.srv` is set to:
    /// `_http._tcp.<service>.<namespace>.svc.cluster.local`.
    pub fn srv_name(&self) -> String {
        format!(
            "_http._tcp.{}.{}.{CLUSTER_DOMAIN}",
            self.service, self.namespace
        )
    }

    /// A pod's stable name, its SRV target: `<pod>.<service>.<namespace>.svc.cluster.local`.
    pub fn pod(&self, pod: &str) -> String {
        format!("{pod}.{}.{}.{CLUSTER_DOMAIN}", self.service, self.namespace)
    }

    /// The rendezvous name the proxy gives that pod on `port` (the SRV target without its
    /// trailing dot, and the port): what a static `pool.scorers` list of the same pods says.
    pub fn scorer_name(&self, pod: &str, port: u16) -> String {
        format!("{}:{port}", self.pod(pod))
    }
}

/// A DNS server on 127.0.0.1 (UDP and TCP), killed when dropped.
pub struct DnsServer {
    /// `127.0.0.1:PORT`, what `pool.resolver` is set to.
    pub addr: SocketAddr,
    /// The zones, most specific first.
    zones: Vec<(Name, Arc<InMemoryZoneHandler>)>,
    answering: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The catalog of zones, or silence.
struct Switch {
    catalog: Catalog,
    answering: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl RequestHandler for Switch {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if self.answering.load(Ordering::SeqCst) {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        // Silent: nothing is sent, as from a server that is down or overloaded. (The info
        // returned only feeds the server's own logging.)
        let mut metadata = Metadata::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        metadata.response_code = ResponseCode::ServFail;
        ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        })
    }
}

impl DnsServer {
    /// A server for the cluster domain (`svc.cluster.local.`), as cluster DNS answers for
    /// it: an SRV answer carries its targets' A records as additional records.
    pub fn cluster() -> Self {
        Self::start(&[CLUSTER_DOMAIN])
    }

    /// A server authoritative for `zones` (each with an SOA record and nothing else yet).
    /// A record goes to the most specific zone that holds its name; the server adds
    /// additional records (an SRV target's address) only from the zone that answers, so a
    /// test can put the SRV records in a zone of their own to make the resolver look the
    /// targets up itself.
    pub fn start(zones: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dns-server")
            .enable_all()
            .build()
            .expect("a runtime for the DNS server");
        let answering = Arc::new(AtomicBool::new(true));
        let mut catalog = Catalog::new();
        let mut handlers = Vec::new();
        for zone in zones {
            let origin = fqdn(zone);
            let mut handler =
                InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
            let soa = SOA::new(
                fqdn(&format!("ns.dns.{zone}")),
                fqdn(&format!("hostmaster.{zone}")),
                1,
                60,
                60,
                3600,
                TTL,
            );
            handler.upsert_mut(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)), 1);
            let handler = Arc::new(handler);
            catalog.upsert(
                LowerName::new(&origin),
                vec![handler.clone() as Arc<dyn ZoneHandler>],
            );
            handlers.push((origin, handler));
        }
        handlers.sort_by_key(|(origin, _)| std::cmp::Reverse(origin.num_labels()));
        let handler = Switch {
            catalog,
            answering: answering.clone(),
        };
        // Set up on a thread of its own: the caller may be inside a runtime, where blocking
        // on another is refused.
        let bind = async move {
            // UDP and TCP on one port: take a free UDP port, then the same for TCP (again
            // if another process holds it).
            for _ in 0..50 {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = udp.local_addr().unwrap();
                let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                    continue;
                };
                let mut server = Server::new(handler);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 32);
                tokio::spawn(async move {
                    let _ = server.block_until_done().await;
                });
                return addr;
            }
            panic!("no port free for both UDP and TCP on 127.0.0.1");
        };
        let addr = std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(bind))
                .join()
                .expect("the DNS server started")
        });
        DnsServer {
            addr,
            zones: handlers,
            answering,
            runtime: Some(runtime),
        }
    }

    /// Runs `change` on the server's runtime and waits for it (from a test thread or from
    /// inside another runtime alike).
    fn apply<F>(&self, change: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (done, wait) = std::sync::mpsc::channel();
        self.runtime.as_ref().expect("running").spawn(async move {
            change.await;
            let _ = done.send(());
        });
        wait.recv().expect("the DNS server applied the change");
    }

    /// The zone that holds `name`.
    fn zone_of(&self, name: &Name) -> Arc<InMemoryZoneHandler> {
        self.zones
            .iter()
            .find(|(origin, _)| origin.zone_of(name))
            .map(|(_, zone)| zone.clone())
            .unwrap_or_else(|| panic!("no zone of this server holds {name}"))
    }

    /// Replaces every record of `record_type` at `name` with `data` (none: removes them).
    pub fn set(&self, name: &str, record_type: RecordType, data: Vec<RData>) {
        let name = fqdn(name);
        let zone = self.zone_of(&name);
        self.apply(async move {
            let key = RrKey::new(LowerName::new(&name), record_type);
            zone.records_mut().await.remove(&key);
            for rdata in data {
                assert!(
                    zone.upsert(Record::from_rdata(name.clone(), TTL, rdata), 1)
                        .await,
                    "inserting a record at {name}"
                );
            }
        });
    }

    /// The A record of `name` (none: removed).
    pub fn set_a(&self, name: &str, ip: Option<Ipv4Addr>) {
        let data = ip.map(|ip| RData::A(A(ip))).into_iter().collect();
        self.set(name, RecordType::A, data);
    }

    /// The SRV records of `name`: one per (target, port), priority 0 and equal weights as
    /// CoreDNS gives them; empty removes them (the name then answers NXDOMAIN, or no
    /// records if something else is there).
    pub fn set_srv(&self, name: &str, targets: &[(String, u16)]) {
        let weight = (100 / targets.len().max(1)) as u16;
        let data = targets
            .iter()
            .map(|(target, port)| RData::SRV(SRV::new(0, weight, *port, fqdn(target))))
            .collect();
        self.set(name, RecordType::SRV, data);
    }

    /// Publishes `service`'s endpoints as cluster DNS does: one SRV record per (pod,
    /// address) for its port named `http`, whose target is the pod's stable name with the
    /// address's port, and each pod's A (or AAAA) record with the address's IP. Pods
    /// published before and not in `endpoints` lose their address record too; no endpoint
    /// at all leaves the SRV name without records (NXDOMAIN).
    pub fn publish(&self, service: &Headless, endpoints: &[(&str, SocketAddr)]) {
        let srv = fqdn(&service.srv_name());
        let old: Vec<Name> = {
            let zone = self.zone_of(&srv);
            let (send, receive) = std::sync::mpsc::channel();
            let key = RrKey::new(LowerName::new(&srv), RecordType::SRV);
            self.apply(async move {
                let targets = zone
                    .records()
                    .await
                    .get(&key)
                    .map(|set| {
                        set.records_without_rrsigs()
                            .filter_map(|r| match &r.data {
                                RData::SRV(srv) => Some(srv.target.clone()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = send.send(targets);
            });
            receive.recv().unwrap_or_default()
        };
        let targets: Vec<(String, u16)> = endpoints
            .iter()
            .map(|(pod, addr)| (service.pod(pod), addr.port()))
            .collect();
        for gone in old
            .iter()
            .filter(|name| !targets.iter().any(|(t, _)| fqdn(t) == **name))
        {
            self.set(&gone.to_ascii(), RecordType::A, Vec::new());
            self.set(&gone.to_ascii(), RecordType::AAAA, Vec::new());
        }
        for (pod, addr) in endpoints {
            let (record_type, data) = match addr.ip() {
                IpAddr::V4(ip) => (RecordType::A, RData::A(A(ip))),
                IpAddr::V6(ip) => (RecordType::AAAA, RData::AAAA(AAAA(ip))),
            };
            self.set(&service.pod(pod), record_type, vec![data]);
        }
        self.set_srv(&service.srv_name(), &targets);
    }

    /// Starts a test proxy ([`ProxyProcess::start`]'s tuning: `pool.refresh=1s`,
    /// `health.interval=200ms`) whose pool is `service`'s SRV name asked of this server,
    /// with `sets`, and waits until `ready` scorers passed its health check.
    pub fn proxy(&self, service: &Headless, ready: usize, sets: &[&str]) -> ProxyProcess {
        let srv = format!("pool.srv={}", service.srv_name());
        let resolver = format!("pool.resolver={}", self.addr);
        let mut all = vec![srv.as_str(), resolver.as_str()];
        all.extend_from_slice(sets);
        // The harness waits for as many healthy scorers as it is given names, and passes
        // them as `pool.scorers`: blank names count for the wait and leave `pool.scorers`
        // empty (the list parser drops blanks), so `pool.srv` is the pool's one source.
        let blanks = vec![""; ready];
        ProxyProcess::start(&blanks, &all)
    }

    /// Whether the server answers queries; when not, it receives them and sends nothing.
    pub fn answer(&self, on: bool) {
        self.answering.store(on, Ordering::SeqCst);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Without blocking: a test may drop it inside its own runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `name` as a fully qualified DNS name.
fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name).unwrap_or_else(|e| panic!("`{name}`: {e}"));
    name.set_fqdn(true);
    name
}
