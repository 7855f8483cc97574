//! Pool membership from DNS SRV records on real processes: a proxy with `pool.srv` asks a
//! real DNS server in the test process (`manymodels_tests::dns`, hickory-server) that
//! publishes a headless Service's endpoints as cluster DNS does, in front of real scorers
//! serving a generated store. The tests scale the "StatefulSet" up and down, restart a pod
//! on a new address, and silence the DNS server, and check which scorer answers each of
//! many models against the rendezvous ranking of the pods' stable names.
//!
//! Routing runs with `routing.top_k=1` and no replication, so the scorer that answers a
//! model is exactly its first-ranked healthy scorer: a move seen here is a move of the
//! ranking, not hot routing.
//!
//! Each test prints the discovery delays it measured (`--nocapture`): how long after the
//! DNS change the proxy's pool showed it, with `pool.refresh=1s` and
//! `health.interval=200ms` (the harness's tuning) and a DNS server that caches nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use manymodels_models::Mix;
use manymodels_tests::dns::{DnsServer, Headless};
use manymodels_tests::http::header;
use manymodels_tests::{ProxyProcess, ScorerProcess, TempDir, free_port, get_json};
use serde_json::Value;

const MODELS: usize = 200;
const SEED: u64 = 15;

/// Routing that answers each model from its first-ranked healthy scorer.
const PLAIN_RANKING: &[&str] = &["routing.top_k=1", "replication.threshold=0"];

fn store() -> TempDir {
    let dir = TempDir::new("membership-store");
    manymodels_models::write_store(dir.path(), MODELS, Mix::Tiny, SEED).unwrap();
    dir
}

fn id(i: usize) -> String {
    manymodels_models::model_id(i)
}

/// The scorers of a test, as pods of one StatefulSet: pod name → (process, address). Each
/// reports its pod name in `x-mm-scorer`, as the chart's scorers do.
struct StatefulSet {
    service: Headless,
    store: String,
    pods: BTreeMap<String, (ScorerProcess, SocketAddr)>,
}

impl StatefulSet {
    fn new(store: &TempDir) -> Self {
        StatefulSet {
            service: Headless::new("mm-scorer", "test"),
            store: store.path().display().to_string(),
            pods: BTreeMap::new(),
        }
    }

    fn pod_name(i: usize) -> String {
        format!("mm-scorer-{i}")
    }

    /// Starts pod `i` on 127.0.0.1 and a free port, and waits until it is ready.
    async fn start(&mut self, i: usize) {
        self.start_at(i, SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())))
            .await;
    }

    /// Starts pod `i` listening on `addr` (any loopback address: a rescheduled pod's new
    /// IP) and waits until it is ready.
    async fn start_at(&mut self, i: usize, addr: SocketAddr) {
        let pod = Self::pod_name(i);
        let sets = [
            format!("store.path={}", self.store),
            format!("name={pod}"),
            // Wins over the harness's `--listen 127.0.0.1:<port>`.
            format!("listen={addr}"),
        ];
        let scorer = ScorerProcess::spawn_on(addr.port(), &sets, &[]);
        let client = reqwest::Client::new();
        let ready = format!("http://{addr}/v2/health/ready");
        let started = Instant::now();
        loop {
            let status = client.get(&ready).send().await.map(|r| r.status());
            if status.is_ok_and(|s| s == 200) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{pod} not ready:\n{}",
                scorer.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.pods.insert(pod, (scorer, addr));
    }

    /// (pod, address) of the running pods, as endpoints to publish.
    fn endpoints(&self) -> Vec<(String, SocketAddr)> {
        self.pods
            .iter()
            .map(|(p, (_, a))| (p.clone(), *a))
            .collect()
    }

    /// The proxy's rendezvous name of a pod: its SRV target and port.
    fn scorer_name(&self, pod: &str) -> String {
        self.service.scorer_name(pod, self.pods[pod].1.port())
    }
}

fn publish(dns: &DnsServer, set: &StatefulSet, endpoints: &[(String, SocketAddr)]) {
    let pods: Vec<(&str, SocketAddr)> = endpoints.iter().map(|(p, a)| (p.as_str(), *a)).collect();
    dns.publish(&set.service, &pods);
}

/// Scores every model through the proxy; returns model → the pod that answered.
async fn owners(client: &reqwest::Client, proxy: &ProxyProcess, set: &StatefulSet) -> Vec<String> {
    let mut owners = Vec::with_capacity(MODELS);
    for i in 0..MODELS {
        let response = client
            .post(format!("{}/v2/models/{}/infer", proxy.url, id(i)))
            .json(&manymodels_tests::load::body(i, Mix::Tiny, SEED))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "model {i}");
        let pod = header(&response, "x-mm-scorer");
        assert!(set.pods.contains_key(&pod), "model {i} answered by {pod}");
        owners.push(pod);
    }
    owners
}

/// The pod each model ranks first among `pods` by their proxy names.
fn ranked(set: &StatefulSet, pods: &[String]) -> Vec<String> {
    let names: HashMap<String, String> = pods
        .iter()
        .map(|p| (set.scorer_name(p), p.clone()))
        .collect();
    (0..MODELS)
        .map(|i| {
            let first = manymodels_policy::ranking::rank(&id(i), names.keys().map(String::as_str))
                [0]
            .to_string();
            names[&first].clone()
        })
        .collect()
}

/// The proxy's pool view: (name, addr, healthy) of each member.
async fn pool(client: &reqwest::Client, proxy: &ProxyProcess) -> Vec<(String, String, bool)> {
    let view: Value = get_json(client, &format!("{}/v2/mm/pool", proxy.url)).await;
    view["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["addr"].as_str().unwrap().to_string(),
                s["healthy"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Polls the pool view every 20 ms until `done` accepts it; returns how long that took.
async fn until(
    client: &reqwest::Client,
    proxy: &ProxyProcess,
    what: &str,
    done: impl Fn(&[(String, String, bool)]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let members = pool(client, proxy).await;
        if done(&members) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: not seen after 20 s: {members:?}\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn healthy(members: &[(String, String, bool)]) -> usize {
    members.iter().filter(|m| m.2).count()
}

#[tokio::test]
async fn the_proxy_follows_the_srv_records_as_the_pool_scales_up_and_down() {
    let store = store();
    let dns = DnsServer::cluster();
    let mut set = StatefulSet::new(&store);
    for i in 0..3 {
        set.start(i).await;
    }
    publish(&dns, &set, &set.endpoints());
    let proxy = dns.proxy(&set.service, 3, PLAIN_RANKING);
    let client = reqwest::Client::new();

    // The proxy names each scorer by its SRV target and port: the chart's static names.
    let mut names: Vec<String> = pool(&client, &proxy)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    names.sort();
    assert_eq!(
        names,
        (0..3)
            .map(|i| set.scorer_name(&StatefulSet::pod_name(i)))
            .collect::<Vec<_>>()
    );
    assert!(names[0].starts_with("mm-scorer-0.mm-scorer.test.svc.cluster.local:"));
    let three: Vec<String> = set.pods.keys().cloned().collect();
    let before = owners(&client, &proxy, &set).await;
    assert_eq!(
        before,
        ranked(&set, &three),
        "each model on its first-ranked pod"
    );

    // Scale up: two more pods, ready, then published.
    for i in 3..5 {
        set.start(i).await;
    }
    publish(&dns, &set, &set.endpoints());
    let joined = until(&client, &proxy, "5 healthy", |m| {
        m.len() == 5 && healthy(m) == 5
    })
    .await;
    let five: Vec<String> = set.pods.keys().cloned().collect();
    let after = owners(&client, &proxy, &set).await;
    assert_eq!(after, ranked(&set, &five));
    let moved: Vec<usize> = (0..MODELS).filter(|&i| before[i] != after[i]).collect();
    for &i in &moved {
        assert!(
            ["mm-scorer-3", "mm-scorer-4"].contains(&after[i].as_str()),
            "model {i} moved from {} to {}, not to a new pod",
            before[i],
            after[i]
        );
    }
    let share = moved.len() as f64 / MODELS as f64;
    assert!(
        (0.25..=0.55).contains(&share),
        "about 2/5 of the models move to the two new pods: {share}"
    );

    // Scale down: the two new pods leave DNS (they still run: the proxy learns it from
    // DNS alone here), and every model returns to where it was.
    publish(&dns, &set, &set.endpoints()[..3]);
    let left = until(&client, &proxy, "3 members", |m| {
        m.len() == 3 && healthy(m) == 3
    })
    .await;
    let back = owners(&client, &proxy, &set).await;
    assert_eq!(
        back, before,
        "only the departed pods' models moved, back home"
    );

    // More scale events at spread phases of the proxy's refresh cycle (the delay depends on
    // where in the cycle a change lands), for the figures.
    let (mut joins, mut leaves) = (vec![joined], vec![left]);
    for round in 1..8u64 {
        tokio::time::sleep(Duration::from_millis(round * 387 % 1000)).await;
        publish(&dns, &set, &set.endpoints());
        joins.push(
            until(&client, &proxy, "5 healthy", |m| {
                m.len() == 5 && healthy(m) == 5
            })
            .await,
        );
        tokio::time::sleep(Duration::from_millis(round * 611 % 1000)).await;
        publish(&dns, &set, &set.endpoints()[..3]);
        leaves.push(
            until(&client, &proxy, "3 members", |m| {
                m.len() == 3 && healthy(m) == 3
            })
            .await,
        );
    }
    let figures = |delays: &mut Vec<Duration>| {
        delays.sort();
        format!(
            "min {:.2} s, median {:.2} s, max {:.2} s",
            delays[0].as_secs_f64(),
            delays[delays.len() / 2].as_secs_f64(),
            delays[delays.len() - 1].as_secs_f64()
        )
    };
    eprintln!(
        "discovery delay over {} scale events (pool.refresh=1s, health.interval=200ms): \
         2 new scorers in rotation after {}; 2 departed scorers out after {}; \
         {} of {MODELS} models moved to the new scorers ({:.0}%)",
        joins.len(),
        figures(&mut joins),
        figures(&mut leaves),
        moved.len(),
        share * 100.0
    );
}

#[tokio::test]
async fn a_pod_restarted_on_a_new_address_keeps_its_name_and_its_models() {
    let store = store();
    let dns = DnsServer::cluster();
    let mut set = StatefulSet::new(&store);
    for i in 0..3 {
        set.start(i).await;
    }
    publish(&dns, &set, &set.endpoints());
    let proxy = dns.proxy(&set.service, 3, PLAIN_RANKING);
    let client = reqwest::Client::new();
    let before = owners(&client, &proxy, &set).await;
    let pod = "mm-scorer-1";
    let share = before.iter().filter(|p| *p == pod).count();
    assert!(share > 20, "{share}");

    // The pod dies and is rescheduled: a new IP (127.0.0.2 here), the same port, the same
    // name. (The port is part of the name, as in the chart's static list: in Kubernetes a
    // pod's port comes from its template and only its IP changes.) Cluster DNS publishes
    // the new endpoint before the process is ready (the chart's Service publishes
    // not-ready addresses): it is a member at once but takes no request until it passes
    // the proxy's readiness check.
    let old_addr = set.pods[pod].1;
    let name = set.scorer_name(pod);
    set.pods.remove(pod).unwrap().0.kill();
    let new_addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), old_addr.port()));
    let mut endpoints = set.endpoints();
    endpoints.push((pod.to_string(), new_addr));
    endpoints.sort();
    publish(&dns, &set, &endpoints);
    let new = new_addr.to_string();
    until(&client, &proxy, "the new address, not admitted", |m| {
        m.len() == 3 && m.iter().any(|(n, a, h)| *n == name && *a == new && !h)
    })
    .await;
    // `owners` refuses an answer from a pod not in the set, so the restarted pod answered
    // nothing; its models went to their next choice among the two running pods.
    let meanwhile = owners(&client, &proxy, &set).await;
    let running: Vec<String> = set.pods.keys().cloned().collect();
    assert_eq!(
        meanwhile,
        ranked(&set, &running),
        "a discovered scorer that is not listening yet takes no request"
    );
    // Its placement: still first in the model's rendezvous order, not healthy, and the
    // owner named is the scorer its requests go to meanwhile.
    let mine = before.iter().position(|p| p == pod).unwrap();
    let placement = get_json(
        &client,
        &format!("{}/v2/mm/pool/models/{}", proxy.url, id(mine)),
    )
    .await;
    assert_eq!(
        placement["ranking"][0]["name"],
        name.as_str(),
        "{placement}"
    );
    assert_eq!(placement["ranking"][0]["healthy"], false, "{placement}");
    assert_eq!(
        placement["owner"],
        set.scorer_name(&meanwhile[mine]).as_str(),
        "{placement}"
    );
    set.start_at(1, new_addr).await;
    let took = until(&client, &proxy, "the restarted pod healthy", |m| {
        healthy(m) == 3 && m.iter().any(|(n, a, h)| *n == name && *a == new && *h)
    })
    .await;
    let after = owners(&client, &proxy, &set).await;
    assert_eq!(
        after, before,
        "the same name on a new address: every model back on the same pod"
    );
    eprintln!(
        "pod restarted on a new address: in rotation {:.2} s after it reported ready",
        took.as_secs_f64()
    );
}

#[tokio::test]
async fn a_silent_dns_server_or_an_empty_answer_keeps_the_last_membership() {
    let store = store();
    let dns = DnsServer::cluster();
    let mut set = StatefulSet::new(&store);
    for i in 0..3 {
        set.start(i).await;
    }
    publish(&dns, &set, &set.endpoints());
    let proxy = dns.proxy(&set.service, 3, PLAIN_RANKING);
    let client = reqwest::Client::new();
    let before = owners(&client, &proxy, &set).await;

    // The DNS server stops answering for several refresh periods: every query times out.
    dns.answer(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let members = pool(&client, &proxy).await;
    assert_eq!((members.len(), healthy(&members)), (3, 3), "{members:?}");
    assert_eq!(owners(&client, &proxy, &set).await, before);
    assert!(
        proxy.logs().contains("keeping the last membership"),
        "the proxy says why: {}",
        proxy.logs()
    );
    dns.answer(true);

    // The records disappear (NXDOMAIN): as likely a Service being re-created as a scale to
    // zero, and the scorers still serve, so the proxy keeps them; the health check is
    // what takes a departed scorer out.
    publish(&dns, &set, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let members = pool(&client, &proxy).await;
    assert_eq!((members.len(), healthy(&members)), (3, 3), "{members:?}");
    assert_eq!(owners(&client, &proxy, &set).await, before);
    let gone = "mm-scorer-2";
    set.pods.remove(gone).unwrap().0.kill();
    let out = until(&client, &proxy, "the dead pod unhealthy", |m| {
        healthy(m) == 2
    })
    .await;
    let two: Vec<String> = set.pods.keys().cloned().collect();
    let names: HashMap<String, String> = two
        .iter()
        .map(|p| (set.scorer_name(p), p.clone()))
        .collect();
    let after = owners(&client, &proxy, &set).await;
    for i in 0..MODELS {
        if before[i] != gone {
            assert_eq!(after[i], before[i], "model {i}");
        } else {
            let first = manymodels_policy::ranking::rank(&id(i), names.keys().map(String::as_str))
                [0]
            .to_string();
            assert_eq!(after[i], names[&first], "model {i}: to its next-ranked pod");
        }
    }
    eprintln!(
        "a scorer that died while DNS had no records: out of rotation after {:.2} s (health check)",
        out.as_secs_f64()
    );
}
