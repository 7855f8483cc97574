//! The internal surface, closed: scorers that refuse key-less calls (and a proxy that
//! sends the pool key), statistics pushes held to their bounds, and API keys scoped to
//! two tenants' model-id prefixes. Real processes on 127.0.0.1.

use std::time::{Duration, Instant};

use manymodels_tests::http::call;
use manymodels_tests::reference::reference;
use manymodels_tests::{
    Metrics, ProxyProcess, ScorerProcess, TempDir, copy_tree, infer_body, root,
};
use serde_json::{Value, json};

const POOL_KEY: &str = "pool-7f3a9c";

/// `/metrics` read with `key`.
async fn metrics(client: &reqwest::Client, url: &str, key: &str) -> (Metrics, String) {
    let response = client
        .get(format!("{url}/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{url}/metrics");
    let text = response.text().await.unwrap();
    (Metrics::parse(&text), text)
}

#[tokio::test]
async fn a_scorer_with_a_pool_key_refuses_key_less_calls_and_the_proxy_sends_the_key() {
    let store = root().join("models/demo");
    let pool_key = format!("auth.pool_key={POOL_KEY}");
    let scorer = ScorerProcess::local(
        &store,
        &[
            pool_key.as_str(),
            "auth.metrics_keys=scrape-1",
            "auth.admin_keys=ops-1",
        ],
    );
    let client = reqwest::Client::new();
    let linear = reference("linear-small");
    let body = infer_body(&linear);
    let url = |path: &str| format!("{}{path}", scorer.url);
    let push = json!({ "proxy": "intruder", "models": [["linear-small", 1e9]] });

    // The calls, without a key and with a wrong one: all refused before any work.
    let guarded: [(&str, String, Option<&Value>); 8] = [
        ("POST", url("/v2/models/linear-small/infer"), Some(&body)),
        ("PUT", url("/v2/mm/stats"), Some(&push)),
        (
            "POST",
            url("/v2/repository/models/linear-small/unload"),
            None,
        ),
        ("POST", url("/v2/repository/models/linear-small/load"), None),
        ("POST", url("/v2/repository/index"), None),
        ("GET", url("/v2/mm/cache"), None),
        ("GET", url("/metrics"), None),
        ("GET", url("/v2/no-such-route"), None),
    ];
    for (method, url, body) in &guarded {
        for key in [None, Some("wrong")] {
            let (status, answer) = call(&client, method, url, key, *body).await;
            assert_eq!(status, 401, "{method} {url} with {key:?}: {answer}");
            assert!(
                answer["error"].as_str().unwrap().contains("bearer key"),
                "{answer}"
            );
        }
    }
    // Health stays open: the kubelet and the proxies' checks carry no key.
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(call(&client, "GET", &url(path), None, None).await.0, 200);
    }
    // The pool key opens everything; admin keys open admin routes only; metrics keys
    // open `/metrics` only.
    let infer = url("/v2/models/linear-small/infer");
    assert_eq!(
        call(&client, "POST", &infer, Some(POOL_KEY), Some(&body))
            .await
            .0,
        200
    );
    let unload = url("/v2/repository/models/linear-small/unload");
    assert_eq!(
        call(&client, "POST", &unload, Some("ops-1"), None).await.0,
        200
    );
    assert_eq!(
        call(&client, "POST", &infer, Some("ops-1"), Some(&body))
            .await
            .0,
        401
    );
    assert_eq!(
        call(&client, "POST", &infer, Some("scrape-1"), Some(&body))
            .await
            .0,
        401
    );
    metrics(&client, &scorer.url, "scrape-1").await;
    let (before, _) = metrics(&client, &scorer.url, POOL_KEY).await;
    assert_eq!(before.get("mm_scorer_stats_pushes_total"), 0.0);

    // A proxy with the pool key: clients use their own key, scorers see the pool key on
    // forwarded requests and on the proxy's statistics pushes.
    let proxy = ProxyProcess::start(
        &[scorer.addr()],
        &[
            pool_key.as_str(),
            "auth.api_keys=client:client-1",
            "stats.push_interval=200ms",
        ],
    );
    let via_proxy = format!("{}/v2/models/linear-small/infer", proxy.url);
    let (status, answer) = call(&client, "POST", &via_proxy, Some("client-1"), Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        call(&client, "POST", &via_proxy, None, Some(&body)).await.0,
        401
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (now, _) = metrics(&client, &scorer.url, POOL_KEY).await;
        if now.get("mm_scorer_stats_pushes_total") >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no accepted push:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let proxy_metrics = proxy.metrics().await;
    assert_eq!(
        proxy_metrics.get("mm_proxy_stats_push_failures_total"),
        0.0,
        "{}",
        proxy.logs()
    );
    // Every push is counted with its body's bytes (at least the proxy's instance id).
    let pushes = proxy_metrics.get("mm_proxy_stats_pushes_total");
    assert!(pushes >= 2.0, "{pushes} pushes counted");
    assert!(
        proxy_metrics.get("mm_proxy_stats_push_bytes_total") >= 40.0 * pushes,
        "{} bytes in {pushes} pushes",
        proxy_metrics.get("mm_proxy_stats_push_bytes_total")
    );
    // The scorer never saw the client's key: a direct call with it is refused.
    assert_eq!(
        call(&client, "POST", &infer, Some("client-1"), Some(&body))
            .await
            .0,
        401
    );
    assert!(!scorer.logs().contains("OPEN SCORER"), "{}", scorer.logs());

    // A scorer started without a pool key stays open and says so.
    let open = ScorerProcess::local(&store, &[]);
    let logs = open.logs();
    assert!(
        logs.contains("OPEN SCORER") && logs.contains("auth.pool_key"),
        "{logs}"
    );
    let open_infer = format!("{}/v2/models/linear-small/infer", open.url);
    assert_eq!(
        call(&client, "POST", &open_infer, None, Some(&body))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_flood_of_pushes_is_refused_counted_and_leaves_the_kept_proxies_alone() {
    let scorer = ScorerProcess::local(&root().join("models/demo"), &["stats.max_sources=4"]);
    let client = reqwest::Client::new();
    let url = format!("{}/v2/mm/stats", scorer.url);
    let push =
        |proxy: &str, models: Vec<(String, f64)>| json!({ "proxy": proxy, "models": models });
    let mut slowest = Duration::ZERO;
    let mut send = async |body: Value| {
        let started = Instant::now();
        let answer = call(&client, "PUT", &url, None, Some(&body)).await;
        slowest = slowest.max(started.elapsed());
        answer
    };

    // The push: 2,000 models at 10^9 requests per second.
    let claims: Vec<(String, f64)> = (0..2000).map(|i| (format!("m-{i}"), 1e9)).collect();
    let (status, answer) = send(push("p-flood", claims)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("stats.max_source_rate"),
        "{answer}"
    );
    // More entries than the default 65,536.
    let many: Vec<(String, f64)> = (0..65_537).map(|i| (format!("m{i}"), 0.0)).collect();
    let (status, answer) = send(push("p-many", many)).await;
    assert_eq!(status, 413, "{answer}");
    // A negative rate, and a model id that could name a path.
    let (status, _) = send(push("p-neg", vec![("m".into(), -5.0)])).await;
    assert_eq!(status, 422);
    let (status, _) = send(push("p-path", vec![("../etc".into(), 1.0)])).await;
    assert_eq!(status, 422);

    // A flood of made-up proxies: 4 are kept, the next 196 refused.
    let mut accepted = 0;
    for i in 0..200 {
        let (status, answer) =
            send(push(&format!("p-{i}"), vec![("linear-small".into(), 1.0)])).await;
        match status {
            200 => accepted += 1,
            422 => assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .contains("stats.max_sources"),
                "{answer}"
            ),
            other => panic!("push {i}: {other} {answer}"),
        }
    }
    assert_eq!(accepted, 4);
    // A kept proxy still replaces its own report.
    let (status, answer) = send(push("p-0", vec![("linear-small".into(), 2.0)])).await;
    assert_eq!(status, 200, "{answer}");

    let metrics = scorer.metrics().await;
    let refused = |reason: &str| {
        metrics.get(&format!(
            "mm_scorer_stats_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(refused("rate_too_high"), 1.0);
    assert_eq!(refused("too_many_models"), 1.0);
    assert_eq!(refused("invalid_rate"), 1.0);
    assert_eq!(refused("invalid_model"), 1.0);
    assert_eq!(refused("too_many_sources"), 196.0);
    assert_eq!(metrics.get("mm_scorer_stats_pushes_total"), 5.0);
    // The refused claims never reached the pool view.
    let (status, explain) = call(
        &client,
        "GET",
        &format!("{}/v2/mm/cache", scorer.url),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Only the kept proxies' one model is in it, at their rates (a substring check on the
    // JSON text was flaky: any float can print the digits "1000000000").
    let hottest = explain["cache"]["hottest"].as_array().unwrap();
    assert_eq!(hottest.len(), 1, "{explain}");
    assert!(
        hottest
            .iter()
            .all(|m| m["model"] == "linear-small" && m["rate"].as_f64().unwrap() < 1e3),
        "{explain}"
    );
    eprintln!("slowest push answer: {slowest:?}");
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
}

#[tokio::test]
async fn keys_of_two_tenants_reach_only_their_models() {
    let store = TempDir::new("auth-tenants");
    let linear = root().join("models/demo/linear-small");
    for id in ["acme-linear", "globex-linear"] {
        copy_tree(&linear, &store.path().join(id));
    }
    let pool_key = format!("auth.pool_key={POOL_KEY}");
    let scorers: Vec<ScorerProcess> = (0..2)
        .map(|_| ScorerProcess::local(store.path(), &[pool_key.as_str()]))
        .collect();
    let addrs: Vec<&str> = scorers.iter().map(|s| s.addr()).collect();
    let proxy = ProxyProcess::start(
        &addrs,
        &[
            pool_key.as_str(),
            "auth.api_keys=acme:acme-k-51d2:acme-,globex:globex-k-88e1:globex-,ops:ops-k-0c4b",
            "auth.admin_keys=acme-admin:acme-adm-6a1f:acme-",
        ],
    );
    let client = reqwest::Client::new();
    let body = infer_body(&reference("linear-small"));
    let infer = |id: &str| format!("{}/v2/models/{id}/infer", proxy.url);
    let scorer_requests = async || {
        let mut total = 0.0;
        for scorer in &scorers {
            let (m, _) = metrics(&client, &scorer.url, POOL_KEY).await;
            total +=
                m.0.iter()
                    // The proxy's statistics pushes and shadow judge come on their own
                    // schedule.
                    .filter(|(n, _)| {
                        n.starts_with("mm_scorer_requests_total{")
                            && !n.contains("\"stats\"")
                            && !n.contains("\"shadows\"")
                    })
                    .map(|(_, v)| v)
                    .sum::<f64>();
        }
        total
    };

    for (key, own, other) in [
        ("acme-k-51d2", "acme-linear", "globex-linear"),
        ("globex-k-88e1", "globex-linear", "acme-linear"),
    ] {
        let (status, answer) = call(&client, "POST", &infer(own), Some(key), Some(&body)).await;
        assert_eq!(status, 200, "{own}: {answer}");
        let (status, answer) = call(&client, "POST", &infer(other), Some(key), Some(&body)).await;
        assert_eq!(status, 403, "{other}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(other),
            "{answer}"
        );
    }
    // Refused before any scorer (so any store) is asked: a model that does not exist is
    // 403, not 404, and no scorer counts a request.
    let before = scorer_requests().await;
    let refused = [
        ("POST", infer("globex-nothing"), Some(&body)),
        (
            "GET",
            format!("{}/v2/models/globex-linear", proxy.url),
            None,
        ),
    ];
    for (method, path, body) in &refused {
        let (status, answer) = call(&client, method, path, Some("acme-k-51d2"), *body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    let after = scorer_requests().await;
    assert_eq!(after, before, "a refused request reached a scorer");
    // The repository index lists what the key admits: its tenant's models for a scoped
    // key (a prefixes header sent by the client is dropped, never trusted), every model
    // for an unscoped one.
    let index = format!("{}/v2/repository/index", proxy.url);
    let listed = async |key: &str, forged: Option<&str>| -> Vec<String> {
        let mut request = client.post(&index).bearer_auth(key);
        if let Some(prefixes) = forged {
            request = request.header("x-mm-model-prefixes", prefixes);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{key}");
        let entries: Vec<Value> = response.json().await.unwrap();
        entries
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed("acme-k-51d2", None).await, ["acme-linear"]);
    assert_eq!(
        listed("acme-k-51d2", Some("globex-|acme-")).await,
        ["acme-linear"]
    );
    assert_eq!(listed("globex-k-88e1", None).await, ["globex-linear"]);
    assert_eq!(
        listed("ops-k-0c4b", None).await,
        ["acme-linear", "globex-linear"]
    );
    assert_eq!(
        listed("ops-k-0c4b", Some("globex-")).await,
        ["acme-linear", "globex-linear"],
        "a client's prefixes header is not the proxy's"
    );
    assert_eq!(
        call(
            &client,
            "POST",
            &infer("globex-linear"),
            Some("ops-k-0c4b"),
            Some(&body)
        )
        .await
        .0,
        200
    );

    // A scoped admin key administers its own models only; an API key is no admin key.
    let load = |id: &str| format!("{}/v2/repository/models/{id}/load", proxy.url);
    let (status, answer) = call(
        &client,
        "POST",
        &load("acme-linear"),
        Some("acme-adm-6a1f"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        call(
            &client,
            "POST",
            &load("globex-linear"),
            Some("acme-adm-6a1f"),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &client,
            "POST",
            &load("acme-linear"),
            Some("acme-k-51d2"),
            None
        )
        .await
        .0,
        401
    );

    // The pool view names every tenant's hottest models: unscoped keys only.
    let pool_view = format!("{}/v2/mm/pool", proxy.url);
    for (key, status) in [
        (Some("acme-k-51d2"), 403),
        (None, 401),
        (Some("ops-k-0c4b"), 200),
    ] {
        assert_eq!(
            call(&client, "GET", &pool_view, key, None).await.0,
            status,
            "{key:?}"
        );
    }

    // One model's placement names scorers and addresses: an admin call about that model,
    // so a scoped admin key sees its own models' only, and an API key none.
    let placement = |id: &str| format!("{}/v2/mm/pool/models/{id}", proxy.url);
    for (id, key, status) in [
        ("acme-linear", Some("acme-adm-6a1f"), 200),
        ("globex-linear", Some("acme-adm-6a1f"), 403),
        ("globex-linear", None, 401),
        ("acme-linear", Some("acme-k-51d2"), 401),
    ] {
        let (got, answer) = call(&client, "GET", &placement(id), key, None).await;
        assert_eq!(got, status, "{id} {key:?}: {answer}");
        if status == 200 {
            assert_eq!(answer["model"], id, "{answer}");
        }
    }

    // Counted by key name, never by key value.
    let text = reqwest::get(format!("{}/metrics", proxy.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = Metrics::parse(&text);
    let by_key = |key: &str, outcome: &str| {
        m.get(&format!(
            "mm_proxy_requests_by_key_total{{key=\"{key}\",outcome=\"{outcome}\"}}"
        ))
    };
    // (An API key on an admin route is no admin key: counted as "none".)
    assert_eq!(by_key("acme", "allowed"), 3.0, "{text}");
    assert_eq!(by_key("acme", "out_of_scope"), 4.0, "{text}");
    assert_eq!(by_key("none", "unauthorized"), 4.0, "{text}");
    assert_eq!(by_key("globex", "allowed"), 2.0);
    assert_eq!(by_key("globex", "out_of_scope"), 1.0);
    assert_eq!(by_key("acme-admin", "allowed"), 2.0);
    assert_eq!(by_key("acme-admin", "out_of_scope"), 2.0);
    for secret in ["acme-k-51d2", "globex-k-88e1", "acme-adm-6a1f", POOL_KEY] {
        assert!(!text.contains(secret), "{secret} in metrics");
        assert!(!proxy.logs().contains(secret), "{secret} in the log");
    }
}

/// Canary calls reach scorers with the pool key, like every forwarded admin call: set and
/// promoted through the proxy, the canary's version is pinned by the owning scorer (which
/// refuses anything without the pool key), and the model's other scorers follow (the
/// proxy's refresh fan-out carries the pool key too).
#[tokio::test]
async fn a_canary_promotion_reaches_scorers_with_the_pool_key() {
    let store = TempDir::new("auth-promote");
    let model = store.path().join("acme-linear");
    copy_tree(&root().join("models/demo/linear-small"), &model);
    copy_tree(&model.join("1"), &model.join("2"));
    let pool_key = format!("auth.pool_key={POOL_KEY}");
    let scorers: Vec<ScorerProcess> = (0..2)
        .map(|_| ScorerProcess::local(store.path(), &[pool_key.as_str()]))
        .collect();
    let addrs: Vec<&str> = scorers.iter().map(|s| s.addr()).collect();
    let proxy = ProxyProcess::start(
        &addrs,
        &[pool_key.as_str(), "auth.admin_keys=ops:ops-adm-5e2d"],
    );
    let client = reqwest::Client::new();
    let admin = format!("{}/v2/admin/models/acme-linear", proxy.url);
    let (status, answer) = call(
        &client,
        "PUT",
        &format!("{admin}/canary"),
        Some("ops-adm-5e2d"),
        Some(&json!({ "version": 1, "percent": 50 })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = call(
        &client,
        "POST",
        &format!("{admin}/canary/promote"),
        Some("ops-adm-5e2d"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pinned"]["live"], 1, "{answer}");
    // Every scorer now serves the pinned version (the owner at once, the others after
    // the refresh the proxy sent them, or their own check).
    for scorer in &scorers {
        let url = format!("{}/v2/mm/models/acme-linear", scorer.url);
        let started = Instant::now();
        loop {
            let (status, state) = call(&client, "GET", &url, Some(POOL_KEY), None).await;
            assert_eq!(status, 200, "{state}");
            if state["pinned"] == 1 && state["live"] == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}: {state}",
                scorer.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
