//! The Open Inference Protocol (KServe v2 REST) over axum. `app(scorer)` builds the whole
//! router, so handler tests call it without a socket.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use manymodels_contract::{self as contract, route};

mod admin;
mod body;
mod capture;
mod keys;
mod ledger;
mod shadow;

use admin::{
    admin_canary, admin_digest, admin_drop_canary, admin_explain, admin_pin, admin_promote_canary,
    admin_publish, admin_refresh, admin_set_canary, admin_status, admin_unpin,
};
use keys::KeyCheck;

use crate::Scorer;
use crate::engine;
use crate::error::ScorerError;
use crate::infer::{self, Deadline};
use crate::ledger::Seen;
use crate::model_id::ModelId;
use crate::tensor::TensorSpec;

/// Names the scorer that answered (for the proxy's affinity, and for people debugging).
pub const SCORER_HEADER: HeaderName = HeaderName::from_static(contract::header::SCORER);
/// `hit` or `miss`: whether the model was already in memory.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static(contract::header::CACHE);

type Shared = State<Arc<Scorer>>;

pub fn app(scorer: Arc<Scorer>) -> Router {
    let max_body = usize::try_from(scorer.config.http.max_body.bytes()).unwrap_or(usize::MAX);
    let max_upload = usize::try_from(scorer.config.http.max_upload.bytes()).unwrap_or(usize::MAX);
    let router = Router::new()
        .route(route::SERVER_METADATA, get(server_metadata))
        .route(route::LIVE, get(live))
        .route(route::READY, get(ready))
        .route(route::MODEL_METADATA.template(), get(model_metadata))
        .route(route::MODEL_READY.template(), get(model_ready))
        .route(route::INFER.template(), post(infer))
        .route(route::VERSION_METADATA.template(), get(model_metadata))
        .route(route::VERSION_READY.template(), get(model_ready))
        .route(route::VERSION_INFER.template(), post(infer))
        .route(route::RECORDS.template(), post(records))
        .route(route::VERSION_RECORDS.template(), post(records))
        .route(route::RECORD_GROUPS, post(record_groups))
        .route(route::REPOSITORY_INDEX, post(repository_index))
        .route(route::REPOSITORY_LOAD.template(), post(repository_load))
        .route(route::REPOSITORY_UNLOAD.template(), post(repository_unload))
        .route(route::CACHE_EXPLAIN, get(explain))
        .route(route::LEDGER, get(ledger::ledger))
        .route(route::LEDGER_MODEL.template(), get(ledger::ledger_model))
        .route(route::ADMIN_STATUS.template(), get(admin_status))
        .route(route::ADMIN_REFRESH.template(), post(admin_refresh))
        .route(route::ADMIN_PIN.template(), post(admin_pin))
        .route(route::ADMIN_UNPIN.template(), post(admin_unpin))
        .route(route::ADMIN_EXPLAIN.template(), get(admin_explain))
        .route(
            route::ADMIN_CANARY.template(),
            get(admin_canary)
                .put(admin_set_canary)
                .delete(admin_drop_canary),
        )
        .route(
            route::ADMIN_CANARY_PROMOTE.template(),
            post(admin_promote_canary),
        )
        .route(
            route::ADMIN_SHADOW.template(),
            get(shadow::admin_shadow)
                .put(shadow::admin_set_shadow)
                .delete(shadow::admin_drop_shadow),
        )
        .route(
            route::ADMIN_SHADOW_PROMOTE.template(),
            post(shadow::admin_promote_shadow),
        )
        .route(route::SHADOWS, get(shadow::shadows))
        .route(
            route::ADMIN_PUBLISH.template(),
            axum::routing::put(admin_publish)
                .layer(DefaultBodyLimit::max(max_upload))
                .get(admin_digest),
        )
        .route(route::STATS, axum::routing::put(stats_push))
        .route(route::CAPTURE, get(capture::show))
        .route(route::CAPTURE_REFRESH, post(capture::refresh))
        .route(
            route::CAPTURE_RULE,
            axum::routing::put(capture::set).delete(capture::drop_rule),
        )
        .route(route::METRICS, get(metrics))
        // gRPC (HTTP/2) on the same port: the service answers its own unknown methods.
        .route_service(crate::grpc::ROUTE, crate::grpc::service(scorer.clone()))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body));
    // An open scorer (no pool key, no metrics keys) has no key layer: it would let
    // everything through.
    let open = scorer.config.pool_key.is_empty() && scorer.config.metrics_keys.is_empty();
    let router = if open {
        router
    } else {
        let checked = scorer.clone();
        router.layer(tower::layer::layer_fn(move |inner| KeyCheck {
            inner,
            scorer: checked.clone(),
        }))
    };
    // Outermost: every answer, a refusal of the keys too, carries the request's id.
    router
        .layer(tower::layer::layer_fn(|inner| {
            crate::request::WithContext { inner }
        }))
        .with_state(scorer)
}

/// Records the request in metrics and turns errors into `{"error": ...}` responses.
fn finish(scorer: &Scorer, route: &'static str, result: Result<Response, ScorerError>) -> Response {
    let mut response = result.unwrap_or_else(|error| {
        scorer
            .metrics
            .errors
            .with_label_values(&[error.kind()])
            .inc();
        let retry_after = error.retry_after();
        let mut response = error.into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    });
    let code = response.status();
    scorer
        .metrics
        .requests
        .with_label_values(&[route, code.as_str()])
        .inc();
    response
        .headers_mut()
        .insert(SCORER_HEADER, scorer.name_header.clone());
    response
}

fn model_id(path: Result<Path<String>, PathRejection>) -> Result<ModelId, ScorerError> {
    let Path(id) = path.map_err(|e| ScorerError::InvalidModelId(e.body_text()))?;
    Ok(ModelId::parse(&id)?)
}

/// The path parameters of a model route: `{id}`, and `{version}` on the `/versions/{v}`
/// routes.
#[derive(serde::Deserialize)]
struct Target {
    id: String,
    version: Option<String>,
}

/// The model and version a route names, checked by the contract's rules.
fn target(
    path: Result<Path<Target>, PathRejection>,
) -> Result<(ModelId, Option<u64>), ScorerError> {
    let Path(target) = path.map_err(|e| ScorerError::InvalidModelId(e.body_text()))?;
    let id = ModelId::parse(&target.id)?;
    let version = match target.version {
        None => None,
        Some(text) => Some(contract::parse_version(&text).ok_or_else(|| {
            ScorerError::invalid(format!(
                "invalid version '{}': expected a positive integer",
                contract::truncate_for_message(&text)
            ))
        })?),
    };
    Ok((id, version))
}

fn body(body: Result<Bytes, BytesRejection>, scorer: &Scorer) -> Result<Bytes, ScorerError> {
    body_within(body, scorer.config.http.max_body.bytes())
}

/// The body, or the error of a body over `limit` (413) or unreadable (400).
fn body_within(body: Result<Bytes, BytesRejection>, limit: u64) -> Result<Bytes, ScorerError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ScorerError::BodyTooLarge { limit }
        } else {
            ScorerError::invalid(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => ScorerError::Inference {
            id: String::new(),
            message: format!("cannot encode the response: {e}"),
        }
        .into_response(),
    }
}

async fn server_metadata() -> Response {
    json_response(&json!({
        "name": "manymodels",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository", "binary_tensor_data"],
    }))
}

async fn live() -> Response {
    json_response(&json!({ "live": true }))
}

async fn ready(State(scorer): Shared) -> Response {
    if scorer.is_ready() {
        json_response(&json!({ "ready": true }))
    } else if scorer.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(contract::header::DRAINING, "true")],
            axum::Json(json!({ "ready": false, "error": "draining: shutting down" })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "error": "not ready" })),
        )
            .into_response()
    }
}

async fn infer(
    State(scorer): Shared,
    headers: HeaderMap,
    path: Result<Path<Target>, PathRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    let mut seen = Seen::default();
    let mut named = None;
    let result = async {
        let deadline = infer::deadline(&headers)?;
        let (id, version) = target(path)?;
        named = Some(id.clone());
        let body = body(request, &scorer)?;
        score(&scorer, id, version, &headers, body, deadline, &mut seen).await
    }
    .await;
    scorer
        .ledger
        .observe(named.as_ref(), seen, result.as_ref().err());
    finish(&scorer, "infer", result)
}

/// The records a records answer scored (not those failed alone).
pub(crate) fn scored(answer: &contract::batch::RecordsAnswer) -> u64 {
    answer
        .results
        .iter()
        .filter(|r| !matches!(r, contract::batch::RecordResult::Failed { .. }))
        .count() as u64
}

async fn score(
    scorer: &Arc<Scorer>,
    id: ModelId,
    version: Option<u64>,
    headers: &HeaderMap,
    body: Bytes,
    deadline: Deadline,
    seen: &mut Seen,
) -> Result<Response, ScorerError> {
    // Decoded before touching the cache: a malformed body must not cost a model load.
    let decoded = body::decode(headers, body)?;
    let (model, lookup) = infer::model_within(scorer, &id, version, deadline).await?;
    seen.version = Some(model.version);
    seen.lookup = Some(lookup);
    let bound = decoded.bind(&model)?;
    let outputs = if bound.contributions {
        infer::run_explained(
            scorer,
            &id,
            &model,
            deadline,
            bound.inputs,
            bound.blobs,
            bound.selected,
        )
        .await?
    } else {
        infer::run(
            scorer,
            &id,
            &model,
            version,
            deadline,
            bound.inputs,
            bound.blobs,
            bound.selected,
        )
        .await?
    };
    seen.rows = engine::batch_rows(&outputs) as u64;
    let mut response = bound.reply.encode(id.as_str(), model.version, outputs);
    response
        .headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(lookup.as_str()));
    Ok(response)
}

/// The many-model route's group of records for one model (`records`): same key check,
/// deadline, body limit, version choice, cache header and metrics as `infer`.
async fn records(
    State(scorer): Shared,
    headers: HeaderMap,
    path: Result<Path<Target>, PathRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    let mut seen = Seen::default();
    let mut named = None;
    let result = async {
        let deadline = infer::deadline(&headers)?;
        let (id, version) = target(path)?;
        named = Some(id.clone());
        let body = body(request, &scorer)?;
        // Parsed before touching the cache: a malformed body must not cost a model load.
        let request = crate::records::parse(&body)?;
        // Not held through the load and the run: the records are parsed.
        drop(body);
        let (model, lookup) = infer::model_within(&scorer, &id, version, deadline).await?;
        seen.version = Some(model.version);
        seen.lookup = Some(lookup);
        let answer = crate::records::answer(&scorer, &id, &model, deadline, request).await?;
        seen.rows = scored(&answer);
        let mut response = json_response(&answer);
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(lookup.as_str()));
        Ok(response)
    }
    .await;
    scorer
        .ledger
        .observe(named.as_ref(), seen, result.as_ref().err());
    finish(&scorer, "records", result)
}

/// The many-model route's groups for several models in one request (`record_groups`):
/// each group answered as the records route answers it, or failed alone.
async fn record_groups(
    State(scorer): Shared,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let deadline = infer::deadline(&headers)?;
        let body = body(request, &scorer)?;
        let request = crate::records::parse_groups(&body)?;
        drop(body);
        let answer = crate::records::answer_groups(&scorer, deadline, request).await;
        Ok(json_response(&answer))
    }
    .await;
    finish(&scorer, "records", result)
}

#[derive(Serialize)]
struct ModelMetadata<'a> {
    name: &'a str,
    versions: Vec<String>,
    platform: &'static str,
    /// `onnxruntime` or `native`: which engine serves this version here.
    engine: &'static str,
    inputs: &'a [TensorSpec],
    /// Each output's spec, with `parameters.classes` on a ZipMap output.
    outputs: Vec<engine::OutputMetadata<'a>>,
    /// The declared column names (`manymodels.columns`), when the model declares them.
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<&'a [String]>,
    /// How the model forecasts (`manymodels.forecast`), when it declares it.
    #[serde(skip_serializing_if = "Option::is_none")]
    forecast: Option<&'a contract::forecast::ForecastSpec>,
    /// Whether a request may ask for contributions (`parameters.contributions`), and if
    /// not, why.
    explanations: Explanations,
}

#[derive(Serialize)]
struct Explanations {
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn metadata(
    scorer: &Scorer,
    id: ModelId,
    version: Option<u64>,
) -> Result<Response, ScorerError> {
    let (model, versions) = infer::describe(scorer, &id, version).await?;
    Ok(json_response(&ModelMetadata {
        name: id.as_str(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: infer::platform(&model),
        engine: model.engine.as_str(),
        inputs: &model.inputs,
        outputs: model.output_metadata(),
        columns: model.declaration.columns.as_deref(),
        forecast: model.declaration.forecast.as_ref(),
        explanations: match model.explainable() {
            Ok(()) => Explanations {
                available: true,
                reason: None,
            },
            Err(reason) => Explanations {
                available: false,
                reason: Some(reason),
            },
        },
    }))
}

async fn model_metadata(
    State(scorer): Shared,
    headers: HeaderMap,
    path: Result<Path<Target>, PathRejection>,
) -> Response {
    let result = async {
        let deadline = infer::deadline(&headers)?;
        let (id, version) = target(path)?;
        let (owner, model) = (scorer.clone(), id.clone());
        infer::within(&id, deadline, async move {
            metadata(&owner, model, version).await
        })
        .await
    }
    .await;
    finish(&scorer, "metadata", result)
}

/// A model's readiness as JSON (`infer::readiness`).
async fn readiness(
    scorer: &Scorer,
    id: ModelId,
    version: Option<u64>,
) -> Result<Response, ScorerError> {
    let loaded = infer::readiness(scorer, &id, version).await?;
    Ok(json_response(
        &json!({ "name": id.as_str(), "ready": true, "loaded": loaded }),
    ))
}

async fn model_ready(
    State(scorer): Shared,
    headers: HeaderMap,
    path: Result<Path<Target>, PathRejection>,
) -> Response {
    let result = async {
        let deadline = infer::deadline(&headers)?;
        let (id, version) = target(path)?;
        let (owner, model) = (scorer.clone(), id.clone());
        infer::within(&id, deadline, async move {
            readiness(&owner, model, version).await
        })
        .await
    }
    .await;
    finish(&scorer, "ready", result)
}

/// The repository index (`infer::index`). A body of `{"ready": true}` lists only the
/// models in memory.
async fn repository_index(
    State(scorer): Shared,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let prefixes = infer::index_prefixes(
            headers
                .get(contract::header::MODEL_PREFIXES)
                .map(HeaderValue::as_bytes),
        )?;
        let body = body(request, &scorer)?;
        let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
            false
        } else {
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| ScorerError::invalid(format!("malformed index request: {e}")))?;
            value
                .get("ready")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        Ok(json_response(
            &infer::index(&scorer, ready_only, prefixes.as_deref()).await?,
        ))
    }
    .await;
    finish(&scorer, "index", result)
}

async fn repository_load(
    State(scorer): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    model_call(scorer, "load", model_id(path), |scorer, id| async move {
        let version = scorer.cache.warm(&id).await?;
        Ok(json!({ "name": id.as_str(), "version": version.to_string(), "loaded": true }))
    })
    .await
}

async fn repository_unload(
    State(scorer): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    model_call(scorer, "unload", model_id(path), |scorer, id| async move {
        let dropped = scorer.cache.unload(&id).await;
        Ok(json!({ "name": id.as_str(), "unloaded": dropped }))
    })
    .await
}

/// The explain view: resident models with size, priority and last use, the pool's
/// hottest models for this scorer, and recent evictions with their reason.
async fn explain(State(scorer): Shared) -> Response {
    let result = Ok(json_response(&contract::explain::CacheView {
        scorer: scorer.config.display_name(),
        ready: scorer.is_ready(),
        cache: scorer.cache.explain(50),
    }));
    finish(&scorer, "explain", result)
}

/// The one shape of the routes about one model that answer JSON: the model id (already
/// checked, with the admin key on admin routes), one call, the answer.
async fn model_call<T, F, Fut>(
    scorer: Arc<Scorer>,
    route: &'static str,
    id: Result<ModelId, ScorerError>,
    call: F,
) -> Response
where
    T: Serialize,
    F: FnOnce(Arc<Scorer>, ModelId) -> Fut,
    Fut: Future<Output = Result<T, ScorerError>>,
{
    let result = async { Ok(json_response(&call(scorer.clone(), id?).await?)) }.await;
    finish(&scorer, route, result)
}

/// A proxy's statistics push (`StatsReport`): answered with this cache's summary.
async fn stats_push(State(scorer): Shared, request: Result<Bytes, BytesRejection>) -> Response {
    let result = body(request, &scorer).and_then(|bytes| {
        let report: contract::StatsReport = serde_json::from_slice(&bytes)
            .map_err(|e| ScorerError::InvalidInput(format!("statistics report: {e}")))?;
        let cache = scorer.take_stats(report)?;
        Ok(json_response(&contract::StatsAnswer {
            scorer: scorer.config.display_name(),
            ready: scorer.is_ready(),
            cache,
        }))
    });
    finish(&scorer, "stats", result)
}

async fn metrics(State(scorer): Shared) -> Response {
    scorer.cache.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        scorer.metrics.render(),
    )
        .into_response()
}

/// Unmatched paths. Under `/v2/models/` that means an id with a `/` in it or an empty one:
/// a bad request, not a missing route.
async fn no_route(State(scorer): Shared, method: Method, uri: Uri) -> Response {
    let error = match uri.path().strip_prefix("/v2/models/") {
        Some(rest) => ScorerError::InvalidModelId(rest.to_string()),
        None => ScorerError::NoRoute(format!("{method} {}", uri.path())),
    };
    finish(&scorer, "other", Err(error))
}

/// Through `finish` like every other answer: counted, and marked with the scorer's name.
async fn method_not_allowed(State(scorer): Shared, method: Method, uri: Uri) -> Response {
    let error = ScorerError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    };
    finish(&scorer, "other", Err(error))
}
