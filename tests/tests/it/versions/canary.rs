//! A canary on real scorers: it gets its share of the requests (split by the scorers, from
//! the store), and promotion pins it.

use std::time::Duration;

use manymodels_tests::TempDir;
use manymodels_tests::process::{Pool, metric_total};
use serde_json::json;

use super::{MODEL, admin, publish_local, score, until_version, version};

#[tokio::test]
async fn a_canary_gets_its_share_and_promotion_pins_it() {
    let store = TempDir::new("versions-canary");
    publish_local(store.path(), 1, &version(1).bytes);
    publish_local(store.path(), 2, &version(2).bytes);
    std::fs::write(
        store.path().join(MODEL).join("alias.json"),
        r#"{"pinned": 1}"#,
    )
    .unwrap();
    // The scorers' arm counters are compared with the answers one for one: a hedged
    // request (a burst of 100 in a debug build is slow enough to be hedged) runs on two
    // scorers and is counted by both, so hedging is off here.
    let key = format!("auth.admin_keys={}", super::KEY);
    let Pool { scorers, proxy } =
        Pool::local(store.path(), 3, &[&key], &[&key, "hedge.enabled=false"]);
    let client = reqwest::Client::new();
    assert_eq!(score(&client, &proxy.url).await.version, Some(1));
    let canary_url = format!("{}/v2/admin/models/{MODEL}/canary", proxy.url);
    let response = client
        .put(&canary_url)
        .json(&json!({"version": 2, "percent": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "canaries need the admin key");
    // Refused as before: a bad share, a missing version, a body that is not a canary.
    for (body, want) in [
        (json!({"version": 2, "percent": 101}), 400),
        (json!({"version": 0, "percent": 10}), 400),
        (json!({"version": 2}), 400),
        (json!({"version": 9, "percent": 10}), 404),
    ] {
        let (status, answer) = admin(
            &client,
            reqwest::Method::PUT,
            &canary_url,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, _) = admin(&client, reqwest::Method::GET, &canary_url, None).await;
    assert_eq!(status, 404, "no canary yet");
    let (status, answer) = admin(
        &client,
        reqwest::Method::PUT,
        &canary_url,
        Some(json!({"version": 2, "percent": 10})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["canary"]["version"], 2, "{answer}");
    assert_eq!(answer["canary"]["percent"], 10.0, "{answer}");
    let stored = std::fs::read_to_string(store.path().join(MODEL).join("canary.json")).unwrap();
    assert_eq!(stored, r#"{"version":2,"percent":10.0}"#);
    let mut to_canary = 0;
    for chunk in 0..20 {
        let answers = futures::future::join_all((0..100).map(|_| score(&client, &proxy.url))).await;
        for a in answers {
            assert_eq!(a.status, 200, "chunk {chunk}");
            if a.version == Some(2) {
                to_canary += 1;
            }
        }
    }
    let share = f64::from(to_canary) / 2_000.0;
    assert!((share - 0.10).abs() <= 0.05, "canary share {share}");
    // The scorers split and count the arms; the answers say the same.
    let arm = |arm: &str| format!("mm_scorer_canary_requests_total{{arm=\"{arm}\"}}");
    let canary_arm = metric_total(&scorers, &arm("canary")).await;
    assert_eq!(canary_arm, f64::from(to_canary));
    assert_eq!(
        canary_arm + metric_total(&scorers, &arm("stable")).await,
        2_000.0
    );
    let (status, shown) = admin(&client, reqwest::Method::GET, &canary_url, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["canary"]["version"], 2, "{shown}");
    // Promote: the canary version is pinned in the store and every answer moves to it.
    let (status, answer) = admin(
        &client,
        reqwest::Method::POST,
        &format!("{canary_url}/promote"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["promoted"]["version"], 2, "{answer}");
    assert_eq!(answer["pinned"]["live"], 2, "{answer}");
    until_version(&client, &proxy.url, 2, Duration::from_secs(5)).await;
    for _ in 0..50 {
        assert_eq!(score(&client, &proxy.url).await.version, Some(2));
    }
    let alias = std::fs::read_to_string(store.path().join(MODEL).join("alias.json")).unwrap();
    assert!(alias.contains('2'), "{alias}");
    assert!(!store.path().join(MODEL).join("canary.json").exists());
    let (status, _) = admin(&client, reqwest::Method::GET, &canary_url, None).await;
    assert_eq!(status, 404, "the canary is gone once promoted");
    for method in [reqwest::Method::DELETE, reqwest::Method::POST] {
        let url = if method == reqwest::Method::POST {
            format!("{canary_url}/promote")
        } else {
            canary_url.clone()
        };
        let (status, answer) = admin(&client, method, &url, None).await;
        assert_eq!(status, 404, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("has no canary"),
            "{answer}"
        );
    }
}
