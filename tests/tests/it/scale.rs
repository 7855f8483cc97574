//! The scorer pool scaled like a StatefulSet under an autoscaler, through two proxies that
//! find the scorers in DNS (a real DNS server in the test: the headless Service's SRV
//! records): 3 scorers to 5, then back to 3 (scale-in is SIGTERM, highest ordinal first,
//! the pod's records going once it has exited). Under bounded load: no request fails;
//! joining scorers warm their share before they take traffic; the models that move are the
//! ones rendezvous hashing says move; the pool hit ratio's dip and recovery are printed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use manymodels_models::Mix;
use manymodels_tests::dns::{DnsServer, Headless};
use manymodels_tests::load::{self, Answer, OpenLoop};
use manymodels_tests::{ProxyProcess, ScorerProcess, TempDir, free_port};
use serde_json::Value;

const MODELS: usize = 150;

/// One of the pool's first scorers: the pool is new, so there is nothing to warm (a
/// warm-up wait would be `warmup.ready_timeout` spent waiting for a push from proxies
/// that do not exist yet).
fn scorer(path: &str, port: u16) -> ScorerProcess {
    let sets = vec![
        format!("store.path={path}"),
        "warmup.ready_timeout=0s".to_string(),
    ];
    ScorerProcess::start_on(port, &sets, &[])
}

/// A joining scorer: started, but not waited for (it reports ready only after warming).
fn joining(path: &str, port: u16) -> ScorerProcess {
    let sets = vec![
        format!("store.path={path}"),
        "warmup.ready_timeout=20s".to_string(),
    ];
    ScorerProcess::spawn_on(port, &sets, &[])
}

fn endpoints(pods: &[(String, u16)]) -> Vec<(&str, SocketAddr)> {
    pods.iter()
        .map(|(pod, port)| (pod.as_str(), SocketAddr::from(([127, 0, 0, 1], *port))))
        .collect()
}

/// How many scorers `proxy` has in rotation.
async fn healthy(client: &reqwest::Client, proxy: &ProxyProcess) -> u64 {
    let Ok(response) = client
        .get(format!("{}/v2/health/ready", proxy.url))
        .send()
        .await
    else {
        return 0;
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["healthy_scorers"].as_u64().unwrap_or(0)
}

/// Waits until every proxy has `n` scorers in rotation; how long that took.
async fn until_healthy(client: &reqwest::Client, proxies: &[&ProxyProcess], n: u64) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for proxy in proxies {
            all &= healthy(client, proxy).await == n;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "proxies did not reach {n} healthy scorers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scorer that answered each model most often among `answers` (its owner then).
fn owners(answers: &[Answer]) -> HashMap<usize, String> {
    let mut counts: HashMap<usize, HashMap<String, usize>> = HashMap::new();
    for a in answers.iter().filter(|a| a.status == 200) {
        *counts
            .entry(a.model)
            .or_default()
            .entry(a.scorer.clone())
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(model, by)| {
            let owner = by.into_iter().max_by_key(|(_, n)| *n).unwrap().0;
            (model, owner)
        })
        .collect()
}

/// The pool hit ratio's dip after `event` and how long until a one-second window is back
/// within two points of the five seconds before it.
fn dip_and_recovery(answers: &[Answer], event: Instant) -> (f64, f64, Option<Duration>) {
    let ratio = |from: Instant, to: Instant| {
        let window: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .collect();
        let hits = window.iter().filter(|a| a.hit).count();
        (hits as f64 / window.len().max(1) as f64, window.len())
    };
    let (before, _) = ratio(event - Duration::from_secs(5), event);
    let windows: Vec<(Duration, f64)> = (0..300)
        .filter_map(|step| {
            let from = event + Duration::from_millis(100 * step);
            let (r, n) = ratio(from, from + Duration::from_secs(1));
            (n >= 20).then(|| (from + Duration::from_secs(1) - event, r))
        })
        .collect();
    let Some(lowest) = windows
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
    else {
        return (before, before, None);
    };
    let (low_index, (_, dip)) = (lowest.0, *lowest.1);
    let recovered = if dip >= before - 0.02 {
        Some(Duration::ZERO)
    } else {
        windows[low_index..]
            .iter()
            .find(|(_, r)| *r >= before - 0.02)
            .map(|(at, _)| *at)
    };
    (before, dip, recovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scorers_to_five_and_back_fail_no_request_and_move_only_their_share() {
    let store = TempDir::new("scale");
    manymodels_models::write_store(store.path(), MODELS, Mix::Tiny, 9).unwrap();
    let path = store.path().display().to_string();
    let dns = DnsServer::cluster();
    let service = Headless::new("mm-scorer", "default");
    let pods: Vec<(String, u16)> = (0..5)
        .map(|i| (format!("mm-scorer-{i}"), free_port()))
        .collect();
    let names: Vec<String> = pods
        .iter()
        .map(|(pod, port)| service.scorer_name(pod, *port))
        .collect();
    let mut scorers: Vec<ScorerProcess> = pods[..3]
        .iter()
        .map(|(_, port)| scorer(&path, *port))
        .collect();
    dns.publish(&service, &endpoints(&pods[..3]));
    let proxy_sets = ["stats.push_interval=1s"];
    let proxies = [
        dns.proxy(&service, 3, &proxy_sets),
        dns.proxy(&service, 3, &proxy_sets),
    ];
    let bodies = load::bodies(MODELS, Mix::Tiny, 9);
    let client = reqwest::Client::new();
    for proxy in &proxies {
        load::warm(&client, &proxy.url, &bodies).await;
    }

    // Bounded load: 150 requests a second over every model, alternating proxies, open
    // loop, for at most 90 s.
    let load = OpenLoop::start(
        client.clone(),
        proxies.iter().map(|p| p.url.clone()).collect(),
        bodies,
        Duration::from_micros(6_667),
        Duration::from_secs(90),
        |n| n * 37 % MODELS,
    );

    // Scale out: two pods start and enter DNS at once (publishNotReadyAddresses); the
    // proxies push them their share, they warm it, then report ready.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_out = load.snapshot();
    let out_at = Instant::now();
    for (_, port) in &pods[3..] {
        scorers.push(joining(&path, *port));
    }
    dns.publish(&service, &endpoints(&pods));
    let proxy_refs: Vec<&ProxyProcess> = proxies.iter().collect();
    let to_five = until_healthy(&client, &proxy_refs, 5).await;
    // Routing settles: answers from here on are the new placement.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let settled_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after_out: Vec<Answer> = load
        .snapshot()
        .into_iter()
        .filter(|a| a.at >= settled_at)
        .collect();

    // Scale in: highest ordinal first, one at a time; each pod's records go once it has
    // exited, as a deleted pod's do.
    let in_at = Instant::now();
    for i in [4usize, 3] {
        let mut leaving = scorers.remove(i);
        let status = tokio::task::spawn_blocking(move || leaving.terminate())
            .await
            .unwrap();
        assert!(status.success(), "scorer {i} exited with {status}");
        dns.publish(&service, &endpoints(&pods[..i]));
    }
    let to_three = until_healthy(&client, &proxy_refs, 3).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let answers = load.stop().await;

    // No request failed, through either proxy, at any point.
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );

    // The models that moved are the ones rendezvous hashing over the five names gives to
    // the new scorers; the ideal share is 2/5.
    let rank = |model: usize, scorers: &[String]| -> String {
        let id = manymodels_models::model_id(model);
        manymodels_policy::ranking::rank(&id, scorers.iter().map(String::as_str))[0].to_string()
    };
    let addr_of: HashMap<String, String> = names
        .iter()
        .zip(&pods)
        .map(|(name, (_, port))| (name.clone(), format!("127.0.0.1:{port}")))
        .collect();
    let (old, new) = (owners(&before_out), owners(&after_out));
    let mut moved = 0;
    let mut predicted = 0;
    let mut agree = 0;
    for model in 0..MODELS {
        let (Some(was), Some(is)) = (old.get(&model), new.get(&model)) else {
            continue;
        };
        let before = &addr_of[&rank(model, &names[..3])];
        let after = &addr_of[&rank(model, &names)];
        moved += usize::from(was != is);
        predicted += usize::from(before != after);
        agree += usize::from(is == after);
    }
    let seen = old.len().min(new.len());
    println!(
        "scale-out: {moved} of {seen} models moved; rendezvous predicts {predicted} ({:.0}%, ideal 40%); \
         {agree} now answered by their rendezvous owner; both proxies had 5 scorers in \
         rotation {to_five:?} after the records appeared (the joiners warmed first)",
        100.0 * predicted as f64 / seen as f64
    );
    assert!(
        seen >= MODELS * 9 / 10,
        "models seen before and after: {seen}"
    );
    assert!(
        moved.abs_diff(predicted) <= MODELS / 10,
        "{moved} models moved, rendezvous predicts {predicted}"
    );
    assert!(
        agree >= seen * 9 / 10,
        "{agree} of {seen} at their rendezvous owner"
    );
    let (before, dip, recovered) = dip_and_recovery(&answers, out_at);
    println!(
        "scale-out hit ratio: {before:.3} before, lowest 1 s window {dip:.3}, recovered after {recovered:?}"
    );
    let (before, dip, recovered) = dip_and_recovery(&answers, in_at);
    println!(
        "scale-in hit ratio: {before:.3} before, lowest 1 s window {dip:.3}, recovered after {recovered:?}; \
         both proxies at 3 scorers {to_three:?} after the last pod's records went"
    );
    println!("{} requests, none failed", answers.len());
}
