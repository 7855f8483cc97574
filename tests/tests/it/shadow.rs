//! Per-model shadows on real scorers behind real proxies: the candidate runs on its share
//! of the live requests, every client answer is the live version's, the proxy sums every
//! scorer's counts, and the judge promotes a candidate that meets its rule (exactly once,
//! guarded by the shadow's `since_ms`), never one that fails it. A key scoped to model-id
//! prefixes sees and changes only its models' shadows.

use std::process::Command;
use std::time::{Duration, Instant};

use manymodels_contract::shadow::{PoolShadows, ShadowView, Verdict};
use manymodels_tests::http::call;
use manymodels_tests::metrics::Metrics;
use manymodels_tests::process::{Pool, ProxyProcess, addrs, binary};
use manymodels_tests::reference::{infer_body, reference};
use manymodels_tests::{TempDir, copy_tree, root, write_model};
use serde_json::{Value, json};

const VERDICTS: &str = "mm_proxy_shadow_verdicts_total";
const PROMOTIONS: &str = "mm_proxy_shadow_promotions_total";

/// `mmctl` with only what the test passes (no config file, no environment).
async fn mmctl(args: &[&str]) -> (i32, String, String) {
    let home = TempDir::new("mmctl-shadow-home");
    let output = tokio::process::Command::new(binary("mmctl"))
        .env("XDG_CONFIG_HOME", home.path())
        .env_remove("MMCTL_PROXY")
        .env_remove("MMCTL_KEY")
        .env_remove("MMCTL_STORE")
        .env_remove("MMCTL_CONFIG")
        .args(args)
        .output()
        .await
        .expect("mmctl runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A store where `id` is the demo model `demo` as version 1 (pinned: it stays live) and
/// `candidate` as version 2.
fn two_versions(store: &std::path::Path, id: &str, demo: &str, candidate: &[u8]) {
    let v1 = std::fs::read(root().join("models/demo").join(demo).join("1/model.onnx")).unwrap();
    write_model(store, id, 1, &v1).unwrap();
    write_model(store, id, 2, candidate).unwrap();
    std::fs::write(store.join(id).join("alias.json"), r#"{"pinned": 1}"#).unwrap();
}

/// logistic-churn with its coefficients negated (Python's `onnx`): the same inputs and
/// outputs, other probabilities, and the first reference row's label flips.
fn disagreeing_churn() -> Vec<u8> {
    let script = r#"
import sys, onnx
m = onnx.load(sys.argv[1])
for a in m.graph.node[0].attribute:
    if a.name == "coefficients":
        v = [-x for x in a.floats]
        del a.floats[:]
        a.floats.extend(v)
sys.stdout.buffer.write(m.SerializeToString())
"#;
    let model = root().join("models/demo/logistic-churn/1/model.onnx");
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&model)
        .output()
        .expect("running python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The sample of `name` carrying every one of `labels` (`key="value"`), whatever their
/// order; 0 when there is none.
fn sample(metrics: &Metrics, name: &str, labels: &[&str]) -> f64 {
    metrics
        .0
        .iter()
        .find(|(n, _)| {
            n.split_once('{').is_some_and(|(metric, rest)| {
                metric == name && labels.iter().all(|label| rest.contains(label))
            })
        })
        .map_or(0.0, |(_, v)| *v)
}

/// Scores `id` with its demo model's reference rows; (status, version answered).
async fn score(client: &reqwest::Client, proxy: &str, id: &str, demo: &str) -> (u16, Option<u64>) {
    let (status, answer) = call(
        client,
        "POST",
        &format!("{proxy}/v2/models/{id}/infer"),
        None,
        Some(&infer_body(&reference(demo))),
    )
    .await;
    let version = answer["model_version"]
        .as_str()
        .and_then(|v| v.parse().ok());
    (status, version)
}

/// The pool's view of `id`'s shadow (`None`: no shadow), through `proxy` with `key`.
async fn view(
    client: &reqwest::Client,
    proxy: &str,
    id: &str,
    key: Option<&str>,
) -> Option<ShadowView> {
    let (status, body) = call(
        client,
        "GET",
        &format!("{proxy}/v2/admin/models/{id}/shadow"),
        key,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pool: PoolShadows = serde_json::from_value(body.clone()).unwrap();
    assert!(pool.missing.is_empty(), "{body}");
    assert!(pool.shadows.len() <= 1, "{body}");
    pool.shadows.into_iter().next()
}

/// Waits (at most 20 s) until the pooled view of `id` (asked with `key`) says `done`;
/// answers that view.
async fn until_view(
    client: &reqwest::Client,
    proxy: &str,
    id: &str,
    key: Option<&str>,
    mut done: impl FnMut(&ShadowView) -> bool,
) -> ShadowView {
    let started = Instant::now();
    loop {
        let seen = view(client, proxy, id, key).await;
        if let Some(seen) = seen.filter(|v| done(v)) {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{id}'s shadow did not get there in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_agreeing_candidate_is_compared_on_its_share_and_promoted_by_the_judge() {
    let store = TempDir::new("shadow-agree");
    let (id, demo) = ("shadow-lin", "linear-small");
    // The candidate is the same file: every answer agrees.
    let same = std::fs::read(root().join("models/demo/linear-small/1/model.onnx")).unwrap();
    two_versions(store.path(), id, demo, &same);
    // Proxy `a` carries the traffic and never judges; the judge runs in proxy `b`, started
    // once the counts are checked. Hedging off: a hedged request runs on two scorers and
    // would be compared twice.
    let Pool { scorers, proxy: a } = Pool::local(
        store.path(),
        3,
        &[],
        &["hedge.enabled=false", "shadow.judge_interval=0"],
    );
    let client = reqwest::Client::new();
    assert_eq!(score(&client, &a.url, id, demo).await, (200, Some(1)));
    let (code, out, err) = mmctl(&[
        "--proxy",
        &a.url,
        "shadow",
        "set",
        id,
        "2",
        "--percent",
        "50",
        "--min-requests",
        "40",
        "--min-agreement",
        "0.99",
        "--action",
        "promote",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("version 2 shadows 50%"), "{out}");
    assert!(out.contains("then promote"), "{out}");
    let stored = std::fs::read_to_string(store.path().join(id).join("shadow.json")).unwrap();
    assert!(stored.contains("\"percent\":50"), "{stored}");
    // A bounded number of requests: every answer is version 1's, none fails.
    const SENT: u64 = 160;
    for chunk in 0..SENT / 10 {
        let answers =
            futures::future::join_all((0..10).map(|_| score(&client, &a.url, id, demo))).await;
        for answer in answers {
            assert_eq!(answer, (200, Some(1)), "chunk {chunk}");
        }
    }
    // The candidate runs after the answer: wait for the counts to settle.
    let mut last = None;
    let seen = until_view(&client, &a.url, id, None, |v| {
        let settled = last.replace(v.counts.compared) == Some(v.counts.compared);
        settled && v.counts.compared >= 40
    })
    .await;
    let c = &seen.counts;
    // About half of the live requests (binomial: 80 ± 6.3), none failed or flipped.
    assert!(
        (50..=110).contains(&(c.compared + c.skipped)),
        "compared {} and skipped {} of {SENT}",
        c.compared,
        c.skipped
    );
    assert_eq!(
        (c.agreed, c.errors, c.label_flips),
        (c.compared, 0, 0),
        "{c:?}"
    );
    assert_eq!(c.max_abs_diff, 0.0);
    assert_eq!((seen.spec.version, seen.live), (2, Some(1)));
    assert_eq!(seen.verdict, Verdict::Met);
    // mmctl shows the same, as text and as JSON.
    let (code, out, err) = mmctl(&["--proxy", &a.url, "shadow", "show", id]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(id) && out.contains("100%") && out.contains("met"),
        "{out}"
    );
    let (code, out, _) = mmctl(&["--proxy", &a.url, "--json", "shadow", "show"]).await;
    assert_eq!(code, 0);
    let shown: PoolShadows = serde_json::from_str(&out).unwrap();
    assert_eq!(shown.shadows.len(), 1, "{out}");
    let (code, out, _) = mmctl(&["--proxy", &a.url, "explain", id]).await;
    assert_eq!(code, 0);
    assert!(out.contains("shadow (pool-wide)"), "{out}");
    // Still version 1: proxy `a` does not judge.
    assert_eq!(score(&client, &a.url, id, demo).await, (200, Some(1)));

    // The judge (two replicas' worth: `b` and `c`) promotes it once: version 2 goes live
    // and the shadow is gone.
    let judges: Vec<ProxyProcess> = (0..2)
        .map(|_| ProxyProcess::start(&addrs(&scorers), &["shadow.judge_interval=300ms"]))
        .collect();
    let started = Instant::now();
    while score(&client, &a.url, id, demo).await.1 != Some(2) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not promoted in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(score(&client, &a.url, id, demo).await, (200, Some(2)));
    }
    let started = Instant::now();
    while view(&client, &a.url, id, None).await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shadow still shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!store.path().join(id).join("shadow.json").exists());
    let alias = std::fs::read_to_string(store.path().join(id).join("alias.json")).unwrap();
    assert!(alias.contains('2'), "{alias}");
    // Promoted once between the two judges: each judge that saw the rule met (once) asked
    // for the promotion, and every ask but one found it done.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (mut met, mut promoted, mut done) = (0.0, 0.0, 0.0);
    for judge in &judges {
        let metrics = judge.metrics().await;
        met += sample(
            &metrics,
            VERDICTS,
            &[r#"verdict="met""#, r#"action="promote""#],
        );
        promoted += sample(&metrics, PROMOTIONS, &[r#"result="promoted""#]);
        done += sample(&metrics, PROMOTIONS, &[r#"result="already_done""#]);
        assert_eq!(sample(&metrics, PROMOTIONS, &[r#"result="failed""#]), 0.0);
    }
    assert_eq!(promoted, 1.0, "exactly one judge promoted");
    assert!((1.0..=2.0).contains(&met), "{met}");
    assert_eq!(promoted + done, met);
}

#[tokio::test]
async fn a_disagreeing_candidate_fails_its_rule_and_a_scoped_key_sees_only_its_shadows() {
    let store = TempDir::new("shadow-disagree");
    let (id, demo) = ("acme-churn", "logistic-churn");
    two_versions(store.path(), id, demo, &disagreeing_churn());
    // Another tenant's shadow, without a rule.
    let other = "globex-lin";
    copy_tree(
        &root().join("models/demo/linear-small"),
        &store.path().join(other),
    );
    let linear = std::fs::read(root().join("models/demo/linear-small/1/model.onnx")).unwrap();
    write_model(store.path(), other, 2, &linear).unwrap();
    std::fs::write(
        store.path().join(other).join("alias.json"),
        r#"{"pinned": 1}"#,
    )
    .unwrap();
    let keys = "auth.admin_keys=root:root-k,acme:acme-k:acme-";
    let Pool {
        scorers: _scorers,
        proxy,
    } = Pool::local(
        store.path(),
        2,
        &[],
        &[keys, "hedge.enabled=false", "shadow.judge_interval=300ms"],
    );
    let client = reqwest::Client::new();
    let url = |model: &str| format!("{}/v2/admin/models/{model}/shadow", proxy.url);
    let rule = json!({"min_requests": 20, "min_agreement": 0.99, "action": "promote"});
    // The scoped key sets its own model's shadow, not another's.
    let (status, body) = call(
        &client,
        "PUT",
        &url(id),
        Some("acme-k"),
        Some(&json!({"version": 2, "percent": 100, "rule": rule})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let globex = json!({"version": 2, "percent": 100});
    let (status, body) = call(&client, "PUT", &url(other), Some("acme-k"), Some(&globex)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(&client, "PUT", &url(other), Some("root-k"), Some(&globex)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&client, "PUT", &url(other), None, Some(&globex)).await;
    assert_eq!(status, 401);

    for _ in 0..40 {
        assert_eq!(score(&client, &proxy.url, id, demo).await, (200, Some(1)));
    }
    for _ in 0..5 {
        assert_eq!(
            score(&client, &proxy.url, other, "linear-small").await,
            (200, Some(1))
        );
    }
    let seen = until_view(&client, &proxy.url, id, Some("root-k"), |v| {
        v.counts.compared >= 20
    })
    .await;
    let c = &seen.counts;
    assert_eq!(seen.verdict, Verdict::Failed, "{c:?}");
    assert!(c.agreement().unwrap() < 0.99, "{c:?}");
    // The first reference row's label flips in every compared request; probabilities
    // differ by up to about 0.78.
    assert_eq!(c.label_flips, c.compared, "{c:?}");
    assert!(c.max_abs_diff > 0.5 && c.elements > 0, "{c:?}");
    // The judge rounds go by: the candidate is not promoted, the shadow stays.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(score(&client, &proxy.url, id, demo).await, (200, Some(1)));
    assert!(
        view(&client, &proxy.url, id, Some("root-k"))
            .await
            .is_some()
    );
    assert!(store.path().join(id).join("shadow.json").exists());
    let metrics = proxy.metrics().await;
    let failed = [r#"verdict="failed""#, r#"action="promote""#];
    assert_eq!(sample(&metrics, VERDICTS, &failed), 1.0);
    assert_eq!(sample(&metrics, PROMOTIONS, &[r#"result="promoted""#]), 0.0);

    // Every shadow: the unscoped key sees both, the scoped key only its own; one model's
    // shadow outside its prefixes is refused.
    let every = |key: &'static str| {
        let client = client.clone();
        let url = format!("{}/v2/admin/shadows", proxy.url);
        async move {
            let (status, body) = call(&client, "GET", &url, Some(key), None).await;
            assert_eq!(status, 200, "{body}");
            let pool: PoolShadows = serde_json::from_value(body).unwrap();
            pool.shadows
                .into_iter()
                .map(|s| s.model)
                .collect::<Vec<String>>()
        }
    };
    assert_eq!(every("root-k").await, [id, other]);
    assert_eq!(every("acme-k").await, [id]);
    let (status, _) = call(&client, "GET", &url(other), Some("acme-k"), None).await;
    assert_eq!(status, 403);
    let (status, body): (u16, Value) = call(
        &client,
        "POST",
        &format!("{}/promote", url(other)),
        Some("acme-k"),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // A promotion guarded by another shadow's `since_ms` is refused (the proxy passes the
    // guard on to the scorer).
    let (status, body) = call(
        &client,
        "POST",
        &format!("{}/promote?since_ms=1", url(id)),
        Some("acme-k"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    // The scoped key drops its own shadow.
    let (status, body) = call(&client, "DELETE", &url(id), Some("acme-k"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dropped"]["version"], 2, "{body}");
    assert!(!store.path().join(id).join("shadow.json").exists());
    // Every scorer stops counting it once it looked at the store (asked at once by the
    // proxy after the drop).
    let started = Instant::now();
    while !every("acme-k").await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a dropped shadow still listed after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
