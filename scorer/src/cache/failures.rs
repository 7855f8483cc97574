//! Failures remembered for a while, so a broken or missing model answers fast instead of
//! being looked up or loaded again by every request: a load failure for
//! `cache.failure_ttl`, a missing model or version for a second, a version that can never
//! fit for an hour. Each entry carries its own time to live (moka's per-entry expiry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::error::ScorerError;
use crate::model_id::ModelId;

/// What a remembered failure is about: a model's live version (`None`: the model does
/// not exist) or one version (it does not exist, or failed to load).
pub(super) type FailureKey = (ModelId, Option<u64>);

/// The most failures remembered at once.
const CAPACITY: u64 = 100_000;

#[derive(Clone)]
struct Failure {
    error: ScorerError,
    ttl: Duration,
}

struct FailureExpiry;

impl Expiry<FailureKey, Failure> for FailureExpiry {
    fn expire_after_create(&self, _: &FailureKey, value: &Failure, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The failures remembered now.
pub(super) struct Failures(Cache<FailureKey, Failure>);

impl Failures {
    pub(super) fn new() -> Self {
        Failures(
            Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(FailureExpiry)
                .build(),
        )
    }

    /// The error remembered for `key`, while it lasts.
    pub(super) async fn get(&self, key: &FailureKey) -> Option<ScorerError> {
        self.0.get(key).await.map(|f| f.error)
    }

    /// Remembers `error` for `key` for `ttl`.
    pub(super) async fn remember(&self, key: FailureKey, error: ScorerError, ttl: Duration) {
        self.0.insert(key, Failure { error, ttl }).await;
    }

    /// Forgets every failure of `id` (its versions' and its own).
    pub(super) async fn forget(&self, id: &ModelId) {
        let keys: Vec<Arc<FailureKey>> = self
            .0
            .iter()
            .filter(|(key, _)| key.0 == *id)
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.0.invalidate(key.as_ref()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ModelId {
        ModelId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn a_failure_lasts_its_own_time_and_is_forgotten_per_model() {
        let failures = Failures::new();
        let missing = ScorerError::ModelNotFound("a".into());
        failures
            .remember((id("a"), None), missing, Duration::from_millis(50))
            .await;
        let overloaded = ScorerError::Overloaded("busy".into());
        failures
            .remember(
                (id("a"), Some(2)),
                overloaded.clone(),
                Duration::from_secs(60),
            )
            .await;
        failures
            .remember((id("b"), Some(1)), overloaded, Duration::from_secs(60))
            .await;
        assert!(matches!(
            failures.get(&(id("a"), None)).await,
            Some(ScorerError::ModelNotFound(_))
        ));
        assert!(failures.get(&(id("a"), Some(1))).await.is_none());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(failures.get(&(id("a"), None)).await.is_none(), "expired");
        assert!(
            failures.get(&(id("a"), Some(2))).await.is_some(),
            "its own ttl"
        );
        failures.forget(&id("a")).await;
        assert!(failures.get(&(id("a"), Some(2))).await.is_none());
        assert!(
            failures.get(&(id("b"), Some(1))).await.is_some(),
            "another model's"
        );
    }
}
