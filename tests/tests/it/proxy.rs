//! `mm-proxy` in front of three `mm-scorer` processes on 127.0.0.1: affinity, spread,
//! scorer failure and return, cold bursts, auth, bad paths, the Azure ML route, a ZipMap
//! classifier.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use manymodels_models::Mix;
use manymodels_tests::process::{Pool, metric_total};
use manymodels_tests::{
    ProxyProcess, ScorerProcess, TOLERANCE, TempDir, assert_outputs_match, demo_reference,
    generated_rows, infer_body, post_via, root, rows_body,
};
use serde_json::{Value, json};

fn pool(store: &std::path::Path, proxy_sets: &[&str]) -> Pool {
    Pool::local(store, 3, &[], proxy_sets)
}

#[tokio::test]
async fn repeated_requests_for_a_model_reach_one_scorer() {
    let pool = pool(&root().join("models/demo"), &[]);
    let client = reqwest::Client::new();
    let mut used = BTreeSet::new();
    for reference in demo_reference() {
        let id = reference["id"].as_str().unwrap();
        let mut scorers = BTreeSet::new();
        for _ in 0..10 {
            let (status, scorer, body) = post_via(
                &client,
                &format!("{}/v2/models/{id}/infer", pool.proxy.url),
                &infer_body(&reference),
            )
            .await;
            assert_eq!(status, 200, "{id}: {body}");
            assert_outputs_match(&body, &reference, TOLERANCE);
            scorers.insert(scorer);
        }
        assert_eq!(scorers.len(), 1, "{id} was served by {scorers:?}");
        used.extend(scorers);
    }
    assert!(
        used.len() >= 2,
        "eight models should not all land on one scorer: {used:?}"
    );
    // Each model was loaded exactly once in the whole pool.
    assert_eq!(
        metric_total(&pool.scorers, "mm_scorer_model_loads_total").await,
        demo_reference().len() as f64
    );
}

#[tokio::test]
async fn thousand_models_spread_evenly_across_three_scorers() {
    let store = TempDir::new("spread");
    manymodels_models::write_store(store.path(), 1000, Mix::Tiny, 3).unwrap();
    let pool = pool(store.path(), &[]);
    let client = reqwest::Client::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..1000 {
        let spec = manymodels_models::spec_for(i, Mix::Tiny, 3);
        let rows = generated_rows(spec.features(), 1, i as u64);
        let id = manymodels_models::model_id(i);
        let (status, scorer, body) = post_via(
            &client,
            &format!("{}/v2/models/{id}/infer", pool.proxy.url),
            &rows_body(&rows),
        )
        .await;
        assert_eq!(status, 200, "{id}: {body}");
        *counts.entry(scorer).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (scorer, count) in &counts {
        assert!(
            (250..=417).contains(count),
            "{scorer} got {count} of 1000 models (±25% of 333): {counts:?}"
        );
    }
}

/// Four clients score 30 models continuously; one scorer is killed (SIGKILL) a second in.
/// Requests to it are retried on the next-ranked scorer, so at most the requests that
/// scorer was answering at that instant may fail. Its models then live on their
/// next-ranked scorers, and when it comes back on the same address it takes them back.
#[tokio::test]
async fn a_killed_scorer_fails_no_request_beyond_those_in_flight_and_returns() {
    let store = TempDir::new("kill");
    manymodels_models::write_store(store.path(), 30, Mix::Tiny, 5).unwrap();
    let mut pool = pool(store.path(), &[]);
    let client = reqwest::Client::new();
    let proxy_url = pool.proxy.url.clone();
    let bodies: Arc<Vec<(String, Value)>> = Arc::new(
        (0..30)
            .map(|i| {
                let spec = manymodels_models::spec_for(i, Mix::Tiny, 5);
                (
                    manymodels_models::model_id(i),
                    rows_body(&generated_rows(spec.features(), 1, i as u64)),
                )
            })
            .collect(),
    );
    // Where each model lives before the failure.
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for (id, body) in bodies.iter() {
        let (status, scorer, _) =
            post_via(&client, &format!("{proxy_url}/v2/models/{id}/infer"), body).await;
        assert_eq!(status, 200);
        home.insert(id.clone(), scorer);
    }
    let victim = pool.scorers[1].addr().to_string();
    let victim_port: u16 = victim.rsplit(':').next().unwrap().parse().unwrap();
    let victims_models: Vec<String> = home
        .iter()
        .filter(|(_, s)| **s == victim)
        .map(|(m, _)| m.clone())
        .collect();
    assert!(
        !victims_models.is_empty(),
        "the victim should own some of 30 models"
    );

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(4);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (client, bodies, ok, failed, url) = (
                client.clone(),
                bodies.clone(),
                ok.clone(),
                failed.clone(),
                proxy_url.clone(),
            );
            tokio::spawn(async move {
                let mut i = c;
                while Instant::now() < deadline {
                    let (id, body) = &bodies[i % bodies.len()];
                    i += 4;
                    match client
                        .post(format!("{url}/v2/models/{id}/infer"))
                        .json(body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pool.scorers[1].kill();
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("under load with one of three scorers killed: {ok} ok, {failed} failed");
    assert!(ok > 100, "the load loop should have made progress: {ok}");
    assert!(
        failed <= 4,
        "at most the 4 requests in flight may fail, {failed} did"
    );
    let metrics = pool.proxy.metrics().await;
    eprintln!("proxy retries: {}", metrics.get("mm_proxy_retries_total"));

    // Its models moved to the surviving scorers.
    for id in &victims_models {
        let body = &bodies.iter().find(|(m, _)| m == id).unwrap().1;
        let (status, scorer, _) =
            post_via(&client, &format!("{proxy_url}/v2/models/{id}/infer"), body).await;
        assert_eq!(status, 200);
        assert_ne!(scorer, victim, "{id} still routed to the dead scorer");
    }
    // Restart it on the same address: it takes its share back once healthy.
    let restarted = ScorerProcess::start_on(
        victim_port,
        &[format!("store.path={}", store.path().display())],
        &[],
    );
    let started = Instant::now();
    let id = &victims_models[0];
    let body = &bodies.iter().find(|(m, _)| m == id).unwrap().1;
    loop {
        let (status, scorer, _) =
            post_via(&client, &format!("{proxy_url}/v2/models/{id}/infer"), body).await;
        assert_eq!(status, 200);
        if scorer == victim {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{id} did not return to its restarted scorer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(restarted);
}

#[tokio::test]
async fn a_burst_for_a_cold_model_causes_one_load_in_the_pool() {
    // Replication (a second load once the model is hot and busy) is tested on its own.
    let pool = pool(
        &root().join("models/demo"),
        &["replication.threshold=100000"],
    );
    let client = reqwest::Client::new();
    let reference = demo_reference()
        .into_iter()
        .find(|r| r["id"] == "forest-1mb")
        .unwrap();
    let body = infer_body(&reference);
    let url = format!("{}/v2/models/forest-1mb/infer", pool.proxy.url);
    let requests = (0..200).map(|_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { post_via(&client, &url, &body).await }
    });
    let results = futures::future::join_all(requests).await;
    let scorers: BTreeSet<&String> = results.iter().map(|(_, s, _)| s).collect();
    for (status, _, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(
        metric_total(&pool.scorers, "mm_scorer_model_loads_total").await,
        1.0,
        "served by {scorers:?}\n{}",
        pool.proxy.logs()
    );
}

#[tokio::test]
async fn bearer_keys_guard_scoring_and_admin_routes() {
    let pool = pool(
        &root().join("models/demo"),
        &["auth.api_keys=k-old,k-new", "auth.admin_keys=admin-1"],
    );
    let client = reqwest::Client::new();
    let reference = &demo_reference()[0];
    let id = reference["id"].as_str().unwrap();
    let url = format!("{}/v2/models/{id}/infer", pool.proxy.url);
    let send = |key: Option<&str>, url: String| {
        let mut request = client.post(url).json(&infer_body(reference));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = send(None, url.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("bearer"));
    assert_eq!(send(Some("wrong"), url.clone()).await.0, 401);
    assert_eq!(send(Some("k-old"), url.clone()).await.0, 200);
    assert_eq!(send(Some("k-new"), url.clone()).await.0, 200);
    let load = format!("{}/v2/repository/models/{id}/load", pool.proxy.url);
    assert_eq!(
        send(Some("k-new"), load.clone()).await.0,
        401,
        "API keys are not admin keys"
    );
    assert_eq!(send(Some("admin-1"), load).await.0, 200);
    // Health stays open for probes; unauthenticated requests never reached a scorer.
    let ready = client
        .get(format!("{}/v2/health/ready", pool.proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let infers = metric_total(
        &pool.scorers,
        "mm_scorer_requests_total{code=\"200\",route=\"infer\"}",
    )
    .await;
    assert_eq!(infers, 2.0);
}

#[tokio::test]
async fn bad_paths_are_rejected_without_touching_a_scorer() {
    let pool = pool(&root().join("models/demo"), &["http.max_body=1KiB"]);
    let client = reqwest::Client::new();
    let good = json!({"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]});
    let big = json!({"inputs":[{"name":"input","shape":[100,10],"datatype":"FP32","data":vec![1.0f32; 1000]}]});
    for (path, body, status) in [
        ("/v2/models/..%2F..%2Fetc%2Fpasswd/infer", &good, 400),
        ("/v2/models//infer", &good, 400),
        ("/v2/models/.hidden/infer", &good, 400),
        ("/v2/models/a/b/infer", &good, 404),
        // One version rule on both sides (the contract's): the proxy refuses what the
        // scorer would, before choosing one.
        ("/v2/models/linear-small/versions/01/infer", &good, 400),
        ("/v2/models/linear-small/versions/0/infer", &good, 400),
        ("/not/a/route", &good, 404),
        ("/v2/models/linear-small/infer", &big, 413),
        ("/", &good, 400),
    ] {
        let (code, _, body) = post_via(&client, &format!("{}{path}", pool.proxy.url), body).await;
        assert_eq!(code, status, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    for scorer in &pool.scorers {
        let metrics = scorer.metrics().await;
        let touched: f64 = metrics
            .0
            .iter()
            // The proxy's own statistics pushes and shadow judge are not client requests.
            .filter(|(n, _)| {
                n.starts_with("mm_scorer_requests_total")
                    && !n.contains("route=\"stats\"")
                    && !n.contains("route=\"shadows\"")
            })
            .map(|(_, v)| v)
            .sum();
        assert_eq!(touched, 0.0, "a rejected request reached {}", scorer.url);
    }
    // The proxy still serves.
    let (status, _, _) = post_via(
        &client,
        &format!("{}/v2/models/linear-small/infer", pool.proxy.url),
        &good,
    )
    .await;
    assert_eq!(status, 200);
}

/// `GET /v2` and `POST /v2/repository/index` name no model: they reach a scorer but are
/// neither counted in the pool statistics (once as model "") nor warmed.
#[tokio::test]
async fn requests_without_a_model_are_not_counted_as_one() {
    let pool = pool(&root().join("models/demo"), &[]);
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let metadata = client
            .get(format!("{}/v2", pool.proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(metadata.status(), 200);
        let (status, _) = manymodels_tests::post_json(
            &client,
            &format!("{}/v2/repository/index", pool.proxy.url),
            &json!({}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let view = manymodels_tests::get_json(&client, &format!("{}/v2/mm/pool", pool.proxy.url)).await;
    assert_eq!(view["requests"], 0, "{view}");
    assert_eq!(view["hottest"], json!([]), "{view}");
    let reference = &demo_reference()[0];
    let id = reference["id"].as_str().unwrap();
    let (status, _, _) = post_via(
        &client,
        &format!("{}/v2/models/{id}/infer", pool.proxy.url),
        &infer_body(reference),
    )
    .await;
    assert_eq!(status, 200);
    let view = manymodels_tests::get_json(&client, &format!("{}/v2/mm/pool", pool.proxy.url)).await;
    assert_eq!(view["requests"], 1, "{view}");
    assert_eq!(view["hottest"][0]["model"], id, "{view}");
}

#[tokio::test]
async fn the_azure_ml_scoring_route_scores_and_echoes_request_ids() {
    let pool = pool(&root().join("models/demo"), &[]);
    let client = reqwest::Client::new();
    let reference = demo_reference()
        .into_iter()
        .find(|r| r["id"] == "logistic-churn")
        .unwrap();
    let response = client
        .post(format!("{}/", pool.proxy.url))
        .header("x-mm-model", "logistic-churn")
        .header("azureml-model-deployment", "blue")
        .header("x-request-id", "req-123")
        .header("x-ms-client-request-id", "client-456")
        .json(&infer_body(&reference))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-123");
    assert_eq!(response.headers()["x-ms-client-request-id"], "client-456");
    let body: Value = response.json().await.unwrap();
    assert_outputs_match(&body, &reference, TOLERANCE);
}

#[tokio::test]
async fn sigterm_stops_the_proxy_cleanly() {
    let mut pool = pool(&root().join("models/demo"), &[]);
    let status = pool.proxy.terminate();
    assert!(
        status.success(),
        "mm-proxy exited with {status}:\n{}",
        pool.proxy.logs()
    );
}

/// A model above `replication.threshold` requests per second is warmed on its
/// second-ranked scorer and then served by both, with one load on each.
#[tokio::test]
async fn a_hot_model_is_replicated_to_a_second_scorer() {
    let pool = pool(&root().join("models/demo"), &["replication.threshold=20"]);
    let client = reqwest::Client::new();
    let reference = demo_reference()
        .into_iter()
        .find(|r| r["id"] == "gbm-store")
        .unwrap();
    let url = format!("{}/v2/models/gbm-store/infer", pool.proxy.url);
    let body = infer_body(&reference);
    let mut served_by: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let batch = (0..8).map(|_| post_via(&client, &url, &body));
        for (status, scorer, answer) in futures::future::join_all(batch).await {
            assert_eq!(status, 200, "{answer}");
            assert_outputs_match(&answer, &reference, TOLERANCE);
            *served_by.entry(scorer).or_default() += 1;
        }
        if served_by.len() == 2 && served_by.values().all(|n| *n >= 20) {
            break;
        }
    }
    assert_eq!(
        served_by.len(),
        2,
        "a hot model should be served by two scorers: {served_by:?}"
    );
    assert!(
        served_by.values().all(|n| *n >= 20),
        "traffic should be spread over both: {served_by:?}"
    );
    assert_eq!(
        metric_total(&pool.scorers, "mm_scorer_model_loads_total").await,
        2.0,
        "one load on each of the two scorers"
    );
    assert!(
        pool.proxy
            .metrics()
            .await
            .get("mm_proxy_warm_triggers_total")
            >= 1.0
    );
}

/// With a tight in-flight limit, concurrent requests for a model that only one scorer
/// holds stay there: spilling them would make them wait for a cold load elsewhere (and cost
/// a load per scorer). Sustained load is what replication is for; spilling between scorers
/// that both hold a model is covered by `choice`'s unit tests.
#[tokio::test]
async fn overload_never_spills_a_model_to_a_scorer_that_would_have_to_load_it() {
    let pool = pool(
        &root().join("models/demo"),
        &[
            "routing.min_inflight=1",
            "routing.load_factor=1.0",
            "replication.threshold=100000",
        ],
    );
    let client = reqwest::Client::new();
    let reference = demo_reference()
        .into_iter()
        .find(|r| r["id"] == "forest-1mb")
        .unwrap();
    let url = format!("{}/v2/models/forest-1mb/infer", pool.proxy.url);
    let body = infer_body(&reference);
    let (status, first, _) = post_via(&client, &url, &body).await;
    assert_eq!(status, 200);
    for _ in 0..20 {
        let batch = (0..8).map(|_| post_via(&client, &url, &body));
        for (status, scorer, answer) in futures::future::join_all(batch).await {
            assert_eq!(status, 200, "{answer}");
            assert_outputs_match(&answer, &reference, TOLERANCE);
            assert_eq!(
                scorer, first,
                "a request left the only scorer holding the model"
            );
        }
    }
    assert_eq!(pool.proxy.metrics().await.get("mm_proxy_spills_total"), 0.0);
    assert_eq!(
        metric_total(&pool.scorers, "mm_scorer_model_loads_total").await,
        1.0
    );
}

/// When no scorer can answer, clients get a clear 503 JSON error, and the proxy recovers
/// when a scorer returns.
#[tokio::test]
async fn no_scorer_left_gives_503_and_recovery_follows() {
    let mut scorer = ScorerProcess::local(&root().join("models/demo"), &[]);
    let addr = scorer.addr().to_string();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = ProxyProcess::start(&[&addr], &[]);
    let client = reqwest::Client::new();
    let reference = &demo_reference()[0];
    let id = reference["id"].as_str().unwrap();
    let url = format!("{}/v2/models/{id}/infer", proxy.url);
    assert_eq!(post_via(&client, &url, &infer_body(reference)).await.0, 200);
    scorer.kill();
    let (status, _, body) = post_via(&client, &url, &infer_body(reference)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no scorer"),
        "{body}"
    );
    // The active health check (every 200 ms here) takes the dead scorer out of rotation.
    let started = Instant::now();
    loop {
        let ready = client
            .get(format!("{}/v2/health/ready", proxy.url))
            .send()
            .await
            .unwrap();
        if ready.status().as_u16() == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the proxy stayed ready without scorers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Statistics pushes to the dead scorer fail, and are counted (every 2 s).
    let started = Instant::now();
    while proxy
        .metrics()
        .await
        .get("mm_proxy_stats_push_failures_total")
        < 1.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "no failed statistics push counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _back = ScorerProcess::start_on(
        port,
        &[format!(
            "store.path={}",
            root().join("models/demo").display()
        )],
        &[],
    );
    let started = Instant::now();
    loop {
        let (status, _, _) = post_via(&client, &url, &infer_body(reference)).await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the proxy did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real OIP client library (tritonclient.http, what users' Python code would use) checks
/// liveness, readiness, metadata and every demo model's outputs through the proxy.
#[tokio::test]
async fn a_real_oip_client_scores_through_the_proxy() {
    let pool = pool(&root().join("models/demo"), &[]);
    let host = pool.proxy.url.trim_start_matches("http://").to_string();
    let output = tokio::process::Command::new("python3")
        .arg(root().join("tests/oip_client.py"))
        .arg(&host)
        .output()
        .await
        .expect("running python3");
    assert!(
        output.status.success(),
        "tritonclient failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_zipmap_classifier_scores_through_the_proxy_with_its_classes() {
    use manymodels_tests::classifiers::{
        assert_classes_in_metadata, assert_classified, classifier_reference, classifier_store,
    };
    let scorer = ScorerProcess::local(&classifier_store(), &[]);
    let proxy = ProxyProcess::start(&[scorer.addr()], &[]);
    let client = reqwest::Client::new();
    let reference = classifier_reference()
        .into_iter()
        .find(|r| r["id"] == "zipmap-forest-str")
        .unwrap();
    let url = format!("{}/v2/models/zipmap-forest-str", proxy.url);
    let (status, _, body) =
        post_via(&client, &format!("{url}/infer"), &infer_body(&reference)).await;
    assert_eq!(status, 200, "{body}");
    assert_classified(&body, &reference);
    let metadata = manymodels_tests::get_json(&client, &url).await;
    assert_classes_in_metadata(&metadata, &reference);
}
