//! Pool-wide request statistics: what each proxy counts, what it reports to the scorers,
//! and how a scorer combines the reports of several proxies.
//!
//! ## In the proxy: [`PoolStats`]
//! Every request increments a decayed count for its model id. Counts decay on the proxy's
//! traffic clock (a half-life in requests, [`crate::clock`]); rates are reported in
//! requests per second, the count's share of the proxy's traffic times its measured rate.
//! Memory is fixed whatever the number of ids:
//! - a count-min sketch (4 rows × 32,768 `f32` counters, 512 KiB, conservative update)
//!   estimates the count of any id;
//! - a heavy-hitter table keeps the ids themselves, with their counts, for the `capacity`
//!   hottest models (16,384 by default, about 1 MiB). An id enters when its sketch
//!   estimate beats the table's floor (its smallest count at the last tick); at every tick
//!   the table is cut back to `capacity`.
//!
//! Counts are plain numbers multiplied by the decay factor at each [`PoolStats::tick`]
//! (once a second), so a request costs one hash, four counter updates and one table
//! look-up.
//!
//! ## On the wire: [`StatsReport`]
//! Each proxy pushes to each scorer the rates (requests per second) of the hot models that
//! scorer owns, tagged with the proxy's instance id.
//!
//! ## In the scorer: [`PoolView`]
//! A scorer keeps the latest report of each proxy and sums them. Every request passes
//! through exactly one proxy, so the sum is the pool's rate; a report replaces that proxy's
//! previous one, so a retried or repeated push never counts twice; a proxy that stops
//! reporting is dropped after `stale_after`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::clock::TrafficClock;
use crate::decay::Decay;
use crate::ranking::StableHasher;

const ROWS: usize = 4;
const WIDTH: usize = 1 << 15;

pub struct PoolStats<K> {
    decay: Decay,
    sketch: Box<[f32]>,
    top: HashMap<K, f32>,
    capacity: usize,
    /// The smallest count kept at the last tick: the bar a new id must clear.
    floor: f32,
    /// The traffic clock at the last tick.
    last_tick: f64,
    clock: TrafficClock,
    requests: u64,
}

impl<K: Hash + Eq + Clone> PoolStats<K> {
    /// `half_life` in requests; `now` is the wall time (seconds).
    pub fn new(half_life: f64, capacity: usize, now: f64) -> Self {
        PoolStats {
            decay: Decay::new(half_life),
            sketch: vec![0.0; ROWS * WIDTH].into_boxed_slice(),
            top: HashMap::with_capacity(capacity * 2),
            capacity: capacity.max(1),
            floor: 0.0,
            last_tick: 0.0,
            clock: TrafficClock::new(now),
            requests: 0,
        }
    }

    /// Requests per second per unit of decayed count: share of traffic times its rate.
    fn scale(&self) -> f64 {
        self.clock.per_second() / self.decay.tau()
    }

    pub fn decay(&self) -> &Decay {
        &self.decay
    }

    /// Counts one request for `key`. Returns the model's rate (req/s) including it.
    pub fn record<Q>(&mut self, key: &Q) -> f64
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq + ToOwned,
        Q::Owned: Into<K>,
    {
        self.requests += 1;
        let slots = slots(key);
        // Conservative update: raise only the counters at the current minimum.
        let estimate = slots
            .iter()
            .map(|&i| self.sketch[i])
            .fold(f32::INFINITY, f32::min)
            + 1.0;
        for &i in &slots {
            if self.sketch[i] < estimate {
                self.sketch[i] = estimate;
            }
        }
        let count = if let Some(count) = self.top.get_mut(key) {
            *count += 1.0;
            *count
        } else {
            if (self.top.len() < self.capacity || estimate > self.floor)
                && self.top.len() < 2 * self.capacity
            {
                self.top.insert(key.to_owned().into(), estimate);
            }
            estimate
        };
        f64::from(count) * self.scale()
    }

    /// The model's decayed rate (req/s): exact for a hot model, a sketch estimate (never
    /// below the truth) otherwise.
    pub fn rate<Q>(&self, key: &Q) -> f64
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        let count = match self.top.get(key) {
            Some(count) => *count,
            None => slots(key)
                .iter()
                .map(|&i| self.sketch[i])
                .fold(f32::INFINITY, f32::min),
        };
        f64::from(count) * self.scale()
    }

    /// Whether `key` is in the heavy-hitter table (one of the hottest `capacity` models, or
    /// admitted since the last tick).
    pub fn is_hot<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.top.contains_key(key)
    }

    /// Applies the decay for the requests counted since the last tick, measures the
    /// request rate at wall time `now`, and cuts the hot table back to its capacity. Call
    /// about once a second.
    pub fn tick(&mut self, now: f64) {
        let counted = self.requests as f64 - self.clock.now();
        let clock = self.clock.tick(counted, now);
        let elapsed = clock - self.last_tick;
        if elapsed <= 0.0 {
            return;
        }
        self.last_tick = clock;
        let factor = self.decay.factor(elapsed) as f32;
        for counter in self.sketch.iter_mut() {
            *counter *= factor;
        }
        for count in self.top.values_mut() {
            *count *= factor;
        }
        if self.top.len() > self.capacity {
            let mut counts: Vec<f32> = self.top.values().copied().collect();
            let cut = counts.len() - self.capacity;
            counts.select_nth_unstable_by(cut, f32::total_cmp);
            let bar = counts[cut];
            self.top.retain(|_, c| *c >= bar);
        }
        self.floor = if self.top.len() < self.capacity {
            0.0
        } else {
            self.top.values().copied().fold(f32::INFINITY, f32::min)
        };
    }

    /// The hot models with their rates (req/s), hottest first.
    pub fn top(&self, limit: usize) -> Vec<(K, f64)> {
        let mut all: Vec<(K, f64)> = self
            .top
            .iter()
            .map(|(k, c)| (k.clone(), f64::from(*c) * self.scale()))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(limit);
        all
    }

    /// Every hot model with its rate, unordered.
    pub fn hot(&self) -> impl Iterator<Item = (&K, f64)> {
        let scale = self.scale();
        self.top
            .iter()
            .map(move |(k, c)| (k, f64::from(*c) * scale))
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The proxy's measured request rate (req/s) at the last tick.
    pub fn per_second(&self) -> f64 {
        self.clock.per_second()
    }

    pub fn tracked(&self) -> usize {
        self.top.len()
    }

    /// Bytes held, excluding the ids' own text.
    pub fn memory_bytes(&self) -> usize {
        self.sketch.len() * size_of::<f32>() + self.top.capacity() * (size_of::<(K, f32)>() + 1)
    }
}

fn slots<Q: ?Sized + Hash>(key: &Q) -> [usize; ROWS] {
    let mut hasher = StableHasher::default();
    key.hash(&mut hasher);
    let h = hasher.finish();
    let (a, b) = (h as u32 as usize, (h >> 32) as usize | 1);
    std::array::from_fn(|row| row * WIDTH + (a.wrapping_add(row.wrapping_mul(b)) % WIDTH))
}

pub use manymodels_contract::{StatsRefusal, StatsReport};

/// A scorer's combination of the latest report from each proxy.
#[derive(Debug, Default)]
pub struct PoolView {
    reports: HashMap<String, (f64, HashMap<String, f64>)>,
}

impl PoolView {
    /// Stores `report` as its proxy's current view, received at `now`. Reports older
    /// than `stale_after` seconds from other proxies are dropped.
    pub fn apply(&mut self, report: StatsReport, now: f64, stale_after: f64) {
        // Unbounded: cannot fail.
        let _ = self.apply_bounded(report, now, stale_after, usize::MAX);
    }

    /// [`PoolView::apply`], keeping reports of at most `max_sources` proxies: a report
    /// from a proxy not yet kept is refused while `max_sources` others are fresh, so a
    /// flood of made-up proxy ids cannot grow the view or drown the real proxies' rates.
    /// A kept proxy can always replace its own report.
    pub fn apply_bounded(
        &mut self,
        report: StatsReport,
        now: f64,
        stale_after: f64,
        max_sources: usize,
    ) -> Result<(), StatsRefusal> {
        self.reports
            .retain(|_, (received, _)| now - *received <= stale_after);
        if self.reports.len() >= max_sources && !self.reports.contains_key(&report.proxy) {
            return Err(StatsRefusal::TooManySources { max: max_sources });
        }
        self.reports
            .insert(report.proxy, (now, report.models.into_iter().collect()));
        Ok(())
    }

    /// The pool-wide rate of every reported model: the sum over proxies.
    pub fn combined(&self) -> HashMap<String, f64> {
        let mut sum: HashMap<String, f64> = HashMap::new();
        for (_, models) in self.reports.values() {
            for (model, rate) in models {
                *sum.entry(model.clone()).or_default() += rate;
            }
        }
        sum
    }

    pub fn proxies(&self) -> usize {
        self.reports.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn zipf_stream(n: usize, models: u32) -> Vec<u32> {
        // Deterministic: model k gets about n / (k+1) / H requests.
        let mut out = Vec::with_capacity(n);
        let h: f64 = (1..=models).map(|k| 1.0 / f64::from(k)).sum();
        for k in 0..models {
            let count = (n as f64 / f64::from(k + 1) / h).round() as usize;
            out.extend(std::iter::repeat_n(k, count));
        }
        // Interleave deterministically.
        let len = out.len();
        let mut mixed = vec![0; len];
        for (i, m) in out.into_iter().enumerate() {
            mixed[i * 7919 % len] = m;
        }
        mixed
    }

    #[test]
    fn a_view_keeps_at_most_max_sources_proxies_and_each_may_replace_its_own() {
        let report = |proxy: &str, rate: f64| StatsReport {
            proxy: proxy.into(),
            models: vec![("m".into(), rate)],
        };
        let mut view = PoolView::default();
        assert!(view.apply_bounded(report("a", 1.0), 0.0, 10.0, 2).is_ok());
        assert!(view.apply_bounded(report("b", 2.0), 0.0, 10.0, 2).is_ok());
        assert_eq!(
            view.apply_bounded(report("c", 1e9), 1.0, 10.0, 2),
            Err(StatsRefusal::TooManySources { max: 2 })
        );
        assert_eq!(view.combined()["m"], 3.0);
        // A kept proxy replaces its report even at the bound.
        assert!(view.apply_bounded(report("a", 5.0), 2.0, 10.0, 2).is_ok());
        assert_eq!(view.combined()["m"], 7.0);
        // Once "b" goes stale, a new proxy has room.
        assert!(view.apply_bounded(report("c", 1.0), 11.0, 10.0, 2).is_ok());
        assert_eq!(view.proxies(), 2);
    }

    #[test]
    fn hot_models_are_counted_exactly_in_bounded_memory() {
        // A half-life far longer than the stream: next to no decay.
        let mut stats: PoolStats<Arc<str>> = PoolStats::new(5e7, 1_000, 0.0);
        let stream = zipf_stream(200_000, 100_000);
        for (i, m) in stream.iter().enumerate() {
            let id = format!("model-{m}");
            stats.record(id.as_str());
            if i % 10_000 == 0 {
                stats.tick(i as f64 * 1e-6); // effectively no decay
            }
        }
        stats.tick(1.0);
        assert!(stats.tracked() <= 1_000, "{}", stats.tracked());
        assert!(stats.memory_bytes() < 3 << 20, "{}", stats.memory_bytes());
        let top: Vec<String> = stats
            .top(5)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(top, ["model-0", "model-1", "model-2", "model-3", "model-4"]);
        let exact = stream.iter().filter(|&&m| m == 0).count() as f64;
        // Rates are the count's share of the traffic times the measured rate.
        let tau = stats.decay().tau() / stats.per_second();
        let measured = stats.rate("model-0") * tau;
        assert!(
            (measured - exact).abs() / exact < 0.02,
            "{measured} vs {exact}"
        );
        // A cold id's estimate never undercounts.
        let cold = stream.iter().filter(|&&m| m == 50_000).count() as f64;
        assert!(stats.rate("model-50000") * tau >= cold * 0.98);
    }

    #[test]
    fn counts_halve_every_half_life_of_requests_whatever_the_rate() {
        // The same requests, arriving ten times faster: the same decayed counts.
        for seconds in [10.0, 1.0] {
            let mut stats: PoolStats<u32> = PoolStats::new(100.0, 10, 0.0);
            for _ in 0..100 {
                stats.record(&7);
            }
            stats.tick(seconds / 2.0);
            let count = |s: &PoolStats<u32>| s.rate(&7) * s.decay().tau() / s.per_second();
            // The tick decays the requests counted since the last one: 100 requests, one
            // half-life.
            let before = count(&stats);
            assert!((before - 50.0).abs() < 1e-3, "{before}");
            // One half-life of other models' requests later, 7's count has halved.
            for _ in 0..100 {
                stats.record(&8);
            }
            stats.tick(seconds);
            assert!(
                (count(&stats) / before - 0.5).abs() < 1e-3,
                "{}",
                count(&stats)
            );
            // Rates are requests per second: 200 requests over `seconds`, half of 7's
            // remaining share... measured on the wall clock.
            assert!((stats.per_second() - 100.0 / (seconds / 2.0)).abs() < 1e-6);
        }
    }

    #[test]
    fn reports_from_two_proxies_sum_without_double_counting() {
        let stream = zipf_stream(50_000, 500);
        let mut one: PoolStats<u32> = PoolStats::new(60.0, 1_000, 0.0);
        let mut a: PoolStats<u32> = PoolStats::new(60.0, 1_000, 0.0);
        let mut b: PoolStats<u32> = PoolStats::new(60.0, 1_000, 0.0);
        for (i, m) in stream.iter().enumerate() {
            one.record(m);
            if i % 3 == 0 {
                a.record(m)
            } else {
                b.record(m)
            };
        }
        let report = |proxy: &str, s: &PoolStats<u32>| StatsReport {
            proxy: proxy.into(),
            models: s
                .top(1_000)
                .into_iter()
                .map(|(k, r)| (k.to_string(), r))
                .collect(),
        };
        let mut view = PoolView::default();
        view.apply(report("a", &a), 0.0, 10.0);
        view.apply(report("b", &b), 0.5, 10.0);
        // The same report again (a retried push) replaces, never adds.
        view.apply(report("a", &a), 1.0, 10.0);
        assert_eq!(view.proxies(), 2);
        let combined = view.combined();
        for m in [0u32, 1, 10, 100, 400] {
            let want = one.rate(&m);
            let got = combined[&m.to_string()];
            assert!(
                (got - want).abs() / want < 1e-3,
                "model {m}: {got} vs {want}"
            );
        }
        // A proxy that stopped reporting ages out.
        view.apply(report("b", &b), 20.0, 10.0);
        assert_eq!(view.proxies(), 1);
    }
}
