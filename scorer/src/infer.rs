//! What every front end of the scorer shares once a request is parsed: its deadline, the
//! model look-up within it, the checked inputs run on the model, and the model's metadata,
//! readiness and the repository index. REST (`http`) and gRPC (`grpc`) differ only in how
//! they read requests and write answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manymodels_contract::{self as contract, Lookup};

use crate::Scorer;
use crate::engine::{self, LoadedModel};
use crate::error::ScorerError;
use crate::model_id::ModelId;
use crate::oip;
use crate::tensor::NamedTensor;

/// A request's deadline: when it passes, and its length in ms (for the 504's message).
pub type Deadline = Option<(tokio::time::Instant, u64)>;

/// A request's deadline from `x-mm-timeout-ms` (or, for gRPC clients, `grpc-timeout`),
/// counted from now; a malformed header is a 400, never ignored. Every route that looks a
/// model up reads its bounds here first, so a malformed `x-mm-priority` (neither
/// `interactive` nor `batch`) is refused here too, with a 400, before any load; the
/// request context carries the valid one (`request::priority`).
pub fn deadline(headers: &axum::http::HeaderMap) -> Result<Deadline, ScorerError> {
    if let Some(value) = headers.get(contract::header::PRIORITY)
        && value
            .to_str()
            .ok()
            .and_then(contract::Priority::parse)
            .is_none()
    {
        return Err(ScorerError::invalid(format!(
            "{} must be `{}` or `{}`",
            contract::header::PRIORITY,
            contract::Priority::Interactive.as_str(),
            contract::Priority::Batch.as_str()
        )));
    }
    let ms = if let Some(value) = headers.get(contract::header::TIMEOUT_MS) {
        value
            .to_str()
            .ok()
            .and_then(contract::parse_timeout_ms)
            .ok_or_else(|| {
                ScorerError::invalid(format!(
                    "{} must be a whole number of milliseconds from 1 to {}",
                    contract::header::TIMEOUT_MS,
                    contract::MAX_TIMEOUT_MS
                ))
            })?
    } else if let Some(value) = headers.get("grpc-timeout") {
        value
            .to_str()
            .ok()
            .and_then(contract::grpc::parse_grpc_timeout)
            .ok_or_else(|| ScorerError::invalid("malformed grpc-timeout"))?
    } else {
        return Ok(None);
    };
    Ok(Some((
        tokio::time::Instant::now() + Duration::from_millis(ms),
        ms,
    )))
}

/// `work` for a request about model `id`, within the request's deadline if it has one
/// (504 past it): the one bound of every route that looks a model up or loads it (infer,
/// metadata, readiness). With a deadline the work runs as its own task: a request that
/// gives up must not cancel the load other requests wait for (the single flight would
/// start it again), so the load goes on and only this request answers 504.
pub async fn within<T: Send + 'static>(
    id: &ModelId,
    deadline: Deadline,
    work: impl Future<Output = Result<T, ScorerError>> + Send + 'static,
) -> Result<T, ScorerError> {
    let Some((at, ms)) = deadline else {
        return work.await;
    };
    // The task carries the request's context and span: its load spans and log lines
    // belong to the request as they do without a deadline.
    let work = tracing::Instrument::in_current_span(crate::request::carry(work));
    match tokio::time::timeout_at(at, tokio::spawn(work)).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => Err(ScorerError::Inference {
            id: id.to_string(),
            message: format!("model look-up task failed: {e}"),
        }),
        Err(_) => Err(ScorerError::DeadlineExceeded { ms }),
    }
}

/// The model for an inference request, within its deadline if it has one (`within`): the
/// version it names, else the canary's or the live version (`ModelCache::get_for_inference`).
pub async fn model_within(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    version: Option<u64>,
    deadline: Deadline,
) -> Result<(Arc<LoadedModel>, Lookup), ScorerError> {
    let (owner, model) = (scorer.clone(), id.clone());
    within(id, deadline, async move {
        owner.cache.get_for_inference(&model, version).await
    })
    .await
}

/// Checks a parsed request's inputs against `model` and runs it, within the deadline:
/// `blobs[i]` is input `i`'s binary data, if it came as bytes (the REST binary extension,
/// gRPC's raw or typed contents); `selected` are the outputs to return, in order. `named`
/// is the version the request named: one naming none, answered by the live version, may
/// be sampled for the model's shadow (`cache::shadow`), whose job runs after this answer.
#[allow(
    clippy::too_many_arguments,
    reason = "the request's parts, as the protocols hand them over"
)]
pub async fn run(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    named: Option<u64>,
    deadline: Deadline,
    inputs: Vec<oip::RequestInput>,
    blobs: Vec<Option<Bytes>>,
    selected: Vec<usize>,
) -> Result<Vec<NamedTensor>, ScorerError> {
    // The deadline is checked once, by `run_checked`, before the engine runs.
    let inputs = checked_inputs(scorer, model, inputs, blobs)?;
    // One atomic load unless some model has a shadow; the inputs cloned only when sampled.
    let Some(sampled) = scorer
        .cache
        .shadow_before(id, named, model.version, &inputs)
    else {
        return run_checked(scorer, id, model, deadline, inputs, selected).await;
    };
    let started = Instant::now();
    let outputs = run_checked(scorer, id, model, deadline, inputs, selected).await?;
    if scorer
        .cache
        .shadow_after(id, sampled, &outputs, started.elapsed())
    {
        start_shadow_workers(scorer);
    }
    Ok(outputs)
}

/// Starts the shadow workers (`shadow.concurrency` tasks) the first time a job is queued:
/// each takes one job at a time and runs it as a live call runs (`ModelCache::run_shadow`).
fn start_shadow_workers(scorer: &Arc<Scorer>) {
    scorer.cache.start_shadow_workers(|queue| {
        let scorer = scorer.clone();
        tokio::spawn(async move {
            loop {
                let Some(job) = queue.lock().await.recv().await else {
                    return;
                };
                scorer
                    .cache
                    .run_shadow(job, scorer.config.inference_inline_max)
                    .await;
            }
        });
    });
}

/// Runs `model` on inputs already checked against it (the records route builds them),
/// within the deadline: inline when the model is measured to be quick and its engine is
/// free, else on a blocking thread. Counted in the inference metrics as `run` is.
pub async fn run_checked(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    inputs: Vec<NamedTensor>,
    selected: Vec<usize>,
) -> Result<Vec<NamedTensor>, ScorerError> {
    if let Some((at, ms)) = deadline
        && tokio::time::Instant::now() >= at
    {
        return Err(ScorerError::DeadlineExceeded { ms });
    }
    let started = Instant::now();
    // The engine run's span (`debug`: built only when spans are exported), closed on return.
    let _span = if manymodels_boot::telemetry::traced_here() {
        tracing::debug_span!("engine.run", model = %id, version = model.version)
    } else {
        tracing::Span::none()
    };
    // Payload capture: one atomic load unless a rule takes this model (`capture`).
    let captured = scorer.capture.before(id.as_str(), &inputs);
    let quick = scorer.config.inference_inline_max;
    let outputs = match model.run_quick(quick, inputs, &selected) {
        engine::Quick::Ran(outputs) => {
            scorer.metrics.inline_runs.inc();
            outputs?
        }
        engine::Quick::Later(inputs) => {
            let running = model.clone();
            let run = tokio::task::spawn_blocking(move || running.infer(inputs, &selected));
            let joined = match deadline {
                None => run.await,
                Some((at, ms)) => tokio::time::timeout_at(at, run)
                    .await
                    .map_err(|_| ScorerError::DeadlineExceeded { ms })?,
            };
            joined.map_err(|e| ScorerError::Inference {
                id: id.to_string(),
                message: format!("inference task failed: {e}"),
            })??
        }
    };
    scorer
        .metrics
        .inference_duration
        .observe(started.elapsed().as_secs_f64());
    if let Some(sampled) = captured {
        let took = started.elapsed();
        scorer
            .capture
            .after(sampled, id.as_str(), model.version, &outputs, took);
    }
    Ok(outputs)
}

/// A parsed request's inputs checked against `model` and made its tensors (`blobs[i]`:
/// input `i`'s binary data, if it came as bytes).
fn checked_inputs(
    scorer: &Scorer,
    model: &LoadedModel,
    inputs: Vec<oip::RequestInput>,
    blobs: Vec<Option<Bytes>>,
) -> Result<Vec<NamedTensor>, ScorerError> {
    oip::validate_inputs_with(
        inputs,
        blobs,
        &model.inputs,
        scorer.config.http.max_elements,
    )
}

/// `run` for a request that asks for explanations (`parameters.contributions`): the
/// model's outputs at `selected`, then its contributions (`contributions`). Refused (422)
/// before anything runs when the model cannot be explained. Not shadowed.
pub async fn run_explained(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    inputs: Vec<oip::RequestInput>,
    blobs: Vec<Option<Bytes>>,
    selected: Vec<usize>,
) -> Result<Vec<NamedTensor>, ScorerError> {
    let inputs = checked_inputs(scorer, model, inputs, blobs)?;
    explainable(scorer, id, model)?;
    let copy = inputs.clone();
    let mut outputs = run_checked(scorer, id, model, deadline, inputs, selected).await?;
    outputs.extend(contributions(scorer, id, model, deadline, copy).await?);
    Ok(outputs)
}

/// `Ok` when `model` can be explained, else its 422 (counted as `unexplainable`).
pub fn explainable(scorer: &Scorer, id: &ModelId, model: &LoadedModel) -> Result<(), ScorerError> {
    model.explainable().map_err(|reason| {
        scorer.metrics.explanations[1].inc();
        ScorerError::Unexplainable {
            id: id.to_string(),
            version: model.version,
            reason,
        }
    })
}

/// The longest an explanation works when its request has no deadline of its own: the
/// blocking thread stops between trees once it passes (the request's own deadline, when
/// it has one, stops it the same way).
pub const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Each feature's contributions to each raw score of `model` for checked `inputs`
/// (`LoadedModel::contributions`: the outputs `contributions`, `expected_value` and
/// `raw_output`), on a blocking thread (TreeSHAP costs a multiple of a prediction),
/// within the deadline (else `EXPLAIN_TIMEOUT`), at most `http.max_elements` values.
/// Counted in `mm_scorer_explanations_total`.
pub async fn contributions(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    inputs: Vec<NamedTensor>,
) -> Result<Vec<NamedTensor>, ScorerError> {
    let running = model.clone();
    let max_values = scorer.config.http.max_elements;
    let until = match deadline {
        Some((at, _)) => at.into_std(),
        None => Instant::now() + EXPLAIN_TIMEOUT,
    };
    let run =
        tokio::task::spawn_blocking(move || running.contributions(inputs, max_values, Some(until)));
    let joined = match deadline {
        None => Ok(run.await),
        Some((at, ms)) => tokio::time::timeout_at(at, run)
            .await
            .map_err(|_| ScorerError::DeadlineExceeded { ms }),
    };
    let result = match joined {
        Ok(Ok(Ok(outputs))) => Ok(outputs),
        Ok(Ok(Err(engine::Unexplained::Unexplainable(reason)))) => {
            Err(ScorerError::Unexplainable {
                id: id.to_string(),
                version: model.version,
                reason,
            })
        }
        Ok(Ok(Err(engine::Unexplained::Failed(e)))) => Err(e.into()),
        Ok(Ok(Err(engine::Unexplained::TooLarge(why)))) => Err(ScorerError::InvalidInput(why)),
        Ok(Ok(Err(engine::Unexplained::Expired))) => Err(ScorerError::DeadlineExceeded {
            ms: deadline.map_or(EXPLAIN_TIMEOUT.as_millis() as u64, |(_, ms)| ms),
        }),
        Ok(Err(e)) => Err(ScorerError::Inference {
            id: id.to_string(),
            message: format!("explanation task failed: {e}"),
        }),
        Err(e) => Err(e),
    };
    let outcome = match &result {
        Ok(_) => 0,
        Err(ScorerError::Unexplainable { .. }) => 1,
        Err(_) => 2,
    };
    scorer.metrics.explanations[outcome].inc();
    result
}

/// The platform name a model's metadata reports for its engine.
pub fn platform(model: &LoadedModel) -> &'static str {
    match model.engine {
        engine::Engine::OnnxRuntime => "onnxruntime_onnx",
        engine::Engine::Native => "manymodels_native",
    }
}

/// A model (loading it if needed) and the versions the store holds, for its metadata.
pub async fn describe(
    scorer: &Scorer,
    id: &ModelId,
    version: Option<u64>,
) -> Result<(Arc<LoadedModel>, Vec<u64>), ScorerError> {
    let (model, _) = scorer.cache.get(id, version).await?;
    Ok((model, store_versions(scorer, id).await?))
}

/// The versions of `id` the store holds (503 when the store fails).
async fn store_versions(scorer: &Scorer, id: &ModelId) -> Result<Vec<u64>, ScorerError> {
    scorer
        .cache
        .store()
        .list_versions(id)
        .await
        .map_err(|e| ScorerError::Store(e.to_string()))
}

/// A model is ready when it can be scored now: it is in the store (loading on demand) or
/// already in memory. `Ok(loaded)` says which; a model or version that does not exist is
/// an error (404).
pub async fn readiness(
    scorer: &Scorer,
    id: &ModelId,
    version: Option<u64>,
) -> Result<bool, ScorerError> {
    let loaded = scorer
        .cache
        .resident()
        .iter()
        .any(|m| &m.id == id && version.is_none_or(|v| v == m.version));
    let exists = loaded || {
        let versions = store_versions(scorer, id).await?;
        match version {
            Some(v) => versions.contains(&v),
            None => !versions.is_empty(),
        }
    };
    if !exists {
        return Err(match version {
            Some(v) => ScorerError::VersionNotFound {
                id: id.to_string(),
                version: v.to_string(),
            },
            None => ScorerError::ModelNotFound(id.to_string()),
        });
    }
    Ok(loaded)
}

/// One entry of the repository index, as the contract types it (mmctl reads it).
pub use manymodels_contract::oip::IndexEntry;

/// Lists the store without loading anything. Models in memory are `READY`; the rest are
/// `UNAVAILABLE` with reason `not loaded` (they load on their first request);
/// `ready_only` lists only the models in memory.
pub async fn index(
    scorer: &Scorer,
    ready_only: bool,
    prefixes: Option<&[String]>,
) -> Result<Vec<IndexEntry>, ScorerError> {
    let mut resident: Vec<(String, u64)> = scorer
        .cache
        .resident()
        .iter()
        .map(|m| (m.id.to_string(), m.version))
        .collect();
    resident.sort();
    resident.dedup();
    let mut entries: Vec<IndexEntry> = resident
        .iter()
        .map(|(name, version)| IndexEntry {
            name: name.clone(),
            version: Some(version.to_string()),
            state: "READY".into(),
            reason: String::new(),
        })
        .collect();
    if !ready_only {
        let ids = scorer
            .cache
            .store()
            .list_models()
            .await
            .map_err(|e| ScorerError::Store(e.to_string()))?;
        entries.extend(
            ids.into_iter()
                .filter(|id| {
                    resident
                        .binary_search_by(|(name, _)| name.as_str().cmp(id.as_str()))
                        .is_err()
                })
                .map(|id| IndexEntry {
                    name: id.to_string(),
                    version: None,
                    state: "UNAVAILABLE".into(),
                    reason: "not loaded".into(),
                }),
        );
        entries.sort_by(|a, b| a.name.cmp(&b.name));
    }
    if let Some(prefixes) = prefixes {
        entries.retain(|entry| prefixes.iter().any(|p| entry.name.starts_with(p.as_str())));
    }
    Ok(entries)
}

/// The `x-mm-model-prefixes` of an index request: `None` when absent (every model),
/// 400 when malformed.
pub fn index_prefixes(value: Option<&[u8]>) -> Result<Option<Vec<String>>, ScorerError> {
    let Some(value) = value else {
        return Ok(None);
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(manymodels_contract::model_prefixes)
        .map(Some)
        .ok_or_else(|| {
            ScorerError::invalid(format!(
                "{} must be model-id prefixes separated by `|`",
                manymodels_contract::header::MODEL_PREFIXES
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_priority_is_a_400_and_a_valid_one_passes() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(deadline(&headers).unwrap().is_none());
        for good in ["interactive", "batch"] {
            headers.insert(contract::header::PRIORITY, good.parse().unwrap());
            assert!(deadline(&headers).is_ok(), "{good}");
        }
        for bad in ["Batch", "urgent", ""] {
            headers.insert(contract::header::PRIORITY, bad.parse().unwrap());
            let error = deadline(&headers).unwrap_err();
            assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(error.to_string().contains("x-mm-priority"), "{error}");
        }
    }
}
