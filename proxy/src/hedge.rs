//! Hedged requests: when to send a request's copy to the next candidate, whether the
//! budget allows it, and when a scorer that keeps being hedged away from counts as
//! stalled. Pure state with its own clock-free rules, unit-tested without a socket;
//! `exchange.rs` races the copies.
//!
//! The delay is "The Tail at Scale"'s: a copy goes out once the first scorer is slower
//! than it usually is for this model. How slow "usually" is comes from the answers the
//! proxy saw, smoothed the way TCP sets its retransmission timeout (RFC 6298: the mean
//! plus four mean deviations), per (model, scorer) in a fixed table of slots, and per
//! scorer for its hits and its cold loads when the pair is unknown.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use manymodels_config::proxy::HedgeConfig;

/// Slots for (model, scorer) pairs: a pair shares its slot with whatever hashes there and
/// the newest wins, so memory is fixed (about 400 KiB) however many models there are.
const PAIR_SLOTS: usize = 16_384;

/// Slots for each scorer's hit and miss estimates.
const SCORER_SLOTS: usize = 256;

/// RFC 6298's gains: the mean moves by 1/8 of each error, the deviation by 1/4.
const ALPHA: f32 = 0.125;
const BETA: f32 = 0.25;

/// A smoothed latency: mean and mean deviation in seconds, for the key `tag` (0: empty).
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    tag: u64,
    mean: f32,
    deviation: f32,
}

impl Slot {
    fn observe(&mut self, tag: u64, seconds: f32) {
        if self.tag != tag {
            // A new key takes the slot: RFC 6298's first measurement.
            *self = Slot {
                tag,
                mean: seconds,
                deviation: seconds / 2.0,
            };
            return;
        }
        self.deviation = (1.0 - BETA) * self.deviation + BETA * (self.mean - seconds).abs();
        self.mean = (1.0 - ALPHA) * self.mean + ALPHA * seconds;
    }

    fn timeout(&self, tag: u64) -> Option<f32> {
        (self.tag == tag).then_some(self.mean + 4.0 * self.deviation)
    }
}

/// A table of smoothed latencies keyed by a hash.
struct Table(Box<[Mutex<Slot>]>);

impl Table {
    fn new(slots: usize) -> Table {
        Table((0..slots).map(|_| Mutex::default()).collect())
    }

    fn slot(&self, tag: u64) -> std::sync::MutexGuard<'_, Slot> {
        self.0[(tag % self.0.len() as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn observe(&self, tag: u64, seconds: f32) {
        self.slot(tag).observe(tag, seconds);
    }

    fn timeout(&self, tag: u64) -> Option<f32> {
        self.slot(tag).timeout(tag)
    }
}

/// Whether the request is expected to find its model in the scorer's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Hit,
    Miss,
}

/// The hedge delays: what each scorer's answers took, by model and overall.
pub struct Delays {
    pairs: Table,
    scorers: Table,
    hasher: std::hash::RandomState,
    floor: Duration,
    cap: Duration,
}

impl Delays {
    pub fn new(floor: Duration, cap: Duration) -> Delays {
        Delays {
            pairs: Table::new(PAIR_SLOTS),
            scorers: Table::new(SCORER_SLOTS),
            hasher: std::hash::RandomState::new(),
            floor,
            cap,
        }
    }

    /// A nonzero tag for a key (0 marks an empty slot).
    fn tag(&self, key: impl Hash) -> u64 {
        self.hasher.hash_one(key).max(1)
    }

    /// A scorer answered a request for `model` in `took`: from memory (`Hit`) or after
    /// loading it (`Miss`). A miss teaches only the scorer's cold-load estimate: the
    /// model's next request is a hit.
    pub fn observe(&self, model: &str, scorer: &str, lookup: Expect, took: Duration) {
        let seconds = took.as_secs_f32();
        match lookup {
            Expect::Hit => {
                self.pairs.observe(self.tag((model, scorer)), seconds);
                self.scorers.observe(self.tag((scorer, true)), seconds);
            }
            Expect::Miss => self.scorers.observe(self.tag((scorer, false)), seconds),
        }
    }

    /// How long to wait for `scorer`'s answer for `model` before sending a copy to the
    /// next candidate: the pair's estimate, else the scorer's for hits or cold loads (as
    /// `expect` says), else the cap; always between the floor and the cap.
    pub fn delay(&self, model: &str, scorer: &str, expect: Expect) -> Duration {
        let estimate = match expect {
            Expect::Hit => self
                .pairs
                .timeout(self.tag((model, scorer)))
                .or_else(|| self.scorers.timeout(self.tag((scorer, true)))),
            Expect::Miss => self.scorers.timeout(self.tag((scorer, false))),
        };
        estimate
            .map_or(self.cap, |s| Duration::from_secs_f32(s.max(0.0)))
            .clamp(self.floor, self.cap)
    }
}

/// Micro-tokens per token: the budget is kept as an integer.
const MICRO: u64 = 1_000_000;

/// The hedge budget, a token bucket filled by requests: each adds `budget` tokens (at most
/// `burst` are kept), each hedge takes one. Hedges stay within `budget` of requests over
/// time, so in an overload (every request slow) hedging adds a few percent, never doubles.
pub struct Budget {
    micro: AtomicU64,
    earn: u64,
    most: u64,
}

impl Budget {
    /// A full bucket.
    pub fn new(budget: f64, burst: f64) -> Budget {
        let most = (burst * MICRO as f64) as u64;
        Budget {
            micro: AtomicU64::new(most),
            earn: (budget * MICRO as f64) as u64,
            most,
        }
    }

    /// A request arrived: its share of a hedge.
    pub fn earn(&self) {
        let _ = self
            .micro
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m < self.most).then(|| (m + self.earn).min(self.most))
            });
    }

    /// Takes a token for a hedge; `false` when there is none.
    pub fn spend(&self) -> bool {
        self.micro
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                m.checked_sub(MICRO)
            })
            .is_ok()
    }

    /// Tokens left, for tests and the status view.
    pub fn tokens(&self) -> f64 {
        self.micro.load(Ordering::Relaxed) as f64 / MICRO as f64
    }
}

/// Scorers that were hedged away from without answering anything in between: one that
/// reaches `after` such requests is stalled (frozen, or its host is), and is ejected
/// rather than waited on by every request routed to it until its health checks time out.
pub struct Stalls {
    after: usize,
    /// Scorers with a count, so an answer costs one atomic load when none has.
    pending: AtomicUsize,
    counts: Mutex<HashMap<String, usize>>,
}

impl Stalls {
    /// `after` 0: never stalled.
    pub fn new(after: usize) -> Stalls {
        Stalls {
            after,
            pending: AtomicUsize::new(0),
            counts: Mutex::default(),
        }
    }

    /// A request was hedged away from `scorer` and the copy answered first. `true` when
    /// this makes it stalled (its count is cleared: the caller ejects it).
    pub fn hedged_away(&self, scorer: &str) -> bool {
        if self.after == 0 {
            return false;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(scorer.to_string()).or_default();
        *count += 1;
        let stalled = *count >= self.after;
        if stalled {
            counts.remove(scorer);
        }
        self.pending.store(counts.len(), Ordering::Relaxed);
        stalled
    }

    /// `scorer` answered something: whatever it was hedged away from, it is not frozen.
    pub fn answered(&self, scorer: &str) {
        if self.pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.remove(scorer);
        self.pending.store(counts.len(), Ordering::Relaxed);
    }
}

/// Everything hedging keeps, built from `hedge.*`.
pub struct Hedging {
    pub enabled: bool,
    pub delays: Delays,
    pub budget: Budget,
    pub stalls: Stalls,
}

impl Hedging {
    pub fn new(config: &HedgeConfig) -> Hedging {
        Hedging {
            enabled: config.enabled,
            delays: Delays::new(config.floor, config.cap),
            budget: Budget::new(config.budget, config.burst),
            stalls: Stalls::new(config.stalled_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_unknown_pair_waits_the_cap_and_a_known_one_its_estimate() {
        let delays = Delays::new(2 * MS, 500 * MS);
        assert_eq!(delays.delay("m", "s1", Expect::Hit), 500 * MS);
        // Steady 10 ms answers: the deviation decays, the delay tends to 10 ms.
        for _ in 0..200 {
            delays.observe("m", "s1", Expect::Hit, 10 * MS);
        }
        let delay = delays.delay("m", "s1", Expect::Hit);
        assert!(
            delay >= 10 * MS && delay < 11 * MS,
            "steady 10 ms answers give a delay within 1 ms of 10 ms, got {delay:?}"
        );
        // Another model on the same scorer has no pair estimate: the scorer's hits.
        let other = delays.delay("other", "s1", Expect::Hit);
        assert!(other >= 10 * MS && other < 11 * MS, "{other:?}");
        // Another scorer knows nothing yet.
        assert_eq!(delays.delay("m", "s2", Expect::Hit), 500 * MS);
        // Cold loads have their own estimate, unknown so far.
        assert_eq!(delays.delay("m", "s1", Expect::Miss), 500 * MS);
    }

    #[test]
    fn jitter_raises_the_delay_and_it_stays_between_floor_and_cap() {
        let delays = Delays::new(5 * MS, 100 * MS);
        for i in 0..200 {
            let took = if i % 2 == 0 { MS } else { 9 * MS };
            delays.observe("m", "s", Expect::Hit, took);
        }
        let delay = delays.delay("m", "s", Expect::Hit);
        // Mean ≈ 5 ms, deviation ≈ 4 ms: about 21 ms.
        assert!(
            delay > 15 * MS && delay < 27 * MS,
            "alternating 1 and 9 ms answers give about 21 ms, got {delay:?}"
        );
        for _ in 0..200 {
            delays.observe("fast", "s", Expect::Hit, Duration::from_micros(100));
        }
        assert_eq!(delays.delay("fast", "s", Expect::Hit), 5 * MS, "the floor");
        for _ in 0..50 {
            delays.observe("slow", "s", Expect::Hit, Duration::from_secs(3));
        }
        assert_eq!(delays.delay("slow", "s", Expect::Hit), 100 * MS, "the cap");
    }

    #[test]
    fn misses_teach_the_cold_estimate_only() {
        let delays = Delays::new(MS, Duration::from_secs(10));
        for _ in 0..100 {
            delays.observe("m", "s", Expect::Hit, 2 * MS);
            delays.observe("n", "s", Expect::Miss, 400 * MS);
        }
        let hit = delays.delay("m", "s", Expect::Hit);
        assert!(hit < 3 * MS, "{hit:?}");
        let cold = delays.delay("x", "s", Expect::Miss);
        assert!(cold >= 400 * MS && cold < 450 * MS, "{cold:?}");
        // A model only ever answered cold has no pair estimate: the scorer's hits.
        let n = delays.delay("n", "s", Expect::Hit);
        assert!(n < 3 * MS, "{n:?}");
    }

    #[test]
    fn the_budget_allows_its_share_of_requests_after_the_burst() {
        let budget = Budget::new(0.05, 3.0);
        assert!(
            budget.spend() && budget.spend() && budget.spend(),
            "a full burst"
        );
        assert!(!budget.spend(), "empty");
        let mut hedges = 0;
        for _ in 0..1_000 {
            budget.earn();
            if budget.spend() {
                hedges += 1;
            }
        }
        assert_eq!(hedges, 50, "5% of 1,000 requests");
        for _ in 0..10_000 {
            budget.earn();
        }
        assert!(
            (budget.tokens() - 3.0).abs() < 1e-9,
            "at most the burst is saved"
        );
    }

    #[test]
    fn a_scorer_is_stalled_after_enough_hedges_without_an_answer() {
        let stalls = Stalls::new(3);
        assert!(!stalls.hedged_away("a"));
        assert!(!stalls.hedged_away("a"));
        stalls.answered("a");
        assert!(!stalls.hedged_away("a"), "an answer starts the count again");
        assert!(!stalls.hedged_away("b"), "counted per scorer");
        assert!(!stalls.hedged_away("a"));
        assert!(stalls.hedged_away("a"), "the third in a row");
        assert!(!stalls.hedged_away("a"), "the count starts again after");
        let never = Stalls::new(0);
        assert!((0..10).all(|_| !never.hedged_away("a")));
    }
}
