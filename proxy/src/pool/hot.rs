//! The hot table: which scorers answered for a model recently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Where a model was last seen served, per scorer.
#[derive(Default)]
struct HotEntry {
    scorers: Vec<(Arc<str>, Instant)>,
}

/// Models known hot per scorer, learnt from the cache header of answers
/// (`manymodels_contract::header::CACHE`): any 200 from a scorer for a model means that
/// scorer now holds it. Entries expire after `hot_ttl` without an answer (swept every
/// quarter TTL), and the table holds at most `max_models` models
/// (`routing.hot_max_models`): past it the least recently answered tenth is forgotten, so
/// memory is bounded whatever the number of ids in traffic. A model the table forgot is
/// routed to its owner, as a cold one is.
pub(super) struct HotTable {
    ttl: Duration,
    max_models: usize,
    entries: RwLock<HashMap<Arc<str>, HotEntry>>,
    last_sweep: Mutex<Instant>,
}

impl HotTable {
    pub(super) fn new(ttl: Duration, max_models: usize) -> Self {
        HotTable {
            ttl,
            max_models: max_models.max(1),
            entries: RwLock::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Whether `scorer` answered for `model` within the TTL.
    pub(super) fn holds(&self, model: &str, scorer: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(model).is_some_and(|e| {
            e.scorers
                .iter()
                .any(|(s, seen)| &**s == scorer && seen.elapsed() < self.ttl)
        })
    }

    pub(super) fn record(&self, model: &str, scorer: &str) {
        let now = Instant::now();
        {
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            match entries.get_mut(model) {
                Some(entry) => match entry.scorers.iter_mut().find(|(s, _)| &**s == scorer) {
                    Some((_, seen)) => *seen = now,
                    None => entry.scorers.push((Arc::from(scorer), now)),
                },
                None => {
                    entries.insert(
                        Arc::from(model),
                        HotEntry {
                            scorers: vec![(Arc::from(scorer), now)],
                        },
                    );
                    if entries.len() > self.max_models {
                        Self::forget_oldest(&mut entries, self.max_models);
                    }
                }
            }
        }
        self.sweep(now);
    }

    /// Forgets the least recently answered models until a tenth of `max` is free, so the
    /// sort is paid once per `max / 10` new models.
    fn forget_oldest(entries: &mut HashMap<Arc<str>, HotEntry>, max: usize) {
        let keep = max - max / 10;
        let mut by_age: Vec<(Instant, Arc<str>)> = entries
            .iter()
            .filter_map(|(model, e)| {
                Some((e.scorers.iter().map(|(_, t)| *t).max()?, model.clone()))
            })
            .collect();
        let excess = by_age.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        by_age.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
        for (_, model) in &by_age[..excess] {
            entries.remove(model);
        }
    }

    /// Forgets everything a scorer held (it restarted or left).
    pub(super) fn forget_scorer(&self, scorer: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries.values_mut() {
            entry.scorers.retain(|(s, _)| &**s != scorer);
        }
        entries.retain(|_, e| !e.scorers.is_empty());
    }

    pub(super) fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn sweep(&self, now: Instant) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(*last) < self.ttl / 4 {
                return;
            }
            *last = now;
        }
        let ttl = self.ttl;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries.values_mut() {
            entry
                .scorers
                .retain(|(_, seen)| now.duration_since(*seen) < ttl);
        }
        entries.retain(|_, e| !e.scorers.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_entries_expire_and_follow_scorers() {
        // A TTL no stall of the test thread reaches, for what must still be held.
        let hot = HotTable::new(Duration::from_secs(60), 1000);
        hot.record("m1", "a");
        hot.record("m1", "b");
        assert!(hot.holds("m1", "a") && hot.holds("m1", "b"));
        assert!(!hot.holds("m1", "c"));
        hot.forget_scorer("a");
        assert!(!hot.holds("m1", "a") && hot.holds("m1", "b"));
        // A short one for what must expire (a stall only makes it more expired).
        let hot = HotTable::new(Duration::from_millis(50), 1000);
        hot.record("m1", "b");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!hot.holds("m1", "b"), "entries expire after the TTL");
        hot.record("m2", "a");
        assert_eq!(hot.len(), 1, "the sweep dropped the expired model");
        // Bounded by count too: past the bound the least recently answered tenth goes.
        let hot = HotTable::new(Duration::from_secs(60), 100);
        for i in 0..100 {
            hot.record(&format!("m{i}"), "a");
        }
        assert_eq!(hot.len(), 100);
        hot.record("m0", "b"); // m0 answered again: now the most recent
        hot.record("m100", "a");
        assert_eq!(hot.len(), 90, "a tenth forgotten at once");
        assert!(hot.holds("m0", "a") && hot.holds("m100", "a"));
        assert!(!hot.holds("m1", "a"), "the oldest are forgotten first");
        assert!(hot.holds("m99", "a"));
        for i in 101..100_000 {
            hot.record(&format!("m{i}"), "a");
        }
        assert!(hot.len() <= 100, "{} models held", hot.len());
    }
}
