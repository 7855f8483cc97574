//! Payload capture's admin routes (`/v2/mm/capture...`, `crate::capture`): show the
//! rules and this scorer's counters, set and drop a prefix's rule (written to the store's
//! rules document), and read the rules again now. They take an admin key (or the pool
//! key, which the proxy sends); the proxy narrows what a scoped key sees and changes with
//! `x-mm-model-prefixes` (the key's prefixes), as it does for the repository index.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use manymodels_contract::capture::{CaptureRule, CaptureSet, CaptureView};
use manymodels_contract::{header, oip::ErrorBody};

use super::keys::admin_authorized;
use super::{Shared, body, finish};
use crate::Scorer;
use crate::error::ScorerError;
use crate::store::StoreError;

/// Why a capture call was refused: a [`ScorerError`], or a rule outside the caller's
/// prefixes (403).
enum Refused {
    Error(ScorerError),
    OutOfScope(String),
    /// No rule of that prefix to drop (404).
    NoRule(String),
}

impl From<ScorerError> for Refused {
    fn from(error: ScorerError) -> Self {
        Refused::Error(error)
    }
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Self {
        Refused::Error(ScorerError::Store(error.to_string()))
    }
}

/// The caller's prefixes (`x-mm-model-prefixes`; none: every model).
fn scope(headers: &HeaderMap) -> Result<Vec<String>, ScorerError> {
    Ok(
        crate::infer::index_prefixes(headers.get(header::MODEL_PREFIXES).map(|v| v.as_bytes()))?
            .unwrap_or_default(),
    )
}

/// The rules `scope` admits and this scorer's counters (zeros for a scoped caller: they
/// count every tenant's captures).
fn view(scorer: &Scorer, scope: &[String]) -> CaptureView {
    CaptureView {
        rules: scorer
            .capture
            .rules()
            .rules
            .iter()
            .filter(|rule| rule.within(scope))
            .cloned()
            .collect(),
        prefix: scorer.capture.prefix().to_string(),
        scorer: scorer.config.display_name(),
        counters: if scope.is_empty() {
            scorer.capture.counters()
        } else {
            Default::default()
        },
    }
}

fn answer(scorer: &Scorer, result: Result<Response, Refused>) -> Response {
    match result {
        Ok(response) => finish(scorer, "admin", Ok(response)),
        Err(Refused::Error(error)) => finish(scorer, "admin", Err(error)),
        Err(Refused::OutOfScope(prefix)) => finish(
            scorer,
            "admin",
            Ok((
                StatusCode::FORBIDDEN,
                Json(ErrorBody::new(format!(
                    "this key may not capture '{prefix}': it is outside the key's model prefixes"
                ))),
            )
                .into_response()),
        ),
        Err(Refused::NoRule(prefix)) => finish(
            scorer,
            "admin",
            Ok((
                StatusCode::NOT_FOUND,
                Json(ErrorBody::new(format!("no capture rule for '{prefix}'"))),
            )
                .into_response()),
        ),
    }
}

/// `GET /v2/mm/capture`.
pub(super) async fn show(State(scorer): Shared, headers: HeaderMap) -> Response {
    let result = (|| {
        admin_authorized(&scorer, &headers)?;
        let scope = scope(&headers)?;
        Ok(Json(view(&scorer, &scope)).into_response())
    })();
    answer(&scorer, result)
}

/// `POST /v2/mm/capture/refresh`: reads the rules from the store now.
pub(super) async fn refresh(State(scorer): Shared, headers: HeaderMap) -> Response {
    let result = async {
        admin_authorized(&scorer, &headers)?;
        let scope = scope(&headers)?;
        scorer.capture.reload().await?;
        Ok(Json(view(&scorer, &scope)).into_response())
    }
    .await;
    answer(&scorer, result)
}

/// The rule's prefix from the path, checked against the caller's prefixes.
fn prefix_of(
    path: Result<Path<String>, PathRejection>,
    scope: &[String],
) -> Result<String, Refused> {
    let Path(prefix) = path.map_err(|e| ScorerError::invalid(e.body_text()))?;
    // Checked as a rule (the model-id rule) before anything else reads it.
    let probe = CaptureRule::new(&prefix, 0.0, false).map_err(ScorerError::invalid)?;
    if !probe.within(scope) {
        return Err(Refused::OutOfScope(prefix));
    }
    Ok(prefix)
}

/// `PUT /v2/mm/capture/{prefix}` with `{"rate": r}` (`"exact": true` for one model).
pub(super) async fn set(
    State(scorer): Shared,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        admin_authorized(&scorer, &headers)?;
        let scope = scope(&headers)?;
        let prefix = prefix_of(path, &scope)?;
        let bytes = body(request, &scorer)?;
        let set: CaptureSet = serde_json::from_slice(&bytes).map_err(|e| {
            ScorerError::invalid(format!("expected {{\"rate\": 0-1, \"exact\": bool}}: {e}"))
        })?;
        let rule = CaptureRule::new(&prefix, set.rate, set.exact).map_err(ScorerError::invalid)?;
        scorer
            .capture
            .change(|rules| {
                rules
                    .set(rule)
                    .map_err(|e| Refused::Error(ScorerError::invalid(e)))
            })
            .await?;
        tracing::info!(
            prefix,
            rate = set.rate,
            exact = set.exact,
            "capture rule set"
        );
        Ok(Json(view(&scorer, &scope)).into_response())
    }
    .await;
    answer(&scorer, result)
}

/// `DELETE /v2/mm/capture/{prefix}`: drops the prefix's rules (404 when it has none).
pub(super) async fn drop_rule(
    State(scorer): Shared,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        admin_authorized(&scorer, &headers)?;
        let scope = scope(&headers)?;
        let prefix = prefix_of(path, &scope)?;
        scorer
            .capture
            .change(|rules| {
                if rules.drop_prefix(&prefix) {
                    Ok(())
                } else {
                    Err(Refused::NoRule(prefix.clone()))
                }
            })
            .await?;
        tracing::info!(prefix, "capture rule dropped");
        Ok(Json(view(&scorer, &scope)).into_response())
    }
    .await;
    answer(&scorer, result)
}
