//! Payload capture through real processes: rules set with `mmctl` and the admin API
//! through a proxy, requests over REST, gRPC and the many-model route written as JSON
//! lines in the time-partitioned layout of the local store (inputs and outputs as sent
//! and answered, with the answer's request id and version), scoped keys held to their
//! prefixes, sampling at a rate, a tiny queue dropping (counted) while every request
//! succeeds, and a dropped rule stopping capture at runtime. (The Azure store's objects,
//! in the same layout, are checked on Azurite in the store crate's tests.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manymodels_contract::batch::{BatchAnswer, RecordResult, Values};
use manymodels_contract::capture::{CaptureLine, CaptureView};
use manymodels_models::Mix;
use manymodels_tests::grpc::{self, pb};
use manymodels_tests::http::call;
use manymodels_tests::process::{Pool, ScorerProcess, binary};
use manymodels_tests::{TempDir, generated_rows, rows_body};
use serde_json::{Value, json};

/// Floats are written by the scorer as the shortest text that reads back as the same
/// f32: they must come back within this relative tolerance (in practice, exactly).
const TOLERANCE: f64 = 1e-6;

const ROOT: &str = "root-k-19ab";
const SCOPED: &str = "acme-k-77f0";

/// `n` tiny models (`gen-00000`...), each with its feature count.
fn store(name: &str, n: usize) -> (TempDir, Vec<usize>) {
    let store = TempDir::new(name);
    manymodels_models::write_store(store.path(), n, Mix::Tiny, 5).unwrap();
    let features = (0..n)
        .map(|i| manymodels_models::spec_for(i, Mix::Tiny, 5).features())
        .collect();
    (store, features)
}

/// Every capture line under `<store>/_captures`, with the file it is in (relative).
fn lines(store: &Path) -> Vec<(String, CaptureLine)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&store.join("_captures"), &mut files);
    files.sort();
    let mut all = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(store)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let parsed: CaptureLine =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{relative}: {e}: {line}"));
            all.push((relative.clone(), parsed));
        }
    }
    all
}

/// Waits (up to 20 s) until `done` holds of the store's lines, and answers them.
async fn lines_until(
    store: &Path,
    done: impl Fn(&[(String, CaptureLine)]) -> bool,
) -> Vec<(String, CaptureLine)> {
    let started = Instant::now();
    loop {
        let now = lines(store);
        if done(&now) || started.elapsed() > Duration::from_secs(20) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOLERANCE * w.abs().max(1.0),
            "{what}[{i}]: {g} != {w}"
        );
    }
}

/// The layout: `_captures/<model>/<yyyy>/<MM>/<dd>/<HH>/<scorer>-<unix ms>-<n>.jsonl`,
/// the hour folders being the line's own (UTC) hour.
fn assert_layout(file: &str, line: &CaptureLine) {
    let parts: Vec<&str> = file.split('/').collect();
    assert_eq!(parts.len(), 7, "{file}");
    assert_eq!(
        (parts[0], parts[1]),
        ("_captures", line.model.as_str()),
        "{file}"
    );
    let hour = format!("{}/{}/{}/{}", parts[2], parts[3], parts[4], parts[5]);
    assert_eq!(hour, line.time[..13].replace(['-', 'T'], "/"), "{file}");
    let name = parts[6].strip_suffix(".jsonl").unwrap();
    let mut pieces = name.rsplitn(3, '-');
    let (n, ms) = (pieces.next().unwrap(), pieces.next().unwrap());
    assert!(
        n.parse::<u64>().is_ok() && ms.parse::<u64>().is_ok(),
        "{file}"
    );
    assert!(
        line.time.ends_with('Z') && line.time.len() == 24,
        "{}",
        line.time
    );
}

/// `mmctl` with only what the test passes (no config file, no environment).
async fn mmctl(args: &[&str]) -> (i32, String, String) {
    let home = TempDir::new("mmctl-capture-home");
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

/// Waits until every scorer uses a rule set of `count` rules (the proxy's refresh
/// fan-out runs in the background).
async fn scorers_have(pool: &Pool, count: usize) {
    let client = reqwest::Client::new();
    for scorer in &pool.scorers {
        let started = Instant::now();
        loop {
            let (status, body) = call(
                &client,
                "GET",
                &format!("{}/v2/mm/capture", scorer.url),
                None,
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            if body["rules"].as_array().map(Vec::len) == Some(count) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}: {body}",
                scorer.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn rest_grpc_and_many_model_requests_are_captured_as_sent_and_answered() {
    // gen-00000 ... gen-00011: the rule `gen-0000` takes the first ten, not gen-0001x.
    let (store, features) = store("capture-routes", 12);
    let pool = Pool::local(
        store.path(),
        2,
        &["capture.flush_interval=200ms"],
        &[&format!(
            "auth.admin_keys=root:{ROOT},acme:{SCOPED}:gen-0001"
        )],
    );
    let proxy = pool.proxy.url.clone();
    let client = reqwest::Client::new();

    // On through mmctl, at rate 1, with an admin key.
    let (code, stdout, stderr) = mmctl(&[
        "--proxy", &proxy, "--key", ROOT, "--json", "capture", "set", "gen-0000", "--rate", "1",
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let view: CaptureView = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view.rules.len(), 1);
    assert_eq!(
        (view.rules[0].prefix.as_str(), view.rules[0].rate),
        ("gen-0000", 1.0)
    );
    scorers_have(&pool, 1).await;

    // REST.
    let rest_model = manymodels_models::model_id(1);
    let rest_rows = generated_rows(features[1], 3, 41);
    let response = client
        .post(format!("{proxy}/v2/models/{rest_model}/infer"))
        .json(&rows_body(&rest_rows))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rest_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let rest_answer: Value = response.json().await.unwrap();

    // gRPC, through the proxy on the same port.
    let grpc_model = manymodels_models::model_id(2);
    let grpc_rows = generated_rows(features[2], 2, 42);
    let inputs = rows_body(&grpc_rows)["inputs"].clone();
    let mut grpc_client = grpc::connect(pool.proxy.addr()).await;
    let grpc_response = grpc_client
        .model_infer(grpc::routed(
            &grpc_model,
            grpc::infer_request(&grpc_model, &inputs, true),
        ))
        .await
        .unwrap();
    let grpc_id = grpc_response
        .metadata()
        .get("x-request-id")
        .expect("the gRPC answer carries x-request-id")
        .to_str()
        .unwrap()
        .to_string();
    let grpc_message: pb::ModelInferResponse = grpc_response.into_inner();
    let grpc_outputs = grpc::outputs_json(&grpc_message);

    // The many-model route: a captured model and one no rule takes.
    let (batch_model, quiet_model) = (
        manymodels_models::model_id(3),
        manymodels_models::model_id(10),
    );
    let batch_rows = generated_rows(features[3], 2, 43);
    let quiet_row = generated_rows(features[10], 1, 44).remove(0);
    let body = json!({"records": [
        {"model": batch_model, "features": batch_rows[0]},
        {"model": quiet_model, "features": quiet_row},
        {"model": batch_model, "features": batch_rows[1]},
    ]});
    let response = client
        .post(format!("{proxy}/v2/mm/batch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let batch_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let batch: BatchAnswer = response.json().await.unwrap();
    assert_eq!(batch.failed, 0);

    let found = lines_until(store.path(), |lines| {
        [&rest_model, &grpc_model, &batch_model]
            .iter()
            .all(|m| lines.iter().any(|(_, l)| &&l.model == m))
    })
    .await;
    assert!(
        found.iter().all(|(_, l)| l.model != quiet_model),
        "a model no rule takes is not captured"
    );
    for (file, line) in &found {
        assert_layout(file, line);
        assert_eq!(line.version, 1);
        assert!(line.latency_ms >= 0.0);
    }
    let line_of = |model: &str| {
        let of: Vec<&CaptureLine> = found
            .iter()
            .filter(|(_, l)| l.model == model)
            .map(|(_, l)| l)
            .collect();
        assert_eq!(of.len(), 1, "{model}: {of:?}");
        of[0].clone()
    };

    let rest = line_of(&rest_model);
    assert_eq!(
        (rest.protocol.as_str(), rest.request_id.as_str()),
        ("rest", rest_id.as_str())
    );
    assert_eq!(rest_answer["model_version"], "1");
    assert_eq!(rest.inputs[0].shape, vec![3, features[1] as i64]);
    let sent: Vec<f64> = rest_rows.iter().flatten().map(|&v| f64::from(v)).collect();
    assert_close(&floats(&rest.inputs[0].data), &sent, "rest input");
    let answered = rest_answer["outputs"].as_array().unwrap();
    assert_eq!(rest.outputs.len(), answered.len());
    for (got, want) in rest.outputs.iter().zip(answered) {
        assert_eq!(got.name, want["name"].as_str().unwrap());
        assert_eq!(got.datatype, want["datatype"].as_str().unwrap());
        assert_close(&floats(&got.data), &floats(&want["data"]), "rest output");
    }

    let grpc_line = line_of(&grpc_model);
    assert_eq!(
        (grpc_line.protocol.as_str(), grpc_line.request_id.as_str()),
        ("grpc", grpc_id.as_str())
    );
    let sent: Vec<f64> = grpc_rows.iter().flatten().map(|&v| f64::from(v)).collect();
    assert_close(&floats(&grpc_line.inputs[0].data), &sent, "grpc input");
    for (got, want) in grpc_line
        .outputs
        .iter()
        .zip(grpc_outputs.as_array().unwrap())
    {
        assert_eq!(got.name, want["name"].as_str().unwrap());
        assert_close(&floats(&got.data), &floats(&want["data"]), "grpc output");
    }

    // The many-model route's records for one model are one group: one line.
    let grouped = line_of(&batch_model);
    assert_eq!(
        (grouped.protocol.as_str(), grouped.request_id.as_str()),
        ("records", batch_id.as_str())
    );
    let sent: Vec<f64> = batch_rows.iter().flatten().map(|&v| f64::from(v)).collect();
    assert_close(&floats(&grouped.inputs[0].data), &sent, "records input");
    let mut answered: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in [0, 2] {
        let RecordResult::Scored { outputs } = &batch.results[r].result else {
            panic!("{:?}", batch.results[r]);
        };
        for (name, values) in outputs {
            let Values::Floats(v) = values else {
                continue;
            };
            answered
                .entry(name.clone())
                .or_default()
                .extend(v.iter().map(|&x| f64::from(x)));
        }
    }
    for output in &grouped.outputs {
        if let Some(want) = answered.get(&output.name) {
            assert_close(&floats(&output.data), want, "records output");
        }
    }

    // A scoped key (`gen-0001`) may not set or drop another prefix's rule, sets its own,
    // and sees only its own.
    let rule = |prefix: &str| format!("{proxy}/v2/mm/capture/{prefix}");
    let rate = json!({"rate": 0.5});
    let (status, body) = call(&client, "PUT", &rule("gen-00"), Some(SCOPED), Some(&rate)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = call(&client, "DELETE", &rule("gen-0000"), Some(SCOPED), None).await;
    assert_eq!(status, 403);
    let (status, body) = call(
        &client,
        "PUT",
        &rule("gen-00011"),
        Some(SCOPED),
        Some(&rate),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &client,
        "GET",
        &format!("{proxy}/v2/mm/capture"),
        Some(SCOPED),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seen: CaptureView = serde_json::from_value(body).unwrap();
    assert_eq!(
        seen.rules
            .iter()
            .map(|r| r.prefix.as_str())
            .collect::<Vec<_>>(),
        ["gen-00011"]
    );
    let (_, body) = call(
        &client,
        "GET",
        &format!("{proxy}/v2/mm/capture"),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(body["rules"].as_array().unwrap().len(), 2, "{body}");
    // Without a key, and with bad input.
    let (status, _) = call(
        &client,
        "GET",
        &format!("{proxy}/v2/mm/capture"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = call(
        &client,
        "PUT",
        &rule("gen-0000"),
        Some(ROOT),
        Some(&json!({"rate": 2})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(&client, "DELETE", &rule("nothing"), Some(ROOT), None).await;
    assert_eq!(status, 404, "{body}");

    // Dropped through mmctl: no new lines, on either scorer.
    let (code, stdout, stderr) = mmctl(&[
        "--proxy", &proxy, "--key", ROOT, "capture", "drop", "gen-0000",
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = mmctl(&["--proxy", &proxy, "--key", ROOT, "capture", "show"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("gen-00011") && !stdout.contains("gen-0000 "),
        "{stdout}"
    );
    scorers_have(&pool, 1).await;
    let before = lines(store.path()).len();
    for _ in 0..10 {
        let response = client
            .post(format!("{proxy}/v2/models/{rest_model}/infer"))
            .json(&rows_body(&rest_rows))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Several flush intervals.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        lines(store.path()).len(),
        before,
        "no capture after the drop"
    );
}

#[tokio::test]
async fn sampling_takes_its_share_and_a_full_queue_drops_without_failing_requests() {
    let (store, features) = store("capture-rates", 2);
    let model = manymodels_models::model_id(0);
    let rows = generated_rows(features[0], 1, 7);
    let client = reqwest::Client::new();

    // Rate 0.25 over 400 requests: 100 expected, standard deviation 8.7; 60-140 is over
    // four and a half of them either way.
    let scorer = ScorerProcess::local(store.path(), &["capture.flush_interval=200ms"]);
    let (status, body) = call(
        &client,
        "PUT",
        &format!("{}/v2/mm/capture/{model}", scorer.url),
        None,
        Some(&json!({"rate": 0.25, "exact": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The scorer holds a caller to the prefixes the proxy names (`x-mm-model-prefixes`)
    // too: a rule outside them is refused, and the view leaves out the rules outside them.
    let scoped = |request: reqwest::RequestBuilder| {
        request.header(
            manymodels_contract::header::MODEL_PREFIXES,
            "gen-0001|other-",
        )
    };
    let response = scoped(client.put(format!("{}/v2/mm/capture/gen-", scorer.url)))
        .json(&json!({"rate": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let view: CaptureView = scoped(client.get(format!("{}/v2/mm/capture", scorer.url)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(view.rules.is_empty(), "{view:?}");
    let n = 400;
    for _ in 0..n {
        let (status, _, _) = manymodels_tests::http::post_via(
            &client,
            &format!("{}/v2/models/{model}/infer", scorer.url),
            &rows_body(&rows),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, body) = call(
        &client,
        "GET",
        &format!("{}/v2/mm/capture", scorer.url),
        None,
        None,
    )
    .await;
    let view: CaptureView = serde_json::from_value(body).unwrap();
    let queued = view.counters.queued;
    assert!(
        (60..=140).contains(&queued),
        "{queued} of {n} sampled at 0.25"
    );
    let written = lines_until(store.path(), |l| l.len() as u64 == queued).await;
    assert_eq!(written.len() as u64, queued);
    let metrics = scorer.metrics().await;
    assert_eq!(
        metrics.get("mm_scorer_capture_total{outcome=\"written\"}"),
        queued as f64
    );
    drop(scorer);

    // A queue of 1 KiB holds no line of this model (its inputs and outputs alone count
    // more): every sampled request is dropped and counted, and every request succeeds.
    let (store, features) = self::store("capture-tiny-queue", 1);
    let rows = generated_rows(features[0], 64, 8);
    let scorer = ScorerProcess::local(
        store.path(),
        &["capture.flush_interval=200ms", "capture.queue_bytes=1KiB"],
    );
    let (status, _) = call(
        &client,
        "PUT",
        &format!("{}/v2/mm/capture/gen-", scorer.url),
        None,
        Some(&json!({"rate": 1.0})),
    )
    .await;
    assert_eq!(status, 200);
    for _ in 0..50 {
        let (status, _, _) = manymodels_tests::http::post_via(
            &client,
            &format!("{}/v2/models/{model}/infer", scorer.url),
            &rows_body(&rows),
        )
        .await;
        assert_eq!(status, 200);
    }
    let metrics = scorer.metrics().await;
    assert_eq!(
        metrics.get("mm_scorer_capture_total{outcome=\"dropped\"}"),
        50.0
    );
    assert_eq!(
        metrics.get("mm_scorer_capture_total{outcome=\"queued\"}"),
        0.0
    );
    assert_eq!(metrics.get("mm_scorer_capture_queue_bytes"), 0.0);
    let (_, body) = call(
        &client,
        "GET",
        &format!("{}/v2/mm/capture", scorer.url),
        None,
        None,
    )
    .await;
    assert_eq!(body["counters"]["dropped"], 50, "{body}");
}

/// On an Azure store (Azurite) the rules are a blob beside the models and the captures
/// are blobs under the store's prefix, in the same layout and line format.
#[tokio::test]
async fn on_azure_captures_are_blobs_in_the_same_layout() {
    use manymodels_tests::azurite::Azurite;

    let (store, features) = store("capture-azure", 1);
    let model = manymodels_models::model_id(0);
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    azurite.upload_store("models", "prod/", store.path()).await;
    let sets: Vec<String> = [
        "store.kind=azure",
        "store.azure.use_emulator=true",
        "store.azure.container=models",
        "store.azure.prefix=prod",
        "capture.flush_interval=200ms",
    ]
    .map(String::from)
    .to_vec();
    let env = [("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())];
    let scorer = ScorerProcess::start(&sets, &env);
    let client = reqwest::Client::new();
    let (status, body) = call(
        &client,
        "PUT",
        &format!("{}/v2/mm/capture/gen-", scorer.url),
        None,
        Some(&json!({"rate": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        azurite.list_blobs("models", "prod/_manymodels/").await,
        ["prod/_manymodels/capture.json"]
    );
    let rows = generated_rows(features[0], 2, 9);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = client
            .post(format!("{}/v2/models/{model}/infer", scorer.url))
            .json(&rows_body(&rows))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    let started = Instant::now();
    let found = loop {
        let mut found = Vec::new();
        for name in azurite.list_blobs("models", "prod/_captures/").await {
            let body = azurite.get_blob("models", &name).await;
            for line in String::from_utf8(body).unwrap().lines() {
                let line: CaptureLine = serde_json::from_str(line).unwrap();
                found.push((name.clone(), line));
            }
        }
        if found.len() >= 3 || started.elapsed() > Duration::from_secs(20) {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.len(), 3, "{found:?}");
    let sent: Vec<f64> = rows.iter().flatten().map(|&v| f64::from(v)).collect();
    for (name, line) in &found {
        assert_layout(name.strip_prefix("prod/").unwrap(), line);
        assert_eq!((line.model.as_str(), line.version), (model.as_str(), 1));
        assert_close(&floats(&line.inputs[0].data), &sent, "azure input");
    }
    let mut captured: Vec<String> = found.into_iter().map(|(_, l)| l.request_id).collect();
    captured.sort();
    ids.sort();
    assert_eq!(captured, ids);
}
