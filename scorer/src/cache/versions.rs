//! Versions: which version of a model is live here (the store's pinned or highest, kept
//! while resident and re-checked every `versions.check_interval`), falling back to the
//! previous one when a new one fails, and swapping, publishing and pinning versions
//! without a failed request (a new version is loaded and vetted beside the old one, then
//! switched under one lock).

use std::sync::Arc;
use std::time::Instant;

use super::miss::NOT_FOUND_TTL;
use super::{ModelCache, ModelKey, Refresh, Refusal, Reservation, VersionStatus, invalid_model};
use crate::engine::LoadedModel;
use crate::error::ScorerError;
use crate::model_id::ModelId;

impl ModelCache {
    /// Where a request for `id` that names no version goes: `(version, to_canary)`. The
    /// version is the live one, what this scorer already serves while it holds it (the
    /// version checker moves it on), otherwise the store's pinned or highest version;
    /// with `split` (an inference request) the store's canary takes its share
    /// (`canary::Split`), read with the live version and followed the same way.
    pub(super) async fn live_version(
        &self,
        id: &ModelId,
        split: bool,
    ) -> Result<(u64, bool), ScorerError> {
        let resident = |version| {
            self.state().contains(&ModelKey {
                id: id.clone(),
                version,
            })
        };
        if let Some(known) = self.lives.known(id, split, resident, &self.metrics) {
            return Ok(known);
        }
        let missing = (id.clone(), None);
        if let Some(error) = self.failures.get(&missing).await {
            return Err(error);
        }
        let state = self.lives.resolve(id, self.store.as_ref()).await?;
        let Some(target) = state.live() else {
            let error = ScorerError::ModelNotFound(id.to_string());
            self.failures
                .remember(missing, error.clone(), NOT_FOUND_TTL)
                .await;
            self.lives.remove(id);
            self.shadows.follow(id, None);
            return Err(error);
        };
        self.follow_shadow(id, &state);
        Ok(self
            .lives
            .follow(id, target, state.split(), split, &self.metrics))
    }

    /// After the live version `failed` could not be loaded, falls back to the version
    /// served before it, if any, and remembers the refusal. Returns the fallback.
    pub(super) fn fall_back(&self, id: &ModelId, failed: u64, error: &ScorerError) -> Option<u64> {
        let previous = self.lives.fall_back(id, failed, error.to_string())?;
        self.metrics.version_refusals.inc();
        tracing::warn!(model = %id, refused = failed, serving = previous, %error, "new live version refused; serving the previous one");
        Some(previous)
    }

    /// Checks the store for new live versions of the models in memory, the least recently
    /// checked first, at most `versions.checks_per_interval` of them, 8 at a time. Run by
    /// the scorer every `versions.check_interval`.
    pub async fn check_versions(&self) {
        use futures::StreamExt;
        let resident: Vec<ModelId> = {
            let state = self.state();
            let mut seen = std::collections::HashSet::new();
            state
                .models()
                .map(|(k, _)| k.id.clone())
                .filter(|id| seen.insert(id.clone()))
                .collect()
        };
        let started = self.ledger.started();
        let mut ids: Vec<(Instant, ModelId)> = resident
            .into_iter()
            .map(|id| (self.lives.checked(&id).unwrap_or(started), id))
            .collect();
        ids.sort();
        ids.truncate(self.versions.checks_per_interval);
        futures::stream::iter(ids)
            .for_each_concurrent(8, |(_, id)| async move {
                if let Err(error) = self.refresh(&id).await {
                    tracing::debug!(model = %id, %error, "version check failed");
                }
            })
            .await;
    }

    /// Asks the store for `id`'s live version now and moves to it: if an older version is
    /// in memory, the new one is loaded and checked (smoke inference, same inputs) while
    /// the old one keeps serving, then swapped in atomically; requests in flight finish on
    /// the old session, which is freed when they are done. A version that fails is
    /// refused and the old one keeps serving.
    pub async fn refresh(&self, id: &ModelId) -> Result<Refresh, ScorerError> {
        let state = self
            .store
            .model_state(id)
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        self.lives.invalidate(id).await;
        let Some(target) = state.live() else {
            self.lives.remove(id);
            self.shadows.follow(id, None);
            return Err(ScorerError::ModelNotFound(id.to_string()));
        };
        self.follow_shadow(id, &state);
        let current = self.lives.check(id, target, state.split());
        let mut outcome = Refresh {
            model: id.to_string(),
            live: current.version,
            previous: None,
            swapped: false,
            refused: None,
        };
        if current.version == target {
            return Ok(outcome);
        }
        if let Some(refusal) = self.lives.refusal(id, target) {
            outcome.refused = Some(refusal);
            return Ok(outcome);
        }
        let old_key = ModelKey {
            id: id.clone(),
            version: current.version,
        };
        let old = self.state().model(&old_key).cloned();
        if let Some(old) = old {
            let new_key = ModelKey {
                id: id.clone(),
                version: target,
            };
            let swapped = match self.swap_to_resident(&old_key, &new_key, &old).await {
                Some(swapped) => swapped,
                None => self
                    .prepare(&new_key, &old)
                    .await
                    .map(|(model, cost, reservation)| {
                        self.install(&old_key, new_key, model, cost);
                        drop(reservation);
                    }),
            };
            match swapped {
                Ok(()) => {
                    outcome.swapped = true;
                    self.metrics.version_swaps.inc();
                }
                Err(error) => {
                    let message = error.to_string();
                    self.lives.refuse(id, target, message.clone());
                    self.metrics.version_refusals.inc();
                    tracing::warn!(model = %id, refused = target, serving = current.version, error = %message, "new live version refused; the old one keeps serving");
                    outcome.refused = Some(Refusal {
                        version: target,
                        error: message,
                        seconds_ago: 0.0,
                    });
                    return Ok(outcome);
                }
            }
        }
        self.lives.advance(id, current.version, target);
        tracing::info!(model = %id, from = current.version, to = target, swapped = outcome.swapped, "live version changed");
        outcome.previous = Some(current.version);
        outcome.live = target;
        Ok(outcome)
    }

    /// Loads `key` outside the cache and checks it can replace `old`: a smoke inference on
    /// zeros, and the same input names and datatypes (so requests that work today keep
    /// working). Returns the model, its load cost and its memory reservation. Bounded by
    /// `cache.load_timeout` like any load: past it the version is refused and `old` keeps
    /// serving.
    async fn prepare(
        &self,
        key: &ModelKey,
        old: &Arc<LoadedModel>,
    ) -> Result<(Arc<LoadedModel>, f64, Reservation), ScorerError> {
        self.within_load_timeout(key, async {
            let (model, cost, reservation) = self
                .load(key.clone(), manymodels_contract::Priority::Interactive)
                .await?;
            let reservation = self
                .vet_holding(key, model.clone(), Some(old), reservation)
                .await?;
            Ok((model, cost, reservation))
        })
        .await
    }

    /// Moves from `old_key` to `new_key` when the new version is already in memory (a
    /// promoted canary, a version asked for by number): vetted as it is, then `old_key`
    /// retired under the lock, never loaded a second time beside itself. `None` when it is
    /// not resident, or was evicted during its check: it must be loaded as any new version.
    async fn swap_to_resident(
        &self,
        old_key: &ModelKey,
        new_key: &ModelKey,
        old: &Arc<LoadedModel>,
    ) -> Option<Result<(), ScorerError>> {
        let model = self.state().model(new_key).cloned()?;
        let vetted = self
            .within_load_timeout(new_key, self.vet_holding(new_key, model, Some(old), ()))
            .await;
        if let Err(error) = vetted {
            return Some(Err(error));
        }
        let now = self.now();
        let dropped = self.state().retire(old_key, new_key, now)?;
        self.ledger.dropped(dropped);
        Some(Ok(()))
    }

    /// Checks `model` (version `key`) can replace `old` (or stand alone: a smoke
    /// inference only, when `old` is `None`), on a load thread, holding `hold`
    /// until the check is done with the model: abandoned (a caller's
    /// `within_load_timeout`), a held reservation is released only then.
    pub(super) async fn vet_holding<R: Send + 'static>(
        &self,
        key: &ModelKey,
        model: Arc<LoadedModel>,
        old: Option<&Arc<LoadedModel>>,
        hold: R,
    ) -> Result<R, ScorerError> {
        let old = old.cloned();
        let (verdict, _, hold) = self
            .loads
            .run_holding(false, hold, move || model.vet(old.as_deref()))
            .await
            .map_err(ScorerError::Store)?;
        verdict.map_err(|message| invalid_model(&key.id, key.version, message))?;
        Ok(hold)
    }

    /// Swaps `old_key` out and `new_key` in under one lock.
    fn install(
        &self,
        old_key: &ModelKey,
        new_key: ModelKey,
        model: Arc<LoadedModel>,
        seconds: f64,
    ) {
        let now = self.now();
        let dropped = self.state().replace(old_key, new_key, model, seconds, now);
        self.ledger.dropped(dropped);
    }

    /// Versions, alias and what this scorer serves for `id`.
    pub async fn version_status(&self, id: &ModelId) -> Result<VersionStatus, ScorerError> {
        let state = self.existing(id).await?;
        let mut resident: Vec<u64> = self
            .state()
            .models()
            .map(|(k, _)| k)
            .filter(|k| k.id == *id)
            .map(|k| k.version)
            .collect();
        resident.sort_unstable();
        let active = state.split().is_some();
        let canary = state
            .canary
            .map(|c| self.lives.canary_status(id, c, active));
        Ok(VersionStatus {
            model: id.to_string(),
            live: self.lives.version(id).or(state.live()),
            refused: self.lives.last_refusal(id),
            versions: state.versions,
            pinned: state.pinned,
            resident,
            canary,
        })
    }

    /// Validates `bytes` as a model (a session and a smoke inference, and the same inputs
    /// as the version in memory, if any) and publishes it as `id`/`version`.
    pub async fn publish(
        &self,
        id: &ModelId,
        version: u64,
        bytes: bytes::Bytes,
    ) -> Result<Refresh, ScorerError> {
        let current = self.lives.version(id);
        let old = current.and_then(|v| {
            self.state()
                .model(&ModelKey {
                    id: id.clone(),
                    version: v,
                })
                .cloned()
        });
        // Checked like any load: on a load thread, with its memory reserved, within
        // `cache.load_timeout` (past it: 503 with `Retry-After`, nothing written).
        let key = ModelKey {
            id: id.clone(),
            version,
        };
        let verdict = self
            .within_load_timeout(&key, async {
                let (model, _, reservation) = self.create(&key, bytes.clone(), None, 0.0).await?;
                let (verdict, _, _reservation) = self
                    .loads
                    .run_holding(false, reservation, move || model.vet(old.as_deref()))
                    .await
                    .map_err(ScorerError::Store)?;
                Ok(verdict)
            })
            .await?;
        verdict.map_err(|message| invalid_model(id, version, message))?;
        self.store
            .write_version(id, version, bytes)
            .await
            .map_err(|e| ScorerError::from_store(e, id, Some(version)))?;
        tracing::info!(model = %id, version, "version published");
        self.refresh(id).await
    }

    /// Pins `id` to `version` (`None`: unpins, so the highest version is live), persisted
    /// in the store, and moves this scorer to it.
    pub async fn pin(&self, id: &ModelId, version: Option<u64>) -> Result<Refresh, ScorerError> {
        if let Some(version) = version {
            let state = self
                .store
                .model_state(id)
                .await
                .map_err(|e| ScorerError::from_store(e, id, None))?;
            if !state.versions.contains(&version) {
                return Err(ScorerError::VersionNotFound {
                    id: id.to_string(),
                    version: version.to_string(),
                });
            }
        }
        self.store
            .write_alias(id, version)
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        tracing::info!(model = %id, pinned = ?version, "alias written");
        self.refresh(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Store, demo, id, local_cache};

    /// The live version is the store's highest; a new version that fails to load is
    /// refused and the old one keeps serving; a good one is swapped in beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_versions_are_swapped_in_or_refused_with_the_old_one_serving() {
        let store = Store::new();
        store.put("m", 1, &demo("linear-small"));
        let cache = &local_cache(&store, |_| {});
        let (model, _) = cache.get(&id("m"), None).await.unwrap();
        assert_eq!(model.version, 1);

        store.put("m", 2, b"not a model");
        let refresh = cache.refresh(&id("m")).await.unwrap();
        assert_eq!(refresh.live, 1, "{refresh:?}");
        assert_eq!(refresh.refused.as_ref().map(|r| r.version), Some(2));
        let (model, _) = cache.get(&id("m"), None).await.unwrap();
        assert_eq!(model.version, 1, "the old version keeps serving");

        store.put("m", 3, &demo("linear-small"));
        let refresh = cache.refresh(&id("m")).await.unwrap();
        assert!(refresh.swapped, "{refresh:?}");
        assert_eq!((refresh.live, refresh.previous), (3, Some(1)));
        let (model, _) = cache.get(&id("m"), None).await.unwrap();
        assert_eq!(model.version, 3);
        let status = cache.version_status(&id("m")).await.unwrap();
        assert_eq!(status.resident, vec![3], "the old version left memory");
        assert_eq!(status.versions, vec![1, 2, 3]);
    }

    /// A new version whose load passes `cache.load_timeout` (here: it queues behind a
    /// load thread kept busy) is refused with the reason, and the old version keeps
    /// serving; a publish that times out answers 503 with `Retry-After` and writes nothing.
    /// The abandoned loads' reservations are released when the thread is done with them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_version_past_the_load_timeout_is_refused_and_the_old_one_serves() {
        use std::time::{Duration, Instant};

        let store = Store::new();
        store.put("m", 1, &demo("linear-small"));
        let cache = &local_cache(&store, |config| {
            config.cache.load_timeout = Duration::from_millis(300);
            config.cache.max_concurrent_loads = std::num::NonZeroUsize::new(1).unwrap();
        });
        let (model, _) = cache.get(&id("m"), None).await.unwrap();
        assert_eq!(model.version, 1);
        // The only load thread sleeps 1.5 s: every load behind it waits past 300 ms. The
        // test goes on once the thread has started it (not after a guess of a sleep).
        let owner = cache.clone();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let blocker = tokio::spawn(async move {
            owner
                .loads
                .run(false, move || {
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_millis(1500))
                })
                .await
        });
        started_rx.await.expect("the blocker ran");

        store.put("m", 2, &demo("linear-small"));
        let started = Instant::now();
        let refresh = cache.refresh(&id("m")).await;
        let took = started.elapsed();
        let refresh = refresh.unwrap();
        println!("refresh past cache.load_timeout (300 ms): {refresh:?} in {took:?}");
        assert!(!refresh.swapped, "{refresh:?}");
        assert_eq!(refresh.live, 1, "{refresh:?}");
        let refused = refresh.refused.expect("refused");
        assert_eq!(refused.version, 2);
        assert!(
            refused.error.contains("cache.load_timeout"),
            "{}",
            refused.error
        );
        assert!(took < Duration::from_millis(1000), "{took:?}");
        let (model, lookup) = cache.get(&id("m"), None).await.unwrap();
        assert_eq!(model.version, 1, "the old version keeps serving");
        assert!(matches!(lookup, super::super::Lookup::Hit));
        let status = cache.version_status(&id("m")).await.unwrap();
        assert_eq!(status.live, Some(1));
        assert_eq!(status.resident, vec![1]);
        assert!(
            status
                .refused
                .is_some_and(|r| r.version == 2 && r.error.contains("cache.load_timeout"))
        );

        // A publish behind the same busy thread: 503, Retry-After, nothing written.
        let started = Instant::now();
        let error = cache
            .publish(&id("m"), 3, demo("linear-small").into())
            .await
            .unwrap_err();
        let took = started.elapsed();
        println!("publish past cache.load_timeout: {error} in {took:?}");
        assert!(
            matches!(
                error,
                crate::error::ScorerError::LoadTimeout { version: 3, .. }
            ),
            "{error}"
        );
        assert_eq!(error.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.retry_after(), Some(1));
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert!(
            !store.0.join("m/3").exists(),
            "a timed-out publish writes nothing"
        );
        assert_eq!(cache.get(&id("m"), None).await.unwrap().0.version, 1);

        // The abandoned loads held their reservations until the thread was done.
        blocker.await.unwrap().unwrap();
        let released = Instant::now();
        while cache.state().reserved() > 0 {
            assert!(
                released.elapsed() < Duration::from_secs(5),
                "reservation kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // With the thread free, the refused version is retried after `failure_ttl` only;
        // a publish goes through.
        let published = cache
            .publish(&id("m"), 3, demo("linear-small").into())
            .await
            .unwrap();
        assert!(published.swapped, "{published:?}");
        assert_eq!(published.live, 3);
    }
}
