//! Faults through real processes: a model store that hangs (Azurite frozen with SIGSTOP) or
//! is gone (Azurite stopped), overload of the requests waiting for loads, a load past its
//! own deadline, a request's deadline (`x-mm-timeout-ms`, on infer, metadata and readiness)
//! through proxy and scorer, and a scorer blackholed (SIGSTOP) under load behind the proxy.
//! Every figure asserted is printed (`--nocapture`) for the reliability table in README.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use manymodels_tests::azurite::Azurite;
use manymodels_tests::process::Pool;
use manymodels_tests::reference::reference;
use manymodels_tests::store::demo_store;
use manymodels_tests::{ProxyProcess, ScorerProcess, infer_body, root};
use serde_json::Value;

/// What one request got: status, `Retry-After`, whether the server closes the connection
/// after it (`Connection: close`), the JSON body, and how long it took.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    closes: bool,
    body: Value,
    took: Duration,
}

async fn infer(client: &reqwest::Client, url: &str, id: &str, deadline_ms: Option<&str>) -> Answer {
    send(
        client.post(url).json(&infer_body(&reference(id))),
        deadline_ms,
    )
    .await
}

/// A GET of `url`, with `x-mm-timeout-ms` if given.
async fn get(client: &reqwest::Client, url: &str, deadline_ms: Option<&str>) -> Answer {
    send(client.get(url), deadline_ms).await
}

async fn send(mut request: reqwest::RequestBuilder, deadline_ms: Option<&str>) -> Answer {
    let started = Instant::now();
    if let Some(ms) = deadline_ms {
        request = request.header("x-mm-timeout-ms", ms);
    }
    let response = request.send().await.expect("an answer, not a hang");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let closes = response
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        closes,
        body,
        took: started.elapsed(),
    }
}

fn model_url(base: &str, id: &str) -> String {
    format!("{base}/v2/models/{id}/infer")
}

fn version_url(base: &str, id: &str, version: u64) -> String {
    format!("{base}/v2/models/{id}/versions/{version}/infer")
}

/// A client that gives up long after every deadline under test: hitting its timeout is a
/// hang, and fails the test.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn azure_scorer(sets: &[&str]) -> (Azurite, ScorerProcess) {
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    azurite
        .upload_store("models", "", &root().join("models/demo"))
        .await;
    let mut all: Vec<String> = [
        "store.kind=azure",
        "store.azure.use_emulator=true",
        "store.azure.container=models",
    ]
    .iter()
    .chain(sets)
    .map(|s| s.to_string())
    .collect();
    all.push("versions.check_interval=1h".into());
    let scorer = ScorerProcess::start(&all, &[("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())]);
    (azurite, scorer)
}

/// Azurite frozen (SIGSTOP: its port accepts and never answers) must behave like Azurite
/// stopped: a cold request answers a JSON 503 within `store.timeout`, hot models keep
/// serving, liveness stays green, and everything recovers when the store is back.
#[tokio::test]
async fn a_hung_or_stopped_store_answers_503_within_the_store_timeout_and_hot_models_serve() {
    let (mut azurite, scorer) = azure_scorer(&["store.timeout=1s"]).await;
    let client = client();
    let hot = infer(
        &client,
        &model_url(&scorer.url, "linear-small"),
        "linear-small",
        None,
    )
    .await;
    assert_eq!(hot.status, 200, "{}", hot.body);

    // Frozen.
    azurite.signal("STOP");
    let cold = infer(
        &client,
        &model_url(&scorer.url, "gbm-store"),
        "gbm-store",
        None,
    )
    .await;
    println!(
        "store frozen: cold request {} in {:?}: {}",
        cold.status, cold.took, cold.body
    );
    assert_eq!(cold.status, 503, "{}", cold.body);
    assert!(
        cold.body["error"]
            .as_str()
            .unwrap()
            .contains("store.timeout")
    );
    assert!(cold.took < Duration::from_secs(3), "{:?}", cold.took);
    let mut hot_worst = Duration::ZERO;
    for _ in 0..20 {
        let hot = infer(
            &client,
            &model_url(&scorer.url, "linear-small"),
            "linear-small",
            None,
        )
        .await;
        assert_eq!(
            hot.status, 200,
            "hot model while the store hangs: {}",
            hot.body
        );
        hot_worst = hot_worst.max(hot.took);
    }
    println!("store frozen: 20 hot requests 200, slowest {hot_worst:?}");
    let live = client
        .get(format!("{}/v2/health/live", scorer.url))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    // A version read (not only the look-up) is bounded too.
    let read = infer(
        &client,
        &version_url(&scorer.url, "logistic-churn", 1),
        "logistic-churn",
        None,
    )
    .await;
    println!(
        "store frozen: versioned cold request {} in {:?}",
        read.status, read.took
    );
    assert_eq!(read.status, 503, "{}", read.body);
    assert!(read.took < Duration::from_secs(3), "{:?}", read.took);

    azurite.signal("CONT");
    let back = recovered(&client, &model_url(&scorer.url, "gbm-store"), "gbm-store").await;
    println!("store thawed: cold model served again after {back:?}");

    // Stopped: refused at once.
    azurite.stop();
    let cold = infer(
        &client,
        &model_url(&scorer.url, "linear-f64"),
        "linear-f64",
        None,
    )
    .await;
    println!(
        "store stopped: cold request {} in {:?}: {}",
        cold.status, cold.took, cold.body
    );
    assert_eq!(cold.status, 503, "{}", cold.body);
    // Refused, not timed out: a refused connection is retried twice within 150 ms, so the
    // answer comes before `store.timeout` (1 s here) and does not blame it.
    assert!(cold.took < Duration::from_secs(1), "{:?}", cold.took);
    assert!(
        !cold.body["error"]
            .as_str()
            .unwrap()
            .contains("store.timeout"),
        "{}",
        cold.body
    );
    let hot = infer(
        &client,
        &model_url(&scorer.url, "gbm-store"),
        "gbm-store",
        None,
    )
    .await;
    assert_eq!(hot.status, 200, "{}", hot.body);
    azurite.restart().await;
    let back = recovered(&client, &model_url(&scorer.url, "linear-f64"), "linear-f64").await;
    println!("store restarted: cold model served again after {back:?}");
}

/// Retries `id` until it answers 200 (at most 15 s); returns how long that took.
async fn recovered(client: &reqwest::Client, url: &str, id: &str) -> Duration {
    let started = Instant::now();
    loop {
        let answer = infer(client, url, id, None).await;
        if answer.status == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not recovered: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the store hung, loads cannot finish: requests beyond `cache.max_waiting_per_model`
/// (per model) or `cache.max_waiting` (the scorer) answer 503 with `Retry-After` at once;
/// those admitted answer 503 when the load passes `cache.load_timeout`, and the abandoned
/// load does not block the model once the store is back and the failure expired.
#[tokio::test]
async fn requests_beyond_the_waiting_bounds_get_503_with_retry_after_at_once() {
    let (azurite, scorer) = azure_scorer(&[
        "store.timeout=20s",
        "cache.load_timeout=2s",
        "cache.failure_ttl=1s",
        "cache.max_waiting=3",
        "cache.max_waiting_per_model=2",
    ])
    .await;
    let client = client();
    azurite.signal("STOP");
    let burst = |id: &'static str, n: usize| {
        let url = version_url(&scorer.url, id, 1);
        (0..n)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { infer(&client, &url, id, None).await })
            })
            .collect::<Vec<_>>()
    };
    let first = burst("gbm-store", 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = burst("linear-f64", 3);
    let mut answers = Vec::new();
    for task in first.into_iter().chain(second) {
        answers.push(task.await.unwrap());
    }
    let (refused, timed_out): (Vec<&Answer>, Vec<&Answer>) = answers
        .iter()
        .partition(|a| a.took < Duration::from_secs(1));
    for a in &answers {
        println!(
            "overload: {} retry-after {:?} in {:?}: {}",
            a.status, a.retry_after, a.took, a.body
        );
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.retry_after.as_deref(), Some("1"));
    }
    // 2 wait for gbm-store, 1 for linear-f64 (3 in all): 5 refused at once.
    assert_eq!(refused.len(), 5);
    assert_eq!(timed_out.len(), 3);
    assert!(refused.iter().all(|a| {
        let e = a.body["error"].as_str().unwrap();
        e.contains("cache.max_waiting")
    }));
    for a in &timed_out {
        assert!(
            a.body["error"]
                .as_str()
                .unwrap()
                .contains("cache.load_timeout")
        );
        assert!(a.took < Duration::from_secs(4), "{:?}", a.took);
    }
    azurite.signal("CONT");
    let back = recovered(
        &client,
        &version_url(&scorer.url, "gbm-store", 1),
        "gbm-store",
    )
    .await;
    println!("overload: served after the store came back in {back:?}");
}

/// `x-mm-timeout-ms` bounds a request on the scorer and through the proxy: past it the
/// answer is a JSON 504; a malformed one is a 400 from either; hot requests with a
/// deadline are served as usual.
#[tokio::test]
async fn a_request_deadline_is_honoured_by_scorer_and_proxy() {
    let (azurite, scorer) = azure_scorer(&["store.timeout=20s"]).await;
    let proxy = ProxyProcess::start(&[scorer.addr()], &[]);
    let client = client();
    for base in [&scorer.url, &proxy.url] {
        let hot = infer(
            &client,
            &model_url(base, "linear-small"),
            "linear-small",
            Some("5000"),
        )
        .await;
        assert_eq!(hot.status, 200, "{}", hot.body);
        for bad in ["0", "abc", "-1", "99999999999"] {
            let answer = infer(
                &client,
                &model_url(base, "linear-small"),
                "linear-small",
                Some(bad),
            )
            .await;
            assert_eq!(answer.status, 400, "{base} {bad}: {}", answer.body);
            assert!(
                answer.body["error"]
                    .as_str()
                    .unwrap()
                    .contains("x-mm-timeout-ms")
            );
        }
    }
    azurite.signal("STOP");
    for (base, id) in [(&scorer.url, "gbm-store"), (&proxy.url, "linear-f64")] {
        let late = infer(&client, &model_url(base, id), id, Some("700")).await;
        println!(
            "deadline 700 ms via {base}: {} in {:?}: {}",
            late.status, late.took, late.body
        );
        assert_eq!(late.status, 504, "{}", late.body);
        assert!(late.body["error"].is_string(), "{}", late.body);
        assert!(
            late.took >= Duration::from_millis(650) && late.took < Duration::from_millis(2500),
            "{:?}",
            late.took
        );
        let hot = infer(
            &client,
            &model_url(base, "linear-small"),
            "linear-small",
            Some("700"),
        )
        .await;
        assert_eq!(hot.status, 200, "{}", hot.body);
    }
    // Metadata (which loads the model) and readiness (which asks the store) take the
    // deadline too.
    for (base, id) in [(&scorer.url, "logistic-churn"), (&proxy.url, "multi-input")] {
        for path in [format!("/v2/models/{id}"), format!("/v2/models/{id}/ready")] {
            let late = get(&client, &format!("{base}{path}"), Some("700")).await;
            println!(
                "deadline 700 ms on GET {path} via {base}: {} in {:?}: {}",
                late.status, late.took, late.body
            );
            assert_eq!(late.status, 504, "{}", late.body);
            assert!(late.body["error"].is_string(), "{}", late.body);
            assert!(
                late.took >= Duration::from_millis(650) && late.took < Duration::from_millis(2500),
                "{:?}",
                late.took
            );
        }
    }
    let bad = get(
        &client,
        &format!("{}/v2/models/linear-small", scorer.url),
        Some("abc"),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    azurite.signal("CONT");
}

/// A scorer frozen (SIGSTOP, not killed) under load behind the proxy: the proxy stops
/// sending to it within the health bound (`health.interval` × (`tolerated_timeouts` + 1) +
/// `health.timeout`); requests already sent to it are hedged to the next candidate (so
/// none fails while the hedge budget lasts), and any that fail answer 503/504 within their
/// deadline; no request hangs.
#[tokio::test]
async fn a_blackholed_scorer_is_routed_around_and_only_its_in_flight_requests_fail() {
    let pool = Pool::local(&demo_store(), 3, &[], &[]);
    let ids = [
        "linear-small",
        "gbm-store",
        "linear-f64",
        "logistic-churn",
        "int32-scaler",
        "lightgbm-demand",
    ];
    let client = client();
    for id in ids {
        let warm = infer(&client, &model_url(&pool.proxy.url, id), id, None).await;
        assert_eq!(warm.status, 200, "{}", warm.body);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, url, stop) = (client.clone(), pool.proxy.url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let id = ids[i % ids.len()];
                i += 1;
                let sent = Instant::now();
                let answer = infer(&client, &model_url(&url, id), id, Some("3000")).await;
                seen.push((sent, answer.status, answer.took, answer.closes));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = &pool.scorers[0];
    let kill = |signal: &str| victim.signal(signal);
    kill("STOP");
    let at = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    kill("CONT");
    let failed: Vec<_> = all
        .iter()
        .filter(|(_, status, ..)| *status != 200)
        .collect();
    let worst = all.iter().map(|(_, _, took, _)| *took).max().unwrap();
    let last_failure_sent = failed
        .iter()
        .map(|(sent, ..)| sent.saturating_duration_since(at))
        .max()
        .unwrap_or_default();
    println!(
        "blackholed scorer: {} requests, {} failed ({:?}), slowest {worst:?}, last failing request sent {last_failure_sent:?} after SIGSTOP",
        all.len(),
        failed.len(),
        failed
            .iter()
            .map(|(_, status, took, _)| (*status, *took))
            .collect::<Vec<_>>()
    );
    for (sent, status, took, closes) in &failed {
        assert!(matches!(status, 503 | 504), "{status}");
        // The proxy does not reuse a connection after a failed proxied request; its
        // answer must say so, or the client's next request on that connection is lost.
        assert!(closes, "a {status} without Connection: close");
        assert!(
            *sent + Duration::from_millis(100) >= at,
            "failed before the fault"
        );
        assert!(*took < Duration::from_millis(3500), "{took:?}");
    }
    // Health: interval 200 ms (the harness), timeout 500 ms, 1 tolerated timeout.
    assert!(
        last_failure_sent < Duration::from_secs(3),
        "still routed to the frozen scorer {last_failure_sent:?} after SIGSTOP"
    );
    assert!(worst < Duration::from_millis(3500), "{worst:?}");
    assert!(all.len() > 100);
}
