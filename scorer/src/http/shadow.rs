//! The shadow routes (`cache::shadow`): one model's shadow shown, set, dropped and
//! promoted (`/v2/mm/models/{id}/shadow[/promote]`), and every shadow this scorer counts
//! (`/v2/mm/shadows`), which the proxy fans out to every scorer and sums. They take an
//! admin key (or the pool key, which the proxy sends), as the canary's routes do; a proxy
//! passes a scoped caller's prefixes in `x-mm-model-prefixes`, and then a model outside
//! them is not found and the list holds only theirs.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use manymodels_contract::header;
use manymodels_contract::shadow::{ShadowDropped, ShadowPromoted, ShadowSpec, ShadowsReport};

use super::admin::Admin;
use super::keys::admin_authorized;
use super::{Shared, body, finish, json_response, model_call};
use crate::error::ScorerError;
use crate::model_id::ModelId;

/// The largest shadow body read: a spec with a rule needs a few hundred bytes.
const SHADOW_BODY_LIMIT: u64 = 4096;

/// The caller's prefixes (`x-mm-model-prefixes`), `None` for every model; 400 when
/// malformed.
fn prefixes(headers: &HeaderMap) -> Result<Option<Vec<String>>, ScorerError> {
    crate::infer::index_prefixes(
        headers
            .get(header::MODEL_PREFIXES)
            .map(HeaderValue::as_bytes),
    )
}

/// `id` if the caller's prefixes admit it; a model outside them is not found.
fn in_scope(headers: &HeaderMap, id: ModelId) -> Result<ModelId, ScorerError> {
    match prefixes(headers)? {
        Some(p) if !p.iter().any(|p| id.as_str().starts_with(p.as_str())) => {
            Err(ScorerError::ModelNotFound(id.to_string()))
        }
        _ => Ok(id),
    }
}

/// The model's shadow, from the store, with this scorer's counts (`ShadowView`).
pub(super) async fn admin_shadow(
    State(scorer): Shared,
    headers: HeaderMap,
    Admin(id): Admin,
) -> Response {
    let id = id.and_then(|id| in_scope(&headers, id));
    model_call(scorer, "admin", id, |scorer, id| async move {
        scorer.cache.shadow(&id).await
    })
    .await
}

/// Sets the shadow (a `ShadowSpec`; its `since_ms` is this scorer's now), persisted in the
/// store; answers the `ShadowView`. The candidate must be in the store (404) and not the
/// live version (409).
pub(super) async fn admin_set_shadow(
    State(scorer): Shared,
    headers: HeaderMap,
    Admin(id): Admin,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    let id = id.and_then(|id| in_scope(&headers, id));
    model_call(scorer, "admin", id, |scorer, id| async move {
        let bytes = body(request, &scorer)?;
        if bytes.len() as u64 > SHADOW_BODY_LIMIT {
            return Err(ScorerError::BodyTooLarge {
                limit: SHADOW_BODY_LIMIT,
            });
        }
        let spec: ShadowSpec = serde_json::from_slice(&bytes).map_err(|e| {
            ScorerError::InvalidInput(format!(
                "expected {{\"version\": N, \"percent\": P[, \"tolerance\": T][, \"rule\": {{...}}]}}: {e}"
            ))
        })?;
        scorer.cache.set_shadow(&id, spec).await
    })
    .await
}

/// Drops the shadow; answers it as it was (`ShadowDropped`).
pub(super) async fn admin_drop_shadow(
    State(scorer): Shared,
    headers: HeaderMap,
    Admin(id): Admin,
) -> Response {
    let id = id.and_then(|id| in_scope(&headers, id));
    model_call(scorer, "admin", id, |scorer, id| async move {
        let dropped = scorer.cache.drop_shadow(&id).await?;
        Ok(ShadowDropped {
            model: id.to_string(),
            dropped,
        })
    })
    .await
}

/// The promotion's query: the shadow it is for, when the caller judged one.
#[derive(serde::Deserialize)]
pub(super) struct PromoteQuery {
    since_ms: Option<u64>,
}

/// Pins the shadow's version and drops the shadow (`ShadowPromoted`); with
/// `?since_ms=S`, only if the shadow is still the one set at `S` (409 otherwise).
pub(super) async fn admin_promote_shadow(
    State(scorer): Shared,
    headers: HeaderMap,
    Admin(id): Admin,
    query: Result<Query<PromoteQuery>, QueryRejection>,
) -> Response {
    let id = id.and_then(|id| in_scope(&headers, id));
    model_call(scorer, "admin", id, |scorer, id| async move {
        let Query(query) =
            query.map_err(|e| ScorerError::invalid(format!("promote query: {}", e.body_text())))?;
        let (promoted, pinned) = scorer.cache.promote_shadow(&id, query.since_ms).await?;
        Ok(ShadowPromoted {
            model: id.to_string(),
            promoted,
            pinned,
        })
    })
    .await
}

/// Every shadow this scorer counts, with its local counts and verdict (`ShadowsReport`).
pub(super) async fn shadows(State(scorer): Shared, headers: HeaderMap) -> Response {
    let result = admin_authorized(&scorer, &headers)
        .and_then(|()| prefixes(&headers))
        .map(|prefixes| {
            json_response(&ShadowsReport {
                scorer: scorer.config.display_name(),
                shadows: scorer.cache.shadow_views(prefixes.as_deref()),
            })
        });
    // Its own route label: every proxy's judge asks it every `shadow.judge_interval`.
    finish(&scorer, "shadows", result)
}
