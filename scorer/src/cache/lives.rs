//! Live versions: which version of each model this scorer answers requests that name no
//! version with, the version served before it (to fall back to when a new one fails), a
//! version refused and why, and the canary split read with it. An entry is followed while
//! its model is resident (the version checker moves it on) and otherwise trusted for
//! `versions.check_interval`, after which the store is asked again; a burst of look-ups
//! for a model not in memory asks the store once (`resolve`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::future::Cache;

use super::canary::Split;
use super::{CanaryStatus, Refusal};
use crate::error::ScorerError;
use crate::metrics::Metrics;
use crate::model_id::ModelId;
use crate::store::{Canary, ModelState, ModelStore};

/// How long a store look-up is shared by the requests that follow it.
const RESOLVE_TTL: Duration = Duration::from_secs(1);
/// The most look-ups remembered at once.
const RESOLVE_CAPACITY: u64 = 100_000;

/// What this scorer serves as one model's live version.
#[derive(Clone, Debug)]
pub(super) struct Live {
    pub(super) version: u64,
    /// The version served before this one, to fall back to if this one fails to load.
    previous: Option<u64>,
    /// When the store was last asked.
    checked: Instant,
    refused: Option<Refused>,
    /// The store's canary as of `checked`, and its counts here.
    split: Option<Split>,
}

/// A version that was refused (failed to load, its smoke inference, or the signature
/// check), why, and when.
#[derive(Clone, Debug)]
struct Refused {
    version: u64,
    error: String,
    at: Instant,
}

impl Refused {
    fn status(&self) -> Refusal {
        Refusal {
            version: self.version,
            error: self.error.clone(),
            seconds_ago: self.at.elapsed().as_secs_f64(),
        }
    }
}

impl Live {
    /// Where the next request that names no version goes: `(version, to_canary)`. With
    /// `split`, an inference request, the canary takes its share; otherwise (metadata,
    /// readiness, warm loads) the live version.
    fn target(&mut self, split: bool, metrics: &Metrics) -> (u64, bool) {
        let Some(canary) = self.split.as_mut().filter(|_| split) else {
            return (self.version, false);
        };
        let to_canary = canary.pick();
        metrics.canary_requests[usize::from(to_canary)].inc();
        if to_canary {
            (canary.canary.version, true)
        } else {
            (self.version, false)
        }
    }

    /// The refusal of `version`, while it lasts (`ttl`).
    fn refusal_of(&self, version: u64, ttl: Duration) -> Option<&Refused> {
        self.refused
            .as_ref()
            .filter(|r| r.version == version && r.at.elapsed() < ttl)
    }
}

/// The live versions of the models this scorer has seen.
pub(super) struct Lives {
    entries: Mutex<HashMap<ModelId, Live>>,
    /// Store look-ups in flight or just done.
    resolving: Cache<ModelId, ModelState>,
    /// How long an entry of a model not in memory is trusted (`versions.check_interval`).
    check_interval: Duration,
    /// How long a refused version stays refused (`cache.failure_ttl`).
    refusal_ttl: Duration,
}

impl Lives {
    pub(super) fn new(check_interval: Duration, refusal_ttl: Duration) -> Self {
        Lives {
            entries: Mutex::new(HashMap::new()),
            resolving: Cache::builder()
                .max_capacity(RESOLVE_CAPACITY)
                .time_to_live(RESOLVE_TTL)
                .build(),
            check_interval,
            refusal_ttl,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<ModelId, Live>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `id` (a new one serving `version` if there was none), marked as
    /// checked against the store just now, following the store's canary.
    fn checked_now<'a>(
        entries: &'a mut HashMap<ModelId, Live>,
        id: &ModelId,
        version: u64,
        canary: Option<Canary>,
    ) -> &'a mut Live {
        let live = entries.entry(id.clone()).or_insert_with(|| Live {
            version,
            previous: None,
            checked: Instant::now(),
            refused: None,
            split: None,
        });
        live.checked = Instant::now();
        Split::follow(&mut live.split, canary);
        live
    }

    /// Where a request for `id` naming no version goes, `(version, to_canary)`, when this
    /// scorer's entry can answer without the store: checked within the interval, or its
    /// version `resident`. `resident` is called without this component's lock held (the
    /// resident set's lock is never taken under it).
    pub(super) fn known(
        &self,
        id: &ModelId,
        split: bool,
        resident: impl FnOnce(u64) -> bool,
        metrics: &Metrics,
    ) -> Option<(u64, bool)> {
        let (version, checked, has_canary) = self
            .entries()
            .get(id)
            .map(|l| (l.version, l.checked, l.split.is_some()))?;
        if checked.elapsed() >= self.check_interval && !resident(version) {
            return None;
        }
        if !(split && has_canary) {
            return Some((version, false));
        }
        // Locked again to count the split.
        self.entries()
            .get_mut(id)
            .map(|live| live.target(split, metrics))
    }

    /// The store's state of `id`, asked once for a burst of look-ups.
    pub(super) async fn resolve(
        &self,
        id: &ModelId,
        store: &dyn ModelStore,
    ) -> Result<ModelState, ScorerError> {
        self.resolving
            .try_get_with(id.clone(), async {
                store
                    .model_state(id)
                    .await
                    .map_err(|e| ScorerError::from_store(e, id, None))
            })
            .await
            .map_err(|shared: Arc<ScorerError>| (*shared).clone())
    }

    /// Follows the store's live version `target` (unless it was refused lately) and
    /// canary for a request; answers where it goes, `(version, to_canary)`.
    pub(super) fn follow(
        &self,
        id: &ModelId,
        target: u64,
        canary: Option<Canary>,
        split: bool,
        metrics: &Metrics,
    ) -> (u64, bool) {
        let mut entries = self.entries();
        let entry = Self::checked_now(&mut entries, id, target, canary);
        if entry.version != target && entry.refusal_of(target, self.refusal_ttl).is_none() {
            entry.previous = Some(entry.version);
            entry.version = target;
        }
        entry.target(split, metrics)
    }

    /// Marks `id` as checked against the store's `target` and canary just now (a version
    /// check); answers the entry as it was then, for the check to act on.
    pub(super) fn check(&self, id: &ModelId, target: u64, canary: Option<Canary>) -> Live {
        let mut entries = self.entries();
        Self::checked_now(&mut entries, id, target, canary).clone()
    }

    /// After the live version `failed` could not be loaded, falls back to the version
    /// served before it, if any, and remembers the refusal. Returns the fallback.
    pub(super) fn fall_back(&self, id: &ModelId, failed: u64, error: String) -> Option<u64> {
        let mut entries = self.entries();
        let live = entries.get_mut(id)?;
        let previous = live.previous.filter(|p| *p != failed)?;
        if live.version == failed {
            live.version = previous;
            live.previous = None;
        }
        live.refused = Some(Refused {
            version: failed,
            error,
            at: Instant::now(),
        });
        Some(previous)
    }

    /// The refusal of `version` of `id`, while it lasts.
    pub(super) fn refusal(&self, id: &ModelId, version: u64) -> Option<Refusal> {
        let entries = self.entries();
        let refused = entries.get(id)?.refusal_of(version, self.refusal_ttl)?;
        Some(refused.status())
    }

    /// Remembers that `version` of `id` was refused, and why.
    pub(super) fn refuse(&self, id: &ModelId, version: u64, error: String) {
        if let Some(live) = self.entries().get_mut(id) {
            live.refused = Some(Refused {
                version,
                error,
                at: Instant::now(),
            });
        }
    }

    /// Moves `id` from `from` to `to`, the refusal cleared.
    pub(super) fn advance(&self, id: &ModelId, from: u64, to: u64) {
        if let Some(live) = self.entries().get_mut(id) {
            live.previous = Some(from);
            live.version = to;
            live.refused = None;
        }
    }

    /// The live version this scorer serves for `id`, if it has one.
    pub(super) fn version(&self, id: &ModelId) -> Option<u64> {
        self.entries().get(id).map(|l| l.version)
    }

    /// The last refusal of `id` (whatever its age), for the status view.
    pub(super) fn last_refusal(&self, id: &ModelId) -> Option<Refusal> {
        self.entries()
            .get(id)
            .and_then(|l| l.refused.as_ref().map(Refused::status))
    }

    /// When `id` was last checked against the store.
    pub(super) fn checked(&self, id: &ModelId) -> Option<Instant> {
        self.entries().get(id).map(|l| l.checked)
    }

    /// `canary` with this scorer's counts for it (zero when it has not split requests
    /// for this canary); `active` when its version is in the store.
    pub(super) fn canary_status(&self, id: &ModelId, canary: Canary, active: bool) -> CanaryStatus {
        let counted = self
            .entries()
            .get(id)
            .and_then(|live| live.split.clone())
            .filter(|split| split.canary == canary);
        CanaryStatus {
            version: canary.version,
            percent: canary.percent,
            active,
            requests: counted.as_ref().map_or(0, |s| s.requests),
            to_canary: counted.as_ref().map_or(0, |s| s.to_canary),
        }
    }

    /// Forgets `id`'s entry (the model is gone from the store).
    pub(super) fn remove(&self, id: &ModelId) {
        self.entries().remove(id);
    }

    /// Forgets the store's last answer for `id`, so the next look-up asks again.
    pub(super) async fn invalidate(&self, id: &ModelId) {
        self.resolving.invalidate(id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ModelId {
        ModelId::parse(name).unwrap()
    }

    fn lives() -> Lives {
        Lives::new(Duration::from_secs(60), Duration::from_secs(60))
    }

    #[test]
    fn a_new_version_is_followed_and_the_old_one_kept_to_fall_back_to() {
        let (lives, metrics) = (lives(), Metrics::new(0));
        let m = id("m");
        assert_eq!(lives.known(&m, false, |_| false, &metrics), None);
        assert_eq!(lives.follow(&m, 1, None, false, &metrics), (1, false));
        assert_eq!(
            lives.known(&m, false, |_| false, &metrics),
            Some((1, false))
        );
        assert_eq!(lives.follow(&m, 2, None, false, &metrics), (2, false));
        // Version 2 fails: back to 1, and 2 stays refused when the store names it again.
        assert_eq!(lives.fall_back(&m, 2, "broken".into()), Some(1));
        assert_eq!(lives.version(&m), Some(1));
        assert_eq!(lives.follow(&m, 2, None, false, &metrics), (1, false));
        let refusal = lives.refusal(&m, 2).expect("refused");
        assert_eq!((refusal.version, refusal.error.as_str()), (2, "broken"));
        assert!(lives.refusal(&m, 1).is_none());
        // Nothing further back to fall to.
        assert_eq!(lives.fall_back(&m, 1, "also broken".into()), None);
        lives.advance(&m, 1, 3);
        assert_eq!(lives.version(&m), Some(3));
        assert!(lives.last_refusal(&m).is_none(), "cleared by the move");
        lives.remove(&m);
        assert_eq!(lives.version(&m), None);
    }

    #[test]
    fn an_old_entry_answers_only_while_its_model_is_resident() {
        let lives = Lives::new(Duration::ZERO, Duration::from_secs(60));
        let metrics = Metrics::new(0);
        let m = id("m");
        lives.follow(&m, 4, None, false, &metrics);
        assert_eq!(lives.known(&m, false, |_| false, &metrics), None);
        assert_eq!(
            lives.known(&m, false, |v| v == 4, &metrics),
            Some((4, false))
        );
    }

    #[test]
    fn a_canary_takes_its_share_of_inference_requests_only() {
        let (lives, metrics) = (lives(), Metrics::new(0));
        let m = id("m");
        let canary = Canary {
            version: 9,
            percent: 25.0,
        };
        lives.follow(&m, 1, Some(canary), false, &metrics);
        let picks: Vec<(u64, bool)> = (0..8)
            .map(|_| lives.known(&m, true, |_| true, &metrics).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|(_, c)| *c).count(), 2);
        assert!(picks.iter().all(|&(v, c)| v == if c { 9 } else { 1 }));
        // Requests that are not inference never go to the canary, nor count.
        assert_eq!(lives.known(&m, false, |_| true, &metrics), Some((1, false)));
        let status = lives.canary_status(&m, canary, true);
        assert_eq!((status.requests, status.to_canary), (8, 2));
    }
}
