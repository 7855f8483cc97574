//! Per-key limits and priorities at the proxy, through real processes: a key over its
//! request rate or its in-flight cap gets 429 with `Retry-After` and an error naming the
//! key and the limit (gRPC callers `RESOURCE_EXHAUSTED`), other keys are untouched, and the
//! refusals are counted by key name; a request's priority (its key's setting, else the
//! client's `x-mm-priority`) reaches the scorer on forwarded requests and on the
//! many-model route's.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manymodels_tests::reference::reference;
use manymodels_tests::{Metrics, ProxyProcess, ScorerProcess, free_port, infer_body, root};
use serde_json::{Value, json};

const POOL_KEY: &str = "pool-limits-41c7";
const KEYS: &str = "auth.api_keys=acme:acme-k-1,ops:ops-k-2";

/// `mm_proxy_requests_by_key_total{key, outcome}` on `proxy`.
async fn by_key(client: &reqwest::Client, proxy: &str, key: &str, outcome: &str) -> f64 {
    let text = client
        .get(format!("{proxy}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Metrics::parse(&text).get(&format!(
        "mm_proxy_requests_by_key_total{{key=\"{key}\",outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let pool_key = format!("auth.pool_key={POOL_KEY}");
    let scorer = ScorerProcess::local(&root().join("models/demo"), &[pool_key.as_str()]);
    // 0.2 requests a second, bursts of 2: the third request at once is over the rate, and
    // the bucket holds a token again within 5 s.
    let proxy = ProxyProcess::start(
        &[scorer.addr()],
        &[
            pool_key.as_str(),
            KEYS,
            "limits.rate=acme=0.2",
            "limits.burst=acme=2",
        ],
    );
    let client = reqwest::Client::new();
    let body = infer_body(&reference("linear-small"));
    let url = format!("{}/v2/models/linear-small/infer", proxy.url);
    let infer = |key: &'static str| client.post(&url).bearer_auth(key).json(&body).send();
    for i in 0..2 {
        assert_eq!(infer("acme-k-1").await.unwrap().status(), 200, "burst {i}");
    }
    let refused = infer("acme-k-1").await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    let error: Value = refused.json().await.unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("'acme'") && message.contains("request rate of 0.2/s (burst 2)"),
        "{message}"
    );
    // Another key has its own (no) limit.
    for _ in 0..5 {
        assert_eq!(infer("ops-k-2").await.unwrap().status(), 200);
    }
    // A gRPC call with the limited key: the gRPC code of 429 (RESOURCE_EXHAUSTED, 8),
    // through the proxy's own gRPC answer (over HTTP/1.1 the status is in the headers).
    let grpc = client
        .post(format!(
            "{}/inference.GRPCInferenceService/ModelInfer",
            proxy.url
        ))
        .bearer_auth("acme-k-1")
        .header("content-type", "application/grpc")
        .header("mm-model-id", "linear-small")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(grpc.headers()["grpc-status"], "8");
    let message = grpc.headers()["grpc-message"].to_str().unwrap().to_string();
    assert!(message.contains("acme"), "{message}");
    assert_eq!(by_key(&client, &proxy.url, "acme", "allowed").await, 2.0);
    assert_eq!(
        by_key(&client, &proxy.url, "acme", "rate_limited").await,
        2.0
    );
    assert_eq!(by_key(&client, &proxy.url, "ops", "allowed").await, 5.0);
    // After Retry-After the key is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(infer("acme-k-1").await.unwrap().status(), 200);
}

/// Sends a request's headers and the first half of its body to `proxy`, and holds the rest
/// back: the request is in flight (admitted, its body still coming) until `finish`.
struct Stalled {
    stream: std::net::TcpStream,
    rest: Vec<u8>,
}

impl Stalled {
    fn start(proxy_addr: &str, path: &str, key: &str, body: &[u8]) -> Stalled {
        let mut stream = std::net::TcpStream::connect(proxy_addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {proxy_addr}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..half]).unwrap();
        stream.flush().unwrap();
        Stalled {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest of the body; the answer's status.
    fn finish(mut self) -> u16 {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        self.stream.write_all(&self.rest).unwrap();
        let mut answer = String::new();
        let _ = self.stream.read_to_string(&mut answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn a_key_over_its_inflight_cap_gets_429_until_one_of_its_requests_ends() {
    let pool_key = format!("auth.pool_key={POOL_KEY}");
    let scorer = ScorerProcess::local(&root().join("models/demo"), &[pool_key.as_str()]);
    let proxy = ProxyProcess::start(
        &[scorer.addr()],
        &[pool_key.as_str(), KEYS, "limits.inflight=acme=2"],
    );
    let client = reqwest::Client::new();
    let body = infer_body(&reference("linear-small"));
    let bytes = serde_json::to_vec(&body).unwrap();
    let path = "/v2/models/linear-small/infer";
    let url = format!("{}{path}", proxy.url);
    let addr = proxy.addr().to_string();
    // Two requests of the key in flight (their bodies still coming).
    let first = Stalled::start(&addr, path, "acme-k-1", &bytes);
    let second = Stalled::start(&addr, path, "acme-k-1", &bytes);
    // Admission happens as the proxy reads their headers: wait until both are counted.
    for _ in 0..100 {
        if by_key(&client, &proxy.url, "acme", "allowed").await == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(by_key(&client, &proxy.url, "acme", "allowed").await, 2.0);
    let refused = client
        .post(&url)
        .bearer_auth("acme-k-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().await.unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("'acme'") && message.contains("its 2 requests in flight"),
        "{message}"
    );
    // Another key is not held to acme's cap.
    let other = client
        .post(&url)
        .bearer_auth("ops-k-2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // One ends: the key may send one more (and its slot is given back at the end too).
    let status = tokio::task::spawn_blocking(move || first.finish())
        .await
        .unwrap();
    assert_eq!(status, 200);
    for _ in 0..3 {
        let again = client
            .post(&url)
            .bearer_auth("acme-k-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 200, "one slot free: served one at a time");
    }
    let status = tokio::task::spawn_blocking(move || second.finish())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        by_key(&client, &proxy.url, "acme", "inflight_limited").await,
        1.0
    );
    assert_eq!(by_key(&client, &proxy.url, "acme", "allowed").await, 5.0);
}

/// A stand-in scorer that records the `x-mm-priority` (or `-` without one) of every request
/// but its health checks, and answers 200 to everything (an empty OIP answer).
struct Recorder {
    addr: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = format!("127.0.0.1:{}", free_port());
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    // One request per connection is enough here: answer and close.
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buffer).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let head = text[..end].to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buffer.len() < end + 4 + length {
                            continue;
                        }
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        if !path.starts_with("/v2/health") {
                            let priority = head
                                .lines()
                                .find_map(|l| l.strip_prefix("x-mm-priority:"))
                                .map_or("-".to_string(), |v| v.trim().to_string());
                            record.lock().unwrap().push((path, priority));
                        }
                        let answer = r#"{"model_name":"m","outputs":[]}"#;
                        let _ = stream
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                     content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                                    answer.len()
                                )
                                .as_bytes(),
                            )
                            .await;
                        return;
                    }
                });
            }
        });
        Recorder { addr, seen }
    }

    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

// Two workers: the stand-in scorer answers while the harness waits (blocking) for the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_priority_reaches_the_scorer_and_a_keys_setting_wins() {
    let scorer = Recorder::start().await;
    let proxy = ProxyProcess::start(
        &[scorer.addr.as_str()],
        &[
            "auth.api_keys=acme:acme-k-1,etl:etl-k-3",
            "limits.priority=etl=batch",
            // The recorder answers nothing the pusher or the shadow judge could read: no
            // pushes, no judge.
            "stats.push_interval=0s",
            "shadow.judge_interval=0s",
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v2/models/m/infer", proxy.url);
    let send = async |key: &str, priority: Option<&str>| {
        let mut request = client
            .post(&url)
            .bearer_auth(key)
            .json(&json!({"inputs": []}));
        if let Some(priority) = priority {
            request = request.header("x-mm-priority", priority);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };
    let cases = [
        ("acme-k-1", None, "-", "nothing said: nothing sent"),
        ("acme-k-1", Some("batch"), "batch", "the client's header"),
        (
            "acme-k-1",
            Some("interactive"),
            "interactive",
            "the client's header",
        ),
        ("etl-k-3", None, "batch", "the key's setting"),
        (
            "etl-k-3",
            Some("interactive"),
            "batch",
            "the key's setting wins",
        ),
    ];
    for (key, asked, forwarded, why) in cases {
        let (status, text) = send(key, asked).await;
        assert_eq!(status, 200, "{why}: {text}");
        assert_eq!(
            scorer.take(),
            [("/v2/models/m/infer".to_string(), forwarded.to_string())],
            "{key} {asked:?}: {why}"
        );
    }
    // A malformed priority is the client's error: 400, nothing reaches the scorer.
    let (status, text) = send("acme-k-1", Some("urgent")).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("x-mm-priority"), "{text}");
    assert!(scorer.take().is_empty());
    // The many-model route's requests to scorers carry it too.
    let batch = client
        .post(format!("{}/v2/mm/batch", proxy.url))
        .bearer_auth("etl-k-3")
        .json(&json!({"records": [{"model": "m", "features": [1.0]}]}))
        .send()
        .await
        .unwrap();
    // (The stand-in's answer is no groups' answer, so the record fails: only the header
    // it was sent matters here.)
    let _ = batch.text().await;
    assert_eq!(
        scorer.take(),
        [("/v2/mm/records".to_string(), "batch".to_string())]
    );
}
