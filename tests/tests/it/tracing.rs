//! Traces and request ids through a real proxy and real scorers, the spans received by a
//! real OTLP/HTTP receiver (`manymodels_tests::otlp`): one trace from the client's
//! `traceparent` through the proxy (request, route decision, upstream call) into the
//! scorer (request, load wait, load, the load thread's work, engine run), over REST and
//! gRPC and through the many-model route's fan-out; the request id on every answer and on the spans of both processes; an unsampled
//! trace exports nothing.
//!
//! Spans leave in batches; the tests stop the processes (SIGTERM) to have them flushed
//! at once, which also checks that shutdown exports what is queued.

use std::time::Duration;

use manymodels_tests::grpc::{connect, infer_request, routed};
use manymodels_tests::otlp::{self, Receiver, Span};
use manymodels_tests::process::Pool;
use manymodels_tests::{demo_reference, infer_body, root};
use serde_json::{Value, json};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A pool of two scorers over the demo store exporting to `receiver`, with a sample ratio
/// of 0: only traces the client sampled are recorded (parent-based), so the health checks
/// and statistics pushes add none.
fn traced_pool(receiver: &Receiver) -> Pool {
    let endpoint = format!("trace.endpoint={}", receiver.endpoint());
    let sets = [endpoint.as_str(), "trace.sample_ratio=0"];
    Pool::local(&root().join("models/demo"), 2, &sets, &sets)
}

/// Stops every process of the pool (the proxy first) so that their last spans leave.
fn stop(mut pool: Pool) {
    pool.proxy.terminate();
    for scorer in &mut pool.scorers {
        scorer.terminate();
    }
}

fn reference(id: &str) -> Value {
    demo_reference()
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} is a demo model"))
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

/// Every span of the trace, parented as one request through the proxy to a scorer that
/// had to load the model, all naming `request_id` where they carry it.
fn assert_one_request_traced(spans: &[Span], model: &str, request_id: &str) {
    let proxy = one(spans, "proxy.request");
    assert_eq!(proxy.service, "mm-proxy");
    assert_eq!(
        proxy.parent_span_id, CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(proxy.attr("request_id"), request_id);
    assert_eq!(proxy.attr("model"), model);
    let route = one(spans, "route");
    assert_eq!(route.service, "mm-proxy");
    assert_eq!(route.parent_span_id, proxy.span_id);
    assert_eq!(route.attr("model"), model);
    assert!(
        ["hot", "ranked", "spill", "drain"].contains(&route.attr("why")),
        "route why: {:?}",
        route.attributes
    );
    let upstream = one(spans, "upstream");
    assert_eq!(upstream.parent_span_id, proxy.span_id);
    assert_eq!(upstream.attr("scorer"), route.attr("scorer"));
    assert_eq!(upstream.attr("cache"), "miss");

    let scorer = one(spans, "scorer.request");
    assert_eq!(scorer.service, "mm-scorer");
    assert_eq!(
        scorer.parent_span_id, upstream.span_id,
        "the proxy's upstream call is the scorer's parent"
    );
    assert_eq!(scorer.attr("request_id"), request_id);
    assert_eq!(scorer.attr("model"), model);
    let wait = one(spans, "load.wait");
    assert_eq!(wait.service, "mm-scorer");
    assert_eq!(wait.parent_span_id, scorer.span_id);
    assert_eq!(wait.attr("model"), model);
    let load = one(spans, "load");
    assert_eq!(
        load.parent_span_id, wait.span_id,
        "the first waiter started the load"
    );
    assert_eq!(load.attr("model"), model);
    let threads: Vec<&Span> = spans.iter().filter(|s| s.name == "load.thread").collect();
    assert!(!threads.is_empty(), "the load ran on a load thread");
    assert!(threads.iter().all(|t| t.parent_span_id == load.span_id));
    let engine = one(spans, "engine.run");
    assert_eq!(engine.parent_span_id, scorer.span_id);
    assert_eq!(engine.attr("model"), model);
    assert!(
        load.end_unix_nano <= engine.start_unix_nano,
        "the engine runs after the load"
    );
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "one trace: {spans:#?}"
    );
}

#[tokio::test]
async fn a_sampled_rest_request_is_one_trace_through_proxy_and_scorer() {
    let receiver = otlp::start();
    let pool = traced_pool(&receiver);
    let model = "linear-small";
    let client = reqwest::Client::new();
    let response = client
        .post(format!(
            "http://{}/v2/models/{model}/infer",
            pool.proxy.addr()
        ))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .header("x-request-id", "client-req-7")
        // A deadline: the scorer's look-up then runs as its own task, which must still
        // carry the request's span (the load spans below) and context.
        .header("x-mm-timeout-ms", "30000")
        .json(&infer_body(&reference(model)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "client-req-7");
    stop(pool);
    let spans = receiver.trace(TRACE);
    assert_one_request_traced(&spans, model, "client-req-7");
}

#[tokio::test]
async fn a_sampled_grpc_call_is_one_trace_through_proxy_and_scorer() {
    let receiver = otlp::start();
    let pool = traced_pool(&receiver);
    let model = "logistic-churn";
    let mut grpc = connect(pool.proxy.addr()).await;
    let mut request = routed(
        model,
        infer_request(model, &reference(model)["inputs"], true),
    );
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        format!("00-{TRACE}-{CLIENT_SPAN}-01").parse().unwrap(),
    );
    // Not a valid id (a slash): the proxy gives one, and the scorer's spans carry it.
    metadata.insert("x-request-id", "not/valid".parse().unwrap());
    let response = grpc.model_infer(request).await.unwrap();
    let id = response
        .metadata()
        .get("x-request-id")
        .expect("an x-request-id")
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(id, "not/valid");
    assert_eq!(id.len(), 32, "a generated id: {id}");
    drop(grpc);
    stop(pool);
    let spans = receiver.trace(TRACE);
    assert_one_request_traced(&spans, model, &id);
}

#[tokio::test]
async fn an_unsampled_trace_exports_nothing() {
    let receiver = otlp::start();
    let pool = traced_pool(&receiver);
    let model = "linear-small";
    let client = reqwest::Client::new();
    for flags in ["00", "00"] {
        let response = client
            .post(format!(
                "http://{}/v2/models/{model}/infer",
                pool.proxy.addr()
            ))
            .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-{flags}"))
            .json(&infer_body(&reference(model)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    stop(pool);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(receiver.spans(), Vec::<Span>::new());
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_clients_valid_one_is_kept() {
    // No tracing configured: request ids do not depend on it.
    let pool = Pool::local(&root().join("models/demo"), 1, &[], &[]);
    let proxy = pool.proxy.addr().to_string();
    let client = reqwest::Client::new();
    let id_of = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());

    // Forwarded and answered by a scorer, with and without the client's id.
    let body = infer_body(&reference("linear-small"));
    let url = format!("http://{proxy}/v2/models/linear-small/infer");
    let answered = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(answered.status(), 200);
    assert!(generated(&id_of(&answered)), "{:?}", id_of(&answered));
    let kept = client
        .post(&url)
        .header("x-request-id", "order-1234:retry.2")
        .header("x-ms-client-request-id", "azure-5")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&kept), "order-1234:retry.2");
    assert_eq!(kept.headers()["x-ms-client-request-id"], "azure-5");

    // A scorer's own error (an unknown model), a proxy-made 404, a proxy-made 400, the
    // many-model route's 400: each with an id, the client's when it sent a valid one.
    let unknown = client
        .post(format!("http://{proxy}/v2/models/no-such-model/infer"))
        .header("x-request-id", "mine-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(id_of(&unknown), "mine-1");
    let no_route = client
        .get(format!("http://{proxy}/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_route.status(), 404);
    assert!(generated(&id_of(&no_route)));
    let bad_timeout = client
        .post(&url)
        .header("x-mm-timeout-ms", "soon")
        .header("x-request-id", "mine-2")
        .header("x-ms-client-request-id", "azure-6")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_timeout.status(), 400);
    assert_eq!(id_of(&bad_timeout), "mine-2");
    assert_eq!(bad_timeout.headers()["x-ms-client-request-id"], "azure-6");
    let bad_batch = client
        .post(format!("http://{proxy}/v2/mm/batch"))
        .header("x-request-id", "mine-3")
        .json(&json!({"records": "not a list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_batch.status(), 400);
    assert_eq!(id_of(&bad_batch), "mine-3");
    let batch = client
        .post(format!("http://{proxy}/v2/mm/batch"))
        .header("x-request-id", "mine-4")
        .json(&json!({"records": [{"model": "no-such-model", "features": [1.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&batch), "mine-4", "{}", batch.status());

    // A gRPC call's proxy-made refusal (no such method) and a scorer's gRPC error.
    let refused = client
        .post(format!(
            "http://{proxy}/inference.GRPCInferenceService/NoSuchMethod"
        ))
        .header("content-type", "application/grpc")
        .header("x-request-id", "mine-5")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&refused), "mine-5");
    let mut grpc = connect(&proxy).await;
    let mut request = routed(
        "no-such-model",
        infer_request("no-such-model", &reference("linear-small")["inputs"], true),
    );
    request
        .metadata_mut()
        .insert("x-request-id", "mine-6".parse().unwrap());
    let status = grpc.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "mine-6");
}

#[tokio::test]
async fn a_many_model_request_traces_each_groups_route_and_scorer_call() {
    let receiver = otlp::start();
    let pool = traced_pool(&receiver);
    let row: Vec<f32> = (0..10).map(|i| i as f32 / 10.0).collect();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{}/v2/mm/batch", pool.proxy.addr()))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .header("x-request-id", "batch-9")
        .json(&json!({"records": [
            {"model": "linear-small", "features": row},
            {"model": "linear-small", "features": row},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "batch-9");
    stop(pool);
    let spans = receiver.trace(TRACE);
    let proxy = one(&spans, "proxy.request");
    assert_eq!(proxy.parent_span_id, CLIENT_SPAN);
    assert_eq!(proxy.attr("request_id"), "batch-9");
    let route = one(&spans, "route");
    assert_eq!(route.parent_span_id, proxy.span_id);
    assert_eq!(route.attr("model"), "linear-small");
    let upstream = one(&spans, "upstream");
    assert_eq!(upstream.parent_span_id, proxy.span_id);
    assert_eq!(upstream.attr("groups"), "1");
    assert_eq!(upstream.attr("status"), "200");
    let scorer = one(&spans, "scorer.request");
    assert_eq!(scorer.service, "mm-scorer");
    assert_eq!(scorer.parent_span_id, upstream.span_id);
    assert_eq!(scorer.attr("request_id"), "batch-9");
    let engine = one(&spans, "engine.run");
    assert_eq!(engine.parent_span_id, scorer.span_id);
    assert_eq!(one(&spans, "load").attr("model"), "linear-small");
}
