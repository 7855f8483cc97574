//! Model versions at runtime. Here: a new version goes live under load with no failed
//! request and a pin rolls it back; a corrupted or incompatible version is refused while the
//! old one keeps serving; a half-written version is never served; the same flow on Azure
//! Blob (Azurite). In [`canary`]: a canary gets its share (split by the scorers, from the
//! store) and promotion pins it. In [`describe`]: a published version's digest is the
//! SHA-256 of its bytes, a model's explanation follows it in and out of a scorer's memory,
//! and the proxy's placement names the scorer that answers for it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use manymodels_models::{GeneratedModel, Spec};
use manymodels_tests::azurite::Azurite;
use manymodels_tests::http;
use manymodels_tests::process::{Pool, addrs, metric_total};
use manymodels_tests::{ProxyProcess, ScorerProcess, TempDir, write_model};
use serde_json::{Value, json};

mod canary;
mod describe;

const MODEL: &str = "store-7";
const KEY: &str = "admin-secret";

/// Version `v` of the test model: a linear model over 8 features, weights seeded by `v`.
fn version(v: u64) -> GeneratedModel {
    manymodels_models::build(&Spec::Linear {
        features: 8,
        seed: 100 + v,
    })
}

const ROW: [f32; 8] = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 0.1, 3.0];

/// Publishes on a local store the documented way: write under another name, then rename.
fn publish_local(store: &Path, v: u64, bytes: &[u8]) {
    write_model(store, MODEL, v, bytes).unwrap();
}

fn body() -> Value {
    json!({"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":ROW}]})
}

#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    done: Instant,
    status: u16,
    version: Option<u64>,
    value: Option<f64>,
}

async fn score(client: &reqwest::Client, base: &str) -> Answer {
    let sent = Instant::now();
    let response = client
        .post(format!("{base}/v2/models/{MODEL}/infer"))
        .json(&body())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let json: Value = response.json().await.unwrap_or(Value::Null);
    Answer {
        sent,
        done: Instant::now(),
        status,
        version: json["model_version"].as_str().and_then(|v| v.parse().ok()),
        value: json["outputs"][0]["data"][0].as_f64(),
    }
}

/// Scores at `rate` per second until `stop`, at most 30 s; every answer, in send order.
fn load(base: String, rate: f64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let mut tasks = Vec::new();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
            let due = started + Duration::from_secs_f64(f64::from(n) / rate);
            tokio::time::sleep_until(due.into()).await;
            let (client, base) = (client.clone(), base.clone());
            tasks.push(tokio::spawn(async move { score(&client, &base).await }));
            n += 1;
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    })
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

/// Pins `MODEL` to `version` through the proxy's admin API.
async fn pin(client: &reqwest::Client, proxy: &str, version: u64) {
    let (status, answer) = admin(
        client,
        reqwest::Method::POST,
        &format!("{proxy}/v2/admin/models/{MODEL}/pin"),
        Some(json!({ "version": version })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

/// Waits until `base` answers with version `want`; returns when it first did.
async fn until_version(
    client: &reqwest::Client,
    base: &str,
    want: u64,
    limit: Duration,
) -> Instant {
    let started = Instant::now();
    loop {
        let answer = score(client, base).await;
        assert_eq!(answer.status, 200);
        if answer.version == Some(want) {
            return answer.done;
        }
        assert!(
            started.elapsed() < limit,
            "version {want} not live after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks every answer: 200, the right output for its version, and after the switch to
/// `to` at `switched`, every request sent later answered by `to`.
fn check_answers(answers: &[Answer], to: u64, switched: Instant) {
    for a in answers {
        assert_eq!(a.status, 200, "{a:?}");
        let v = a.version.expect("every answer names its version");
        let want = f64::from(version(v).predict(&ROW));
        let got = a.value.unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "v{v}: {got} vs {want}"
        );
        if a.sent > switched {
            assert_eq!(v, to, "a request sent after the switch got version {v}");
        }
    }
}

fn pool(store: &Path, scorers: usize) -> Pool {
    let key = format!("auth.admin_keys={KEY}");
    Pool::local(store, scorers, &[&key], &[&key])
}

#[tokio::test]
async fn a_new_version_goes_live_under_load_and_a_pin_rolls_it_back_with_no_failed_request() {
    let store = TempDir::new("versions");
    publish_local(store.path(), 1, &version(1).bytes);
    let Pool { scorers, proxy } = pool(store.path(), 3);
    let client = reqwest::Client::new();
    assert_eq!(score(&client, &proxy.url).await.version, Some(1));

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(proxy.url.clone(), 100.0, stop.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Publish version 2 straight into the store, as a nightly training job would.
    let published = Instant::now();
    publish_local(store.path(), 2, &version(2).bytes);
    let live_2 = until_version(&client, &proxy.url, 2, Duration::from_secs(5)).await;
    let delay_2 = live_2 - published;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Roll back: pin version 1 through the admin API.
    let pinned = Instant::now();
    pin(&client, &proxy.url, 1).await;
    let live_1 = until_version(&client, &proxy.url, 1, Duration::from_secs(5)).await;
    let delay_1 = live_1 - pinned;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = running.await.unwrap();
    eprintln!(
        "publish to live {delay_2:?}, pin to live {delay_1:?}, {} requests",
        answers.len()
    );
    assert!(answers.len() > 1_000);
    let (before_pin, after_pin): (Vec<Answer>, Vec<Answer>) =
        answers.into_iter().partition(|a| a.sent < pinned);
    check_answers(&before_pin, 2, live_2);
    check_answers(&after_pin, 1, live_1);
    assert!(before_pin.iter().any(|a| a.version == Some(1)));
    assert!(before_pin.iter().any(|a| a.version == Some(2)));
    // The pin is in the store: a scorer started now serves version 1 too.
    let fresh = ScorerProcess::local(store.path(), &[]);
    assert_eq!(score(&client, &fresh.url).await.version, Some(1));
    let status = admin(
        &client,
        reqwest::Method::GET,
        &format!("{}/v2/admin/models/{MODEL}", proxy.url),
        None,
    )
    .await;
    assert_eq!(status.0, 200);
    assert_eq!(status.1["pinned"], 1);
    assert_eq!(status.1["versions"], json!([1, 2]));
    let swaps = metric_total(&scorers, "mm_scorer_version_swaps_total").await;
    assert!(
        swaps >= 2.0,
        "the hot scorer swapped twice in memory: {swaps}"
    );
}

#[tokio::test]
async fn a_corrupted_or_incompatible_version_is_refused_and_the_old_one_keeps_serving() {
    let store = TempDir::new("versions-bad");
    publish_local(store.path(), 1, &version(1).bytes);
    let Pool { scorers, proxy } = pool(store.path(), 1);
    let client = reqwest::Client::new();
    assert_eq!(score(&client, &proxy.url).await.version, Some(1));
    // A corrupted file lands in the store.
    publish_local(store.path(), 2, b"this is not an ONNX model");
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let answer = score(&client, &proxy.url).await;
        assert_eq!((answer.status, answer.version), (200, Some(1)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = admin(
        &client,
        reqwest::Method::GET,
        &format!("{}/v2/admin/models/{MODEL}", proxy.url),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["live"], 1, "{answer}");
    assert_eq!(answer["refused"]["version"], 2, "{answer}");
    assert!(
        answer["refused"]["error"]
            .as_str()
            .unwrap()
            .contains("could not be loaded")
    );
    let refusals = scorers[0]
        .metrics()
        .await
        .get("mm_scorer_version_refusals_total");
    assert!(refusals >= 1.0);
    // Uploads through the admin API are checked before they reach the store.
    let upload = |v: u64, bytes: Vec<u8>| {
        client
            .put(format!(
                "{}/v2/admin/models/{MODEL}/versions/{v}",
                proxy.url
            ))
            .bearer_auth(KEY)
            .body(bytes)
            .send()
    };
    let response = upload(3, b"garbage".to_vec()).await.unwrap();
    assert_eq!(response.status(), 422);
    assert!(!store.path().join(MODEL).join("3/model.onnx").exists());
    let wider = manymodels_models::build(&Spec::Linear {
        features: 16,
        seed: 9,
    });
    let response = upload(4, wider.bytes.clone()).await.unwrap();
    assert_eq!(response.status(), 422);
    let text = response.text().await.unwrap();
    assert!(text.contains("inputs"), "{text}");
    assert!(!store.path().join(MODEL).join("4/model.onnx").exists());
    // Without the admin key nothing is published.
    let response = client
        .put(format!("{}/v2/admin/models/{MODEL}/versions/5", proxy.url))
        .body(version(5).bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // A good upload goes live; the same version twice is a conflict.
    let response = upload(6, version(6).bytes.clone()).await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    assert_eq!(score(&client, &proxy.url).await.version, Some(6));
    let response = upload(6, version(6).bytes.clone()).await.unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(score(&client, &proxy.url).await.version, Some(6));
}

#[tokio::test]
async fn a_half_written_version_is_never_served() {
    let store = TempDir::new("versions-half");
    publish_local(store.path(), 1, &version(1).bytes);
    let scorer = ScorerProcess::local(store.path(), &[]);
    let client = reqwest::Client::new();
    assert_eq!(score(&client, &scorer.url).await.version, Some(1));
    // An upload in progress (a temporary name) and an empty version folder.
    let bytes = version(2).bytes;
    let partial = store.path().join(MODEL).join("2");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(
        partial.join(".model.onnx.uploading"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    std::fs::create_dir_all(store.path().join(MODEL).join("3")).unwrap();
    let refreshed: Value = client
        .post(format!("{}/v2/mm/models/{MODEL}/refresh", scorer.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refreshed["live"], 1, "{refreshed}");
    for _ in 0..20 {
        assert_eq!(score(&client, &scorer.url).await.version, Some(1));
    }
    for v in [2, 3] {
        let status = client
            .post(format!(
                "{}/v2/models/{MODEL}/versions/{v}/infer",
                scorer.url
            ))
            .json(&body())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "version {v} is not complete");
    }
    // Once the rename lands, it is version 2.
    std::fs::rename(partial.join(".model.onnx.uploading"), partial.join("junk")).unwrap();
    publish_local(store.path(), 2, &bytes);
    until_version(&client, &scorer.url, 2, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_publish_flow_works_on_azure_blob() {
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    azurite
        .put_blob(
            "models",
            &format!("prod/{MODEL}/1/model.onnx"),
            version(1).bytes.clone(),
        )
        .await;
    let sets = |extra: &[String]| -> Vec<String> {
        let mut sets = vec![
            "store.kind=azure".to_string(),
            "store.azure.use_emulator=true".into(),
            "store.azure.container=models".into(),
            "store.azure.prefix=prod".into(),
            format!("auth.admin_keys={KEY}"),
        ];
        sets.extend_from_slice(extra);
        sets
    };
    let env = [("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())];
    let scorers: Vec<ScorerProcess> = (0..2)
        .map(|_| ScorerProcess::start(&sets(&[]), &env))
        .collect();
    let proxy = ProxyProcess::start(&addrs(&scorers), &[&format!("auth.admin_keys={KEY}")]);
    let client = reqwest::Client::new();
    assert_eq!(score(&client, &proxy.url).await.version, Some(1));

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(proxy.url.clone(), 50.0, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Publish version 2 through the admin API (one blob put).
    let published = Instant::now();
    let response = client
        .put(format!("{}/v2/admin/models/{MODEL}/versions/2", proxy.url))
        .bearer_auth(KEY)
        .body(version(2).bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let live_2 = until_version(&client, &proxy.url, 2, Duration::from_secs(5)).await;
    eprintln!("azure: publish to live {:?}", live_2 - published);
    // A version written straight to the container is found by the periodic check too.
    azurite
        .put_blob(
            "models",
            &format!("prod/{MODEL}/3/model.onnx"),
            version(3).bytes.clone(),
        )
        .await;
    let live_3 = until_version(&client, &proxy.url, 3, Duration::from_secs(5)).await;
    // Roll back to 2 with a pin, persisted as a blob.
    let pinned = Instant::now();
    pin(&client, &proxy.url, 2).await;
    let live_back = until_version(&client, &proxy.url, 2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = running.await.unwrap();
    let (before_pin, after_pin): (Vec<Answer>, Vec<Answer>) =
        answers.into_iter().partition(|a| a.sent < pinned);
    check_answers(&before_pin, 3, live_3);
    check_answers(&after_pin, 2, live_back);
    assert!(before_pin.iter().any(|a| a.version == Some(2)));
    // Every scorer, and a new one, agree on the pin from the store.
    let fresh = ScorerProcess::start(&sets(&[]), &env);
    assert_eq!(score(&client, &fresh.url).await.version, Some(2));
    // A canary set through the proxy is a blob beside the alias: a scorer outside the
    // proxy's pool follows it within its version check (the canary blob's new ETag), and
    // its drop too.
    let canary_url = format!("{}/v2/admin/models/{MODEL}/canary", proxy.url);
    let (status, answer) = admin(
        &client,
        reqwest::Method::PUT,
        &canary_url,
        Some(json!({"version": 3, "percent": 50})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let share_of_3 = |answers: &[Answer]| {
        answers.iter().filter(|a| a.version == Some(3)).count() as f64 / answers.len() as f64
    };
    let started = Instant::now();
    loop {
        let answers = futures::future::join_all((0..40).map(|_| score(&client, &fresh.url))).await;
        check_answers(&answers, 0, Instant::now());
        if (share_of_3(&answers) - 0.5).abs() <= 0.05 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "canary not followed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = admin(&client, reqwest::Method::DELETE, &canary_url, None).await;
    assert_eq!(status, 200, "{answer}");
    let started = Instant::now();
    loop {
        let answers = futures::future::join_all((0..40).map(|_| score(&client, &fresh.url))).await;
        if share_of_3(&answers) == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "canary drop not followed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
