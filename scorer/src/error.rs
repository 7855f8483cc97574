//! The scorer's one error type and the one table that maps it to HTTP.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::model_id::ModelId;
use crate::store::StoreError;

/// Everything that can go wrong serving a request.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ScorerError {
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    #[error("model '{id}' has no version {version}")]
    VersionNotFound { id: String, version: String },
    #[error("model '{0}' has no canary")]
    NoCanary(String),
    #[error("model '{0}' has no shadow")]
    NoShadow(String),
    /// A shadow version could not be loaded without evicting a resident that serves
    /// requests: the shadow job is skipped. Never a client's answer (shadow jobs run after
    /// it), but kept in the one table like every error.
    #[error("model '{id}' version {version} is a shadow version and there is no free room for it")]
    NoRoomForShadow { id: String, version: u64 },
    /// The echo of the refused id; the message is the contract's (`InvalidModelId`).
    #[error("{}", manymodels_contract::InvalidModelId(.0.clone()))]
    InvalidModelId(String),
    #[error("{0}")]
    InvalidInput(String),
    /// An explanation (`parameters.contributions`) of a model that cannot be explained,
    /// and why (`LoadedModel::explainable`).
    #[error("model '{id}' version {version} cannot be explained: {reason}")]
    Unexplainable {
        id: String,
        version: u64,
        reason: String,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("inference failed for model '{id}': {message}")]
    Inference { id: String, message: String },
    #[error("model store unavailable: {0}")]
    Store(String),
    #[error("the scorer is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Conflict(String),
    #[error("missing or invalid admin bearer key")]
    Unauthorized,
    #[error(
        "missing or invalid bearer key: this scorer needs its pool key (or an admin key on admin routes)"
    )]
    NoPoolKey,
    #[error(transparent)]
    StatsRefused(#[from] manymodels_contract::StatsRefusal),
    #[error("the scorer is overloaded: {0}; retry later")]
    Overloaded(String),
    #[error(
        "model '{id}' version {version} did not load within {seconds} s (cache.load_timeout); retry later"
    )]
    LoadTimeout {
        id: String,
        version: u64,
        seconds: f64,
    },
    #[error("the request's deadline of {ms} ms (x-mm-timeout-ms) passed before it was answered")]
    DeadlineExceeded { ms: u64 },
    #[error(
        "model '{id}' version {version} can never fit this scorer: it needs {needed} bytes, the cache budget is {budget} bytes"
    )]
    TooLarge {
        id: String,
        version: u64,
        needed: u64,
        budget: u64,
    },
}

impl ScorerError {
    /// The one conversion from a store failure, for a call about `id` (and `version`, when
    /// it named one): what is missing is a 404 (the version, else the model), a version
    /// that exists already a 409, and anything else (an unreachable store, an alias or
    /// canary file that does not parse) the store being unavailable, a 503.
    pub fn from_store(error: StoreError, id: &ModelId, version: Option<u64>) -> Self {
        match (error, version) {
            (StoreError::NotFound, Some(version)) => ScorerError::VersionNotFound {
                id: id.to_string(),
                version: version.to_string(),
            },
            (StoreError::NotFound, None) => ScorerError::ModelNotFound(id.to_string()),
            (StoreError::Conflict(message), _) => ScorerError::Conflict(message),
            (other, _) => ScorerError::Store(other.to_string()),
        }
    }
}

impl From<manymodels_engine::InferenceError> for ScorerError {
    fn from(error: manymodels_engine::InferenceError) -> Self {
        ScorerError::Inference {
            id: error.id,
            message: error.message,
        }
    }
}

impl From<manymodels_contract::InvalidModelId> for ScorerError {
    fn from(error: manymodels_contract::InvalidModelId) -> Self {
        ScorerError::InvalidModelId(error.0)
    }
}

/// Why a model could not be loaded. Cheap to clone: one failed load is shared with every
/// request that waited for it, and remembered for `cache.failure_ttl`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("model '{id}' version {version} could not be loaded: {message}")]
pub struct LoadError {
    pub id: String,
    pub version: u64,
    pub message: Arc<str>,
    /// The model file itself is bad (ONNX Runtime refused it, or it uses types the scorer
    /// cannot serve), as opposed to the store failing to deliver it.
    pub invalid_model: bool,
}

impl ScorerError {
    /// The one table from error kind to HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ScorerError::ModelNotFound(_)
            | ScorerError::VersionNotFound { .. }
            | ScorerError::NoCanary(_)
            | ScorerError::NoShadow(_) => StatusCode::NOT_FOUND,
            ScorerError::NoRoute(_) => StatusCode::NOT_FOUND,
            ScorerError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ScorerError::InvalidModelId(_) | ScorerError::InvalidInput(_) => {
                StatusCode::BAD_REQUEST
            }
            ScorerError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ScorerError::Load(e) if e.invalid_model => StatusCode::UNPROCESSABLE_ENTITY,
            ScorerError::Unexplainable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ScorerError::Load(_)
            | ScorerError::Store(_)
            | ScorerError::ShuttingDown
            | ScorerError::Overloaded(_)
            | ScorerError::LoadTimeout { .. }
            | ScorerError::NoRoomForShadow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ScorerError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            ScorerError::Inference { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ScorerError::Conflict(_) => StatusCode::CONFLICT,
            ScorerError::Unauthorized | ScorerError::NoPoolKey => StatusCode::UNAUTHORIZED,
            // Too much to even look at is 413; a push that parses but claims the
            // impossible (or comes from one proxy too many) is 422.
            ScorerError::StatsRefused(manymodels_contract::StatsRefusal::TooManyModels {
                ..
            }) => StatusCode::PAYLOAD_TOO_LARGE,
            ScorerError::StatsRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // The deployment cannot hold the model; retrying (here or on another scorer of
            // the same size) does not help.
            ScorerError::TooLarge { .. } => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ScorerError::ModelNotFound(_)
            | ScorerError::VersionNotFound { .. }
            | ScorerError::NoCanary(_)
            | ScorerError::NoShadow(_) => "not_found",
            ScorerError::InvalidModelId(_) => "invalid_id",
            ScorerError::InvalidInput(_) => "invalid_input",
            ScorerError::Unexplainable { .. } => "unexplainable",
            ScorerError::BodyTooLarge { .. } => "too_large",
            ScorerError::NoRoute(_) => "no_route",
            ScorerError::MethodNotAllowed { .. } => "method_not_allowed",
            ScorerError::Load(_) => "load_failed",
            ScorerError::Inference { .. } => "inference_failed",
            ScorerError::Store(_) => "store_unavailable",
            ScorerError::ShuttingDown => "shutting_down",
            ScorerError::Conflict(_) => "conflict",
            ScorerError::Unauthorized | ScorerError::NoPoolKey => "unauthorized",
            ScorerError::StatsRefused(_) => "stats_refused",
            ScorerError::TooLarge { .. } => "too_large_for_budget",
            ScorerError::Overloaded(_) => "overloaded",
            ScorerError::LoadTimeout { .. } => "load_timeout",
            ScorerError::DeadlineExceeded { .. } => "deadline",
            ScorerError::NoRoomForShadow { .. } => "no_room_for_shadow",
        }
    }

    /// Seconds a client should wait before retrying (`Retry-After`, set by the HTTP
    /// layer), for the errors that say "not now" rather than "not this".
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ScorerError::Overloaded(_) | ScorerError::LoadTimeout { .. } => Some(1),
            _ => None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ScorerError::InvalidInput(message.into())
    }
}

impl IntoResponse for ScorerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (
            status,
            Json(manymodels_contract::oip::ErrorBody::new(self.to_string())),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_model_file_is_422_and_a_failing_store_is_503() {
        let load = |invalid_model| {
            ScorerError::Load(LoadError {
                id: "m".into(),
                version: 1,
                message: "boom".into(),
                invalid_model,
            })
        };
        assert_eq!(load(true).status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(load(false).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ScorerError::ModelNotFound("m".into()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ScorerError::BodyTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let overloaded = ScorerError::Overloaded("too many waiting".into());
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overloaded.retry_after(), Some(1));
        let late = ScorerError::DeadlineExceeded { ms: 5 };
        assert_eq!(late.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(late.retry_after(), None);
        let none = ScorerError::NoShadow("m".into());
        assert_eq!(
            (none.status(), none.kind()),
            (StatusCode::NOT_FOUND, "not_found")
        );
        let no_room = ScorerError::NoRoomForShadow {
            id: "m".into(),
            version: 2,
        };
        assert_eq!(no_room.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(no_room.kind(), "no_room_for_shadow");
    }

    /// One conversion from the store's failures, each to its status.
    #[test]
    fn store_failures_convert_to_their_status() {
        let id = ModelId::parse("m").unwrap();
        let cases = [
            (
                StoreError::NotFound,
                Some(3),
                404,
                "model 'm' has no version 3",
            ),
            (StoreError::NotFound, None, 404, "model 'm' not found"),
            (
                StoreError::Conflict("version 3 exists".into()),
                Some(3),
                409,
                "version 3 exists",
            ),
            (
                StoreError::Unavailable("timed out".into()),
                None,
                503,
                "model store unavailable: timed out",
            ),
            (
                StoreError::InvalidFile {
                    file: "alias.json",
                    error: "expected value".into(),
                },
                None,
                503,
                "model store unavailable: alias.json is not valid: expected value",
            ),
        ];
        for (error, version, status, message) in cases {
            let converted = ScorerError::from_store(error, &id, version);
            assert_eq!(converted.status().as_u16(), status, "{converted}");
            assert_eq!(converted.to_string(), message);
        }
    }
}
