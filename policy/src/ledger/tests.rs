use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Write;

use super::*;
use crate::trace::Rng;

const KINDS: [&str; 3] = ["not_found", "invalid_input", "inference"];
const T0: f64 = 1.8e9;

fn config(hot_models: usize) -> LedgerConfig {
    LedgerConfig {
        hot_models,
        error_kinds: KINDS.to_vec(),
        ..Default::default()
    }
}

struct Request {
    model: String,
    sample: Sample,
    now: f64,
}

/// `n` requests: the first `hot` are one per hot model, then three in four go to the hot
/// models and the rest to `cold` others. Latencies: hits around 5 ms, loads around 2 s.
fn traffic(seed: u64, n: usize, hot: usize, cold: usize) -> Vec<Request> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let model = if i < hot {
                format!("hot-{i}")
            } else if rng.below(4) != 0 {
                format!("hot-{}", rng.below(hot))
            } else {
                format!("cold-{}", rng.below(cold))
            };
            let miss = rng.below(50) == 0;
            let latency = if miss {
                2.0 * (0.3 * rng.normal()).exp()
            } else {
                0.005 * (0.8 * rng.normal()).exp()
            };
            let error = (rng.below(30) == 0).then(|| ErrorKind(rng.below(KINDS.len()) as u8));
            // Mostly the newest versions, a few old ones.
            let version = (rng.below(20) != 0).then(|| 7 - rng.below(7).min(rng.below(7)) as u64);
            Request {
                model,
                sample: Sample {
                    latency,
                    rows: 1 + rng.below(10) as u64,
                    lookup: Some(if miss { Lookup::Miss } else { Lookup::Hit }),
                    error,
                    version,
                },
                now: T0 + i as f64 * 1e-3,
            }
        })
        .collect()
}

fn feed(ledger: &mut Ledger, requests: &[&Request]) {
    for (i, r) in requests.iter().enumerate() {
        ledger.record(&r.model, &r.sample, r.now);
        if i % 500 == 499 {
            ledger.tick(r.now);
        }
    }
}

/// The exact counts of `requests`, computed the plain way.
fn exact(requests: &[&Request], config: SketchConfig) -> (Counts, VersionMix) {
    let mut latency = Sketch::new(config);
    let mut counts = Counts::default();
    let mut per_version: BTreeMap<u64, u64> = BTreeMap::new();
    for r in requests {
        let s = &r.sample;
        counts.requests += 1;
        counts.hits += u64::from(s.lookup == Some(Lookup::Hit));
        counts.loads += u64::from(s.lookup == Some(Lookup::Miss));
        counts.rows += s.rows;
        if let Some(ErrorKind(k)) = s.error {
            *counts
                .errors
                .entry(KINDS[usize::from(k)].into())
                .or_default() += 1;
        }
        latency.add(s.latency);
        counts.last_scored = Some(counts.last_scored.unwrap_or(f64::MIN).max(r.now));
        // A request without a version is not in the mix.
        if let Some(v) = s.version {
            *per_version.entry(v).or_default() += 1;
        }
    }
    counts.latency = latency.to_wire();
    let mut versions: Vec<(u64, u64)> = per_version.into_iter().rev().collect();
    let older = versions.split_off(VERSIONS.min(versions.len()));
    let mix = VersionMix {
        versions,
        older: older.iter().map(|(_, n)| n).sum(),
    };
    (counts, mix)
}

fn of_model<'a>(requests: &'a [Request], model: &str) -> Vec<&'a Request> {
    requests.iter().filter(|r| r.model == model).collect()
}

/// The models of a report and its tail summed.
fn total(report: &LedgerReport) -> Counts {
    let mut all = Counts::default();
    merge_counts(&mut all, &report.tail).unwrap();
    for m in &report.models {
        merge_counts(&mut all, &m.counts).unwrap();
    }
    all
}

#[test]
fn hot_models_are_counted_exactly_and_models_plus_tail_are_everything() {
    let requests = traffic(1, 20_000, 8, 2_000);
    let all: Vec<&Request> = requests.iter().collect();
    let mut ledger = Ledger::new(config(16), T0);
    feed(&mut ledger, &all);
    ledger.tick(T0 + 100.0);
    assert!(ledger.tracked() <= 32, "{}", ledger.tracked());
    let sketch = SketchConfig::default();
    for k in 0..8 {
        let model = format!("hot-{k}");
        let mine = of_model(&requests, &model);
        let (counts, mix) = exact(&mine, sketch);
        let tracked = ledger
            .model(&model)
            .tracked
            .expect("a hot model is tracked");
        assert_eq!(tracked.since, mine[0].now, "{model}");
        assert_eq!(tracked.counts, counts, "{model}");
        assert_eq!(tracked.versions, mix, "{model}");
    }
    // The cold models churned through the table and the tail: nothing was lost.
    let report = ledger.report();
    let (everything, _) = exact(&all, sketch);
    assert_eq!(total(&report), everything);
    assert_eq!(ledger.pool(), everything);
    // Most requests first.
    assert!(
        report
            .models
            .windows(2)
            .all(|w| w[0].counts.requests >= w[1].counts.requests)
    );
}

#[test]
fn count_min_bounds_never_undercount_and_rarely_exceed_their_stated_error() {
    let requests = traffic(2, 20_000, 8, 3_000);
    let all: Vec<&Request> = requests.iter().collect();
    let mut ledger = Ledger::new(
        LedgerConfig {
            tail_width: 1_024,
            ..config(16)
        },
        T0,
    );
    feed(&mut ledger, &all);
    let mut truth: HashMap<&str, (u64, u64)> = HashMap::new();
    for r in &requests {
        let t = truth.entry(&r.model).or_default();
        t.0 += 1;
        t.1 += u64::from(r.sample.error.is_some());
    }
    // e·R / width.
    let slack = (std::f64::consts::E * requests.len() as f64 / 1_024.0).ceil() as u64;
    let mut beyond = 0;
    for (model, (requests, errors)) in &truth {
        let report = ledger.model(model);
        assert!(report.requests_at_most >= *requests, "{model}");
        assert!(report.errors_at_most >= *errors, "{model}");
        beyond += usize::from(report.requests_at_most > requests + slack);
    }
    // The bound fails with probability at most e^-4 (1.8%) per model.
    assert!(
        beyond * 100 <= truth.len() * 2,
        "{beyond} of {} beyond",
        truth.len()
    );
    // A model never seen: bounded by the same error.
    assert!(ledger.model("never-seen").requests_at_most <= slack);
}

#[test]
fn memory_stays_flat_from_1000_to_100000_distinct_models() {
    /// `requests` requests, one in four to 50 steady models (latencies spread over two
    /// decades), the rest over `distinct` ids each with its own fixed latency, so the ids'
    /// sketches are the same size however often an id comes back: only the number of ids
    /// differs between the runs. Returns the largest `heap_bytes` seen at a tick.
    fn run(ledger: &mut Ledger, distinct: usize, requests: usize, seed: u64) -> usize {
        let mut rng = Rng::new(seed);
        let mut peak = 0;
        let mut model = String::new();
        for i in 0..requests {
            model.clear();
            let latency = if i % 4 == 0 {
                let _ = write!(model, "steady-{}", rng.below(50));
                0.01 * rng.normal().exp()
            } else {
                let id = i / 4 * 3 + i % 4 - 1;
                let _ = write!(model, "m-{:06}", id % distinct);
                0.001 * (1.0 + (id % distinct % 1000) as f64)
            };
            let sample = Sample {
                latency,
                rows: 1,
                lookup: Some(Lookup::Hit),
                ..Default::default()
            };
            ledger.record(&model, &sample, T0 + i as f64);
            if i % 1_000 == 999 {
                // The most between ticks (up to 2N models), then the least (N).
                for tick in [false, true] {
                    if tick {
                        ledger.tick(T0 + i as f64);
                    }
                    let bytes = ledger.heap_bytes();
                    assert!(bytes <= ledger.bound_bytes(), "{bytes}");
                    peak = peak.max(bytes);
                }
            }
        }
        peak
    }
    let mut ledger = Ledger::new(config(128), T0);
    let few = run(&mut ledger, 1_000, 40_000, 1);
    // Every one of the 100,000 ids at least once.
    let many = run(&mut ledger, 100_000, 140_000, 2);
    assert!(
        (many as f64 / few as f64 - 1.0).abs() <= 0.10,
        "{few} bytes with 1,000 models, {many} with 100,000"
    );
    // The table never holds more than twice the hot models.
    assert!(ledger.tracked() <= 256);
    // The documented bound of the default ledger (N = 1,024, 1,024 buckets): about 19 MiB.
    let bound = Ledger::new(LedgerConfig::default(), T0).bound_bytes();
    assert!((18 << 20..20 << 20).contains(&bound), "{bound}");
}

#[test]
fn the_version_mix_keeps_the_highest_versions_and_merges_exactly() {
    let mut rng = Rng::new(4);
    let versions: Vec<u64> = (0..3_000).map(|_| 1 + rng.below(9) as u64).collect();
    let mix_of = |vs: &[u64]| {
        let mut mix = Versions::default();
        for &v in vs {
            mix.add(v);
        }
        mix.to_wire()
    };
    let whole = mix_of(&versions);
    let count = |v: u64| versions.iter().filter(|&&x| x == v).count() as u64;
    assert_eq!(
        whole.versions,
        [(9, count(9)), (8, count(8)), (7, count(7)), (6, count(6))]
    );
    assert_eq!(whole.older, (1..=5).map(count).sum::<u64>());
    // Split anywhere and merged in either order: the same mix.
    for cut in [0, 1, 700, 2_999] {
        let (a, b) = versions.split_at(cut);
        for (first, second) in [(a, b), (b, a)] {
            let mut merged = mix_of(first);
            merge_bounded(&mut merged, &mix_of(second));
            assert_eq!(merged, whole, "cut {cut}");
        }
    }
    // A canary entering: version 10 pushes the lowest kept out into `older`.
    let mut mix = Versions::default();
    for v in [3, 4, 5, 6, 6, 10] {
        mix.add(v);
    }
    assert_eq!(
        mix.to_wire(),
        VersionMix {
            versions: vec![(10, 1), (6, 2), (5, 1), (4, 1)],
            older: 1
        }
    );
}

fn merge_bounded(into: &mut VersionMix, other: &VersionMix) {
    merge_versions(into, other);
    assert!(into.versions.len() <= VERSIONS);
}

#[test]
fn scorers_reports_merge_exactly_in_any_order_through_json() {
    let requests = traffic(5, 30_000, 6, 1_000);
    let all: Vec<&Request> = requests.iter().collect();
    // Three scorers, each request to one of them at random.
    let mut rng = Rng::new(6);
    let mut parts: Vec<Vec<&Request>> = vec![Vec::new(); 3];
    for r in &all {
        parts[rng.below(3)].push(r);
    }
    let reports: Vec<LedgerReport> = parts
        .iter()
        .map(|part| {
            let mut ledger = Ledger::new(config(12), T0);
            feed(&mut ledger, part);
            let json = serde_json::to_string(&ledger.report()).unwrap();
            serde_json::from_str(&json).unwrap()
        })
        .collect();
    let merged = merge_reports(&reports, 10).unwrap();
    assert_eq!(merged.models.len(), 10);
    for order in [[2, 0, 1], [1, 2, 0], [0, 2, 1]] {
        let shuffled: Vec<LedgerReport> = order.iter().map(|&i| reports[i].clone()).collect();
        assert_eq!(merge_reports(&shuffled, 10).unwrap(), merged);
    }
    // The pool: exact, bit for bit, and its quantiles within 1% of the exact ones.
    let (everything, _) = exact(&all, SketchConfig::default());
    let pool = total(&merged);
    assert_eq!(pool, everything);
    let sketch = Sketch::from_wire(&pool.latency).unwrap();
    let mut sorted: Vec<f64> = requests.iter().map(|r| r.sample.latency).collect();
    sorted.sort_by(f64::total_cmp);
    for q in [0.5, 0.9, 0.99, 0.999] {
        let want = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        let got = sketch.quantile(q).unwrap();
        assert!(
            (got - want).abs() / want <= 0.01 + 1e-9,
            "q={q}: {got} vs {want}"
        );
    }
    // A hot model, tracked from its first request on every scorer: exact across the pool.
    for k in 0..6 {
        let model = format!("hot-{k}");
        let (counts, mix) = exact(&of_model(&requests, &model), SketchConfig::default());
        let m = merged.models.iter().find(|m| m.model == model).unwrap();
        assert_eq!((&m.counts, &m.versions), (&counts, &mix), "{model}");
        // The per-model route, merged, agrees.
        let answers: Vec<ModelReport> = parts
            .iter()
            .map(|part| {
                let mut ledger = Ledger::new(config(12), T0);
                feed(&mut ledger, part);
                ledger.model(&model)
            })
            .collect();
        let one = merge_model_reports(&answers).unwrap().unwrap();
        assert_eq!(one.tracked.as_ref().map(|t| &t.counts), Some(&counts));
        assert!(one.requests_at_most >= counts.requests);
    }
}

#[test]
fn a_malformed_report_is_refused_by_the_merge() {
    let mut report = LedgerReport::default();
    report.tail.latency.alpha = 0.7;
    assert!(merge_reports(&[report], 10).is_err());
}

#[test]
fn error_kinds_are_named_once_and_unknown_ids_stay_out_of_the_table() {
    let mut ledger = Ledger::new(config(4), T0);
    let not_found = ledger.error_kind("not_found").unwrap();
    assert_eq!(ledger.error_kind("inference"), Some(ErrorKind(2)));
    assert_eq!(ledger.error_kind("nope"), None);
    let failed = Sample {
        error: Some(not_found),
        ..Default::default()
    };
    ledger.record("a", &failed, T0);
    // A kind past the configured ones is not counted as an error.
    ledger.record(
        "a",
        &Sample {
            error: Some(ErrorKind(7)),
            ..failed
        },
        T0 + 1.0,
    );
    let a = ledger.model("a");
    let tracked = a.tracked.unwrap();
    assert_eq!(
        tracked.counts.errors,
        BTreeMap::from([("not_found".into(), 1)])
    );
    assert_eq!(tracked.counts.requests, 2);
    assert_eq!(tracked.counts.last_scored, Some(T0 + 1.0));
    assert_eq!(a.errors_at_most, 1);
    // An id longer than any valid one is counted in the tail, never tracked.
    let long = "x".repeat(MAX_MODEL_ID_LEN + 1);
    ledger.record(&long, &failed, T0);
    assert!(ledger.model(&long).tracked.is_none());
    assert_eq!(ledger.report().tail.requests, 1);
}

// Allocations counted per thread, so tests running beside this one do not disturb it.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches
// only a thread-local `Cell` with a const initialiser, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn recording_a_tracked_model_does_not_allocate() {
    let mut ledger = Ledger::new(config(8), T0);
    let sample = |latency: f64, version: u64| Sample {
        latency,
        rows: 3,
        lookup: Some(Lookup::Hit),
        error: None,
        version: Some(version),
    };
    // The model's first requests span its latency range (the sketch's run grows to it).
    for latency in [0.001, 5.0, 0.0] {
        ledger.record("hot", &sample(latency, 1), T0);
    }
    let kind = ledger.error_kind("inference");
    let before = ALLOCATIONS.with(Cell::get);
    for i in 0..10_000 {
        let latency = 0.001 + (i % 500) as f64 * 0.01;
        let s = Sample {
            error: kind.filter(|_| i % 7 == 0),
            ..sample(latency, 1 + i % 6)
        };
        ledger.record("hot", &s, T0 + f64::from(i as u32));
    }
    let after = ALLOCATIONS.with(Cell::get);
    assert_eq!(after - before, 0);
    assert_eq!(ledger.model("hot").tracked.unwrap().counts.requests, 10_003);
}
