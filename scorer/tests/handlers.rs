//! Handler tests: the whole axum router, called through `tower::ServiceExt::oneshot`
//! without a socket, against the demo models and their reference outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use manymodels_config::ByteSize;
use manymodels_config::scorer::{NativeEngine, ScorerConfig};
use manymodels_scorer::Scorer;
use serde_json::{Value, json};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const TOLERANCE: f64 = 1e-5;

fn workspace_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

fn demo_dir() -> PathBuf {
    workspace_root().join("models/demo")
}

/// The `models` array of `models/demo/reference.json`.
fn reference_models() -> Vec<Value> {
    let path = demo_dir().join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).expect("reference.json is JSON");
    value["models"]
        .as_array()
        .expect("reference.json has a models array")
        .clone()
}

fn reference_model(id: &str) -> Value {
    reference_models()
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not in reference.json"))
}

/// The ids of the demo models, sorted.
fn demo_ids() -> Vec<String> {
    let mut ids: Vec<String> = reference_models()
        .iter()
        .map(|m| m["id"].as_str().expect("id is a string").to_string())
        .collect();
    ids.sort();
    ids
}

/// A request body with the reference inputs of `id`.
fn reference_request(id: &str) -> Value {
    json!({ "inputs": reference_model(id)["inputs"].clone() })
}

/// A small valid request for linear-small: one row of ten features.
fn small_linear_request() -> Value {
    json!({
        "inputs": [{
            "name": "input",
            "datatype": "FP32",
            "shape": [1, 10],
            "data": [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0]
        }]
    })
}

fn scorer_for(
    dir: impl Into<PathBuf>,
    adjust: impl FnOnce(&mut ScorerConfig),
) -> (Arc<Scorer>, Router) {
    let mut config = ScorerConfig::for_local_store(dir);
    // No proxy pushes statistics here: ready at once rather than after a warm-up.
    config.warmup.ready_timeout = std::time::Duration::ZERO;
    adjust(&mut config);
    let scorer = Scorer::new(config).expect("scorer starts (is ORT_DYLIB_PATH set?)");
    let router = manymodels_scorer::app(scorer.clone());
    (scorer, router)
}

fn demo_router() -> Router {
    scorer_for(demo_dir(), |_| {}).1
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// Asserts the status and an `{"error": "..."}` body containing `needle`.
    fn assert_error(&self, status: StatusCode, needle: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `error` field in {body}"));
        assert!(
            message.contains(needle),
            "error {message:?} does not mention {needle:?}"
        );
    }
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body can be read")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        bytes,
    }
}

async fn post_raw(router: &Router, uri: &str, body: impl Into<Body>) -> Reply {
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("valid request");
    send(router, request).await
}

async fn post_json(router: &Router, uri: &str, body: &Value) -> Reply {
    post_raw(router, uri, body.to_string()).await
}

async fn get(router: &Router, uri: &str) -> Reply {
    let request = Request::builder()
        .method("GET")
        .uri(uri)
        .body(Body::empty())
        .expect("valid request");
    send(router, request).await
}

async fn metrics_text(router: &Router) -> String {
    let reply = get(router, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text()
}

/// The value of the sample `series` (a metric name, with its labels if it has any, e.g.
/// `mm_scorer_cache_evictions_total{reason="explicit"}`); 0 when the series is absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("numeric sample"))
        })
        .unwrap_or(0.0)
}

async fn metric_now(router: &Router, series: &str) -> f64 {
    metric(&metrics_text(router).await, series)
}

fn close(actual: f64, expected: f64) -> bool {
    let diff = (actual - expected).abs();
    diff <= TOLERANCE || diff <= TOLERANCE * expected.abs()
}

/// Compares tensor data element by element: numbers with tolerance, booleans exactly.
fn assert_data_matches(context: &str, actual: &Value, expected: &Value) {
    let actual = actual
        .as_array()
        .unwrap_or_else(|| panic!("{context}: data is not an array"));
    let expected = expected.as_array().expect("reference data is an array");
    assert_eq!(
        actual.len(),
        expected.len(),
        "{context}: number of data values"
    );
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        match (a, e) {
            (Value::Bool(a), Value::Bool(e)) => assert_eq!(a, e, "{context}[{i}]"),
            (Value::Number(a), Value::Number(e)) => {
                let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
                assert!(close(a, e), "{context}[{i}]: got {a}, expected {e}");
            }
            _ => panic!("{context}[{i}]: got {a}, expected {e}"),
        }
    }
}

/// Asserts that `outputs` (from a response) match `expected` (from reference.json) in
/// order, name, datatype, shape and data.
fn assert_outputs_match(model: &str, outputs: &Value, expected: &[Value]) {
    let outputs = outputs
        .as_array()
        .unwrap_or_else(|| panic!("{model}: outputs is not an array"));
    let names =
        |list: &[Value]| -> Vec<String> { list.iter().map(|o| o["name"].to_string()).collect() };
    assert_eq!(names(outputs), names(expected), "{model}: output names");
    for (output, reference) in outputs.iter().zip(expected) {
        let context = format!("{model}/{}", reference["name"]);
        assert_eq!(
            output["datatype"], reference["datatype"],
            "{context}: datatype"
        );
        assert_eq!(output["shape"], reference["shape"], "{context}: shape");
        assert_data_matches(&context, &output["data"], &reference["data"]);
    }
}

/// A copy of the demo store in a unique temporary directory, removed on drop.
struct TempStore(PathBuf);

impl TempStore {
    fn copy_of_demo() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "mm-scorer-handlers-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        for id in demo_ids() {
            let from = demo_dir().join(&id).join("1/model.onnx");
            let to = dir.join(&id).join("1");
            std::fs::create_dir_all(&to).expect("create temp store");
            std::fs::copy(&from, to.join("model.onnx")).expect("copy demo model");
        }
        TempStore(dir)
    }

    fn add_model(&self, id: &str, version: u64, bytes: &[u8]) {
        let dir = self.0.join(id).join(version.to_string());
        std::fs::create_dir_all(&dir).expect("create model dir");
        std::fs::write(dir.join("model.onnx"), bytes).expect("write model");
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names of the entries of a repository index response with `state == "READY"`.
fn ready_names(index: &Value) -> Vec<String> {
    index
        .as_array()
        .expect("index is an array")
        .iter()
        .filter(|e| e["state"] == "READY")
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect()
}

fn all_names(index: &Value) -> Vec<String> {
    index
        .as_array()
        .expect("index is an array")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect()
}

const REQUIRED_FAMILIES: &[&str] = &[
    "mm_scorer_requests_total",
    "mm_scorer_cache_hits_total",
    "mm_scorer_cache_misses_total",
    "mm_scorer_model_loads_total",
    "mm_scorer_model_load_failures_total",
    "mm_scorer_cache_evictions_total",
    "mm_scorer_model_load_duration_seconds",
    "mm_scorer_inference_duration_seconds",
    "mm_scorer_resident_bytes",
    "mm_scorer_resident_models",
    "mm_scorer_budget_bytes",
];

fn missing_families(text: &str) -> Vec<&'static str> {
    REQUIRED_FAMILIES
        .iter()
        .copied()
        .filter(|family| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} ")))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Reference outputs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_model_matches_its_reference_outputs() {
    let router = demo_router();
    let models = reference_models();
    assert!(
        models.len() >= 8,
        "reference.json lists {} models",
        models.len()
    );
    for model in &models {
        let id = model["id"].as_str().unwrap();
        let request_id = format!("req-{id}");
        let body = json!({ "id": request_id, "inputs": model["inputs"].clone() });
        let reply = post_json(&router, &format!("/v2/models/{id}/infer"), &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.text());
        let response = reply.json();
        assert_eq!(response["model_name"], id);
        assert_eq!(response["model_version"], "1", "{id}");
        assert_eq!(
            response["id"],
            request_id.as_str(),
            "{id}: request id echoed"
        );
        let expected = model["outputs"].as_array().expect("reference outputs");
        assert_outputs_match(id, &response["outputs"], expected);
    }
    // Without an id in the request, none comes back.
    let reply = post_json(
        &router,
        "/v2/models/linear-small/infer",
        &reference_request("linear-small"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json().get("id").is_none(), "{}", reply.text());
}

// ---------------------------------------------------------------------------------------
// 2. Versioned inference
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_infer_serves_existing_versions_and_rejects_others() {
    let router = demo_router();
    let reference = reference_model("linear-small");
    let body = reference_request("linear-small");

    let reply = post_json(&router, "/v2/models/linear-small/versions/1/infer", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let response = reply.json();
    assert_eq!(response["model_name"], "linear-small");
    assert_eq!(response["model_version"], "1");
    assert_outputs_match(
        "linear-small@1",
        &response["outputs"],
        reference["outputs"].as_array().unwrap(),
    );

    post_json(&router, "/v2/models/linear-small/versions/2/infer", &body)
        .await
        .assert_error(StatusCode::NOT_FOUND, "no version 2");
    for bad in ["abc", "0", "01", "-1"] {
        post_json(
            &router,
            &format!("/v2/models/linear-small/versions/{bad}/infer"),
            &body,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, &format!("invalid version '{bad}'"));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Output selection
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_selection_returns_only_the_requested_outputs() {
    let router = demo_router();
    let reference = reference_model("multi-input");
    let sum = reference["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "numeric_sum")
        .expect("reference has numeric_sum")
        .clone();

    let mut body = reference_request("multi-input");
    body["outputs"] = json!([{ "name": "numeric_sum" }]);
    let reply = post_json(&router, "/v2/models/multi-input/infer", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_outputs_match("multi-input", &reply.json()["outputs"], &[sum]);

    body["outputs"] = json!([{ "name": "no_such_output" }]);
    post_json(&router, "/v2/models/multi-input/infer", &body)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "unknown output 'no_such_output'");
}

// ---------------------------------------------------------------------------------------
// 4. Bad requests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_a_helpful_error() {
    const MAX_BODY: u64 = 4096;
    const MAX_ELEMENTS: usize = 20;
    let (_scorer, router) = scorer_for(demo_dir(), |config| {
        config.http.max_body = ByteSize(MAX_BODY);
        config.http.max_elements = MAX_ELEMENTS;
    });
    let infer = "/v2/models/linear-small/infer";
    let good = small_linear_request();
    assert!((good.to_string().len() as u64) < MAX_BODY);

    // Malformed JSON.
    post_raw(&router, infer, "{\"inputs\": [")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed inference request");
    // Wrong shape (second dimension is fixed at 10).
    let wrong_shape = json!({ "inputs": [{
        "name": "input", "datatype": "FP32", "shape": [1, 9], "data": [0, 1, 2, 3, 4, 5, 6, 7, 8]
    }]});
    post_json(&router, infer, &wrong_shape)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "but the model expects");
    // Shape and data disagree.
    let mut short = good.clone();
    short["inputs"][0]["shape"] = json!([2, 10]);
    post_json(&router, infer, &short)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "but 10 data values");
    // Wrong datatype.
    let mut wrong_type = good.clone();
    wrong_type["inputs"][0]["datatype"] = json!("FP64");
    post_json(&router, infer, &wrong_type).await.assert_error(
        StatusCode::BAD_REQUEST,
        "has datatype FP64 but the model expects FP32",
    );
    // Unsupported datatype.
    wrong_type["inputs"][0]["datatype"] = json!("FP16");
    post_json(&router, infer, &wrong_type)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "unsupported datatype 'FP16'");
    // Missing input (multi-input without `flags`).
    let mut missing = reference_request("multi-input");
    missing["inputs"]
        .as_array_mut()
        .unwrap()
        .retain(|input| input["name"] != "flags");
    post_json(&router, "/v2/models/multi-input/infer", &missing)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "missing input 'flags'");
    // Unexpected input.
    let mut renamed = good.clone();
    renamed["inputs"][0]["name"] = json!("features");
    post_json(&router, infer, &renamed)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "unexpected input 'features'");
    // Too many elements: the reference request has 30 > MAX_ELEMENTS.
    post_json(&router, infer, &reference_request("linear-small"))
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            &format!("more than the limit of {MAX_ELEMENTS}"),
        );
    // A shape that claims far more elements than the limit.
    let mut huge = good.clone();
    huge["inputs"][0]["shape"] = json!([1_000_000_000i64, 10]);
    post_json(&router, infer, &huge).await.assert_error(
        StatusCode::BAD_REQUEST,
        &format!("more than the limit of {MAX_ELEMENTS}"),
    );
    // Body over max_body.
    let big = format!(
        r#"{{"inputs":[],"padding":"{}"}}"#,
        "x".repeat(MAX_BODY as usize * 2)
    );
    post_raw(&router, infer, big).await.assert_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("limit of {MAX_BODY} bytes"),
    );
    // Unknown model.
    post_json(&router, "/v2/models/no-such-model/infer", &good)
        .await
        .assert_error(StatusCode::NOT_FOUND, "model 'no-such-model' not found");
    // Invalid ids in the path.
    for uri in [
        "/v2/models/..%2F../infer",
        "/v2/models/a/b/infer",
        "/v2/models//infer",
        "/v2/models/.hidden/infer",
        "/v2/models/-flag/infer",
    ] {
        post_json(&router, uri, &good)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid model id");
    }
    // Unknown route.
    let reply = get(&router, "/v3/nothing-here").await;
    reply.assert_error(StatusCode::NOT_FOUND, "no route for GET /v3/nothing-here");
    assert!(reply.header("x-mm-scorer").is_some());
    // Wrong method on a known route.
    let reply = get(&router, infer).await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "not allowed");
    assert!(
        reply.header("x-mm-scorer").is_some(),
        "405s go through the one error path too"
    );

    // After all that, the same router still serves.
    let reply = post_json(&router, infer, &good).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let outputs = reply.json()["outputs"].clone();
    assert_eq!(outputs[0]["name"], "variable");
    assert_eq!(outputs[0]["shape"], json!([1, 1]));

    // Every request except the 405 is counted by route and status.
    let text = metrics_text(&router).await;
    // 14 bad requests; those whose path the router matched count as `infer`, the rest as
    // `other`.
    let bad = metric(
        &text,
        r#"mm_scorer_requests_total{code="400",route="infer"}"#,
    ) + metric(
        &text,
        r#"mm_scorer_requests_total{code="400",route="other"}"#,
    );
    assert_eq!(bad, 14.0, "{text}");
    assert_eq!(
        metric(
            &text,
            r#"mm_scorer_requests_total{code="413",route="infer"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"mm_scorer_requests_total{code="404",route="infer"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"mm_scorer_requests_total{code="404",route="other"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"mm_scorer_requests_total{code="200",route="infer"}"#
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_does_not_load_the_model() {
    let router = demo_router();
    post_raw(&router, "/v2/models/forest-1mb/infer", "not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed inference request");
    assert_eq!(
        metric_now(&router, "mm_scorer_model_loads_total").await,
        0.0
    );
    assert_eq!(
        metric_now(&router, "mm_scorer_cache_misses_total").await,
        0.0
    );
}

// ---------------------------------------------------------------------------------------
// 5. A corrupted model
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_model_is_422_fails_fast_and_does_not_affect_others() {
    let store = TempStore::copy_of_demo();
    store.add_model(
        "broken",
        1,
        b"this is not an ONNX protobuf \x00\x01\x02\xff garbage",
    );
    let (_scorer, router) = scorer_for(&store.0, |_| {});
    let body = small_linear_request();

    let first = post_json(&router, "/v2/models/broken/infer", &body).await;
    // The native engine's reader refuses it before ONNX Runtime sees it.
    first.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid model");
    first.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "'broken'");
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_model_load_failures_total"), 1.0);
    assert_eq!(metric(&text, "mm_scorer_failed_fast_total"), 0.0);

    let second = post_json(&router, "/v2/models/broken/infer", &body).await;
    second.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid model");
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_failed_fast_total"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "mm_scorer_model_load_failures_total"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "mm_scorer_model_loads_total"), 0.0, "{text}");

    // The broken model is still listed but never READY; other models serve.
    let reply = post_json(
        &router,
        "/v2/models/linear-small/infer",
        &reference_request("linear-small"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let index = post_raw(&router, "/v2/repository/index", "").await.json();
    assert!(all_names(&index).contains(&"broken".to_string()));
    assert_eq!(ready_names(&index), vec!["linear-small".to_string()]);
    assert_eq!(
        metric_now(&router, "mm_scorer_model_load_failures_total").await,
        1.0
    );
}

/// A model that can never fit the budget answers 507 at once with a clear error, evicts
/// nothing, and is remembered: asking again neither loads nor evicts, with either engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_larger_than_the_budget_is_refused_at_once_and_remembered() {
    for engine in [NativeEngine::Auto, NativeEngine::Off] {
        // forest-1mb is a 1 MB file: natively about 0.3 MB, with ONNX Runtime about 5 MB;
        // linear-small fits either way.
        let budget = match engine {
            NativeEngine::Auto => ByteSize::kib(300),
            NativeEngine::Off => ByteSize::mib(3),
        };
        let (_scorer, router) = scorer_for(demo_dir(), |c| {
            c.cache.budget = budget;
            c.native_engine = engine;
        });
        let small = post_json(
            &router,
            "/v2/models/linear-small/infer",
            &reference_request("linear-small"),
        )
        .await;
        assert_eq!(small.status, StatusCode::OK, "{}", small.text());
        for _ in 0..2 {
            let big = post_json(
                &router,
                "/v2/models/forest-1mb/infer",
                &reference_request("forest-1mb"),
            )
            .await;
            big.assert_error(StatusCode::INSUFFICIENT_STORAGE, "can never fit");
            big.assert_error(StatusCode::INSUFFICIENT_STORAGE, "'forest-1mb'");
        }
        let text = metrics_text(&router).await;
        assert_eq!(
            metric(&text, "mm_scorer_too_large_total"),
            1.0,
            "{engine:?}"
        );
        assert_eq!(
            metric(
                &text,
                "mm_scorer_errors_total{kind=\"too_large_for_budget\"}"
            ),
            2.0,
            "{engine:?}"
        );
        assert_eq!(
            metric(&text, "mm_scorer_model_loads_total"),
            1.0,
            "{engine:?}"
        );
        let explain = get(&router, "/v2/mm/cache").await.json();
        let cache = &explain["cache"];
        assert_eq!(cache["resident_models"], 1, "{engine:?}: {cache}");
        assert_eq!(cache["evictions"].as_array().unwrap().len(), 0, "{cache}");
        assert_eq!(cache["too_large"], 1);
        assert_eq!(cache["reserved_bytes"], 0, "reservations are given back");
        let again = post_json(
            &router,
            "/v2/models/linear-small/infer",
            &reference_request("linear-small"),
        )
        .await;
        assert_eq!(again.header("x-mm-cache"), Some("hit"), "{engine:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 6. Metadata
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_describes_inputs_and_outputs() {
    let router = demo_router();
    let reply = get(&router, "/v2/models/multi-input").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let metadata = reply.json();
    assert_eq!(metadata["name"], "multi-input");
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(metadata["platform"], "onnxruntime_onnx");
    assert_eq!(
        metadata["inputs"],
        json!([
            { "name": "numeric", "datatype": "FP32", "shape": [-1, 4] },
            { "name": "flags", "datatype": "BOOL", "shape": [-1, 2] },
            { "name": "store_code", "datatype": "INT64", "shape": [-1, 1] },
        ])
    );
    let reference = reference_model("multi-input");
    let outputs = metadata["outputs"].as_array().expect("outputs");
    let expected = reference["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), expected.len());
    for (output, reference) in outputs.iter().zip(expected) {
        assert_eq!(output["name"], reference["name"]);
        assert_eq!(output["datatype"], reference["datatype"]);
        let shape = output["shape"].as_array().expect("shape");
        assert_eq!(shape.len(), reference["shape"].as_array().unwrap().len());
        assert_eq!(shape[0], -1, "the batch dimension is dynamic: {output}");
    }

    // Versioned metadata, unknown model, unknown version.
    let reply = get(&router, "/v2/models/multi-input/versions/1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["name"], "multi-input");
    get(&router, "/v2/models/no-such-model")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not found");
    get(&router, "/v2/models/multi-input/versions/7")
        .await
        .assert_error(StatusCode::NOT_FOUND, "no version 7");
}

// ---------------------------------------------------------------------------------------
// 7. Model readiness
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ready_reports_existence_and_whether_loaded() {
    let router = demo_router();
    let reply = get(&router, "/v2/models/gbm-store/ready").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["name"], "gbm-store");
    assert_eq!(body["ready"], true);
    assert_eq!(body["loaded"], false);
    // Asking about readiness loads nothing.
    assert_eq!(
        metric_now(&router, "mm_scorer_model_loads_total").await,
        0.0
    );

    let reply = post_json(
        &router,
        "/v2/models/gbm-store/infer",
        &reference_request("gbm-store"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let body = get(&router, "/v2/models/gbm-store/ready").await.json();
    assert_eq!(body["loaded"], true, "{body}");
    let reply = get(&router, "/v2/models/gbm-store/versions/1/ready").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["loaded"], true);

    get(&router, "/v2/models/no-such-model/ready")
        .await
        .assert_error(StatusCode::NOT_FOUND, "model 'no-such-model' not found");
    get(&router, "/v2/models/gbm-store/versions/3/ready")
        .await
        .assert_error(StatusCode::NOT_FOUND, "no version 3");
}

// ---------------------------------------------------------------------------------------
// 8. Repository extension
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_load_and_unload() {
    let router = demo_router();
    let ids = demo_ids();

    // Nothing loaded yet: everything listed, nothing READY.
    let reply = post_raw(&router, "/v2/repository/index", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let index = reply.json();
    assert_eq!(all_names(&index), ids);
    assert!(ready_names(&index).is_empty(), "{index}");
    for entry in index.as_array().unwrap() {
        assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
        assert_eq!(entry["reason"], "not loaded", "{entry}");
    }

    // Serve one model: it alone is READY, with its version.
    let reply = post_json(
        &router,
        "/v2/models/linear-small/infer",
        &reference_request("linear-small"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let index = post_raw(&router, "/v2/repository/index", "{}").await.json();
    assert_eq!(all_names(&index), ids, "each model listed once");
    assert_eq!(ready_names(&index), vec!["linear-small".to_string()]);
    let entry = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "linear-small")
        .unwrap();
    assert_eq!(entry["version"], "1");

    let ready_only = post_json(&router, "/v2/repository/index", &json!({ "ready": true }))
        .await
        .json();
    assert_eq!(all_names(&ready_only), vec!["linear-small".to_string()]);

    // Load.
    let loads_before = metric_now(&router, "mm_scorer_model_loads_total").await;
    let reply = post_raw(&router, "/v2/repository/models/forest-1mb/load", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["name"], "forest-1mb");
    assert_eq!(body["version"], "1");
    assert_eq!(body["loaded"], true);
    assert_eq!(
        metric_now(&router, "mm_scorer_model_loads_total").await,
        loads_before + 1.0
    );
    let ready_only = post_json(&router, "/v2/repository/index", &json!({ "ready": true }))
        .await
        .json();
    assert_eq!(
        all_names(&ready_only),
        vec!["forest-1mb".to_string(), "linear-small".to_string()]
    );
    // Loading again is a cache hit, not a second load.
    let reply = post_raw(&router, "/v2/repository/models/forest-1mb/load", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        metric_now(&router, "mm_scorer_model_loads_total").await,
        loads_before + 1.0
    );

    // Unload.
    let evictions = r#"mm_scorer_cache_evictions_total{reason="unload"}"#;
    assert_eq!(metric_now(&router, evictions).await, 0.0);
    let reply = post_raw(&router, "/v2/repository/models/forest-1mb/unload", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["unloaded"], 1);
    let index = post_raw(&router, "/v2/repository/index", "").await.json();
    assert_eq!(ready_names(&index), vec!["linear-small".to_string()]);
    assert_eq!(all_names(&index), ids);
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, evictions), 1.0, "{text}");
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 1.0, "{text}");

    // Errors.
    post_raw(&router, "/v2/repository/models/no-such-model/load", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not found");
    post_raw(&router, "/v2/repository/index", "{not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed index request");
}

// ---------------------------------------------------------------------------------------
// 9. Health and metrics
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_200() {
    let router = demo_router();
    let live = get(&router, "/v2/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.json()["live"], true);
    let ready = get(&router, "/v2/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["ready"], true);
    let server = get(&router, "/v2").await;
    assert_eq!(server.status, StatusCode::OK);
    assert_eq!(server.json()["name"], "manymodels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_required_family_and_no_model_label() {
    let router = demo_router();
    // Traffic that touches every family: a load, a miss, a hit, inference, an eviction.
    for _ in 0..2 {
        let reply = post_json(
            &router,
            "/v2/models/linear-small/infer",
            &reference_request("linear-small"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        post_raw(&router, "/v2/repository/models/linear-small/unload", "")
            .await
            .status,
        StatusCode::OK
    );

    let reply = get(&router, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        reply.header("content-type")
    );
    let text = reply.text();
    assert_eq!(missing_families(&text), Vec::<&str>::new(), "{text}");
    for line in text.lines() {
        assert!(!line.contains("model="), "a per-model label: {line}");
    }
    assert_eq!(metric(&text, "mm_scorer_cache_misses_total"), 1.0);
    assert_eq!(metric(&text, "mm_scorer_cache_hits_total"), 1.0);
    assert_eq!(metric(&text, "mm_scorer_model_loads_total"), 1.0);
    assert_eq!(
        metric(&text, "mm_scorer_inference_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        metric(&text, "mm_scorer_model_load_duration_seconds_count"),
        1.0
    );
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 0.0);
    assert_eq!(
        metric(&text, "mm_scorer_budget_bytes"),
        (512u64 << 20) as f64
    );
}

/// Families with labels (`requests_total`, `cache_evictions_total`) must be visible from
/// the first scrape, or dashboards and alerts see "no data" instead of 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_required_family_before_any_traffic() {
    let router = demo_router();
    let text = metrics_text(&router).await;
    assert_eq!(missing_families(&text), Vec::<&str>::new(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_gauges_follow_loads() {
    let router = demo_router();
    for id in ["linear-small", "int32-scaler"] {
        let reply = post_json(
            &router,
            &format!("/v2/models/{id}/infer"),
            &reference_request(id),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 2.0, "{text}");
    // Both tiny models are native: each is charged its own heap, a few hundred bytes
    // (an ONNX Runtime session of the same model keeps tens of KiB), never megabytes.
    let resident = metric(&text, "mm_scorer_resident_bytes");
    assert!(
        (2.0 * 100.0..=2.0 * 16.0 * 1024.0).contains(&resident),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// 10. Single flight
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_load_the_model_once() {
    let router = demo_router();
    let reference = reference_model("forest-1mb");
    let body = reference_request("forest-1mb").to_string();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let router = router.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let reply = post_raw(&router, "/v2/models/forest-1mb/infer", body).await;
                (reply.status, reply.bytes)
            })
        })
        .collect();
    for task in tasks {
        let (status, bytes) = task.await.expect("task did not panic");
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let response: Value = serde_json::from_slice(&bytes).unwrap();
        assert_outputs_match(
            "forest-1mb",
            &response["outputs"],
            reference["outputs"].as_array().unwrap(),
        );
    }
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_model_loads_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "mm_scorer_cache_hits_total") + metric(&text, "mm_scorer_cache_misses_total"),
        100.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"mm_scorer_requests_total{code="200",route="infer"}"#
        ),
        100.0
    );
}

// ---------------------------------------------------------------------------------------
// 11. Response headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_say_whether_the_model_was_hot_and_which_scorer_answered() {
    let (_scorer, router) = scorer_for(demo_dir(), |config| {
        config.name = "scorer-under-test".into()
    });
    let body = reference_request("logistic-churn");

    let first = post_json(&router, "/v2/models/logistic-churn/infer", &body).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-mm-cache"), Some("miss"));
    assert_eq!(first.header("x-mm-scorer"), Some("scorer-under-test"));
    assert!(
        first
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );

    let second = post_json(&router, "/v2/models/logistic-churn/infer", &body).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("x-mm-cache"), Some("hit"));
    assert_eq!(second.header("x-mm-scorer"), Some("scorer-under-test"));

    // The live version, once loaded, also answers a request naming that version.
    let versioned = post_json(&router, "/v2/models/logistic-churn/versions/1/infer", &body).await;
    assert_eq!(versioned.status, StatusCode::OK);
    assert_eq!(versioned.header("x-mm-cache"), Some("hit"));

    // Errors carry the scorer header too.
    let error = post_json(&router, "/v2/models/no-such-model/infer", &body).await;
    assert_eq!(error.status, StatusCode::NOT_FOUND);
    assert_eq!(error.header("x-mm-scorer"), Some("scorer-under-test"));
    assert_eq!(error.header("x-mm-cache"), None);

    // Without a configured name, the header is the listen address.
    let router = demo_router();
    let reply = get(&router, "/v2/models/linear-small/ready").await;
    assert_eq!(reply.header("x-mm-scorer"), Some("127.0.0.1:8001"));
}

/// A request for `/versions/1` followed by one for the live version (also 1) should reuse
/// the session, not load the same file into a second one charged to the budget again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_load_is_reused_by_live_requests() {
    let router = demo_router();
    let body = reference_request("linear-small");
    let versioned = post_json(&router, "/v2/models/linear-small/versions/1/infer", &body).await;
    assert_eq!(versioned.status, StatusCode::OK);
    let live = post_json(&router, "/v2/models/linear-small/infer", &body).await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.header("x-mm-cache"), Some("hit"));
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_model_loads_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------
// 12. Where ONNX Runtime runs
// ---------------------------------------------------------------------------------------

/// The first call of a model runs on a blocking thread (its cost is unknown); once measured
/// at a few microseconds, later calls run inline on the worker, with the same answers.
/// With `inference.inline_max = 0` every call goes to a blocking thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_short_calls_run_inline_unless_disabled() {
    for (limit, expected_inline) in [
        (std::time::Duration::from_millis(5), 4.0),
        (std::time::Duration::ZERO, 0.0),
    ] {
        let (_, router) = scorer_for(demo_dir(), |config| config.inference_inline_max = limit);
        let reference = reference_model("linear-small");
        for _ in 0..5 {
            let reply = post_json(
                &router,
                "/v2/models/linear-small/infer",
                &reference_request("linear-small"),
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let body: Value = serde_json::from_slice(&reply.bytes).unwrap();
            let got = body["outputs"][0]["data"][0].as_f64().unwrap();
            let want = reference["outputs"][0]["data"][0].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
        let text = metrics_text(&router).await;
        assert_eq!(
            metric(&text, "mm_scorer_inference_inline_total"),
            expected_inline,
            "limit {limit:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 13. Engines
// ---------------------------------------------------------------------------------------

fn corpus_model(name: &str) -> Vec<u8> {
    std::fs::read(
        workspace_root()
            .join("models/corpus")
            .join(format!("{name}.onnx")),
    )
    .expect("corpus model")
}

/// One row of `features` values for the input named `input`.
fn row_request(features: usize) -> Value {
    let data: Vec<f64> = (0..features)
        .map(|i| (i as f64 * 0.37).sin() * 2.0)
        .collect();
    json!({
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, features], "data": data }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_cache_view_and_metrics_say_which_engine_serves_a_model() {
    for (setting, engine) in [
        (NativeEngine::Auto, "native"),
        (NativeEngine::Off, "onnxruntime"),
    ] {
        let (_scorer, router) = scorer_for(demo_dir(), |c| c.native_engine = setting);
        let reply = post_json(
            &router,
            "/v2/models/forest-1mb/infer",
            &reference_request("forest-1mb"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let metadata = get(&router, "/v2/models/forest-1mb").await.json();
        assert_eq!(metadata["engine"], engine, "{metadata}");
        let view = get(&router, "/v2/mm/cache").await.json()["cache"].clone();
        let resident = view["resident"].as_array().expect("resident list");
        assert_eq!(resident.len(), 1, "{view}");
        assert_eq!(resident[0]["engine"], engine, "{view}");
        assert_eq!(view["loads_by_engine"][engine], 1, "{view}");
        let text = metrics_text(&router).await;
        let series = format!("mm_scorer_engine_loads_total{{engine=\"{engine}\"}}");
        assert_eq!(metric(&text, &series), 1.0, "{text}");
        // A model the native engine does not cover (two inputs, MatMul/Add) still loads.
        let reply = post_json(
            &router,
            "/v2/models/multi-input/infer",
            &reference_request("multi-input"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let metadata = get(&router, "/v2/models/multi-input").await.json();
        assert_eq!(metadata["engine"], "onnxruntime");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_labels_and_zipmap_outputs_are_served_alike_by_both_engines() {
    let store = TempStore::copy_of_demo();
    store.add_model("rf-str-zipmap", 1, &corpus_model("skl_rf_multi_str_zipmap"));
    let features = 8;
    let mut answers = Vec::new();
    for setting in [NativeEngine::Auto, NativeEngine::Off] {
        let (_scorer, router) = scorer_for(&store.0, |c| c.native_engine = setting);
        let metadata = get(&router, "/v2/models/rf-str-zipmap").await.json();
        let outputs = metadata["outputs"].as_array().expect("outputs").clone();
        assert_eq!(outputs[0]["datatype"], "BYTES", "{metadata}");
        assert_eq!(outputs[1]["datatype"], "FP32", "{metadata}");
        assert_eq!(outputs[1]["shape"], json!([-1, -1]), "{metadata}");
        let reply = post_json(
            &router,
            "/v2/models/rf-str-zipmap/infer",
            &row_request(features),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        let label = &body["outputs"][0];
        assert!(label["data"][0].is_string(), "{body}");
        let probabilities = &body["outputs"][1];
        assert_eq!(probabilities["shape"], json!([1, 3]), "{body}");
        let sum: f64 = probabilities["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-5, "{body}");
        answers.push(body["outputs"].clone());
    }
    assert_eq!(
        answers[0], answers[1],
        "native and ONNX Runtime answer differently"
    );
}
