//! Handler tests: the whole axum router, called through `tower::ServiceExt::oneshot`
//! without a socket, against the demo models and their reference outputs.
//!
//! This file holds what is particular to calling the router in-process (a scorer built
//! from a config, requests and replies without HTTP); reference data, request bodies,
//! stores and output comparison come from the shared harness (`manymodels-tests`). The
//! tests are grouped by concern in `handlers/`.

mod admin;
mod binary;
mod bytes;
mod engines;
mod errors;
mod inference;
mod metrics;
mod records;
mod repository;
mod shadows;
mod views;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use manymodels_config::ByteSize;
use manymodels_config::scorer::{NativeEngine, ScorerConfig};
use manymodels_contract::oip::ErrorBody;
use manymodels_scorer::Scorer;
use manymodels_tests::Metrics;
use manymodels_tests::reference::{
    LINEAR_SMALL_ROW, TOLERANCE, assert_outputs_equal, assert_outputs_match, demo_ids,
    demo_reference, inputs_body, reference, rows_body,
};
use manymodels_tests::store::{TempDir, demo_store, root, write_model};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A scorer on the local store `dir`, ready at once, with `adjust` applied to its config.
fn scorer_for(dir: &Path, adjust: impl FnOnce(&mut ScorerConfig)) -> (Arc<Scorer>, Router) {
    let mut config = ScorerConfig::for_local_store(dir);
    // No proxy pushes statistics here: ready at once rather than after a warm-up.
    config.warmup.ready_timeout = std::time::Duration::ZERO;
    adjust(&mut config);
    let scorer = Scorer::new(config).expect("scorer starts (is ORT_DYLIB_PATH set?)");
    let router = manymodels_scorer::app(scorer.clone());
    (scorer, router)
}

/// The router of a scorer on the demo store with the default configuration.
fn demo_router() -> Router {
    scorer_for(&demo_store(), |_| {}).1
}

/// A response, read whole.
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

    /// Asserts a 200 and returns the JSON body.
    fn ok(&self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text());
        self.json()
    }

    /// Asserts a 200 and reads the body as `T`, a contract type: the JSON the scorer
    /// answers is the JSON `mmctl` reads.
    fn ok_as<T: serde::de::DeserializeOwned>(&self) -> T {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text());
        self.read_as()
    }

    /// The body read as `T`, whatever the status.
    fn read_as<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "body does not read as {} ({e}): {}",
                std::any::type_name::<T>(),
                self.text()
            )
        })
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
        let typed: ErrorBody = self.read_as();
        assert_eq!(typed.error, message);
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

/// A `method` request to `uri` with `body` (JSON, or a model's bytes).
async fn call(router: &Router, method: &str, uri: &str, body: impl Into<Body>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
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

/// Infers demo model `id` on its reference inputs (without a request id).
async fn infer_reference(router: &Router, id: &str) -> Reply {
    post_json(
        router,
        &format!("/v2/models/{id}/infer"),
        &reference_request(id),
    )
    .await
}

/// A request body with the reference inputs of demo model `id`.
fn reference_request(id: &str) -> Value {
    inputs_body(&reference(id))
}

async fn metrics_text(router: &Router) -> String {
    let reply = get(router, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text()
}

/// The value of the sample `series` (a metric name, with its labels if it has any, e.g.
/// `mm_scorer_cache_evictions_total{reason="explicit"}`); 0 when the series is absent.
fn metric(text: &str, series: &str) -> f64 {
    Metrics::parse(text).get(series)
}

/// Asserts each `(series, value)` of `expected` in the exposition `text`.
fn assert_metrics(text: &str, context: &str, expected: &[(&str, f64)]) {
    let metrics = Metrics::parse(text);
    for &(series, value) in expected {
        assert_eq!(metrics.get(series), value, "{context}: {series} in\n{text}");
    }
}

async fn metric_now(router: &Router, series: &str) -> f64 {
    metric(&metrics_text(router).await, series)
}

/// Names of the entries of a repository index response, all or only those `READY`.
fn index_names(index: &Value, ready_only: bool) -> Vec<String> {
    index
        .as_array()
        .expect("index is an array")
        .iter()
        .filter(|e| !ready_only || e["state"] == "READY")
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect()
}

fn ready_names(index: &Value) -> Vec<String> {
    index_names(index, true)
}

fn all_names(index: &Value) -> Vec<String> {
    index_names(index, false)
}
