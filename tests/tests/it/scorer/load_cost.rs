//! What a load costs the cache policy: the load's own work, neither the time it queued for
//! a load slot nor the wall time it took on a busy machine.

use std::time::Instant;

use manymodels_models::Spec;
use manymodels_tests::{
    ScorerProcess, TempDir, demo_reference, get_json, infer_body, post_json, root, scrape,
    write_model,
};
use serde_json::json;

/// A model's load cost (what the cache policy weighs) is the load itself, not the time it
/// queued behind other loads: with one load slot and every demo model asked for at once,
/// the load times the cache explains add up to the load-duration histogram's sum.
#[tokio::test]
async fn load_cost_excludes_time_queued_for_a_load_slot() {
    let scorer = ScorerProcess::local(
        &root().join("models/demo"),
        &["cache.max_concurrent_loads=1"],
    );
    let client = reqwest::Client::new();
    let references = demo_reference();
    let burst = Instant::now();
    let requests = references.iter().map(|reference| {
        let client = client.clone();
        let url = format!(
            "{}/v2/models/{}/infer",
            scorer.url,
            reference["id"].as_str().unwrap()
        );
        let body = infer_body(reference);
        async move { post_json(&client, &url, &body).await }
    });
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
    }
    let wall = burst.elapsed().as_secs_f64();
    let explain = get_json(&client, &format!("{}/v2/mm/cache", scorer.url)).await;
    let resident = explain["cache"]["resident"].as_array().unwrap();
    assert_eq!(resident.len(), references.len(), "every demo model fits");
    let explained: f64 = resident
        .iter()
        .map(|r| r["load_seconds"].as_f64().unwrap())
        .sum();
    let measured = scorer
        .metrics()
        .await
        .get("mm_scorer_model_load_duration_seconds_sum");
    assert!(measured > 0.0);
    // One slot: the loads ran one after another, so their own costs add up to less than
    // the burst took. Counting each one's wait for the slot would add up to far more. A
    // cost is CPU time plus the read, so it is at most the load's own wall time.
    assert!(
        explained <= wall,
        "explained load seconds {explained:.4} exceed the {wall:.4} s the burst took"
    );
    assert!(
        explained > 0.0 && explained <= measured + 1e-3,
        "explained load seconds {explained:.4} against {measured:.4} measured loading"
    );
}

/// A load's cost is the work it takes (its thread's CPU time plus the store read), not its
/// wall time: loaded again while four threads spin on this machine's cores, a forest's
/// load takes far longer (its thread runs at nice +10) but costs about the same.
#[tokio::test]
async fn load_cost_is_cpu_time_not_wall_time_under_contention() {
    let store = TempDir::new("cost");
    let model = manymodels_models::build(&Spec::Forest {
        features: 16,
        trees: 60,
        depth: 11,
        seed: 77,
    });
    write_model(store.path(), "forest", 1, &model.bytes).unwrap();
    let scorer = ScorerProcess::local(store.path(), &[]);
    let client = reqwest::Client::new();
    let load = |client: reqwest::Client, url: String| async move {
        let before = scrape(&url)
            .await
            .get("mm_scorer_model_load_duration_seconds_sum");
        let (status, _) = post_json(
            &client,
            &format!("{url}/v2/repository/models/forest/load"),
            &json!({}),
        )
        .await;
        assert_eq!(status, 200);
        let wall = scrape(&url)
            .await
            .get("mm_scorer_model_load_duration_seconds_sum")
            - before;
        let explain = get_json(&client, &format!("{url}/v2/mm/cache")).await;
        let cost = explain["cache"]["resident"][0]["load_seconds"]
            .as_f64()
            .unwrap();
        let (status, _) = post_json(
            &client,
            &format!("{url}/v2/repository/models/forest/unload"),
            &json!({}),
        )
        .await;
        assert_eq!(status, 200);
        (cost, wall)
    };
    let mut alone = Vec::new();
    for _ in 0..3 {
        alone.push(load(client.clone(), scorer.url.clone()).await);
    }
    // Contention is the machine's to give: with other work on the cores (a parallel test
    // run), one load may not be slowed by the spinners. Up to four loads are tried; the
    // first one the spinners slowed is the one judged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    let mut busy = Vec::new();
    for _ in 0..4 {
        let (cost, wall) = load(client.clone(), scorer.url.clone()).await;
        busy.push((cost, wall));
        if wall > 1.5 * cost {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    let (busy_cost, busy_wall) = *busy.last().expect("at least one load");
    let cost = alone.iter().map(|a| a.0).fold(f64::MAX, f64::min);
    let cost_max = alone.iter().map(|a| a.0).fold(0.0, f64::max);
    eprintln!("alone (cost, wall): {alone:?}; busy: {busy:?}");
    assert!(
        busy_wall > 1.5 * busy_cost,
        "the spinners should have slowed one of the loads: {busy:?} (cost, wall)"
    );
    assert!(
        busy_cost < 2.0 * cost_max + 0.005,
        "cost grew with contention: {busy_cost:.4} against {cost:.4}-{cost_max:.4} alone"
    );
}
