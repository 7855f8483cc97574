//! Per-model canaries: a share of a model's unversioned requests goes to one version.
//!
//! The split is deterministic (request n goes to the canary when ⌊(n+1)·p⌋ > ⌊n·p⌋), so
//! over any run of requests the canary gets its share to within one request. Canaries
//! live in this proxy's memory: with several proxy replicas, set them on each (or through
//! one admin proxy). Promotion pins the canary version in the store, which every scorer and
//! every proxy then follows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Canary {
    pub version: u64,
    /// Share of requests, 0–100.
    pub percent: f64,
    /// Requests seen and sent to the canary since it was set.
    pub requests: u64,
    pub to_canary: u64,
}

#[derive(Debug, Default)]
pub struct Canaries {
    by_model: Mutex<HashMap<String, Canary>>,
    /// How many models have a canary, so requests skip the lock when none does.
    count: AtomicUsize,
}

impl Canaries {
    pub fn set(&self, model: &str, version: u64, percent: f64) -> Canary {
        let canary = Canary {
            version,
            percent,
            requests: 0,
            to_canary: 0,
        };
        let mut map = self.lock();
        map.insert(model.to_string(), canary.clone());
        self.count.store(map.len(), Ordering::Relaxed);
        canary
    }

    pub fn get(&self, model: &str) -> Option<Canary> {
        self.lock().get(model).cloned()
    }

    pub fn remove(&self, model: &str) -> Option<Canary> {
        let mut map = self.lock();
        let removed = map.remove(model);
        self.count.store(map.len(), Ordering::Relaxed);
        removed
    }

    /// For one unversioned request: the canary version if this request goes to it, or
    /// `None` (the live version), and whether the model has a canary at all.
    pub fn pick(&self, model: &str) -> (Option<u64>, bool) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return (None, false);
        }
        let mut map = self.lock();
        let Some(canary) = map.get_mut(model) else {
            return (None, false);
        };
        let share = canary.percent / 100.0;
        let n = canary.requests as f64;
        canary.requests += 1;
        if ((n + 1.0) * share).floor() > (n * share).floor() {
            canary.to_canary += 1;
            (Some(canary.version), true)
        } else {
            (None, true)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Canary>> {
        self.by_model.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_follows_the_share() {
        let canaries = Canaries::default();
        assert_eq!(canaries.pick("m"), (None, false));
        canaries.set("m", 2, 10.0);
        let to_canary = (0..2_000)
            .filter(|_| canaries.pick("m").0 == Some(2))
            .count();
        assert_eq!(to_canary, 200);
        canaries.set("m", 2, 33.0);
        let to_canary = (0..1_000)
            .filter(|_| canaries.pick("m").0.is_some())
            .count();
        assert_eq!(to_canary, 330);
        assert_eq!(canaries.get("m").unwrap().to_canary, 330);
        assert!(canaries.remove("m").is_some());
        assert_eq!(canaries.pick("m"), (None, false));
    }
}
