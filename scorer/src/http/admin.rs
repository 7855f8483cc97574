//! The scorer's admin routes (`/v2/mm/models/{id}...`), which the proxy forwards its
//! admin API to: version status, refresh, pin, unpin, publish, a version's digest, the
//! canary's, and one model's explanation.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use manymodels_contract::explain::ScorerExplain;
use manymodels_contract::versions::{
    CanaryAnswer, CanaryDropped, CanaryPromoted, CanaryRequest, Digest, PinRequest,
};

use super::keys::admin_authorized;
use super::{Shared, Target, body, body_within, finish, model_call, model_id, target};
use crate::Scorer;
use crate::error::ScorerError;
use crate::model_id::ModelId;

/// The model id of an admin route, read only after the admin key was checked.
pub(super) struct Admin(pub(super) Result<ModelId, ScorerError>);

impl FromRequestParts<Arc<Scorer>> for Admin {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        scorer: &Arc<Scorer>,
    ) -> Result<Self, Self::Rejection> {
        if let Err(error) = admin_authorized(scorer, &parts.headers) {
            return Ok(Admin(Err(error)));
        }
        let path = Path::<String>::from_request_parts(parts, scorer).await;
        Ok(Admin(model_id(path)))
    }
}

/// Versions in the store, the alias, what this scorer serves and any refused version.
pub(super) async fn admin_status(State(scorer): Shared, Admin(id): Admin) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        scorer.cache.version_status(&id).await
    })
    .await
}

/// Checks the store for `id` now and moves to its live version.
pub(super) async fn admin_refresh(State(scorer): Shared, Admin(id): Admin) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        scorer.cache.refresh(&id).await
    })
    .await
}

/// Pins the live version (`{"version": 3}`), persisted in the store.
pub(super) async fn admin_pin(
    State(scorer): Shared,
    Admin(id): Admin,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        let bytes = body(request, &scorer)?;
        let pin: PinRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ScorerError::InvalidInput(format!("expected {{\"version\": N}}: {e}")))?;
        scorer.cache.pin(&id, Some(pin.version)).await
    })
    .await
}

/// Unpins: the highest version is live again.
pub(super) async fn admin_unpin(State(scorer): Shared, Admin(id): Admin) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        scorer.cache.pin(&id, None).await
    })
    .await
}

/// Publishes the body (ONNX bytes) as a new version, after checking it loads and
/// answers; 201 with the refresh outcome.
pub(super) async fn admin_publish(
    State(scorer): Shared,
    headers: axum::http::HeaderMap,
    path: Result<Path<Target>, PathRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        admin_authorized(&scorer, &headers)?;
        let (id, version) = target(path)?;
        let version =
            version.ok_or_else(|| ScorerError::invalid("the publish route needs a version"))?;
        let bytes = body_within(request, scorer.config.http.max_upload.bytes())?;
        if bytes.is_empty() {
            return Err(ScorerError::InvalidInput("empty model body".into()));
        }
        let outcome = scorer.cache.publish(&id, version, bytes).await?;
        Ok((StatusCode::CREATED, axum::Json(outcome)).into_response())
    }
    .await;
    finish(&scorer, "admin", result)
}

/// A version's size and SHA-256, from the store (`store::ModelStore::digest`); 404 when
/// the model has no such version.
pub(super) async fn admin_digest(
    State(scorer): Shared,
    headers: axum::http::HeaderMap,
    path: Result<Path<Target>, PathRejection>,
) -> Response {
    let result = async {
        admin_authorized(&scorer, &headers)?;
        let (id, version) = target(path)?;
        let version =
            version.ok_or_else(|| ScorerError::invalid("the digest route needs a version"))?;
        let digest = scorer
            .cache
            .store()
            .digest(&id, version)
            .await
            .map_err(|e| ScorerError::from_store(e, &id, Some(version)))?;
        Ok(axum::Json(Digest {
            model: id.to_string(),
            version,
            bytes: digest.bytes,
            sha256: digest.sha256,
        })
        .into_response())
    }
    .await;
    finish(&scorer, "admin", result)
}

/// Why the model is or is not in this scorer's memory (`ModelCache::explain_model`),
/// with this scorer's name as in `x-mm-scorer`.
pub(super) async fn admin_explain(State(scorer): Shared, Admin(id): Admin) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        Ok(ScorerExplain {
            scorer: scorer.config.display_name(),
            explain: scorer.cache.explain_model(&id).await?,
        })
    })
    .await
}

/// The largest canary body read: `{"version": N, "percent": P}` needs a few bytes.
const CANARY_BODY_LIMIT: u64 = 4096;

/// The model's canary, from the store, with this scorer's counts.
pub(super) async fn admin_canary(State(scorer): Shared, Admin(id): Admin) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        let canary = scorer.cache.canary(&id).await?;
        Ok(CanaryAnswer {
            model: id.to_string(),
            canary,
        })
    })
    .await
}

/// Sets the canary (`{"version": 2, "percent": 10}`), persisted in the store.
pub(super) async fn admin_set_canary(
    State(scorer): Shared,
    Admin(id): Admin,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        let bytes = body(request, &scorer)?;
        if bytes.len() as u64 > CANARY_BODY_LIMIT {
            return Err(ScorerError::BodyTooLarge {
                limit: CANARY_BODY_LIMIT,
            });
        }
        let set: CanaryRequest = serde_json::from_slice(&bytes).map_err(|e| {
            ScorerError::InvalidInput(format!("expected {{\"version\": N, \"percent\": P}}: {e}"))
        })?;
        let canary = crate::store::Canary::new(set.version, set.percent)
            .map_err(ScorerError::InvalidInput)?;
        let canary = scorer.cache.set_canary(&id, canary).await?;
        Ok(CanaryAnswer {
            model: id.to_string(),
            canary,
        })
    })
    .await
}

/// Drops the canary; answers it as it was.
pub(super) async fn admin_drop_canary(State(scorer): Shared, Admin(id): Admin) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        let dropped = scorer.cache.drop_canary(&id).await?;
        Ok(CanaryDropped {
            model: id.to_string(),
            dropped,
        })
    })
    .await
}

/// Pins the canary's version and drops the canary; answers the canary and the pin's
/// refresh outcome.
pub(super) async fn admin_promote_canary(State(scorer): Shared, Admin(id): Admin) -> Response {
    model_call(scorer, "admin", id, |scorer, id| async move {
        let (promoted, pinned) = scorer.cache.promote_canary(&id).await?;
        Ok(CanaryPromoted {
            model: id.to_string(),
            promoted,
            pinned,
        })
    })
    .await
}
