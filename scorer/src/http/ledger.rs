//! The ledger's routes (`crate::ledger`): `GET /v2/mm/ledger[?top=N]` (every tracked model
//! and the tail) and `GET /v2/mm/ledger/{id}` (one model). They take the pool key, like
//! the proxies that merge them; a proxy passes a scoped caller's prefixes in
//! `x-mm-model-prefixes`, and the answer then holds only their models and no tail.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use manymodels_contract as contract;

use super::{Shared, finish, json_response, model_id};
use crate::error::ScorerError;
use crate::infer;

/// The query of the whole ledger.
#[derive(serde::Deserialize)]
pub(super) struct LedgerQuery {
    /// Keep this many models (most requests first); the rest go to the tail.
    top: Option<usize>,
}

pub(super) async fn ledger(
    axum::extract::State(scorer): Shared,
    headers: HeaderMap,
    query: Result<Query<LedgerQuery>, QueryRejection>,
) -> Response {
    let result = (|| {
        let Query(query) =
            query.map_err(|e| ScorerError::invalid(format!("ledger query: {}", e.body_text())))?;
        let prefixes = infer::index_prefixes(
            headers
                .get(contract::header::MODEL_PREFIXES)
                .map(HeaderValue::as_bytes),
        )?;
        let mut report = scorer.ledger.report(prefixes.as_deref(), query.top);
        manymodels_policy::ledger::fill_report_quantiles(&mut report);
        Ok(json_response(&report))
    })();
    finish(&scorer, "ledger", result)
}

pub(super) async fn ledger_model(
    axum::extract::State(scorer): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = model_id(path).map(|id| {
        let mut report = scorer.ledger.model(id.as_str());
        if let Some(tracked) = &mut report.tracked {
            manymodels_policy::ledger::fill_quantiles(&mut tracked.counts);
        }
        json_response(&report)
    });
    finish(&scorer, "ledger", result)
}
