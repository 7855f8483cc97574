//! Membership from a DNS SRV name: each record's `<target>:<port>` is a scorer's name,
//! its address the target's, asked through `hickory-resolver` every discovery round.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use pingora::{Error, ErrorType};

/// How long one DNS query may take (an SRV query, or a target's address), and how long a
/// whole SRV discovery round may take. Pingora runs discovery and the health checks one
/// after the other on one task, so a DNS server that stopped answering must not hold the
/// health checks up for long: cluster DNS answers in milliseconds.
const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const SRV_ROUND_TIMEOUT: Duration = Duration::from_secs(3);

/// The SRV source's lookups. Its resolver is made at the first discovery (inside the
/// runtime that runs its background tasks) and kept.
#[derive(Default)]
pub(super) struct SrvLookup {
    resolver: tokio::sync::OnceCell<TokioResolver>,
}

impl SrvLookup {
    async fn resolver(&self, server: Option<SocketAddr>) -> pingora::Result<&TokioResolver> {
        self.resolver
            .get_or_try_init(|| async { srv_resolver(server) })
            .await
            .map_err(|e| Error::because(ErrorType::ConnectNoRoute, "making the DNS resolver", e))
    }

    /// One discovery round: every record of `name` as (`<target>:<port>`, address), asked
    /// of `server` (`None`: the system's resolver), within `SRV_ROUND_TIMEOUT`.
    ///
    /// An Err leaves the membership as it was. That is the answer to a failed query (the
    /// DNS server is down or overloaded: the scorers are not) and also to an empty one
    /// (NXDOMAIN, no records). An empty answer is what a scale to zero looks like, but
    /// also what a Service being re-created, a CoreDNS replica that has not synced yet or a
    /// wrong name look like, while the scorers may well still serve. Keeping them costs
    /// nothing at a real scale to zero: the health check takes every departed scorer out
    /// of rotation within `health.interval` (the proxy then reports not ready), and the
    /// next non-empty answer replaces them all.
    pub(super) async fn members(
        &self,
        name: &str,
        server: Option<SocketAddr>,
    ) -> pingora::Result<Vec<(String, SocketAddr)>> {
        let resolver = self.resolver(server).await?;
        let round = tokio::time::timeout(SRV_ROUND_TIMEOUT, srv_members(resolver, name));
        match round.await {
            Ok(Ok(members)) => Ok(members),
            Ok(Err(SrvFailure::Empty)) => {
                tracing::warn!(srv = %name, "no SRV records; keeping the last membership");
                Error::e_explain(
                    ErrorType::ConnectNoRoute,
                    format!("no SRV records for {name}"),
                )
            }
            Ok(Err(SrvFailure::Query(e))) => {
                tracing::warn!(srv = %name, error = %e, "SRV query failed; keeping the last membership");
                Error::e_explain(ErrorType::ConnectNoRoute, format!("querying {name}: {e}"))
            }
            Err(_) => {
                tracing::warn!(srv = %name, "SRV discovery timed out; keeping the last membership");
                Error::e_explain(ErrorType::ConnectTimedout, format!("querying {name}"))
            }
        }
    }
}

/// The resolver `pool.srv` is asked through: `pool.resolver` when set, else the system's
/// configuration (`/etc/resolv.conf`). Its answers are not reused across rounds: each
/// round clears the cache (`srv_members`), so `pool.refresh` alone governs how fresh the
/// membership is; what a DNS server itself caches (CoreDNS's `ttl` and `cache`) still
/// applies.
fn srv_resolver(server: Option<SocketAddr>) -> Result<TokioResolver, NetError> {
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
) -> Result<Vec<(String, SocketAddr)>, SrvFailure> {
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
        Ok((name, ip.map(|ip| SocketAddr::new(ip, *port))))
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
