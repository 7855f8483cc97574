//! The Open Inference Protocol over gRPC, as processes on 127.0.0.1: every demo model
//! scored with raw and typed tensors, straight to a scorer and through the proxy (routed by
//! the `mm-model-id` metadata header, counted, kept on the scorer that holds the model);
//! errors with their gRPC codes, from the proxy and from scorers; keys; canaries and
//! explicit versions.

use manymodels_models::Spec;
use manymodels_tests::grpc::{connect, infer_request, outputs_json, pb, routed};
use manymodels_tests::process::{Pool, metric_total};
use manymodels_tests::reference::assert_outputs_equal;
use manymodels_tests::{
    ProxyProcess, ScorerProcess, TOLERANCE, TempDir, demo_reference, root, write_model,
};
use serde_json::json;
use tonic::Code;

fn metadata(response_metadata: &tonic::metadata::MetadataMap, name: &str) -> String {
    response_metadata
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn every_demo_model_scores_over_grpc_straight_and_through_the_proxy() {
    let pool = Pool::local(&root().join("models/demo"), 2, &[], &[]);
    let mut proxy = connect(pool.proxy.addr()).await;
    let mut scorer = connect(pool.scorers[0].addr()).await;

    let live = proxy.server_live(pb::ServerLiveRequest {}).await.unwrap();
    assert!(live.get_ref().live);
    assert!(
        proxy
            .server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .get_ref()
            .ready
    );
    let server = proxy
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap();
    assert_eq!(server.get_ref().name, "manymodels");

    let references = demo_reference();
    for reference in &references {
        let id = reference["id"].as_str().unwrap();
        let expected = reference["outputs"].as_array().unwrap();
        let mut answered_by = Vec::new();
        for raw in [true, false, true] {
            let request = routed(id, infer_request(id, &reference["inputs"], raw));
            let response = proxy
                .model_infer(request)
                .await
                .unwrap_or_else(|e| panic!("{id} (raw {raw}) through the proxy: {e}"));
            let cache = metadata(response.metadata(), "x-mm-cache");
            assert!(
                cache == "hit" || cache == "miss",
                "{id}: x-mm-cache {cache:?}"
            );
            answered_by.push(metadata(response.metadata(), "x-mm-scorer"));
            let response = response.into_inner();
            assert_eq!(response.model_name, id);
            assert_eq!(response.model_version, "1");
            assert_eq!(response.id, "ref");
            assert_outputs_equal(
                &format!("{id} via proxy, raw {raw}"),
                &outputs_json(&response),
                expected,
                TOLERANCE,
            );
        }
        // The model stays where it is hot.
        assert!(
            answered_by
                .iter()
                .all(|s| s == &answered_by[0] && !s.is_empty()),
            "{id} answered by {answered_by:?}"
        );
        let direct = scorer
            .model_infer(infer_request(id, &reference["inputs"], true))
            .await
            .unwrap_or_else(|e| panic!("{id} straight to a scorer: {e}"))
            .into_inner();
        assert_outputs_equal(
            &format!("{id} direct"),
            &outputs_json(&direct),
            expected,
            TOLERANCE,
        );

        let described = proxy
            .model_metadata(routed(
                id,
                pb::ModelMetadataRequest {
                    name: id.to_string(),
                    version: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = described.inputs.iter().map(|i| i.name.as_str()).collect();
        let want: Vec<&str> = reference["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, want, "{id}: metadata inputs");
        assert_eq!(described.versions, vec!["1".to_string()]);
        let ready = proxy
            .model_ready(routed(
                id,
                pb::ModelReadyRequest {
                    name: id.to_string(),
                    version: String::new(),
                },
            ))
            .await
            .unwrap();
        assert!(ready.get_ref().ready);
    }
    // The proxy counted the calls like REST ones: every infer answered hit or miss.
    let metrics = pool.proxy.metrics().await;
    let counted = metrics.get("mm_proxy_scorer_cache_hits_total")
        + metrics.get("mm_proxy_scorer_cache_misses_total");
    assert_eq!(counted, (references.len() * 3) as f64);
    assert!(metrics.get("mm_proxy_scorer_cache_hits_total") >= (references.len() * 2) as f64);
    let index = proxy
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models.len(), references.len());
}

#[tokio::test]
async fn grpc_errors_carry_their_codes_from_the_proxy_and_from_scorers() {
    let pool = Pool::local(&root().join("models/demo"), 1, &[], &[]);
    let mut proxy = connect(pool.proxy.addr()).await;
    let mut scorer = connect(pool.scorers[0].addr()).await;
    let reference = &demo_reference()[0];
    let id = reference["id"].as_str().unwrap();
    let good = || infer_request(id, &reference["inputs"], true);

    // No routing header and a message naming no model: the proxy says what to set.
    let mut nameless = good();
    nameless.model_name.clear();
    let error = proxy.model_infer(nameless).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().contains("names no model") && error.message().contains("mm-model-id"),
        "{error:?}"
    );
    // A message naming an invalid id or version: refused by the proxy, as in metadata.
    let mut invalid = good();
    invalid.model_name = "../x".into();
    let error = proxy.model_infer(invalid).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("invalid model id"), "{error:?}");
    let mut invalid = good();
    invalid.model_version = "latest".into();
    let error = proxy.model_infer(invalid).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().contains("invalid model version"),
        "{error:?}"
    );
    // A header naming another model than the body: the scorer refuses it.
    let other = if id == "linear-small" {
        "logistic-churn"
    } else {
        "linear-small"
    };
    let error = proxy
        .model_infer(routed(other, infer_request(id, &reference["inputs"], true)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("names model"), "{error:?}");
    // A model not in the store: NOT_FOUND from its scorer, passed on by the proxy, whether
    // the model is named in metadata or only in the message.
    let mut missing = good();
    missing.model_name = "no-such-model".into();
    let error = proxy
        .model_infer(routed("no-such-model", missing.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    let error = proxy.model_infer(missing).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    assert!(error.message().contains("no-such-model"), "{error:?}");
    let error = proxy
        .model_metadata(pb::ModelMetadataRequest {
            name: "no-such-model".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    // A malformed version header is refused by the proxy itself.
    let mut request = routed(id, good());
    request
        .metadata_mut()
        .insert("x-mm-model-version", "01".parse().unwrap());
    let error = proxy.model_infer(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    // Inputs that do not fit the model.
    let mut wrong = good();
    wrong.inputs[0].name = "nope".into();
    let error = proxy.model_infer(routed(id, wrong)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("nope"), "{error:?}");
    let mut short = good();
    short.raw_input_contents[0].truncate(3);
    let error = scorer.model_infer(short).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let mut both = good();
    both.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    });
    let error = scorer.model_infer(both).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let mut typed_wrong = infer_request(id, &reference["inputs"], false);
    if let Some(contents) = typed_wrong.inputs[0].contents.as_mut() {
        contents.int64_contents = vec![1];
    }
    let error = scorer.model_infer(typed_wrong).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("int64_contents"), "{error:?}");
    // No model named at all, straight to a scorer.
    let mut nameless = good();
    nameless.model_name.clear();
    let error = scorer.model_infer(nameless).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    // ...but the routing header alone names it.
    let mut nameless = good();
    nameless.model_name.clear();
    scorer.model_infer(routed(id, nameless)).await.unwrap();
    // The scorer is still serving, and nothing above was counted as a success.
    proxy.model_infer(routed(id, good())).await.unwrap();
    let metrics = pool.proxy.metrics().await;
    assert!(
        metrics.get("mm_proxy_requests_total{outcome=\"client_error\"}")
            + metrics.get("mm_proxy_requests_total{outcome=\"rejected\"}")
            >= 4.0,
        "{metrics:?}"
    );
}

/// `rows` rows of `value` for linear-small (10 features): a tensor of `rows × 40` bytes.
fn linear_rows(rows: usize, value: f32) -> serde_json::Value {
    json!([{"name": "input", "shape": [rows, 10], "datatype": "FP32", "data": vec![value; rows * 10]}])
}

/// Every row's outputs of an answer, as JSON numbers per row.
fn rows_of(response: &pb::ModelInferResponse) -> Vec<Vec<serde_json::Value>> {
    let outputs = outputs_json(response);
    let output = &outputs[0];
    let rows = output["shape"][0].as_u64().unwrap() as usize;
    let data = output["data"].as_array().unwrap();
    let width = data.len() / rows;
    data.chunks(width).map(<[_]>::to_vec).collect()
}

#[tokio::test]
async fn grpc_calls_without_a_model_header_are_routed_by_their_message() {
    let pool = Pool::local(&root().join("models/demo"), 2, &[], &[]);
    let mut proxy = connect(pool.proxy.addr()).await;
    let references = demo_reference();
    for reference in &references {
        let id = reference["id"].as_str().unwrap();
        let request = || infer_request(id, &reference["inputs"], true);
        // Routed by the header first, then by the message alone: the same scorer, the
        // same outputs.
        let by_header = proxy.model_infer(routed(id, request())).await.unwrap();
        let by_message = proxy
            .model_infer(request())
            .await
            .unwrap_or_else(|e| panic!("{id} without a model header: {e}"));
        let scorer = metadata(by_header.metadata(), "x-mm-scorer");
        assert!(!scorer.is_empty());
        assert_eq!(
            metadata(by_message.metadata(), "x-mm-scorer"),
            scorer,
            "{id}"
        );
        assert_eq!(metadata(by_message.metadata(), "x-mm-cache"), "hit", "{id}");
        let response = by_message.into_inner();
        assert_eq!(
            (
                response.model_name.as_str(),
                response.model_version.as_str()
            ),
            (id, "1")
        );
        assert_outputs_equal(
            &format!("{id} routed by its message"),
            &outputs_json(&response),
            reference["outputs"].as_array().unwrap(),
            TOLERANCE,
        );
        // A version in the message is kept.
        let mut versioned = request();
        versioned.model_version = "1".into();
        let response = proxy.model_infer(versioned).await.unwrap().into_inner();
        assert_eq!(response.model_version, "1", "{id}");
        let described = proxy
            .model_metadata(pb::ModelMetadataRequest {
                name: id.to_string(),
                version: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            metadata(described.metadata(), "x-mm-scorer"),
            scorer,
            "{id}"
        );
        assert_eq!(described.get_ref().name, id);
        let ready = proxy
            .model_ready(pb::ModelReadyRequest {
                name: id.to_string(),
                version: "1".into(),
            })
            .await
            .unwrap();
        assert!(ready.get_ref().ready, "{id}");
    }
    // A request whose body is many times the proxy's 48 KiB scan, with the name first (as
    // every protobuf serializer writes it): 2,000 rows, 80 KB of tensor.
    let big = infer_request("linear-small", &linear_rows(2000, 0.5), true);
    assert!(big.raw_input_contents[0].len() > 64 * 1024);
    let response = proxy.model_infer(big).await.unwrap().into_inner();
    let rows = rows_of(&response);
    assert_eq!(rows.len(), 2000);
    let one = proxy
        .model_infer(infer_request("linear-small", &linear_rows(1, 0.5), true))
        .await
        .unwrap()
        .into_inner();
    assert_rows_near("2,000 rows", &rows, &rows_of(&one)[0]);
    // Counted like header-routed calls: every infer answered hit or miss.
    let metrics = pool.proxy.metrics().await;
    let counted = metrics.get("mm_proxy_scorer_cache_hits_total")
        + metrics.get("mm_proxy_scorer_cache_misses_total");
    assert_eq!(counted, (references.len() * 3 + 2) as f64);
}

/// A demo model's reference input with its first row repeated `rows` times (every input
/// of the model alike).
fn first_row_repeated(reference: &serde_json::Value, rows: usize) -> serde_json::Value {
    let inputs: Vec<serde_json::Value> = reference["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| {
            let width = input["shape"][1].as_u64().unwrap() as usize;
            let row = &input["data"].as_array().unwrap()[..width];
            let mut input = input.clone();
            input["shape"] = json!([rows, width]);
            let data: Vec<serde_json::Value> =
                row.iter().cycle().take(rows * width).cloned().collect();
            input["data"] = json!(data);
            input
        })
        .collect();
    json!(inputs)
}

/// Every row of `answered` is `expected`, within the tests' tolerance.
fn assert_rows_near(
    what: &str,
    answered: &[Vec<serde_json::Value>],
    expected: &[serde_json::Value],
) {
    for row in answered {
        for (a, e) in row.iter().zip(expected) {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!(
                (a - e).abs() <= TOLERANCE * (1.0 + e.abs()),
                "{what}: {a} != {e}"
            );
        }
    }
}

/// A call routed by its message whose scorer is gone is retried on the next one with the
/// bytes the proxy read to find the model: Pingora replays them before the rest of the
/// body. The health check is slowed, and an ejection kept short, so the proxy finds the
/// dead scorer by each request: one with a one-row body (read whole by the proxy) and one
/// with a ~40 KB body (more HTTP/2 frames than the proxy reads before it chooses, within
/// Pingora's 64 KiB replay buffer).
#[tokio::test]
async fn a_call_routed_by_its_message_is_retried_whole_on_the_next_scorer() {
    let mut pool = Pool::local(
        &root().join("models/demo"),
        2,
        &[],
        &["health.interval=30s", "health.eject_for=10ms"],
    );
    let mut proxy = connect(pool.proxy.addr()).await;
    // Where each model of one input lives, and its answer to its first row.
    let mut owned: Vec<(String, serde_json::Value, Vec<serde_json::Value>, String)> = Vec::new();
    for reference in demo_reference() {
        if reference["inputs"].as_array().unwrap().len() != 1 {
            continue;
        }
        let id = reference["id"].as_str().unwrap().to_string();
        let one = infer_request(&id, &first_row_repeated(&reference, 1), true);
        let answer = proxy.model_infer(one).await.unwrap();
        let owner = metadata(answer.metadata(), "x-mm-scorer");
        let expected = rows_of(answer.get_ref())[0].clone();
        owned.push((id, reference, expected, owner));
    }
    // Two models of one scorer (there are six models and two scorers).
    let owner = owned
        .iter()
        .map(|m| m.3.clone())
        .find(|o| owned.iter().filter(|m| &m.3 == o).count() >= 2)
        .unwrap();
    let mut models = owned.iter().filter(|m| m.3 == owner);
    let (small, big) = (models.next().unwrap(), models.next().unwrap());
    let dead = pool
        .scorers
        .iter()
        .position(|s| owner.rsplit(':').next() == s.addr().rsplit(':').next())
        .unwrap_or_else(|| panic!("which scorer is {owner}?"));
    pool.scorers[dead].kill();
    let row_bytes = |reference: &serde_json::Value| {
        let input = &reference["inputs"][0];
        let width = input["shape"][1].as_u64().unwrap() as usize;
        width * if input["datatype"] == "FP64" { 8 } else { 4 }
    };
    for ((id, reference, expected, _), rows) in [(small, 1), (big, 40_000 / row_bytes(&big.1))] {
        // The ejection after the last retry lapses: the proxy tries the dead scorer again.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let request = infer_request(id, &first_row_repeated(reference, rows), true);
        let size = request.raw_input_contents[0].len();
        assert!(
            rows == 1 || (32 * 1024..64 * 1024).contains(&size),
            "{size}"
        );
        let response = proxy
            .model_infer(request)
            .await
            .unwrap_or_else(|e| panic!("{id}, {rows} rows, after its scorer died: {e}"));
        assert_ne!(metadata(response.metadata(), "x-mm-scorer"), owner);
        let answered = rows_of(response.get_ref());
        assert_eq!(answered.len(), rows);
        assert_rows_near(id, &answered, expected);
    }
    let metrics = pool.proxy.metrics().await;
    // Each went to the dead scorer first (its ejection had lapsed) and was retried.
    assert_eq!(metrics.get("mm_proxy_retries_total"), 2.0, "{metrics:?}");
}

/// `request` with `key` as its bearer key.
fn with_key<T>(key: &str, mut request: tonic::Request<T>) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// `request` with `key` as its bearer key and no model header: the proxy reads the model
/// from the message.
fn keyed<T>(key: &str, request: T) -> tonic::Request<T> {
    with_key(key, tonic::Request::new(request))
}

#[tokio::test]
async fn grpc_calls_need_the_same_keys_as_rest() {
    const POOL_KEY: &str = "pool-grpc-1";
    let store = root().join("models/demo");
    let pool_key = format!("auth.pool_key={POOL_KEY}");
    let scorer = ScorerProcess::local(&store, &[pool_key.as_str()]);
    let proxy = ProxyProcess::start(
        &[scorer.addr()],
        &[
            pool_key.as_str(),
            "auth.api_keys=acme:acme-k-1:acme-|linear-,all:all-k-2",
            "auth.admin_keys=ops:ops-k-3",
        ],
    );
    let reference = manymodels_tests::reference::reference("linear-small");
    let request = || infer_request("linear-small", &reference["inputs"], true);
    // The scorer refuses a call without the pool key; the proxy sends it.
    let mut direct = connect(scorer.addr()).await;
    let error = direct.model_infer(request()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    direct
        .model_infer(with_key(POOL_KEY, tonic::Request::new(request())))
        .await
        .unwrap();

    let mut client = connect(proxy.addr()).await;
    let error = client
        .model_infer(routed("linear-small", request()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    client
        .model_infer(with_key("acme-k-1", routed("linear-small", request())))
        .await
        .unwrap();
    // A tenant's key on another tenant's model: refused before any scorer sees it.
    let mut other = request();
    other.model_name = "logistic-churn".into();
    let error = client
        .model_infer(with_key("acme-k-1", routed("logistic-churn", other)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    // Without the header the message names the model, and the key is checked against it:
    // the tenant's own model is served, another's refused before any scorer sees it.
    client
        .model_infer(keyed("acme-k-1", request()))
        .await
        .unwrap();
    let mut other = request();
    other.model_name = "logistic-churn".into();
    let error = client
        .model_infer(keyed("acme-k-1", other.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    assert!(error.message().contains("logistic-churn"), "{error:?}");
    let error = client
        .model_metadata(keyed(
            "acme-k-1",
            pb::ModelMetadataRequest {
                name: "logistic-churn".into(),
                version: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    let error = client
        .model_infer(tonic::Request::new(other))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    let described = client
        .model_metadata(keyed(
            "all-k-2",
            pb::ModelMetadataRequest {
                name: "logistic-churn".into(),
                version: String::new(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(described.get_ref().name, "logistic-churn");
    // The repository index lists what the key admits, as over REST; a client's own
    // prefixes metadata is dropped by the proxy.
    let index = |key: &str, forged: Option<&str>| {
        let mut request = with_key(
            key,
            tonic::Request::new(pb::RepositoryIndexRequest {
                repository_name: String::new(),
                ready: false,
            }),
        );
        if let Some(prefixes) = forged {
            request
                .metadata_mut()
                .insert("x-mm-model-prefixes", prefixes.parse().unwrap());
        }
        request
    };
    let names = |answer: pb::RepositoryIndexResponse| -> Vec<String> {
        answer.models.into_iter().map(|m| m.name).collect()
    };
    let scoped = client.repository_index(index("acme-k-1", Some("l"))).await;
    let linear: Vec<String> = manymodels_tests::reference::demo_ids()
        .into_iter()
        .filter(|id| id.starts_with("linear-"))
        .collect();
    assert_eq!(names(scoped.unwrap().into_inner()), linear);
    let all = client
        .repository_index(index("all-k-2", Some("linear-")))
        .await;
    assert_eq!(
        names(all.unwrap().into_inner()),
        manymodels_tests::reference::demo_ids()
    );
    // Loading is an admin call.
    let load = |key: &str| {
        with_key(
            key,
            routed(
                "linear-small",
                pb::RepositoryModelLoadRequest {
                    repository_name: String::new(),
                    model_name: "linear-small".into(),
                },
            ),
        )
    };
    let error = client
        .repository_model_load(load("all-k-2"))
        .await
        .unwrap_err();
    assert!(
        matches!(error.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{error:?}"
    );
    client.repository_model_load(load("ops-k-3")).await.unwrap();
    // The same call naming the model only in its message (field 2 of the load request).
    let error = client
        .repository_model_load(keyed(
            "all-k-2",
            pb::RepositoryModelLoadRequest {
                repository_name: String::new(),
                model_name: "linear-small".into(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(error.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{error:?}"
    );
    client
        .repository_model_load(keyed(
            "ops-k-3",
            pb::RepositoryModelLoadRequest {
                repository_name: String::new(),
                model_name: "linear-small".into(),
            },
        ))
        .await
        .unwrap();
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", scorer.url))
        .bearer_auth(POOL_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = manymodels_tests::Metrics::parse(&text);
    assert_eq!(
        metrics.get("mm_scorer_requests_total{code=\"200\",route=\"grpc_load\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_canary_splits_grpc_calls_and_an_explicit_version_is_kept() {
    const MODEL: &str = "store-9";
    let store = TempDir::new("grpc-canary");
    for v in [1, 2] {
        let model = manymodels_models::build(&Spec::Linear {
            features: 4,
            seed: 200 + v,
        });
        write_model(store.path(), MODEL, v, &model.bytes).unwrap();
    }
    std::fs::write(
        store.path().join(MODEL).join("alias.json"),
        r#"{"pinned": 1}"#,
    )
    .unwrap();
    let pool = Pool::local(store.path(), 2, &[], &[]);
    let mut client = connect(pool.proxy.addr()).await;
    let inputs = json!([{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.25]}]);
    let version = |response: pb::ModelInferResponse| response.model_version;
    let answer = client
        .model_infer(routed(MODEL, infer_request(MODEL, &inputs, true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version(answer), "1");
    // Set through the proxy's admin API, kept in the store, split by the scorer.
    let response = reqwest::Client::new()
        .put(format!("{}/v2/admin/models/{MODEL}/canary", pool.proxy.url))
        .json(&json!({"version": 2, "percent": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for _ in 0..10 {
        let answer = client
            .model_infer(routed(MODEL, infer_request(MODEL, &inputs, true)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            version(answer),
            "2",
            "the canary takes every unversioned call"
        );
    }
    // A version named in the body, or in the header, is never split, nor counted.
    let mut pinned = infer_request(MODEL, &inputs, true);
    pinned.model_version = "1".into();
    let answer = client
        .model_infer(routed(MODEL, pinned))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version(answer), "1");
    let mut request = routed(MODEL, infer_request(MODEL, &inputs, true));
    request
        .metadata_mut()
        .insert("x-mm-model-version", "1".parse().unwrap());
    let answer = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(version(answer), "1");
    let arm = |arm: &str| format!("mm_scorer_canary_requests_total{{arm=\"{arm}\"}}");
    assert_eq!(metric_total(&pool.scorers, &arm("canary")).await, 10.0);
    assert_eq!(metric_total(&pool.scorers, &arm("stable")).await, 0.0);
}

/// Triton's gRPC client (tritonclient.grpc, what users' Python code would use) checks
/// liveness, readiness, metadata and every demo model's outputs through the proxy, with
/// `mm-model-id` as the only addition to its calls.
#[tokio::test]
async fn tritonclient_grpc_scores_through_the_proxy() {
    let pool = Pool::local(&root().join("models/demo"), 2, &[], &[]);
    let output = tokio::process::Command::new("python3")
        .arg(root().join("tests/oip_grpc_client.py"))
        .arg(pool.proxy.addr())
        .output()
        .await
        .expect("running python3");
    assert!(
        output.status.success(),
        "tritonclient.grpc failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Classifiers as exported (ZipMap) and a model with a string input, over gRPC through the
/// proxy: string inputs as `bytes_contents` and raw, labels back as BYTES, probabilities
/// within the classifiers' tolerance of ONNX Runtime's.
#[tokio::test]
async fn classifiers_and_string_inputs_score_over_grpc() {
    use manymodels_tests::classifiers::{
        assert_classified, classifier_reference, classifier_store,
    };
    let scorer = ScorerProcess::local(&classifier_store(), &[]);
    let proxy = ProxyProcess::start(&[scorer.addr()], &[]);
    let mut client = connect(proxy.addr()).await;
    let references = classifier_reference();
    assert!(
        references
            .iter()
            .any(|r| r["id"] == "zipmap-onehot-str-input")
    );
    for reference in &references {
        let id = reference["id"].as_str().unwrap();
        for raw in [true, false] {
            let response = client
                .model_infer(routed(id, infer_request(id, &reference["inputs"], raw)))
                .await
                .unwrap_or_else(|e| panic!("{id} (raw {raw}): {e}"))
                .into_inner();
            assert_classified(&json!({ "outputs": outputs_json(&response) }), reference);
        }
    }
}
