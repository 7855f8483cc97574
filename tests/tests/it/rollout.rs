//! A rolling restart the way a StatefulSet update does it: under steady load through the
//! proxy, each scorer in turn gets SIGTERM, exits 0 after draining, and a new one starts on
//! the same address and reports ready once it has warmed its share. No request fails, and
//! the pool hit ratio recovers within a bounded time. And the drain hand-off on its own: a
//! draining scorer keeps serving its hot models until their successors hold them.

use std::time::{Duration, Instant};

use manymodels_models::Mix;
use manymodels_tests::load::{self, Answer, OpenLoop};
use manymodels_tests::process::addrs;
use manymodels_tests::{ProxyProcess, ScorerProcess, TempDir, free_port, get_json};

const MODELS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_scorers_fails_no_request_and_the_hit_ratio_recovers() {
    let store = TempDir::new("rollout");
    manymodels_models::write_store(store.path(), MODELS, Mix::Tiny, 5).unwrap();
    let path = store.path().display().to_string();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let first_boot = vec![format!("store.path={path}")];
    let mut scorers: Vec<ScorerProcess> = ports
        .iter()
        .map(|&p| ScorerProcess::start_on(p, &first_boot, &[]))
        .collect();
    let addrs: Vec<String> = scorers.iter().map(|s| s.addr().to_string()).collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let proxy = ProxyProcess::start(&addr_refs, &["stats.push_interval=1s"]);
    let bodies = load::bodies(MODELS, Mix::Tiny, 5);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        load::warm(&client, &proxy.url, &bodies).await;
    }

    // Steady load: 100 requests a second over the 30 models, open loop, at most 60 s.
    let load = OpenLoop::start(
        client.clone(),
        vec![proxy.url.clone()],
        bodies,
        Duration::from_millis(10),
        Duration::from_secs(60),
        |n| n * 7 % MODELS,
    );

    // Restart the scorers one at a time, like a StatefulSet rolling update.
    let mut ready_at = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut old = scorers.remove(i);
        let status = tokio::task::spawn_blocking(move || old.terminate())
            .await
            .unwrap();
        assert!(
            status.success(),
            "scorer {i} exited with {status} after SIGTERM"
        );
        let sets = vec![
            format!("store.path={path}"),
            "warmup.ready_timeout=20s".to_string(),
        ];
        let started = Instant::now();
        let replacement = tokio::task::spawn_blocking(move || {
            let mut scorer = ScorerProcess::spawn_on(port, &sets, &[]);
            scorer.wait_ready(Duration::from_secs(25));
            scorer
        })
        .await
        .unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(15),
            "scorer {i} ready after {took:?}: warm-up, not the timeout"
        );
        ready_at.push(Instant::now());
        scorers.insert(i, replacement);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let answers = load.stop().await;
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(answers.len() > 800, "{} answers", answers.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    // Hit ratio in one-second windows after each restart: how long until it is back.
    for (i, ready) in ready_at.iter().enumerate() {
        let mut recovered = None;
        for second in 0..5u64 {
            let from = *ready + Duration::from_secs(second);
            let window: Vec<&Answer> = answers
                .iter()
                .filter(|a| a.at >= from && a.at < from + Duration::from_secs(1))
                .collect();
            let hits = window.iter().filter(|a| a.hit).count();
            if !window.is_empty() && hits as f64 / window.len() as f64 >= 0.9 {
                recovered = Some(second);
                break;
            }
        }
        eprintln!(
            "scorer {i}: pool hit ratio back to ≥ 0.9 within {recovered:?} s of its replacement being ready"
        );
        assert!(
            recovered.is_some(),
            "hit ratio did not recover within 5 s of restart {i}"
        );
    }
    // The worst one-second window of the whole rollout, for the record.
    let first = answers.iter().map(|a| a.at).min().unwrap();
    let end = answers.iter().map(|a| a.at).max().unwrap();
    let mut worst = 1.0f64;
    let mut from = first;
    while from + Duration::from_secs(1) <= end {
        let window: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.at >= from && a.at < from + Duration::from_secs(1))
            .collect();
        if !window.is_empty() {
            worst = worst.min(window.iter().filter(|a| a.hit).count() as f64 / window.len() as f64);
        }
        from += Duration::from_millis(250);
    }
    eprintln!(
        "worst one-second pool hit ratio during the rollout: {worst:.3}; {} requests, 0 failed",
        answers.len()
    );
    let last = ready_at[2];
    let tail: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at > last + Duration::from_secs(2))
        .collect();
    let ratio = tail.iter().filter(|a| a.hit).count() as f64 / tail.len() as f64;
    eprintln!(
        "hit ratio after the rollout: {ratio:.3} over {} requests",
        tail.len()
    );
    assert!(ratio >= 0.95, "{ratio}");
}

/// The drain hand-off: a scorer given SIGTERM leaves rotation at once, but the proxy keeps
/// sending it the requests for the models it holds until their next-ranked scorer holds
/// them (warmed in the background by those very requests), so no request for them meets a
/// cold load, during the drain or after the scorer exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_scorer_serves_its_hot_models_until_their_successors_hold_them() {
    let store = TempDir::new("handoff");
    manymodels_models::write_store(store.path(), MODELS, Mix::Tiny, 5).unwrap();
    let mut scorers: Vec<ScorerProcess> = (0..3)
        .map(|_| ScorerProcess::local(store.path(), &["shutdown.drain=4s"]))
        .collect();
    // No statistics push: it would warm the successors too, and the test could not tell
    // the hand-off from it. A health timeout no starved check reaches (a timed-out check
    // ends nothing, but a slow one delays the proxy seeing the drain).
    let proxy = ProxyProcess::start(
        &addrs(&scorers),
        &["stats.push_interval=0s", "health.timeout=2s"],
    );
    let bodies = load::bodies(MODELS, Mix::Tiny, 5);
    let client = reqwest::Client::new();
    let infer = |i: usize| load::send(&client, &proxy.url, i, &bodies[i]);
    // Every model loaded on its owner; the departing scorer's are the ones it owns.
    let departing = scorers[0].addr().to_string();
    let mut handed = Vec::new();
    for i in 0..MODELS {
        let answer = infer(i).await;
        assert_eq!(answer.status, 200);
        if answer.scorer == departing {
            handed.push(i);
        }
    }
    assert!(
        !handed.is_empty(),
        "{departing} owns none of {MODELS} models"
    );

    scorers[0].send_term();
    let out_of_rotation = Instant::now();
    loop {
        let ready = get_json(&client, &format!("{}/v2/health/ready", proxy.url)).await;
        if ready["healthy_scorers"] == 2 {
            break;
        }
        assert!(
            out_of_rotation.elapsed() < Duration::from_secs(3),
            "the draining scorer is still in rotation: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Rounds over its models every 100 ms until it exits (4 s of drain), then one more.
    let mut rounds: Vec<Vec<Answer>> = Vec::new();
    let status = loop {
        let exited = scorers[0].exited();
        let mut round = Vec::new();
        for &i in &handed {
            round.push(infer(i).await);
        }
        rounds.push(round);
        if let Some(status) = exited {
            break status;
        }
        assert!(rounds.len() < 150, "the draining scorer did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{departing} exited with {status}");
    for (r, round) in rounds.iter().enumerate() {
        for answer in round {
            let (i, scorer) = (answer.model, &answer.scorer);
            assert_eq!(answer.status, 200, "round {r}, model {i}");
            assert!(
                answer.hit,
                "round {r}: model {i} met a cold load on {scorer}"
            );
        }
    }
    // Out of rotation, the first request for each of its models still went to it: no
    // other scorer held them.
    assert!(
        rounds[0].iter().all(|a| a.scorer == departing),
        "first round after leaving rotation: {:?}",
        rounds[0]
    );
    // While it still served (two rounds before it was seen gone), its successors took all
    // of them over: the hand-off ends once they hold the models, not at the exit.
    assert!(
        rounds[..rounds.len().saturating_sub(2)]
            .iter()
            .any(|round| round.iter().all(|a| a.scorer != departing)),
        "the draining scorer kept its models until it exited: {rounds:?}"
    );
    // After it exited, its successors served them, from memory.
    let last = rounds.last().unwrap();
    assert!(
        last.iter().all(|a| a.scorer != departing),
        "after the exit: {last:?}"
    );
    let metrics = proxy.metrics().await;
    let drain_routes = metrics.get("mm_proxy_drain_routes_total");
    assert!(
        drain_routes >= handed.len() as f64,
        "{drain_routes} requests sent to the draining scorer for {} models",
        handed.len()
    );
    eprintln!(
        "drain hand-off: {} models over {} rounds, {drain_routes} requests served by the draining scorer, 0 cold",
        handed.len(),
        rounds.len()
    );
}
