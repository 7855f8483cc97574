//! What describes a published model: its digest is the SHA-256 of its bytes, its
//! explanation follows it in and out of a scorer's memory, and the proxy's placement names
//! the scorer that answers for it.

use manymodels_tests::TempDir;
use manymodels_tests::process::Pool;
use serde_json::{Value, json};

use super::{KEY, MODEL, admin, body, publish_local, version};

#[tokio::test]
async fn a_digest_an_explanation_and_the_placement_describe_a_published_model() {
    let store = TempDir::new("versions-digest");
    publish_local(store.path(), 1, &version(1).bytes);
    let key = format!("auth.admin_keys={KEY}");
    // No warm-up: an unloaded model stays out of memory until it is asked for again.
    let Pool { scorers: _s, proxy } =
        Pool::local(store.path(), 3, &[&key, "warmup.max_fraction=0"], &[&key]);
    let client = reqwest::Client::new();
    let bytes = version(2).bytes.clone();
    let response = client
        .put(format!("{}/v2/admin/models/{MODEL}/versions/2", proxy.url))
        .bearer_auth(KEY)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    // The digest, through the proxy: the size and SHA-256 of the uploaded bytes.
    let digest_url = format!("{}/v2/admin/models/{MODEL}/versions/2", proxy.url);
    let (status, digest) = admin(&client, reqwest::Method::GET, &digest_url, None).await;
    assert_eq!(status, 200, "{digest}");
    let sha256: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(
        digest,
        json!({"model": MODEL, "version": 2, "bytes": bytes.len(), "sha256": sha256})
    );
    let (status, missing) = admin(
        &client,
        reqwest::Method::GET,
        &format!("{}/v2/admin/models/{MODEL}/versions/9", proxy.url),
        None,
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    assert!(missing["error"].is_string(), "{missing}");
    let refused = client.get(&digest_url).send().await.unwrap();
    assert_eq!(refused.status(), 401, "digests need the admin key");

    // Admin calls are not traffic: after the upload, the digest and an explanation, the
    // proxy has counted no request for the model and loaded it nowhere.
    let explain_url = format!("{}/v2/admin/models/{MODEL}/explain", proxy.url);
    let (status, explain) = admin(&client, reqwest::Method::GET, &explain_url, None).await;
    assert_eq!(status, 200, "{explain}");
    assert_eq!(explain["resident"], json!([]), "{explain}");
    let placement_url = format!("{}/v2/mm/pool/models/{MODEL}", proxy.url);
    let (status, placement) = admin(&client, reqwest::Method::GET, &placement_url, None).await;
    assert_eq!(status, 200, "{placement}");
    assert!(placement["rate"].is_null(), "never counted: {placement}");
    assert!(
        placement["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["hot"] == false),
        "{placement}"
    );
    // The explanation came from the owner, first in the rendezvous order.
    assert_eq!(explain["scorer"], placement["owner"], "{explain}");

    // A request: the scorer that answers holds the model, and says so.
    let response = client
        .post(format!("{}/v2/models/{MODEL}/infer", proxy.url))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answered = response.headers()["x-mm-scorer"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, explain) = admin(&client, reqwest::Method::GET, &explain_url, None).await;
    assert_eq!(status, 200, "{explain}");
    assert_eq!(explain["scorer"], answered.as_str(), "{explain}");
    assert_eq!(explain["versions"], json!([1, 2]), "{explain}");
    assert_eq!(explain["live"], 2, "{explain}");
    assert_eq!(explain["resident"][0]["version"], 2, "{explain}");
    assert!(
        explain["verdict"]
            .as_str()
            .unwrap()
            .starts_with("In memory"),
        "{explain}"
    );

    // The placement, answered by the proxy: the owner is the scorer that answered, first
    // of every member in rendezvous order, and the one the proxy knows holds it hot.
    let (status, placement) = admin(&client, reqwest::Method::GET, &placement_url, None).await;
    assert_eq!(status, 200, "{placement}");
    assert_eq!(placement["model"], MODEL, "{placement}");
    assert_eq!(placement["owner"], answered.as_str(), "{placement}");
    let ranking = placement["ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), 3, "{placement}");
    assert_eq!(ranking[0]["name"], answered.as_str(), "{placement}");
    assert!(ranking.iter().all(|r| r["healthy"] == true), "{placement}");
    let hot: Vec<&Value> = ranking.iter().filter(|r| r["hot"] == true).collect();
    assert_eq!(hot.len(), 1, "{placement}");
    assert_eq!(hot[0]["name"], answered.as_str(), "{placement}");
    assert!(placement["rate"].as_f64().unwrap() > 0.0, "{placement}");
    let bad = client
        .get(format!("{}/v2/mm/pool/models/..%2Fx", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Unloaded: out of memory, and the explanation says why.
    let (status, unloaded) = admin(
        &client,
        reqwest::Method::POST,
        &format!("{}/v2/repository/models/{MODEL}/unload", proxy.url),
        None,
    )
    .await;
    assert_eq!(status, 200, "{unloaded}");
    let (status, explain) = admin(&client, reqwest::Method::GET, &explain_url, None).await;
    assert_eq!(status, 200, "{explain}");
    assert_eq!(explain["scorer"], answered.as_str(), "{explain}");
    assert_eq!(explain["resident"], json!([]), "{explain}");
    assert_eq!(explain["evictions"][0]["reason"], "unload", "{explain}");
    assert_eq!(explain["evictions"][0]["version"], 2, "{explain}");
    assert!(
        explain["verdict"].as_str().unwrap().contains("unloaded"),
        "{explain}"
    );
    let (status, _) = admin(
        &client,
        reqwest::Method::GET,
        &format!("{}/v2/admin/models/absent/explain", proxy.url),
        None,
    )
    .await;
    assert_eq!(status, 404);
}
