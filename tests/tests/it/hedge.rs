//! Hedged requests through real processes: a scorer frozen (SIGSTOP) under load behind the
//! proxy, with the health checks made too tolerant to notice it, so only hedging keeps
//! requests from waiting on it; and the hedge budget holding when it is spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use manymodels_tests::infer_body;
use manymodels_tests::process::Pool;
use manymodels_tests::reference::reference;
use manymodels_tests::store::demo_store;
use serde_json::Value;

const IDS: [&str; 6] = [
    "linear-small",
    "gbm-store",
    "linear-f64",
    "logistic-churn",
    "int32-scaler",
    "lightgbm-demand",
];

/// What each request got: (sent, status, took, answering scorer).
type Seen = Vec<(Instant, u16, Duration, String)>;

/// Warms every model, runs `clients` closed-loop clients for a second, freezes the scorer
/// that answered the first model (so it holds at least one), and stops the clients when it
/// thaws. Each request carries `deadline_ms` when given. Returns what every request got,
/// when the freeze began and the frozen scorer's address.
async fn freeze_under_load(
    pool: &Pool,
    clients: usize,
    freeze: Duration,
    deadline_ms: Option<&'static str>,
) -> (Seen, Instant, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut owner = None;
    for id in IDS {
        let answer = client
            .post(format!("{}/v2/models/{id}/infer", pool.proxy.url))
            .json(&infer_body(&reference(id)))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{id}");
        let scorer = answer.headers()["x-mm-scorer"]
            .to_str()
            .unwrap()
            .to_string();
        owner.get_or_insert(scorer);
    }
    let owner = owner.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..clients {
        let (client, url, stop) = (client.clone(), pool.proxy.url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Seen::new();
            let mut i = w;
            // Bounded in count as well as by the freeze.
            while !stop.load(Ordering::Relaxed) && seen.len() < 20_000 {
                let id = IDS[i % IDS.len()];
                i += 1;
                let sent = Instant::now();
                let mut request = client
                    .post(format!("{url}/v2/models/{id}/infer"))
                    .json(&infer_body(&reference(id)));
                if let Some(ms) = deadline_ms {
                    request = request.header("x-mm-timeout-ms", ms);
                }
                let response = request.send().await.expect("an answer, not a hang");
                let status = response.status().as_u16();
                let scorer = response
                    .headers()
                    .get("x-mm-scorer")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status == 200 {
                    assert!(body["outputs"].is_array(), "{body}");
                }
                seen.push((sent, status, sent.elapsed(), scorer));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = pool
        .scorers
        .iter()
        .find(|s| owner.ends_with(s.addr()) || s.addr().ends_with(owner.as_str()))
        .unwrap_or_else(|| panic!("no scorer answers as {owner}"));
    let kill = |signal: &str| victim.signal(signal);
    kill("STOP");
    let at = Instant::now();
    tokio::time::sleep(freeze).await;
    kill("CONT");
    stop.store(true, Ordering::Relaxed);
    let mut all = Seen::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    (all, at, owner)
}

/// Health checks that tolerate a hundred timeouts (50 s) never notice a 4 s freeze: without
/// hedging, every request sent to the frozen scorer would wait the whole freeze. With it,
/// each waits at most the hedge cap (200 ms here) plus the other scorer's answer, none
/// fails, and after `hedge.stalled_after` requests hedged away the scorer is ejected so
/// later requests do not wait at all.
#[tokio::test]
async fn a_frozen_scorer_is_hedged_around_and_no_request_waits_for_it() {
    let pool = Pool::local(
        &demo_store(),
        3,
        &[],
        &[
            "health.tolerated_timeouts=100",
            "hedge.floor=20ms",
            "hedge.cap=200ms",
            "hedge.stalled_after=3",
        ],
    );
    let (all, at, frozen) = freeze_under_load(&pool, 8, Duration::from_secs(4), None).await;
    let failed = all.iter().filter(|(_, status, ..)| *status != 200).count();
    let worst = all.iter().map(|(_, _, took, _)| *took).max().unwrap();
    let during = all
        .iter()
        .filter(|(sent, ..)| *sent >= at && *sent < at + Duration::from_secs(4))
        .count();
    let metrics = pool.proxy.metrics().await;
    let hedges = metrics.get("mm_proxy_hedges_total");
    let won = metrics.get("mm_proxy_hedges_won_total");
    let ejections = metrics.get("mm_proxy_stall_ejections_total");
    println!(
        "frozen scorer with hedging: {} requests ({during} during the freeze), {failed} failed, slowest {worst:?}, {hedges} hedges ({won} won), {ejections} stall ejections",
        all.len()
    );
    assert_eq!(failed, 0, "no request fails");
    assert!(
        worst < Duration::from_millis(1500),
        "no request waits for the frozen scorer: slowest {worst:?}"
    );
    assert!(won >= 1.0 && hedges >= won, "{hedges} hedges, {won} won");
    assert!(ejections >= 1.0, "the frozen scorer was ejected as stalled");
    assert!(
        all.iter()
            .filter(|(sent, ..)| *sent > at + Duration::from_millis(100)
                && *sent < at + Duration::from_secs(3))
            .all(|(.., scorer)| *scorer != frozen),
        "nothing is answered by the frozen scorer during the freeze"
    );
    assert!(during > 100, "{during} requests during the freeze");
}

/// With no budget to speak of (one token, none earned), one request is hedged and the
/// rest sent to the frozen scorer wait until their own deadline (504), counted as over
/// budget: hedging never multiplies the load.
#[tokio::test]
async fn hedges_stay_within_the_budget() {
    let pool = Pool::local(
        &demo_store(),
        3,
        &[],
        &[
            "health.tolerated_timeouts=100",
            "hedge.floor=20ms",
            "hedge.cap=200ms",
            "hedge.budget=0",
            "hedge.burst=1",
            "hedge.stalled_after=0",
        ],
    );
    let (all, ..) = freeze_under_load(&pool, 4, Duration::from_secs(2), Some("800")).await;
    let metrics = pool.proxy.metrics().await;
    let hedges = metrics.get("mm_proxy_hedges_total");
    let over = metrics.get("mm_proxy_hedges_over_budget_total");
    let timed_out = all.iter().filter(|(_, status, ..)| *status == 504).count();
    println!(
        "budget spent: {} requests, {hedges} hedges, {over} over budget, {timed_out} answered 504",
        all.len()
    );
    assert_eq!(hedges, 1.0, "the one token");
    assert!(over >= 1.0, "later hedges are refused by the budget");
    assert!(
        timed_out >= 1,
        "requests left on the frozen scorer wait for their deadline"
    );
    assert!(
        all.iter()
            .all(|(_, status, ..)| matches!(status, 200 | 504)),
        "only 200s and deadline answers"
    );
}

/// A client that gives up on a hedged request (its scorer frozen) hangs up: the exchange is
/// dropped with it, so the key's in-flight permit comes back at once and the key's next
/// request, for a model on a live scorer, is served instead of refused with 429.
#[tokio::test]
async fn a_client_that_hangs_up_gives_its_in_flight_permit_back() {
    // Three scorers: the six models all on one of them is then unlikely (1 in 243).
    let pool = Pool::local(
        &demo_store(),
        3,
        &[],
        &[
            "auth.api_keys=t:tenant-key",
            "limits.inflight=t=1",
            "health.tolerated_timeouts=100",
            // No hedge within the test: the request stays with the frozen scorer.
            "hedge.floor=20s",
            "hedge.cap=20s",
        ],
    );
    let client = reqwest::Client::new();
    let score = |id: &'static str, timeout: Duration| {
        client
            .post(format!("{}/v2/models/{id}/infer", pool.proxy.url))
            .bearer_auth("tenant-key")
            .timeout(timeout)
            .json(&infer_body(&reference(id)))
            .send()
    };
    // Where each model is served.
    let mut by_scorer: Vec<(&str, String)> = Vec::new();
    for id in IDS {
        let answer = score(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(answer.status(), 200, "{id}");
        let scorer = answer.headers()["x-mm-scorer"]
            .to_str()
            .unwrap()
            .to_string();
        by_scorer.push((id, scorer));
    }
    let (frozen_model, frozen) = by_scorer[0].clone();
    let Some((live_model, _)) = by_scorer.iter().find(|(_, s)| *s != frozen) else {
        panic!("every demo model routes to {frozen}: {by_scorer:?}");
    };
    let victim = pool.scorers.iter().find(|s| s.addr() == frozen).unwrap();
    let kill = |signal: &str| victim.signal(signal);
    kill("STOP");
    let gave_up = score(frozen_model, Duration::from_millis(500)).await;
    assert!(
        gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the request for {frozen_model} on the frozen scorer {frozen} is still waiting ({by_scorer:?}): {gave_up:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = score(live_model, Duration::from_secs(10)).await.unwrap();
    let status = next.status().as_u16();
    kill("CONT");
    assert_eq!(
        status, 200,
        "the hung-up request's permit was given back (429 means it was not)"
    );
}
