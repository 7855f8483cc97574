//! Proxy replicas agree: two proxies in front of the same scorers answer alike, because
//! nothing a proxy holds changes an answer. A canary set through one is honoured by the
//! other, survives restarting both, and promotion or dropping through either is seen
//! through both (canaries are in the store, split by the scorers).

use std::time::{Duration, Instant};

use manymodels_models::{GeneratedModel, Spec};
use manymodels_tests::http;
use manymodels_tests::process::addrs;
use manymodels_tests::{ProxyProcess, ScorerProcess, TempDir, write_model};
use serde_json::{Value, json};

const MODEL: &str = "store-11";
const KEY: &str = "admin-secret";
/// How much a measured share may differ from the canary's: the split is deterministic
/// (within one request per scorer), so this is slack for nothing but rounding.
const TOLERANCE: f64 = 0.03;

/// Version `v` of the test model: a linear model over 8 features, weights seeded by `v`.
fn version(v: u64) -> GeneratedModel {
    manymodels_models::build(&Spec::Linear {
        features: 8,
        seed: 300 + v,
    })
}

const ROW: [f32; 8] = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 0.1, 3.0];

/// One inference request naming no version; the version that answered, after checking
/// the output is that version's.
async fn score(client: &reqwest::Client, base: &str) -> u64 {
    let body = json!({"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":ROW}]});
    let response = client
        .post(format!("{base}/v2/models/{MODEL}/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{base}: {answer}");
    let v: u64 = answer["model_version"].as_str().unwrap().parse().unwrap();
    let got = answer["outputs"][0]["data"][0].as_f64().unwrap();
    let want = f64::from(version(v).predict(&ROW));
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "v{v}: {got} vs {want}"
    );
    v
}

/// The versions that answered `n` requests through `base`, 50 at a time.
async fn answers(client: &reqwest::Client, base: &str, n: usize) -> Vec<u64> {
    let mut versions = Vec::with_capacity(n);
    while versions.len() < n {
        let batch = (n - versions.len()).min(50);
        versions.extend(futures::future::join_all((0..batch).map(|_| score(client, base))).await);
    }
    versions
}

/// The share of `versions` that is `v`.
fn share(versions: &[u64], v: u64) -> f64 {
    versions.iter().filter(|x| **x == v).count() as f64 / versions.len() as f64
}

/// Waits until 100 answers through `base` give version `v` a share within the tolerance
/// of `want`; returns how long that took. Fails past `limit`.
async fn until_share(client: &reqwest::Client, base: &str, v: u64, want: f64) -> Duration {
    let started = Instant::now();
    loop {
        let got = share(&answers(client, base, 100).await, v);
        if (got - want).abs() <= TOLERANCE {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{base}: version {v} has {got} of the answers, not {want}, after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An admin call with the pool's admin key.
async fn admin(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    http::call(client, method.as_str(), url, Some(KEY), body.as_ref()).await
}

fn canary_url(proxy: &ProxyProcess) -> String {
    format!("{}/v2/admin/models/{MODEL}/canary", proxy.url)
}

fn proxies(scorers: &[ScorerProcess]) -> (ProxyProcess, ProxyProcess) {
    let key = format!("auth.admin_keys={KEY}");
    (
        ProxyProcess::start(&addrs(scorers), &[&key]),
        ProxyProcess::start(&addrs(scorers), &[&key]),
    )
}

#[tokio::test]
async fn two_proxies_agree_on_a_canary_through_restarts_promotion_and_drop() {
    let store = TempDir::new("replicas-canary");
    for v in [1, 2] {
        write_model(store.path(), MODEL, v, &version(v).bytes).unwrap();
    }
    let model_dir = store.path().join(MODEL);
    std::fs::write(model_dir.join("alias.json"), r#"{"pinned": 1}"#).unwrap();
    let key = format!("auth.admin_keys={KEY}");
    let scorers: Vec<ScorerProcess> = (0..2)
        .map(|_| ScorerProcess::local(store.path(), &[&key]))
        .collect();
    let (a, b) = proxies(&scorers);
    let client = reqwest::Client::new();
    for proxy in [&a, &b] {
        assert!(
            answers(&client, &proxy.url, 20)
                .await
                .iter()
                .all(|v| *v == 1)
        );
    }

    // A 30% canary set through A is honoured through B.
    let (status, answer) = admin(
        &client,
        reqwest::Method::PUT,
        &canary_url(&a),
        Some(json!({"version": 2, "percent": 30})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let set = Instant::now();
    let seen = until_share(&client, &b.url, 2, 0.30).await;
    eprintln!(
        "canary set through A, split through B after {seen:?} ({:?} after the set)",
        set.elapsed()
    );
    let through_b = answers(&client, &b.url, 1_000).await;
    let got = share(&through_b, 2);
    assert!((got - 0.30).abs() <= TOLERANCE, "through B: {got}");
    let (status, shown) = admin(&client, reqwest::Method::GET, &canary_url(&b), None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (&shown["canary"]["version"], &shown["canary"]["percent"]),
        (&json!(2), &json!(30.0)),
        "{shown}"
    );

    // Both proxies restarted (new processes, new ports): the split holds at once.
    drop((a, b));
    let (a, b) = proxies(&scorers);
    let through_a = answers(&client, &a.url, 500).await;
    let through_b = answers(&client, &b.url, 500).await;
    let both = [through_a, through_b].concat();
    let got = share(&both, 2);
    assert!((got - 0.30).abs() <= TOLERANCE, "after the restart: {got}");
    // So does a scorer that never heard of it: the canary is in the store.
    let fresh = ScorerProcess::local(store.path(), &[&key]);
    let direct = answers(&client, &fresh.url, 200).await;
    assert!(
        (share(&direct, 2) - 0.30).abs() <= TOLERANCE,
        "a new scorer: {}",
        share(&direct, 2)
    );
    drop(fresh);

    // Promoted through B: every answer through A and B is the canary version, pinned.
    let (status, answer) = admin(
        &client,
        reqwest::Method::POST,
        &format!("{}/promote", canary_url(&b)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let promoted = Instant::now();
    for proxy in [&a, &b] {
        until_share(&client, &proxy.url, 2, 1.0).await;
    }
    eprintln!(
        "promoted through B, every answer v2 after {:?}",
        promoted.elapsed()
    );
    for proxy in [&a, &b] {
        let versions = answers(&client, &proxy.url, 200).await;
        assert!(versions.iter().all(|v| *v == 2), "{}", proxy.url);
    }
    let alias = std::fs::read_to_string(model_dir.join("alias.json")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&alias).unwrap()["pinned"], 2);
    assert!(!model_dir.join("canary.json").exists());
    for proxy in [&a, &b] {
        let (status, _) = admin(&client, reqwest::Method::GET, &canary_url(proxy), None).await;
        assert_eq!(status, 404, "no canary through {}", proxy.url);
    }

    // A canary set through B and dropped through A: B stops sending any.
    let (status, answer) = admin(
        &client,
        reqwest::Method::PUT,
        &canary_url(&b),
        Some(json!({"version": 1, "percent": 50})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    until_share(&client, &a.url, 1, 0.50).await;
    let (status, answer) = admin(&client, reqwest::Method::DELETE, &canary_url(&a), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dropped"]["version"], 1, "{answer}");
    until_share(&client, &b.url, 1, 0.0).await;
    for proxy in [&a, &b] {
        let versions = answers(&client, &proxy.url, 200).await;
        assert!(versions.iter().all(|v| *v == 2), "{}", proxy.url);
    }
}
