//! The pool-wide cache policy on real processes: scan resistance and the explain view of
//! one scorer, warm-up from a statistics push (bounded, readiness waits for it), a
//! restarted scorer warming its share before it takes traffic, and two proxies feeding
//! the same scorers.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use manymodels_models::Mix;
use manymodels_tests::http::header;
use manymodels_tests::process::addrs;
use manymodels_tests::{ProxyProcess, ScorerProcess, TempDir, free_port, get_json};
use serde_json::{Value, json};

const MODELS: usize = 60;

fn store() -> TempDir {
    let dir = TempDir::new("policy-store");
    manymodels_models::write_store(dir.path(), MODELS, Mix::Tiny, 11).unwrap();
    dir
}

fn id(i: usize) -> String {
    manymodels_models::model_id(i)
}

fn body(i: usize) -> Value {
    manymodels_tests::load::body(i, Mix::Tiny, 11)
}

/// Scores model `i` at `base`; returns (scorer, x-mm-cache).
async fn score(client: &reqwest::Client, base: &str, i: usize) -> (String, String) {
    let response = client
        .post(format!("{base}/v2/models/{}/infer", id(i)))
        .json(&body(i))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "model {i}");
    (
        header(&response, "x-mm-scorer"),
        header(&response, "x-mm-cache"),
    )
}

async fn resident(client: &reqwest::Client, scorer: &str) -> BTreeSet<String> {
    let explain = get_json(client, &format!("{scorer}/v2/mm/cache")).await;
    explain["cache"]["resident"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap().to_string())
        .collect()
}

/// The memory one tiny model is charged, measured on a scratch scorer.
async fn model_weight(store: &Path) -> u64 {
    let scorer = ScorerProcess::local(store, &[]);
    let client = reqwest::Client::new();
    for i in 0..4 {
        score(&client, &scorer.url, i).await;
    }
    (scorer.metrics().await.get("mm_scorer_resident_bytes") / 4.0) as u64
}

async fn push(
    client: &reqwest::Client,
    scorer: &str,
    proxy: &str,
    models: &[(String, f64)],
) -> Value {
    let response = client
        .put(format!("{scorer}/v2/mm/stats"))
        .json(&json!({ "proxy": proxy, "models": models }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_scan_passes_through_a_real_scorer_without_flushing_the_hot_set() {
    let store = store();
    let weight = model_weight(store.path()).await;
    // Room for about eight models. Frequency alone orders the residents here: load times
    // measured on a busy test machine vary several-fold between identical tiny models, and
    // the cost term has its own tests (policy crate, `size_and_load_cost_change_decisions`).
    let budget = weight * 17 / 2;
    let scorer = ScorerProcess::local(
        store.path(),
        &[&format!("cache.budget={budget}"), "policy.size_weight=0"],
    );
    let client = reqwest::Client::new();
    for _ in 0..10 {
        for i in 0..5 {
            score(&client, &scorer.url, i).await;
        }
    }
    // A batch job touches 40 cold models once each.
    for i in 10..50 {
        let (_, cache) = score(&client, &scorer.url, i).await;
        assert_eq!(cache, "miss");
    }
    for i in 0..5 {
        let (_, cache) = score(&client, &scorer.url, i).await;
        assert_eq!(cache, "hit", "hot model {i} was flushed by the scan");
    }
    let explain = get_json(&client, &format!("{}/v2/mm/cache", scorer.url)).await;
    let cache = &explain["cache"];
    assert!(cache["resident_bytes"].as_u64().unwrap() <= budget);
    let resident = cache["resident"].as_array().unwrap();
    for entry in resident {
        assert!(entry["bytes"].as_u64().unwrap() > 0);
        assert!(entry["priority"].as_f64().unwrap().is_finite());
        assert!(entry["idle_seconds"].as_f64().unwrap() >= 0.0);
    }
    // Lowest priority first: the hot models sit at the end.
    let last: BTreeSet<String> = resident[resident.len() - 5..]
        .iter()
        .map(|r| r["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(last, (0..5).map(id).collect::<BTreeSet<_>>());
    // Scanned models were served, then dropped: refused outright, or displaced by a
    // later scanned model in the little room the hot set leaves. No hot model ever left.
    let evictions = cache["evictions"].as_array().unwrap();
    let hot: BTreeSet<String> = (0..5).map(id).collect();
    assert!(
        evictions
            .iter()
            .all(|e| !hot.contains(e["model"].as_str().unwrap())),
        "a hot model was evicted: {evictions:?}"
    );
    let metrics = scorer.metrics().await;
    let dropped = metrics.get("mm_scorer_cache_evictions_total{reason=\"not_admitted\"}")
        + metrics.get("mm_scorer_cache_evictions_total{reason=\"capacity\"}");
    assert!(dropped >= 35.0, "{dropped}");
    let loaded = metrics.get("mm_scorer_loaded_bytes_total");
    assert!(loaded >= 45.0 * weight as f64 * 0.8, "{loaded}");
}

#[tokio::test]
async fn a_statistics_push_warms_the_hottest_models_up_to_the_bound_before_ready() {
    let store = store();
    let weight = model_weight(store.path()).await;
    let budget = weight * 40;
    let port = free_port();
    let sets = [
        format!("store.path={}", store.path().display()),
        format!("cache.budget={budget}"),
        "warmup.ready_timeout=60s".to_string(),
        "warmup.max_fraction=0.15".to_string(), // six models' worth
        "warmup.concurrency=2".to_string(),
    ];
    let mut scorer = ScorerProcess::spawn_on(port, &sets, &[]);
    let client = reqwest::Client::new();
    let ready = format!("{}/v2/health/ready", scorer.url);
    let started = Instant::now();
    let status = loop {
        if let Ok(r) = client.get(&ready).send().await {
            break r.status().as_u16();
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "not ready before its hot share is warm");
    let report: Vec<(String, f64)> = (0..30).map(|i| (id(i), 100.0 - i as f64)).collect();
    push(&client, &scorer.url, "proxy-a", &report).await;
    scorer.wait_ready(Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ready came from warm-up, not the timeout"
    );
    let warm = resident(&client, &scorer.url).await;
    // Loads stop once 15% of the budget is spent; with two at once the last pair may
    // both finish.
    let explain = get_json(&client, &format!("{}/v2/mm/cache", scorer.url)).await;
    let largest = explain["cache"]["resident"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    let spent = explain["cache"]["resident_bytes"].as_u64().unwrap();
    assert!(
        spent >= budget * 15 / 100 && spent < budget * 15 / 100 + 2 * largest,
        "warm-up spent {spent} of a {} bound: {warm:?}",
        budget * 15 / 100
    );
    assert!(warm.len() < 30, "bounded by warmup.max_fraction: {warm:?}");
    let hottest: BTreeSet<String> = (0..8).map(id).collect();
    assert!(
        warm.is_subset(&hottest),
        "warmed the hottest first: {warm:?}"
    );
    assert!(warm.contains(&id(0)) && warm.contains(&id(1)));
    let metrics = scorer.metrics().await;
    assert_eq!(
        metrics.get("mm_scorer_warmup_loads_total"),
        warm.len() as f64
    );
    // The warmed models answer from memory.
    let (_, cache) = score(&client, &scorer.url, 0).await;
    assert_eq!(cache, "hit");
}

#[tokio::test]
async fn a_restarted_scorer_warms_its_share_before_it_takes_traffic() {
    let store = store();
    let path = store.path().display().to_string();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut scorers: Vec<ScorerProcess> = ports
        .iter()
        .map(|&p| ScorerProcess::start_on(p, &[format!("store.path={path}")], &[]))
        .collect();
    let addrs: Vec<String> = scorers.iter().map(|s| s.addr().to_string()).collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let proxy = ProxyProcess::start(&addr_refs, &["stats.push_interval=1s"]);
    let client = reqwest::Client::new();
    let mut owner = std::collections::HashMap::new();
    for round in 0..4 {
        for i in 0..30 {
            let (scorer, _) = score(&client, &proxy.url, i).await;
            if round == 3 {
                owner.insert(i, scorer);
            }
        }
    }
    // Restart the scorer that serves the most models (ports are random, so the split is).
    let victim = (0..3)
        .max_by_key(|&s| owner.values().filter(|a| **a == addrs[s]).count())
        .unwrap();
    let share: Vec<usize> = (0..30).filter(|i| owner[i] == addrs[victim]).collect();
    assert!(share.len() >= 4, "{owner:?}");
    scorers[victim].kill();
    // Its models move to their next scorer meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &i in &share {
        let (scorer, _) = score(&client, &proxy.url, i).await;
        assert_ne!(scorer, addrs[victim]);
    }
    // The replacement starts cold and waits (up to 60 s) for the proxy's push.
    let started = Instant::now();
    let mut replacement = ScorerProcess::spawn_on(
        ports[victim],
        &[
            format!("store.path={path}"),
            "warmup.ready_timeout=60s".into(),
        ],
        &[],
    );
    replacement.wait_ready(Duration::from_secs(20));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "ready after {took:?}");
    let warm = resident(&client, &replacement.url).await;
    for &i in &share {
        assert!(warm.contains(&id(i)), "{} not warmed: {warm:?}", id(i));
    }
    // Once the proxy sees it ready, its models come back to it, already hot.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = share[0];
    loop {
        let (scorer, cache) = score(&client, &proxy.url, first).await;
        if scorer == addrs[victim] {
            assert_eq!(cache, "hit");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never returned to the restarted scorer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for &i in &share {
        let (scorer, cache) = score(&client, &proxy.url, i).await;
        assert_eq!(
            (scorer.as_str(), cache.as_str()),
            (addrs[victim].as_str(), "hit")
        );
    }
    let metrics = replacement.metrics().await;
    assert!(metrics.get("mm_scorer_warmup_loads_total") >= share.len() as f64);
    assert_eq!(
        metrics.get("mm_scorer_cache_misses_total"),
        0.0,
        "no request to the restarted scorer found its model cold"
    );
    assert_eq!(
        metrics.get("mm_scorer_model_loads_total"),
        metrics.get("mm_scorer_warmup_loads_total"),
        "every load on the restarted scorer was a warm-up"
    );
}

#[tokio::test]
async fn two_proxies_feed_the_same_scorers_without_double_counting() {
    let store = store();
    let scorers: Vec<ScorerProcess> = (0..2)
        .map(|_| ScorerProcess::local(store.path(), &[]))
        .collect();
    let addrs = addrs(&scorers);
    // Counts decay with traffic, and rates are converted with each proxy's measured request
    // rate, which stands still once traffic stops: after the burst the rates are fixed.
    let sets = ["stats.push_interval=1s"];
    let a = ProxyProcess::start(&addrs, &sets);
    let b = ProxyProcess::start(&addrs, &sets);
    let client = reqwest::Client::new();
    for _ in 0..30 {
        score(&client, &a.url, 0).await;
    }
    for _ in 0..20 {
        score(&client, &b.url, 0).await;
    }
    for _ in 0..10 {
        score(&client, &a.url, 1).await;
    }
    // Two ticks: each proxy has measured its burst's rate and stands still.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pool_a = get_json(&client, &format!("{}/v2/mm/pool", a.url)).await;
    let pool_b = get_json(&client, &format!("{}/v2/mm/pool", b.url)).await;
    let (a0, b0, a1) = (
        rate_at(&pool_a, &id(0)),
        rate_at(&pool_b, &id(0)),
        rate_at(&pool_a, &id(1)),
    );
    assert!(a0 > 0.0 && b0 > 0.0 && a1 > 0.0);
    // On one proxy, rates are proportional to requests: 30 of model 0, 10 of model 1.
    assert!(
        (a0 / a1 - 3.0).abs() < 0.05,
        "30 vs 10 requests: {a0} / {a1}"
    );
    let owner = pool_a["hottest"].as_array().unwrap()[0]["owner"]
        .as_str()
        .unwrap()
        .to_string();
    let scorer = scorers.iter().find(|s| s.addr() == owner).unwrap();
    // Several pushes from each proxy: the scorer keeps the latest of each and sums them.
    // Compared once the proxies' rates stood still across a window with a push in it (a
    // rate is remeasured at most once a second, so the last one can come late).
    let rates = |pool_a: &Value, pool_b: &Value| {
        (
            rate_at(pool_a, &id(0)),
            rate_at(pool_b, &id(0)),
            rate_at(pool_a, &id(1)),
        )
    };
    let pools = || async {
        (
            get_json(&client, &format!("{}/v2/mm/pool", a.url)).await,
            get_json(&client, &format!("{}/v2/mm/pool", b.url)).await,
        )
    };
    let mut stood_still = false;
    for _ in 0..10 {
        let (pool_a, pool_b) = pools().await;
        let before = rates(&pool_a, &pool_b);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let explain = get_json(&client, &format!("{}/v2/mm/cache", scorer.url)).await;
        let (pool_a, pool_b) = pools().await;
        let (a0, b0, a1) = rates(&pool_a, &pool_b);
        if (a0, b0, a1) != before {
            continue;
        }
        assert_eq!(explain["cache"]["proxies"], 2);
        let combined = |model: &str| rate_at(&explain["cache"], model);
        let got = combined(&id(0));
        assert!((got / (a0 + b0) - 1.0).abs() < 0.02, "{got} vs {a0} + {b0}");
        if rank_first(&id(1), &addrs) == owner {
            let got = combined(&id(1));
            assert!((got / a1 - 1.0).abs() < 0.02, "{got} vs {a1}");
        }
        stood_still = true;
        break;
    }
    assert!(stood_still, "the proxies' rates never stood still");
}

/// The rate a view (`/v2/mm/pool`, or a scorer's `cache` explain) gives `model` among its
/// hottest, 0 when it is not listed.
fn rate_at(view: &Value, model: &str) -> f64 {
    view["hottest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .and_then(|m| m["rate"].as_f64())
        .unwrap_or(0.0)
}

fn rank_first(model: &str, scorers: &[&str]) -> String {
    manymodels_policy::ranking::rank(model, scorers.iter().copied())[0].to_string()
}
