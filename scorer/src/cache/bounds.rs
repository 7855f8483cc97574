//! The cache's bounds on waiting: every load's own timeout (`cache.load_timeout`) and how
//! many requests may wait for loads (`cache.max_waiting`, `cache.max_waiting_per_model`).

use std::collections::HashMap;
use std::future::Future;

use super::{ModelCache, ModelKey, scopeguard};
use crate::error::ScorerError;
use crate::model_id::ModelId;

/// Requests waiting for loads now: in all, and per model.
#[derive(Default)]
pub(super) struct Waiting {
    total: usize,
    models: HashMap<ModelId, usize>,
}

impl ModelCache {
    /// `cache.load_timeout`: the one bound of every load, on the request path, in warm-ups
    /// and for a new version (`prepare`, `publish`). Past it the work is abandoned with a
    /// `LoadTimeout` (503 with `Retry-After`). A load thread cannot be stopped: it finishes
    /// on its own, and what its job holds (the reservation, the file) stays accounted until
    /// then (`LoadThreads::run_holding`).
    pub(super) async fn within_load_timeout<T>(
        &self,
        key: &ModelKey,
        work: impl Future<Output = Result<T, ScorerError>>,
    ) -> Result<T, ScorerError> {
        let limit = self.config.load_timeout;
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            let error = ScorerError::LoadTimeout {
                id: key.id.to_string(),
                version: key.version,
                seconds: limit.as_secs_f64(),
            };
            self.metrics.load_failures.inc();
            tracing::warn!(model = %key.id, version = key.version, %error, "model load abandoned");
            Err(error)
        })
    }

    /// Counts a request that is about to wait for `id`'s load, or refuses it at once
    /// (503 with `Retry-After`) when `cache.max_waiting` requests already wait on this
    /// scorer or `cache.max_waiting_per_model` on this model: a burst of cold requests
    /// cannot queue without limit behind loads. The count drops with the guard.
    pub(super) fn wait_for_load(&self, id: &ModelId) -> Result<impl Drop + '_, ScorerError> {
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let (total, per_model) = (
                self.config.max_waiting.get(),
                self.config.max_waiting_per_model.get(),
            );
            if waiting.total >= total {
                return Err(ScorerError::Overloaded(format!(
                    "{total} requests already wait for model loads here (cache.max_waiting)"
                )));
            }
            let model = waiting.models.entry(id.clone()).or_default();
            if *model >= per_model {
                return Err(ScorerError::Overloaded(format!(
                    "{per_model} requests already wait for model '{id}' to load (cache.max_waiting_per_model)"
                )));
            }
            *model += 1;
            waiting.total += 1;
        }
        let id = id.clone();
        Ok(scopeguard(move || {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.total -= 1;
            if let Some(model) = waiting.models.get_mut(&id) {
                *model -= 1;
                if *model == 0 {
                    waiting.models.remove(&id);
                }
            }
        }))
    }
}
