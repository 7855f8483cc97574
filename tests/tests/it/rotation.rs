//! A pool-key rotation under load, the way one `helm upgrade` (new key current, old key
//! previous) and a later one (previous dropped) roll the two workloads: real scorers and
//! proxies replaced one by one while a bounded load runs through whichever proxies are up,
//! and no request is refused (401) or fails. The proxies learn per scorer which key it
//! takes (`proxy/src/pool/rotation.rs`); the scorers accept the current and the previous
//! key (`scorer/src/http/keys.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manymodels_tests::reference::reference;
use manymodels_tests::{ProxyProcess, ScorerProcess, free_port, infer_body, root};
use serde_json::Value;

const OLD: &str = "pool-old-3c81";
const NEW: &str = "pool-new-9e27";
const MODELS: [&str; 3] = ["linear-small", "logistic-churn", "linear-f64"];

/// Requests at most, and how long at most, the load runs.
const MAX_REQUESTS: usize = 20_000;
const MAX_TIME: Duration = Duration::from_secs(120);

/// The load: two clients, each sending one request at a time to the live proxies in turn,
/// until stopped or bounded; every answer's (phase, status) recorded (0: no answer).
struct Load {
    targets: Arc<Mutex<Vec<String>>>,
    phase: Arc<Mutex<&'static str>>,
    answers: Arc<Mutex<Vec<(&'static str, u16)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(first: &str) -> Load {
        let targets = Arc::new(Mutex::new(vec![first.to_string()]));
        let phase = Arc::new(Mutex::new("old keys"));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let bodies: Arc<Vec<(&str, Value)>> = Arc::new(
            MODELS
                .iter()
                .map(|m| (*m, infer_body(&reference(m))))
                .collect(),
        );
        let started = Instant::now();
        let tasks = (0..2)
            .map(|worker| {
                let (targets, phase, answers, stop, bodies) = (
                    targets.clone(),
                    phase.clone(),
                    answers.clone(),
                    stop.clone(),
                    bodies.clone(),
                );
                tokio::spawn(async move {
                    // A fresh connection per request: a proxy leaving the list must not be
                    // reached through a kept-alive connection after it was stopped.
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .build()
                        .unwrap();
                    let mut n = worker;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < MAX_TIME
                        && answers.lock().unwrap().len() < MAX_REQUESTS
                    {
                        let base = {
                            let targets = targets.lock().unwrap();
                            targets[n % targets.len()].clone()
                        };
                        let (model, body) = &bodies[n % bodies.len()];
                        let now = *phase.lock().unwrap();
                        let status = client
                            .post(format!("{base}/v2/models/{model}/infer"))
                            .bearer_auth("client-k-1")
                            .json(body)
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await
                            .map_or(0, |r| r.status().as_u16());
                        answers.lock().unwrap().push((now, status));
                        n += 2;
                    }
                })
            })
            .collect();
        Load {
            targets,
            phase,
            answers,
            stop,
            tasks,
        }
    }

    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap() = phase;
    }

    fn add(&self, proxy: &str) {
        self.targets.lock().unwrap().push(proxy.to_string());
    }

    /// Takes `proxy` out of the load, and waits until no request can still be on its way
    /// there (each client finishes the one it sent).
    async fn remove(&self, proxy: &str) {
        self.targets.lock().unwrap().retain(|t| t != proxy);
        let seen = self.answers.lock().unwrap().len();
        let started = Instant::now();
        while self.answers.lock().unwrap().len() < seen + 4 && started.elapsed() < MAX_TIME {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Vec<(&'static str, u16)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// Stops `process` with SIGTERM (a graceful exit, as Kubernetes does), off the runtime.
async fn terminate<
    P: std::ops::DerefMut<Target = manymodels_tests::process::Process> + Send + 'static,
>(
    mut process: P,
) {
    let status = tokio::task::spawn_blocking(move || process.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exited with {status} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_key_rotation_under_load_answers_no_request_401_and_fails_none() {
    let store = root().join("models/demo");
    let store_set = format!("store.path={}", store.display());
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let scorer_sets = |keys: &[&str]| -> Vec<String> {
        let mut sets = vec![store_set.clone()];
        sets.extend(keys.iter().map(|k| k.to_string()));
        sets
    };
    let old_key = format!("auth.pool_key={OLD}");
    let new_key = format!("auth.pool_key={NEW}");
    let old_previous = format!("auth.pool_key_previous={OLD}");
    let client_key = "auth.api_keys=client:client-k-1";

    // Before: everything on the old key.
    let mut scorers: Vec<Option<ScorerProcess>> = ports
        .iter()
        .map(|&p| Some(ScorerProcess::start_on(p, &scorer_sets(&[&old_key]), &[])))
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let old_proxy = ProxyProcess::start(&addr_refs, &[&old_key, client_key]);
    let load = Load::start(&old_proxy.url);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Upgrade 1, the proxies first: a new proxy (new key current, old previous) beside the
    // old one, while both scorers still take only the old key.
    load.set_phase("new proxy, old scorers");
    let new_proxy = ProxyProcess::start(&addr_refs, &[&new_key, &old_previous, client_key]);
    load.add(&new_proxy.url);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Then the scorers, one by one, with both keys: the old proxy (old key) and the new one
    // (which relearns each restarted scorer's key before it is back in rotation) both go on.
    load.set_phase("scorers with both keys");
    for (i, &port) in ports.iter().enumerate() {
        terminate(scorers[i].take().unwrap()).await;
        let sets = scorer_sets(&[&new_key, &old_previous]);
        scorers[i] = Some(
            tokio::task::spawn_blocking(move || ScorerProcess::start_on(port, &sets, &[]))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The old proxy's pod goes: only the new one serves.
    load.set_phase("old proxy gone");
    load.remove(&old_proxy.url).await;
    terminate(old_proxy).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Upgrade 2, dropping the previous key: a proxy with the new key alone replaces the
    // rotating one, then the scorers restart with the new key alone.
    load.set_phase("proxy without the previous key");
    let final_proxy = ProxyProcess::start(&addr_refs, &[&new_key, client_key]);
    load.add(&final_proxy.url);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.remove(&new_proxy.url).await;
    // It did send the old scorers the old key (learnt before they entered its rotation),
    // and the restarted ones the new.
    let logs = new_proxy.logs();
    assert!(
        logs.contains("the scorer takes only the previous pool key")
            && logs.contains("the scorer takes the current pool key"),
        "{logs}"
    );
    terminate(new_proxy).await;
    load.set_phase("scorers without the previous key");
    for (i, &port) in ports.iter().enumerate() {
        terminate(scorers[i].take().unwrap()).await;
        let sets = scorer_sets(&[&new_key]);
        scorers[i] = Some(
            tokio::task::spawn_blocking(move || ScorerProcess::start_on(port, &sets, &[]))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    load.set_phase("after");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = load.stop().await;

    let mut phases: Vec<(&str, usize, usize, usize)> = Vec::new();
    for (phase, status) in &answers {
        let i = match phases.iter().position(|p| p.0 == *phase) {
            Some(i) => i,
            None => {
                phases.push((phase, 0, 0, 0));
                phases.len() - 1
            }
        };
        phases[i].1 += 1;
        if *status == 401 {
            phases[i].2 += 1;
        } else if *status != 200 {
            phases[i].3 += 1;
        }
    }
    let unauthorized = answers.iter().filter(|(_, s)| *s == 401).count();
    let failed = answers.iter().filter(|(_, s)| *s != 200).count();
    eprintln!(
        "rotation under load: {} requests, {unauthorized} answered 401, {failed} not 200; \
         by phase (requests, 401, other failures): {phases:?}",
        answers.len()
    );
    assert!(answers.len() > 100, "too little load: {}", answers.len());
    assert!(
        phases.iter().all(|p| p.1 > 0),
        "every phase had requests: {phases:?}"
    );
    assert_eq!(unauthorized, 0, "401s by phase: {phases:?}");
    assert_eq!(failed, 0, "failures by phase: {phases:?}");
    // Only after the second upgrade does the old key stop opening a scorer.
    let probe = reqwest::Client::new();
    for addr in &addrs {
        for (key, expected) in [(OLD, 401), (NEW, 200)] {
            let status = probe
                .get(format!("http://{addr}/v2"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status.as_u16(), expected, "{addr} with the {key} key");
        }
    }
    drop(final_proxy);
}
