//! The per-model ledger: what each model served did (requests, cache hits and cold loads,
//! errors by kind, latency quantiles, rows, the version mix, when it last scored), in fixed
//! memory whatever the number of models, and mergeable across scorers.
//!
//! ## What is exact and what is estimated
//! - **The hottest models** ([`LedgerConfig::hot_models`], N) are counted exactly. Which
//!   models are hottest is decided by the same heavy-hitter machinery as the pool's
//!   statistics ([`PoolStats`]: a count-min sketch plus a table of the hottest ids by
//!   decayed request count, half-life [`LedgerConfig::half_life`] requests). A model is
//!   tracked from the request that enters it in that table (its `since`); its earlier
//!   requests are in the tail. When [`Ledger::tick`] drops it from the table, its counters
//!   and sketch are added to the tail, exactly.
//! - **The tail**: every request of an untracked model is summed in one aggregate (the same
//!   counters and an exact latency sketch, no version mix). So the pool's totals (tracked
//!   models plus tail, [`Ledger::pool`]) are always exact, and so are their quantiles
//!   within the sketch's `alpha`.
//! - **Any model's requests and errors**, tracked or not, over its whole life: a count-min
//!   sketch (4 rows × [`LedgerConfig::tail_width`] `u64` counters for requests, as many for
//!   errors). An estimate is never below the truth, and with R requests in all it exceeds
//!   the truth by more than `e·R / width` (0.066% of R at the default width 4,096) with
//!   probability at most `e^-4` (1.8%).
//!
//! Latency sketches are [`Sketch`]es ([`crate::quantiles`]): 1% relative error by default,
//! merges exact by construction.
//!
//! ## Memory
//! Fixed at construction, apart from the sketches' runs, which are bounded:
//! [`Ledger::heap_bytes`] counts what is held, and never exceeds [`Ledger::bound_bytes`].
//! The table holds at most 2N models between ticks (N after each), so the bound is
//! 2N × (an entry, two copies of the id of at most 128 bytes, and a sketch of at most
//! `max_buckets` × 8 bytes) + the hot-table's fixed sketch (512 KiB) and map + the
//! count-min (2 × 4 × width × 8 bytes, 256 KiB by default) + the tail's sketch. With the
//! defaults (N = 1,024, 1,024 buckets) that is at most about 19 MiB; a model whose
//! latencies span two decades uses about 230 buckets (2 KiB), so a typical ledger holds
//! about 6 MiB. Ids longer than the contract's 128 bytes are never tracked (they go to the
//! tail), so the bound holds for any input.
//!
//! ## Cost of [`Ledger::record`]
//! For a model already tracked: two fixed hashes of the id (the hot table's sketch and the
//! count-min) and two map look-ups (the hot table, the ledger's index), eight counter
//! updates (twelve with an error), a handful of increments and one sketch add (one `ln`).
//! It does not allocate (`recording_a_tracked_model_does_not_allocate` counts), except
//! when a latency falls outside the model's bucket run beyond its capacity (the run grows
//! by doubling: a few times in a tracked model's life). Entering the table allocates the
//! id twice (the hot table's copy and the index's).
//!
//! ## Merging
//! [`merge_reports`] combines the [`LedgerReport`]s of several scorers: counters add, the
//! sketches merge exactly, version mixes merge exactly (the highest [`VERSIONS`] versions
//! of the union, each with all its requests), `since` is the earliest and `last_scored`
//! the latest. The result does not depend on the order of the reports.
//!
//! Nothing here reads a clock or does I/O: times (unix seconds) are passed in.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use manymodels_contract::ledger::{
    Counts, LatencySketch, LedgerReport, ModelLedger, ModelReport, Quantiles, VersionMix,
};
use manymodels_contract::{Lookup, MAX_MODEL_ID_LEN};

use crate::quantiles::{Sketch, SketchConfig, SketchError};
use crate::ranking::StableHasher;
use crate::stats::PoolStats;

/// Most error kinds a ledger counts (each model holds this many counters).
pub const MAX_ERROR_KINDS: usize = 8;
/// Versions kept per model in the version mix; older ones are summed.
pub const VERSIONS: usize = 4;
const CM_ROWS: usize = 4;

/// How a [`Ledger`] is sized.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Models counted exactly (N). Default 1,024.
    pub hot_models: usize,
    /// Half-life, in requests, of the decayed counts that decide which models are hottest.
    /// Default 1,000,000.
    pub half_life: f64,
    /// The names of the error kinds counted, at most [`MAX_ERROR_KINDS`] (e.g. the scorer's
    /// error kinds). Default none.
    pub error_kinds: Vec<&'static str>,
    /// The latency sketches' accuracy and bucket bound. Default 1%, 1,024 buckets.
    pub sketch: SketchConfig,
    /// Counters per row of the count-min sketches of requests and errors. Default 4,096.
    pub tail_width: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            hot_models: 1_024,
            half_life: 1e6,
            error_kinds: Vec::new(),
            sketch: SketchConfig::default(),
            tail_width: 4_096,
        }
    }
}

/// An error kind of a ledger, resolved once by name ([`Ledger::error_kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorKind(u8);

/// What one request did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Seconds, from arrival to answer.
    pub latency: f64,
    /// Rows (records, instances) scored.
    pub rows: u64,
    /// Whether the model was in memory or waited for a load; `None` if the request failed
    /// before the cache was asked.
    pub lookup: Option<Lookup>,
    pub error: Option<ErrorKind>,
    /// The version that served it, if one was resolved.
    pub version: Option<u64>,
}

/// Counters of one model or of the tail, in memory.
#[derive(Clone, Debug)]
struct Totals {
    requests: u64,
    hits: u64,
    loads: u64,
    errors: [u64; MAX_ERROR_KINDS],
    rows: u64,
    latency: Sketch,
    /// `-inf` until a request is recorded.
    last_scored: f64,
}

impl Totals {
    fn new(sketch: SketchConfig) -> Self {
        Totals {
            requests: 0,
            hits: 0,
            loads: 0,
            errors: [0; MAX_ERROR_KINDS],
            rows: 0,
            latency: Sketch::new(sketch),
            last_scored: f64::NEG_INFINITY,
        }
    }

    fn add(&mut self, sample: &Sample, now: f64) {
        self.requests += 1;
        match sample.lookup {
            Some(Lookup::Hit) => self.hits += 1,
            Some(Lookup::Miss) => self.loads += 1,
            None => {}
        }
        if let Some(ErrorKind(kind)) = sample.error {
            self.errors[usize::from(kind)] += 1;
        }
        self.rows += sample.rows;
        self.latency.add(sample.latency);
        self.last_scored = self.last_scored.max(now);
    }

    fn absorb(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.hits += other.hits;
        self.loads += other.loads;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        self.rows += other.rows;
        self.latency
            .merge(&other.latency)
            .expect("one ledger's sketches share a configuration");
        self.last_scored = self.last_scored.max(other.last_scored);
    }

    fn to_wire(&self, kinds: &[&'static str]) -> Counts {
        Counts {
            requests: self.requests,
            hits: self.hits,
            loads: self.loads,
            errors: kinds
                .iter()
                .zip(self.errors)
                .filter(|(_, n)| *n > 0)
                .map(|(kind, n)| (kind.to_string(), n))
                .collect(),
            rows: self.rows,
            latency: self.latency.to_wire(),
            last_scored: (self.requests > 0).then_some(self.last_scored),
            quantiles: None,
        }
    }
}

/// The highest [`VERSIONS`] versions seen with their requests, and the rest summed. A
/// version enters only above the lowest kept one, which it then pushes out, so the kept
/// versions are the highest ever seen, each with every one of its requests.
#[derive(Clone, Debug, Default)]
struct Versions {
    kept: [(u64, u64); VERSIONS],
    len: usize,
    older: u64,
}

impl Versions {
    fn add(&mut self, version: u64) {
        let kept = &mut self.kept[..self.len];
        if let Some(slot) = kept.iter_mut().find(|(v, _)| *v == version) {
            slot.1 += 1;
        } else if self.len < VERSIONS {
            self.kept[self.len] = (version, 1);
            self.len += 1;
        } else {
            let lowest = (0..VERSIONS)
                .min_by_key(|&i| self.kept[i].0)
                .expect("VERSIONS > 0");
            if version > self.kept[lowest].0 {
                self.older += self.kept[lowest].1;
                self.kept[lowest] = (version, 1);
            } else {
                self.older += 1;
            }
        }
    }

    fn to_wire(&self) -> VersionMix {
        let mut versions = self.kept[..self.len].to_vec();
        versions.sort_by_key(|&(version, _)| std::cmp::Reverse(version));
        VersionMix {
            versions,
            older: self.older,
        }
    }
}

struct Tracked {
    model: Arc<str>,
    since: f64,
    totals: Totals,
    versions: Versions,
}

impl Tracked {
    fn to_wire(&self, kinds: &[&'static str]) -> ModelLedger {
        ModelLedger {
            model: self.model.to_string(),
            since: self.since,
            counts: self.totals.to_wire(kinds),
            versions: self.versions.to_wire(),
        }
    }
}

/// A scorer's per-model ledger (module docs: what is exact, the memory bound, the cost).
pub struct Ledger {
    kinds: Box<[&'static str]>,
    sketch: SketchConfig,
    hot: PoolStats<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
    /// Tracked models by slot; `None` is a free slot (listed in `free`).
    slots: Vec<Option<Tracked>>,
    free: Vec<u32>,
    max_slots: usize,
    tail: Totals,
    cm_requests: Box<[u64]>,
    cm_errors: Box<[u64]>,
    width: usize,
    /// [`Ledger::fixed_bytes`] at construction, for [`Ledger::bound_bytes`].
    fixed_at_start: usize,
}

impl Ledger {
    /// An empty ledger at wall time `now` (seconds).
    ///
    /// # Panics
    /// With more than [`MAX_ERROR_KINDS`] error kinds: they are the code's own constants.
    pub fn new(config: LedgerConfig, now: f64) -> Self {
        assert!(
            config.error_kinds.len() <= MAX_ERROR_KINDS,
            "a ledger counts at most {MAX_ERROR_KINDS} error kinds"
        );
        let hot_models = config.hot_models.max(1);
        let max_slots = 2 * hot_models;
        let width = config.tail_width.max(1);
        let sketch = Sketch::new(config.sketch).config();
        let mut ledger = Ledger {
            kinds: config.error_kinds.into_boxed_slice(),
            sketch,
            hot: PoolStats::new(config.half_life, hot_models, now),
            index: HashMap::with_capacity(max_slots),
            slots: Vec::with_capacity(max_slots),
            free: Vec::with_capacity(max_slots),
            max_slots,
            tail: Totals::new(sketch),
            cm_requests: vec![0; CM_ROWS * width].into_boxed_slice(),
            cm_errors: vec![0; CM_ROWS * width].into_boxed_slice(),
            width,
            fixed_at_start: 0,
        };
        ledger.fixed_at_start = ledger.fixed_bytes();
        ledger
    }

    /// The error kind called `name`, if this ledger counts it.
    pub fn error_kind(&self, name: &str) -> Option<ErrorKind> {
        let i = self.kinds.iter().position(|k| *k == name)?;
        Some(ErrorKind(i as u8))
    }

    /// Counts one request of `model` at wall time `now` (unix seconds).
    pub fn record(&mut self, model: &str, sample: &Sample, now: f64) {
        let error = sample.error.filter(|k| usize::from(k.0) < self.kinds.len());
        let sample = &Sample { error, ..*sample };
        for i in cm_slots(model, self.width) {
            self.cm_requests[i] += 1;
            if error.is_some() {
                self.cm_errors[i] += 1;
            }
        }
        if model.len() > MAX_MODEL_ID_LEN {
            self.tail.add(sample, now);
            return;
        }
        self.hot.record(model);
        let slot = match self.index.get(model) {
            Some(&slot) => Some(slot),
            None if self.hot.is_hot(model) => self.admit(model, now),
            None => None,
        };
        match slot {
            Some(slot) => {
                let tracked = self.slots[slot as usize]
                    .as_mut()
                    .expect("an indexed slot is in use");
                tracked.totals.add(sample, now);
                if let Some(version) = sample.version {
                    tracked.versions.add(version);
                }
            }
            None => self.tail.add(sample, now),
        }
    }

    fn admit(&mut self, model: &str, now: f64) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            // The hot table holds at most 2N ids, as many as there are slots.
            None if self.slots.len() < self.max_slots => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
            None => return None,
        };
        let model: Arc<str> = Arc::from(model);
        self.slots[slot as usize] = Some(Tracked {
            model: model.clone(),
            since: now,
            totals: Totals::new(self.sketch),
            versions: Versions::default(),
        });
        self.index.insert(model, slot);
        Some(slot)
    }

    /// Decays the hotness counts, cuts the hot table back to N models and adds the
    /// counters of every model that left it to the tail. Call about once a second, with
    /// the wall time `now` (seconds).
    pub fn tick(&mut self, now: f64) {
        self.hot.tick(now);
        let Ledger {
            hot,
            index,
            slots,
            free,
            tail,
            ..
        } = self;
        index.retain(|model, slot| {
            if hot.is_hot(&**model) {
                return true;
            }
            let gone = slots[*slot as usize]
                .take()
                .expect("an indexed slot is in use");
            tail.absorb(&gone.totals);
            free.push(*slot);
            false
        });
    }

    /// Models tracked exactly right now.
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// Every tracked model, most requests first, and the tail.
    pub fn report(&self) -> LedgerReport {
        let mut models: Vec<ModelLedger> = self
            .slots
            .iter()
            .flatten()
            .map(|t| t.to_wire(&self.kinds))
            .collect();
        sort_models(&mut models);
        LedgerReport {
            models,
            tail: self.tail.to_wire(&self.kinds),
        }
    }

    /// One model: its exact ledger if tracked, and the count-min bounds of its requests and
    /// errors in any case.
    pub fn model(&self, model: &str) -> ModelReport {
        let slots = cm_slots(model, self.width);
        let at_most = |cm: &[u64]| slots.iter().map(|&i| cm[i]).min().unwrap_or(0);
        ModelReport {
            model: model.to_string(),
            tracked: self.index.get(model).map(|&slot| {
                self.slots[slot as usize]
                    .as_ref()
                    .expect("an indexed slot is in use")
                    .to_wire(&self.kinds)
            }),
            requests_at_most: at_most(&self.cm_requests),
            errors_at_most: at_most(&self.cm_errors),
        }
    }

    /// The whole scorer: every tracked model and the tail, exactly.
    pub fn pool(&self) -> Counts {
        let mut all = self.tail.clone();
        for tracked in self.slots.iter().flatten() {
            all.absorb(&tracked.totals);
        }
        all.to_wire(&self.kinds)
    }

    /// Bytes this ledger holds on the heap (the ids' text included).
    pub fn heap_bytes(&self) -> usize {
        let ids: usize = self
            .slots
            .iter()
            .flatten()
            .map(|t| 2 * id_bytes(t.model.len()) + t.totals.latency.heap_bytes())
            .sum();
        self.fixed_bytes() + ids + self.tail.latency.heap_bytes()
    }

    /// The most [`Ledger::heap_bytes`] can be, whatever the traffic: the tables as sized at
    /// construction (they never grow), every slot in use with an id of the longest length
    /// and a sketch of `max_buckets`.
    pub fn bound_bytes(&self) -> usize {
        let sketch = self.sketch.max_buckets * size_of::<u64>();
        self.fixed_at_start + self.max_slots * (2 * id_bytes(MAX_MODEL_ID_LEN) + sketch) + sketch
    }

    fn fixed_bytes(&self) -> usize {
        self.hot.memory_bytes()
            + self.index.capacity() * (size_of::<(Arc<str>, u32)>() + 1)
            + self.slots.capacity() * size_of::<Option<Tracked>>()
            + self.free.capacity() * size_of::<u32>()
            + (self.cm_requests.len() + self.cm_errors.len()) * size_of::<u64>()
            + self.kinds.len() * size_of::<&str>()
    }
}

/// An `Arc<str>`'s allocation: two counters and the text.
fn id_bytes(len: usize) -> usize {
    2 * size_of::<usize>() + len
}

fn cm_slots(model: &str, width: usize) -> [usize; CM_ROWS] {
    let mut hasher = StableHasher::default();
    model.hash(&mut hasher);
    let h = hasher.finish();
    let (a, b) = (h as u32 as usize, (h >> 32) as usize | 1);
    std::array::from_fn(|row| row * width + (a.wrapping_add(row.wrapping_mul(b)) % width))
}

fn sort_models(models: &mut [ModelLedger]) {
    models.sort_by(|a, b| {
        b.counts
            .requests
            .cmp(&a.counts.requests)
            .then_with(|| a.model.cmp(&b.model))
    });
}

/// Adds `other` to `into`: counters add, errors by kind name, the sketches merge exactly
/// (refused if malformed or of another configuration), `last_scored` is the latest. An
/// `into` with a default (empty, unconfigured) sketch takes `other`'s.
pub fn merge_counts(into: &mut Counts, other: &Counts) -> Result<(), SketchError> {
    let theirs = Sketch::from_wire(&other.latency)?;
    if into.latency == LatencySketch::default() {
        into.latency = theirs.to_wire();
    } else {
        let mut mine = Sketch::from_wire(&into.latency)?;
        mine.merge(&theirs)?;
        into.latency = mine.to_wire();
    }
    into.requests += other.requests;
    into.hits += other.hits;
    into.loads += other.loads;
    into.rows += other.rows;
    for (kind, n) in &other.errors {
        *into.errors.entry(kind.clone()).or_default() += n;
    }
    into.last_scored = match (into.last_scored, other.last_scored) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(())
}

/// Adds `other`'s version mix to `into`: the highest [`VERSIONS`] versions of both, each
/// with its requests from both, and everything older summed. Exact: a version among the
/// highest of the union is among the highest of each side that saw it.
pub fn merge_versions(into: &mut VersionMix, other: &VersionMix) {
    let mut all: BTreeMap<u64, u64> = BTreeMap::new();
    for (version, n) in into.versions.iter().chain(&other.versions) {
        *all.entry(*version).or_default() += n;
    }
    let mut older = into.older + other.older;
    let mut versions: Vec<(u64, u64)> = all.into_iter().rev().collect();
    for (_, n) in versions.drain(versions.len().min(VERSIONS)..) {
        older += n;
    }
    *into = VersionMix { versions, older };
}

/// Adds `other` (the same model, from another scorer) to `into`.
pub fn merge_model(into: &mut ModelLedger, other: &ModelLedger) -> Result<(), SketchError> {
    merge_counts(&mut into.counts, &other.counts)?;
    merge_versions(&mut into.versions, &other.versions);
    into.since = into.since.min(other.since);
    Ok(())
}

/// Fills `counts.quantiles` from its latency sketch (`None` when it is empty or does not
/// read as a sketch).
pub fn fill_quantiles(counts: &mut Counts) {
    counts.quantiles = Sketch::from_wire(&counts.latency).ok().and_then(|sketch| {
        Some(Quantiles {
            p50: sketch.quantile(0.5)?,
            p90: sketch.quantile(0.9)?,
            p99: sketch.quantile(0.99)?,
            max: sketch.max()?,
        })
    });
}

/// [`fill_quantiles`] for every model of `report` and its tail.
pub fn fill_report_quantiles(report: &mut LedgerReport) {
    for model in &mut report.models {
        fill_quantiles(&mut model.counts);
    }
    fill_quantiles(&mut report.tail);
}

/// The totals of a report: its models and its tail, summed.
pub fn report_totals(report: &LedgerReport) -> Result<Counts, SketchError> {
    let mut all = report.tail.clone();
    for model in &report.models {
        merge_counts(&mut all, &model.counts)?;
    }
    Ok(all)
}

/// The pool's ledger from the scorers' reports: each model's ledgers merged, the tails
/// summed, then the models beyond the `keep` with most requests added to the tail. The
/// totals (models plus tail) are exact and do not depend on the reports' order. A model
/// tracked by one scorer and not another has the other's requests in the tail.
pub fn merge_reports(reports: &[LedgerReport], keep: usize) -> Result<LedgerReport, SketchError> {
    let mut tail = Counts::default();
    let mut models: HashMap<&str, ModelLedger> = HashMap::new();
    for report in reports {
        merge_counts(&mut tail, &report.tail)?;
        for model in &report.models {
            match models.entry(&model.model) {
                MapEntry::Occupied(mut kept) => merge_model(kept.get_mut(), model)?,
                MapEntry::Vacant(slot) => {
                    let mut fresh = ModelLedger {
                        model: model.model.clone(),
                        since: model.since,
                        ..Default::default()
                    };
                    merge_model(&mut fresh, model)?;
                    slot.insert(fresh);
                }
            }
        }
    }
    let mut models: Vec<ModelLedger> = models.into_values().collect();
    sort_models(&mut models);
    for dropped in models.drain(models.len().min(keep)..) {
        merge_counts(&mut tail, &dropped.counts)?;
    }
    Ok(LedgerReport { models, tail })
}

/// One model's answers from several scorers combined: the tracked ledgers merged, the
/// count-min bounds summed (still never below the truth). `None` without answers.
pub fn merge_model_reports(reports: &[ModelReport]) -> Result<Option<ModelReport>, SketchError> {
    let Some(first) = reports.first() else {
        return Ok(None);
    };
    let mut merged = ModelReport {
        model: first.model.clone(),
        ..Default::default()
    };
    for report in reports {
        merged.requests_at_most += report.requests_at_most;
        merged.errors_at_most += report.errors_at_most;
        if let Some(tracked) = &report.tracked {
            match &mut merged.tracked {
                Some(into) => merge_model(into, tracked)?,
                None => {
                    let mut fresh = ModelLedger {
                        model: tracked.model.clone(),
                        since: tracked.since,
                        ..Default::default()
                    };
                    merge_model(&mut fresh, tracked)?;
                    merged.tracked = Some(fresh);
                }
            }
        }
    }
    Ok(Some(merged))
}

#[cfg(test)]
mod tests;
