//! The cache's bounds on waiting: every load's own timeout (`cache.load_timeout`) and how
//! many requests may wait for loads (`cache.max_waiting`, `cache.max_waiting_per_model`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use super::{ModelCache, ModelKey, scopeguard};
use crate::error::ScorerError;
use crate::model_id::ModelId;

/// Requests waiting for loads now, in all and per model, against their bounds
/// (`cache.max_waiting`, `cache.max_waiting_per_model`).
pub(super) struct Waiters {
    counts: Mutex<Waiting>,
    max_total: usize,
    max_per_model: usize,
}

#[derive(Default)]
struct Waiting {
    total: usize,
    models: HashMap<ModelId, usize>,
}

impl Waiters {
    pub(super) fn new(max_total: usize, max_per_model: usize) -> Self {
        Waiters {
            counts: Mutex::default(),
            max_total,
            max_per_model,
        }
    }

    fn counts(&self) -> MutexGuard<'_, Waiting> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request that is about to wait for `id`'s load, or refuses it at once
    /// (503 with `Retry-After`) when `max_total` requests already wait on this scorer or
    /// `max_per_model` on this model. The count drops with the guard.
    pub(super) fn enter(&self, id: &ModelId) -> Result<impl Drop + '_, ScorerError> {
        {
            let mut waiting = self.counts();
            let (total, per_model) = (self.max_total, self.max_per_model);
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
            let mut waiting = self.counts();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_bounded_in_all_and_per_model_and_counted_down_on_drop() {
        let waiters = Waiters::new(3, 2);
        let (a, b) = (ModelId::parse("a").unwrap(), ModelId::parse("b").unwrap());
        let first = waiters.enter(&a).expect("room");
        let second = waiters.enter(&a).expect("room");
        let refused = waiters.enter(&a).err().expect("a third for one model");
        assert!(
            refused.to_string().contains("max_waiting_per_model"),
            "{refused}"
        );
        let third = waiters.enter(&b).expect("another model");
        let refused = waiters.enter(&b).err().expect("four in all");
        assert!(
            refused.to_string().contains("cache.max_waiting)"),
            "{refused}"
        );
        drop(first);
        let again = waiters.enter(&a).expect("room again");
        drop((second, third, again));
        assert_eq!(waiters.counts().total, 0);
        assert!(waiters.counts().models.is_empty());
    }
}
