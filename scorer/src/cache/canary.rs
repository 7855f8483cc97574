//! Canaries: a share of a model's inference requests that name no version goes to one
//! version, the rest to the live version.
//!
//! The canary is model state in the store (`<id>/canary.json` beside `alias.json`, read in
//! the same look-up), and the split is applied here, on the scorer, not by the proxy:
//! every proxy sends a model's requests to the same scorer(s) (the ranking is a pure
//! function of the model id and the pool) and every scorer reads the same store, so all
//! proxy replicas answer alike and a restarted proxy has nothing to restore. Each scorer
//! follows the store as it follows a pin: at once after an admin call (the proxy's
//! refresh fan-out), else within `versions.check_interval`.
//!
//! The split is deterministic per model on each scorer: request n (counted from 0 since
//! this scorer read the canary) goes to the canary when ⌊(n+1)·p⌋ > ⌊n·p⌋, so over any run
//! of requests the canary gets its share to within one request. A model served by two
//! scorers (replication) is split on each, so the pool's share holds too. A request that
//! names a version (in the path, gRPC's `model_version` or `x-mm-model-version`) is never
//! split.

use super::{CanaryStatus, ModelCache, ModelKey, Refresh};
use crate::error::ScorerError;
use crate::model_id::ModelId;
use crate::store::{CANARY_FILE, Canary, ModelState, StoreError};

/// A canary as this scorer applies it: the stored canary and its counts here.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Split {
    pub canary: Canary,
    /// Requests split since this scorer read this canary, and how many went to it.
    pub requests: u64,
    pub to_canary: u64,
}

impl Split {
    pub fn new(canary: Canary) -> Self {
        Split {
            canary,
            requests: 0,
            to_canary: 0,
        }
    }

    /// Whether the next request goes to the canary.
    pub fn pick(&mut self) -> bool {
        let share = self.canary.percent / 100.0;
        let n = self.requests as f64;
        self.requests += 1;
        let to_canary = ((n + 1.0) * share).floor() > (n * share).floor();
        if to_canary {
            self.to_canary += 1;
        }
        to_canary
    }

    /// Follows the store's canary: the same canary keeps its counts, another one starts
    /// from zero, none drops the split.
    pub fn follow(split: &mut Option<Split>, canary: Option<Canary>) {
        match (split.as_ref(), canary) {
            (Some(current), Some(canary)) if current.canary == canary => {}
            (_, canary) => *split = canary.map(Split::new),
        }
    }
}

/// `state` if the model has a version, else not found.
fn found(id: &ModelId, state: ModelState) -> Result<ModelState, ScorerError> {
    if state.versions.is_empty() {
        return Err(ScorerError::ModelNotFound(id.to_string()));
    }
    Ok(state)
}

impl ModelCache {
    /// The store's state of `id`, which must exist (a model with no version is none).
    pub(super) async fn existing(&self, id: &ModelId) -> Result<ModelState, ScorerError> {
        found(
            id,
            self.store
                .model_state(id)
                .await
                .map_err(|e| ScorerError::from_store(e, id, None))?,
        )
    }

    /// The store's state of `id` for a call that replaces its canary. A canary file that
    /// does not parse fails every other look-up of the model (503, naming the file); this
    /// one removes it first (logged), so dropping or setting the canary repairs it (a set
    /// that is then refused has still removed the file, which served nothing). Answers
    /// the state and whether such a file was removed.
    async fn existing_replacing_canary(
        &self,
        id: &ModelId,
    ) -> Result<(ModelState, bool), ScorerError> {
        match self.store.model_state(id).await {
            Err(StoreError::InvalidFile {
                file: CANARY_FILE,
                error,
            }) => {
                tracing::warn!(model = %id, %error, "removing a canary file that is not valid");
                self.store
                    .write_canary(id, None)
                    .await
                    .map_err(|e| ScorerError::from_store(e, id, None))?;
                Ok((self.existing(id).await?, true))
            }
            state => Ok((
                found(id, state.map_err(|e| ScorerError::from_store(e, id, None))?)?,
                false,
            )),
        }
    }

    /// `id`'s canary in the store, with this scorer's counts.
    pub async fn canary(&self, id: &ModelId) -> Result<CanaryStatus, ScorerError> {
        let state = self.existing(id).await?;
        let canary = state
            .canary
            .ok_or_else(|| ScorerError::NoCanary(id.to_string()))?;
        Ok(self
            .lives
            .canary_status(id, canary, state.split().is_some()))
    }

    /// Sets `id`'s canary in the store and follows it here at once. The version must be
    /// in the store, load, answer a smoke inference and take the same inputs as the live
    /// version (when that is in memory here): the checks a version passes before it goes
    /// live, since the canary's share of requests is about to get it. The canary version
    /// is then in memory for its first requests.
    pub async fn set_canary(
        &self,
        id: &ModelId,
        canary: Canary,
    ) -> Result<CanaryStatus, ScorerError> {
        let (state, _) = self.existing_replacing_canary(id).await?;
        if !state.versions.contains(&canary.version) {
            return Err(ScorerError::VersionNotFound {
                id: id.to_string(),
                version: canary.version.to_string(),
            });
        }
        let (model, _) = self.get(id, Some(canary.version)).await?;
        let live = state.live().and_then(|version| {
            self.state()
                .model(&ModelKey {
                    id: id.clone(),
                    version,
                })
                .cloned()
        });
        let key = ModelKey {
            id: id.clone(),
            version: canary.version,
        };
        self.within_load_timeout(&key, self.vet_holding(&key, model, live.as_ref(), ()))
            .await?;
        self.store
            .write_canary(id, Some(canary))
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        tracing::info!(model = %id, version = canary.version, percent = canary.percent, "canary set");
        self.refresh(id).await?;
        Ok(self.lives.canary_status(id, canary, true))
    }

    /// Drops `id`'s canary from the store; answers it as it was, with this scorer's
    /// counts, or `None` when what was dropped was a canary file that is not valid.
    pub async fn drop_canary(&self, id: &ModelId) -> Result<Option<CanaryStatus>, ScorerError> {
        let (state, repaired) = self.existing_replacing_canary(id).await?;
        let Some(canary) = state.canary else {
            if repaired {
                self.refresh(id).await?;
                return Ok(None);
            }
            return Err(ScorerError::NoCanary(id.to_string()));
        };
        let dropped = self
            .lives
            .canary_status(id, canary, state.split().is_some());
        self.store
            .write_canary(id, None)
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        tracing::info!(model = %id, version = canary.version, "canary dropped");
        self.refresh(id).await?;
        Ok(Some(dropped))
    }

    /// Promotes `id`'s canary: pins its version in the store (`alias.json`), then drops
    /// it, then moves this scorer to the pinned version. A failure between the two writes
    /// leaves a canary of the pinned version, which splits nothing and can be promoted
    /// again.
    pub async fn promote_canary(
        &self,
        id: &ModelId,
    ) -> Result<(CanaryStatus, Refresh), ScorerError> {
        let state = self.existing(id).await?;
        let canary = state
            .canary
            .ok_or_else(|| ScorerError::NoCanary(id.to_string()))?;
        if !state.versions.contains(&canary.version) {
            return Err(ScorerError::VersionNotFound {
                id: id.to_string(),
                version: canary.version.to_string(),
            });
        }
        let promoted = self.lives.canary_status(id, canary, true);
        self.store
            .write_alias(id, Some(canary.version))
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        self.store
            .write_canary(id, None)
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        tracing::info!(model = %id, version = canary.version, "canary promoted: alias written, canary dropped");
        let refresh = self.refresh(id).await?;
        Ok((promoted, refresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(version: u64, percent: f64) -> Split {
        Split::new(Canary::new(version, percent).unwrap())
    }

    /// The share holds to within one request over any run, from the first request on.
    #[test]
    fn the_split_follows_the_share() {
        let mut s = split(2, 10.0);
        let to_canary = (0..2_000).filter(|_| s.pick()).count();
        assert_eq!(to_canary, 200);
        assert_eq!((s.requests, s.to_canary), (2_000, 200));
        for percent in [0.0, 0.5, 12.5, 30.0, 33.0, 50.0, 99.0, 100.0] {
            let mut s = split(2, percent);
            let mut to_canary = 0u64;
            for n in 1..=1_000u64 {
                to_canary += u64::from(s.pick());
                let want = n as f64 * percent / 100.0;
                assert!(
                    (to_canary as f64 - want).abs() <= 1.0,
                    "{percent}% after {n}: {to_canary}"
                );
            }
        }
        let mut s = split(2, 33.0);
        assert_eq!((0..1_000).filter(|_| s.pick()).count(), 330);
    }

    #[test]
    fn the_same_canary_keeps_its_counts_and_another_starts_again() {
        let mut current = Some(split(2, 30.0));
        for _ in 0..10 {
            current.as_mut().unwrap().pick();
        }
        Split::follow(&mut current, Some(Canary::new(2, 30.0).unwrap()));
        assert_eq!(current.as_ref().unwrap().requests, 10);
        Split::follow(&mut current, Some(Canary::new(2, 40.0).unwrap()));
        assert_eq!(current, Some(split(2, 40.0)));
        Split::follow(&mut current, Some(Canary::new(3, 40.0).unwrap()));
        assert_eq!(current, Some(split(3, 40.0)));
        Split::follow(&mut current, None);
        assert_eq!(current, None);
    }
}

#[cfg(test)]
mod cache_tests {
    use super::super::testing::{Store, demo, id, local_cache};
    use crate::error::ScorerError;
    use crate::store::Canary;

    /// Versions that answered, out of `n` inference requests naming no version.
    async fn answered(cache: &super::ModelCache, n: usize) -> Vec<u64> {
        let mut versions = Vec::new();
        for _ in 0..n {
            let (model, _) = cache.get_for_inference(&id("m"), None).await.unwrap();
            versions.push(model.version);
        }
        versions
    }

    /// A canary set through the cache is written to the store and splits inference
    /// requests that name no version, and only those; dropping it stops the split, and
    /// promoting pins its version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_splits_unversioned_inference_and_promotion_pins_it() {
        let store = Store::new();
        store.put("m", 1, &demo("linear-small"));
        store.put("m", 2, &demo("linear-small"));
        std::fs::write(store.0.join("m/alias.json"), r#"{"pinned": 1}"#).unwrap();
        let cache = &local_cache(&store, |_| {});
        assert_eq!(answered(cache, 5).await, vec![1; 5]);
        assert!(matches!(
            cache.canary(&id("m")).await,
            Err(ScorerError::NoCanary(_))
        ));

        let set = cache
            .set_canary(&id("m"), Canary::new(2, 30.0).unwrap())
            .await
            .unwrap();
        assert_eq!((set.version, set.requests), (2, 0));
        let written = std::fs::read_to_string(store.0.join("m/canary.json")).unwrap();
        assert_eq!(written, r#"{"version":2,"percent":30.0}"#);
        let versions = answered(cache, 100).await;
        assert_eq!(versions.iter().filter(|v| **v == 2).count(), 30);
        let metrics = &cache.metrics;
        assert_eq!(metrics.canary_requests[1].get(), 30);
        assert_eq!(metrics.canary_requests[0].get(), 70);
        // Neither a named version nor a look-up that is not inference is split or counted.
        for _ in 0..10 {
            let (model, _) = cache.get_for_inference(&id("m"), Some(1)).await.unwrap();
            assert_eq!(model.version, 1);
            assert_eq!(cache.get(&id("m"), None).await.unwrap().0.version, 1);
        }
        assert_eq!(
            metrics.canary_requests[0].get() + metrics.canary_requests[1].get(),
            100
        );
        let shown = cache.canary(&id("m")).await.unwrap();
        assert_eq!((shown.requests, shown.to_canary), (100, 30));
        let status = cache.version_status(&id("m")).await.unwrap();
        assert_eq!(status.canary.map(|c| c.version), Some(2));

        let dropped = cache.drop_canary(&id("m")).await.unwrap().unwrap();
        assert_eq!((dropped.version, dropped.to_canary), (2, 30));
        assert!(!store.0.join("m/canary.json").exists());
        assert_eq!(answered(cache, 20).await, vec![1; 20]);
        assert!(matches!(
            cache.drop_canary(&id("m")).await,
            Err(ScorerError::NoCanary(_))
        ));
        assert!(matches!(
            cache.promote_canary(&id("m")).await,
            Err(ScorerError::NoCanary(_))
        ));

        cache
            .set_canary(&id("m"), Canary::new(2, 50.0).unwrap())
            .await
            .unwrap();
        let loads = metrics.loads.get();
        let (promoted, refresh) = cache.promote_canary(&id("m")).await.unwrap();
        assert_eq!(promoted.version, 2);
        assert_eq!(refresh.live, 2, "{refresh:?}");
        assert!(refresh.swapped, "{refresh:?}");
        // The canary version was in memory: promoted as it is, not loaded again beside
        // itself, and the old live version leaves memory as a replaced one does.
        assert_eq!(metrics.loads.get(), loads, "no second load of version 2");
        let resident: Vec<u64> = cache.state().models().map(|(key, _)| key.version).collect();
        assert_eq!(resident, vec![2]);
        let alias = std::fs::read_to_string(store.0.join("m/alias.json")).unwrap();
        assert_eq!(alias, r#"{"pinned":2}"#);
        assert!(!store.0.join("m/canary.json").exists());
        assert_eq!(answered(cache, 20).await, vec![2; 20]);
    }

    /// A canary must name a version in the store that loads, answers and takes the live
    /// version's inputs; one written to the store directly is followed at the next look.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_version_is_checked_and_the_store_is_followed() {
        let store = Store::new();
        store.put("m", 1, &demo("linear-small"));
        store.put("m", 2, b"not a model");
        store.put("m", 3, &demo("int32-scaler"));
        store.put("m", 4, &demo("linear-small"));
        std::fs::write(store.0.join("m/alias.json"), r#"{"pinned": 1}"#).unwrap();
        let cache = &local_cache(&store, |_| {});
        assert_eq!(answered(cache, 1).await, vec![1]);
        let m = id("m");
        let set = |v| cache.set_canary(&m, Canary::new(v, 50.0).unwrap());
        assert!(matches!(
            set(9).await,
            Err(ScorerError::VersionNotFound { .. })
        ));
        let broken = set(2).await.unwrap_err();
        assert_eq!(broken.status().as_u16(), 422, "{broken}");
        let incompatible = set(3).await.unwrap_err();
        assert_eq!(incompatible.status().as_u16(), 422, "{incompatible}");
        assert!(
            incompatible.to_string().contains("inputs"),
            "{incompatible}"
        );
        assert!(!store.0.join("m/canary.json").exists(), "nothing written");
        assert!(matches!(
            cache
                .set_canary(&id("absent"), Canary::new(1, 1.0).unwrap())
                .await,
            Err(ScorerError::ModelNotFound(_))
        ));

        // Written by another scorer (or by hand): followed after a refresh, as a pin is.
        std::fs::write(
            store.0.join("m/canary.json"),
            r#"{"version": 4, "percent": 100}"#,
        )
        .unwrap();
        cache.refresh(&id("m")).await.unwrap();
        assert_eq!(answered(cache, 5).await, vec![4; 5]);
        std::fs::remove_file(store.0.join("m/canary.json")).unwrap();
        cache.refresh(&id("m")).await.unwrap();
        assert_eq!(answered(cache, 5).await, vec![1; 5]);
    }

    /// A canary whose version has left the store splits nothing and is shown inactive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_whose_version_left_the_store_is_shown_inactive() {
        let store = Store::new();
        store.put("m", 1, &demo("linear-small"));
        store.put("m", 2, &demo("linear-small"));
        let cache = &local_cache(&store, |_| {});
        let m = id("m");
        let set = cache
            .set_canary(&m, Canary::new(1, 100.0).unwrap())
            .await
            .unwrap();
        assert!(set.active);
        assert!(cache.canary(&m).await.unwrap().active);
        assert_eq!(answered(cache, 3).await, vec![1; 3]);
        std::fs::remove_dir_all(store.0.join("m/1")).unwrap();
        cache.refresh(&m).await.unwrap();
        let shown = cache.canary(&m).await.unwrap();
        assert_eq!((shown.version, shown.active), (1, false));
        let status = cache.version_status(&m).await.unwrap();
        assert!(!status.canary.unwrap().active);
        assert_eq!(answered(cache, 3).await, vec![2; 3]);
    }

    /// A canary file that is not valid fails the model's look-ups, naming the file, until
    /// the canary is dropped or set through the admin API, which replaces it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_file_that_is_not_valid_is_repaired_by_drop_or_set() {
        let store = Store::new();
        store.put("m", 1, &demo("linear-small"));
        store.put("m", 2, &demo("linear-small"));
        let canary_file = store.0.join("m/canary.json");
        let cache = &local_cache(&store, |_| {});
        let m = id("m");
        // Not in memory yet: the look-up reads the store and fails.
        std::fs::write(&canary_file, r#"{"version": 2, "percent": 150}"#).unwrap();
        let refused = cache.get_for_inference(&m, None).await.unwrap_err();
        assert_eq!(refused.status().as_u16(), 503, "{refused}");
        assert!(refused.to_string().contains("canary.json"), "{refused}");
        assert!(matches!(cache.canary(&m).await, Err(ScorerError::Store(_))));
        assert!(cache.drop_canary(&m).await.unwrap().is_none());
        assert!(!canary_file.exists());
        assert_eq!(answered(cache, 3).await, vec![2; 3]);
        // In memory: the refresh fails (the live version keeps serving) until the drop.
        std::fs::write(&canary_file, "{not json").unwrap();
        let refused = cache.refresh(&m).await.unwrap_err();
        assert!(refused.to_string().contains("canary.json"), "{refused}");
        assert!(cache.drop_canary(&m).await.unwrap().is_none());
        assert!(!canary_file.exists());
        cache.refresh(&m).await.unwrap();
        std::fs::write(&canary_file, "{not json").unwrap();
        let set = cache
            .set_canary(&m, Canary::new(1, 100.0).unwrap())
            .await
            .unwrap();
        assert_eq!(set.version, 1);
        assert_eq!(answered(cache, 3).await, vec![1; 3]);
        // With no file at all, dropping is still "no canary".
        cache.drop_canary(&m).await.unwrap();
        assert!(matches!(
            cache.drop_canary(&m).await,
            Err(ScorerError::NoCanary(_))
        ));
    }
}
