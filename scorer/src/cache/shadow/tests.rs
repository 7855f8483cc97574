//! The shadow's rules alone (sampling, counts, comparison, the queue) and through a cache
//! with the native engine (a job compared, a candidate that finds no room skipped while
//! the live model stays).

use std::sync::atomic::Ordering;

use super::super::testing::{MemoryStore, Store, demo, id, local_cache, native_cache};
use super::*;
use crate::tensor::DataType;

fn spec(version: u64, percent: f64, since_ms: u64) -> ShadowSpec {
    ShadowSpec {
        version,
        percent,
        tolerance: 0.01,
        rule: None,
        since_ms,
    }
}

fn tensor(name: &str, shape: &[i64], data: TensorData) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        datatype: data.datatype(),
        shape: shape.to_vec(),
        data,
    }
}

fn shadows(queue_bytes: u64) -> Shadows {
    Shadows::new(
        ShadowConfig {
            queue_bytes,
            concurrency: NonZeroUsize::MIN,
        },
        Arc::new(Metrics::new(0)),
    )
}

fn ticket(version: u64, since_ms: u64) -> Ticket {
    Ticket {
        version,
        since_ms,
        tolerance: 0.01,
    }
}

fn compared(agreed: bool) -> Outcome {
    Outcome::Compared {
        comparison: Comparison {
            agreed,
            elements: 2,
            sum_abs_diff: 0.5,
            max_abs_diff: 0.4,
            ..Comparison::default()
        },
        micros: 30,
    }
}

/// The share holds to within one request over any run, from the first request on, and
/// only requests answered by the live version are sampled.
#[test]
fn the_share_is_deterministic_and_holds_to_within_one_request() {
    for percent in [0.5, 12.5, 20.0, 33.0, 50.0, 99.0, 100.0] {
        let mut sampler = Sampler::default();
        let mut sampled = 0u64;
        for n in 1..=1_000u64 {
            sampled += u64::from(sampler.pick(percent));
            let want = n as f64 * percent / 100.0;
            assert!((sampled as f64 - want).abs() <= 1.0, "{percent}% after {n}");
        }
    }
    let s = shadows(1 << 20);
    let m = id("m");
    assert!(!s.any());
    s.follow(&m, Some(&spec(1, 20.0, 7)));
    assert!(s.any());
    let picked = (0..100)
        .filter(|_| s.pick(&m, 2, || true).is_some())
        .count();
    assert_eq!(picked, 20);
    // The candidate itself answering (it went live here) samples nothing.
    assert!((0..10).all(|_| s.pick(&m, 1, || true).is_none()));
    assert!(s.pick(&id("other"), 2, || true).is_none());
    // Nor does a version that is not the live one (the canary's arm, a fall-back).
    assert!((0..10).all(|_| s.pick(&m, 3, || false).is_none()));
    let next = (0..5).find_map(|_| s.pick(&m, 2, || true));
    assert_eq!(next, Some(ticket(1, 7)));
}

/// Counts are per (model, version, since_ms): the same shadow keeps them (its share may
/// change), a new one starts from zero, a dropped one forgets them, and counts of a job
/// for a shadow since replaced are not added to the new one's.
#[test]
fn a_new_since_ms_starts_the_counts_from_zero() {
    let s = shadows(1 << 20);
    let m = id("m");
    s.follow(&m, Some(&spec(1, 20.0, 7)));
    s.record(&m, &ticket(1, 7), &compared(true), 10);
    s.record(&m, &ticket(1, 7), &compared(false), 10);
    s.record(&m, &ticket(1, 7), &Outcome::Error, 0);
    s.record(&m, &ticket(1, 7), &Outcome::Skipped, 0);
    let counts = s.counts(&m, &spec(1, 20.0, 7));
    assert_eq!(
        (
            counts.compared,
            counts.agreed,
            counts.errors,
            counts.skipped
        ),
        (2, 1, 1, 1)
    );
    assert_eq!((counts.elements, counts.max_abs_diff), (4, 0.4));
    assert_eq!((counts.live_micros, counts.shadow_micros), (20, 60));
    assert_eq!(
        s.metrics.shadow_runs.each_ref().map(|c| c.get()),
        [1, 1, 1, 1]
    );

    s.follow(&m, Some(&spec(1, 50.0, 7)));
    assert_eq!(s.counts(&m, &spec(1, 50.0, 7)).compared, 2, "same shadow");
    s.follow(&m, Some(&spec(1, 50.0, 8)));
    assert_eq!(s.counts(&m, &spec(1, 50.0, 8)), ShadowCounts::default());
    // A job sampled under the old shadow counts nowhere.
    s.record(&m, &ticket(1, 7), &compared(true), 10);
    assert_eq!(s.counts(&m, &spec(1, 50.0, 8)).compared, 0);
    s.follow(&m, Some(&spec(3, 50.0, 8)));
    assert_eq!(s.counts(&m, &spec(3, 50.0, 8)).compared, 0);
    s.follow(&m, None);
    assert!(!s.any());
    assert!(s.followed().is_empty());
}

/// At most `MAX_SHADOWS` models are followed; a model already followed can change.
#[test]
fn the_models_counted_are_bounded() {
    let s = shadows(1 << 20);
    for i in 0..MAX_SHADOWS + 5 {
        s.follow(&id(&format!("m{i}")), Some(&spec(1, 10.0, 1)));
    }
    assert_eq!(s.followed().len(), MAX_SHADOWS);
    s.follow(&id("m0"), Some(&spec(2, 10.0, 2)));
    assert_eq!(s.followed().len(), MAX_SHADOWS);
    s.follow(&id("m0"), None);
    s.follow(&id("late"), Some(&spec(1, 10.0, 1)));
    assert!(s.followed().iter().any(|(m, _, _)| m.as_str() == "late"));
}

/// A job that does not fit under `shadow.queue_bytes` is dropped and counted skipped;
/// a finished job gives its bytes back.
#[test]
fn a_full_queue_skips_jobs() {
    let s = shadows(1_000);
    let m = id("m");
    s.follow(&m, Some(&spec(1, 100.0, 7)));
    let job = |bytes| Job {
        id: m.clone(),
        ticket: ticket(1, 7),
        inputs: Vec::new(),
        live: Vec::new(),
        live_micros: 1,
        bytes,
    };
    assert!(s.offer(job(600)));
    assert!(s.fits(400) && !s.fits(401));
    assert!(!s.offer(job(600)), "600 more would exceed 1000");
    assert!(s.offer(job(400)));
    assert!(!s.fits(1));
    assert_eq!(s.counts(&m, &spec(1, 100.0, 7)).skipped, 1);
    assert_eq!(s.metrics.shadow_runs[3].get(), 1);
    s.release(600);
    assert!(s.offer(job(500)));
}

/// Labels must be equal element by element; floats agree within the tolerance (their
/// differences counted); a missing output, another shape or a label against a score
/// disagree.
#[test]
fn labels_must_be_equal_and_floats_within_the_tolerance() {
    let live = vec![
        tensor("label", &[2], TensorData::Int64(vec![1, 0])),
        tensor("score", &[2, 1], TensorData::Fp32(vec![0.5, 0.25])),
    ];
    let same = compare(&live, &live, 0.0);
    assert!(same.agreed && !same.label_flip);
    assert_eq!((same.elements, same.max_abs_diff), (2, 0.0));

    let close = vec![
        tensor("label", &[2], TensorData::Int64(vec![1, 0])),
        tensor("score", &[2, 1], TensorData::Fp64(vec![0.505, 0.25])),
    ];
    let c = compare(&live, &close, 0.01);
    assert!(c.agreed, "{c:?}");
    assert!((c.max_abs_diff - 0.005).abs() < 1e-6 && (c.sum_abs_diff - 0.005).abs() < 1e-6);
    let c = compare(&live, &close, 0.001);
    assert!(!c.agreed && !c.label_flip, "beyond the tolerance: {c:?}");

    let flipped = vec![
        tensor("label", &[2], TensorData::Int32(vec![1, 1])),
        tensor("score", &[2, 1], TensorData::Fp32(vec![0.5, 0.25])),
    ];
    let c = compare(&live, &flipped, 1.0);
    assert!(!c.agreed && c.label_flip, "{c:?}");
    let strings = |a: &str| vec![tensor("label", &[1], TensorData::Bytes(vec![a.into()]))];
    assert!(compare(&strings("yes"), &strings("yes"), 0.0).agreed);
    assert!(compare(&strings("yes"), &strings("no"), 0.0).label_flip);

    // Missing, reshaped, or a label against a score.
    assert!(!compare(&live, &live[..1], 1.0).agreed);
    let reshaped = vec![
        live[0].clone(),
        tensor("score", &[1, 2], TensorData::Fp32(vec![0.5, 0.25])),
    ];
    assert!(!compare(&live, &reshaped, 1.0).agreed);
    let kinds = vec![
        tensor("label", &[2], TensorData::Fp32(vec![1.0, 0.0])),
        live[1].clone(),
    ];
    let c = compare(&live, &kinds, 1.0);
    assert!(!c.agreed && !c.label_flip, "{c:?}");
    // NaN agrees only with NaN, and is not a difference.
    let nan = |x: f32| vec![tensor("s", &[1], TensorData::Fp32(vec![x]))];
    let c = compare(&nan(f32::NAN), &nan(f32::NAN), 0.0);
    assert!(c.agreed && c.elements == 0);
    assert!(!compare(&nan(f32::NAN), &nan(1.0), 0.0).agreed);
    let c = compare(&nan(f32::INFINITY), &nan(1.0), f64::MAX);
    assert!(!c.agreed && c.elements == 0 && c.sum_abs_diff == 0.0);
    assert!(compare(&nan(f32::INFINITY), &nan(f32::INFINITY), 0.0).agreed);
}

/// `linear-small`'s input for one row.
fn row(model: &LoadedModel) -> Vec<NamedTensor> {
    vec![NamedTensor {
        name: model.inputs[0].name.clone(),
        datatype: DataType::Fp32,
        shape: vec![1, 10],
        data: TensorData::Fp32(vec![0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0]),
    }]
}

/// One inference request of `m` naming `named`, its live run, and its shadow job run
/// here (no worker tasks): what `infer::run` and a worker do.
async fn request(cache: &ModelCache, named: Option<u64>) -> bool {
    let (model, _) = cache.get_for_inference(&id("m"), named).await.unwrap();
    let inputs = row(&model);
    let Some(sampled) = cache.shadow_before(&id("m"), named, model.version, &inputs) else {
        return false;
    };
    let all: Vec<usize> = (0..model.outputs.len()).collect();
    let live = model.infer(inputs, &all).unwrap();
    assert!(cache.shadow_after(&id("m"), sampled, &live, Duration::from_micros(5)));
    let job = cache.shadows.receiver.lock().await.recv().await.unwrap();
    cache.run_shadow(job, Duration::ZERO).await;
    true
}

/// A shadow set through the cache samples its share of the requests naming no version,
/// runs the candidate (loaded as a shadow version) and counts the comparison; a broken
/// candidate counts errors; promotion pins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_compares_the_candidate_and_promotion_pins_it() {
    let store = Store::new();
    store.put("m", 1, b"not a model");
    store.put("m", 2, &demo("linear-small"));
    store.put("m", 3, &demo("linear-small"));
    let cache = &local_cache(&store, |_| {});
    let m = id("m");
    assert!(!request(cache, None).await, "no shadow: nothing sampled");
    assert!(matches!(
        cache.shadow(&m).await,
        Err(ScorerError::NoShadow(_))
    ));
    let refused = cache.set_shadow(&m, spec(3, 50.0, 0)).await.unwrap_err();
    assert_eq!(
        refused.status().as_u16(),
        409,
        "the live version: {refused}"
    );
    let refused = cache.set_shadow(&m, spec(9, 50.0, 0)).await.unwrap_err();
    assert_eq!(refused.status().as_u16(), 404, "{refused}");
    let refused = cache.set_shadow(&m, spec(2, 0.0, 0)).await.unwrap_err();
    assert_eq!(refused.status().as_u16(), 400, "{refused}");

    let set = cache.set_shadow(&m, spec(2, 50.0, 0)).await.unwrap();
    assert!(set.spec.since_ms > 1_700_000_000_000, "{set:?}");
    assert_eq!((set.live, set.resident), (Some(3), false));
    let mut sampled = 0;
    for _ in 0..10 {
        sampled += u64::from(request(cache, None).await);
    }
    assert_eq!(sampled, 5);
    // Requests naming a version (even the live one) are never sampled.
    for _ in 0..4 {
        assert!(!request(cache, Some(3)).await);
    }
    let view = cache.shadow(&m).await.unwrap();
    assert_eq!((view.counts.compared, view.counts.agreed), (5, 5));
    assert_eq!((view.counts.errors, view.counts.skipped), (0, 0));
    assert!(view.counts.elements > 0 && view.counts.max_abs_diff == 0.0);
    assert!(view.resident, "the candidate is in memory");
    assert!(cache.state().is_shadow(&ModelKey {
        id: m.clone(),
        version: 2
    }));
    assert_eq!(cache.metrics.shadow_runs[0].get(), 5);
    let listed = cache.shadow_views(None);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].counts, view.counts);
    assert!(cache.shadow_views(Some(&["other-".to_string()])).is_empty());

    // A new shadow starts from zero; a candidate that fails to load counts errors.
    let set = cache.set_shadow(&m, spec(1, 100.0, 0)).await.unwrap();
    assert!(set.spec.since_ms > view.spec.since_ms);
    assert_eq!(set.counts, ShadowCounts::default());
    assert!(request(cache, None).await && request(cache, None).await);
    let broken = cache.shadow(&m).await.unwrap();
    assert_eq!((broken.counts.errors, broken.counts.compared), (2, 0));

    // Promotion: only the shadow set at `since_ms`; it pins the candidate.
    cache.set_shadow(&m, spec(2, 100.0, 0)).await.unwrap();
    request(cache, None).await;
    let since = cache.shadow(&m).await.unwrap().spec.since_ms;
    let stale = cache.promote_shadow(&m, Some(since - 1)).await.unwrap_err();
    assert_eq!(stale.status().as_u16(), 409, "{stale}");
    let loads = cache.metrics.loads.get();
    let (promoted, refresh) = cache.promote_shadow(&m, Some(since)).await.unwrap();
    assert_eq!((promoted.version, refresh.live), (2, 2));
    assert_eq!(cache.metrics.loads.get(), loads, "promoted from memory");
    assert!(!cache.state().is_shadow(&ModelKey {
        id: m.clone(),
        version: 2
    }));
    assert!(!store.0.join("m/shadow.json").exists());
    let again = cache.promote_shadow(&m, Some(since)).await.unwrap_err();
    assert_eq!(again.status().as_u16(), 404, "{again}");
    assert!(cache.shadow_views(None).is_empty());

    // Dropped: answered as it was, then none.
    cache.set_shadow(&m, spec(3, 10.0, 0)).await.unwrap();
    assert_eq!(
        cache.drop_shadow(&m).await.unwrap().map(|s| s.version),
        Some(3)
    );
    assert!(matches!(
        cache.drop_shadow(&m).await,
        Err(ScorerError::NoShadow(_))
    ));
}

/// A shadow file that is not valid fails the model's look-ups until the shadow is
/// dropped or set, which replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_file_that_is_not_valid_is_repaired_by_drop_or_set() {
    let store = Store::new();
    store.put("m", 1, &demo("linear-small"));
    store.put("m", 2, &demo("linear-small"));
    let file = store.0.join("m/shadow.json");
    let cache = &local_cache(&store, |_| {});
    let m = id("m");
    std::fs::write(&file, r#"{"version": 1, "percent": 0}"#).unwrap();
    let refused = cache.get_for_inference(&m, None).await.unwrap_err();
    assert_eq!(refused.status().as_u16(), 503, "{refused}");
    assert!(refused.to_string().contains("shadow.json"), "{refused}");
    assert!(cache.drop_shadow(&m).await.unwrap().is_none());
    assert!(!file.exists());
    cache.get_for_inference(&m, None).await.unwrap();
    std::fs::write(&file, "{not json").unwrap();
    let set = cache.set_shadow(&m, spec(1, 20.0, 0)).await.unwrap();
    assert_eq!(set.spec.version, 1);
    // Written by hand (another scorer): followed after a refresh.
    std::fs::write(&file, r#"{"version": 1, "percent": 100, "since_ms": 5}"#).unwrap();
    cache.refresh(&m).await.unwrap();
    assert_eq!(cache.shadow_views(None)[0].spec.since_ms, 5);
    assert!(request(cache, None).await);
}

/// A candidate that could be in memory only by evicting the live model is skipped (and
/// not tried again for a while): the live model stays, nothing is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_load_never_evicts_a_live_model() {
    let store = MemoryStore::new();
    store.put("m", 1, &demo("linear-small"));
    store.put("m", 2, &demo("linear-small"));
    let weight = {
        let probe = native_cache(store.clone(), |_| {});
        probe.get(&id("m"), None).await.unwrap().0.weight
    };
    // Room for the live version alone (and for its load, which holds the file).
    let file = demo("linear-small").len() as u64;
    let cache = &native_cache(store.clone(), |config| {
        config.cache.budget = manymodels_config::ByteSize(weight.max(file));
    });
    let m = id("m");
    cache.get(&m, None).await.unwrap();
    cache.set_shadow(&m, spec(1, 100.0, 0)).await.unwrap();
    let reads = store.reads.load(Ordering::SeqCst);
    assert!(request(cache, None).await);
    assert!(request(cache, None).await);
    let view = cache.shadow(&m).await.unwrap();
    assert_eq!((view.counts.skipped, view.counts.compared), (2, 0));
    assert!(!view.resident);
    assert_eq!(cache.metrics.shadow_runs[3].get(), 2);
    let resident: Vec<u64> = cache.state().models().map(|(k, _)| k.version).collect();
    assert_eq!(resident, vec![2], "the live version stays");
    // Its file's room was asked for before reading it: never read, and not tried again
    // for a while.
    assert_eq!(store.reads.load(Ordering::SeqCst), reads);
    assert_eq!(cache.state().reserved(), 0);
    assert_eq!(
        cache
            .metrics
            .evictions
            .with_label_values(&["capacity"])
            .get(),
        0
    );
}

/// The file's size, from the store's tag when it says it.
#[test]
fn the_files_size_comes_from_the_tag() {
    assert_eq!(tag_size("local:1234:1700000000.000000001:42"), Some(1234));
    assert_eq!(tag_size("azure:99:\"0x8D\""), Some(99));
    assert_eq!(tag_size("memory:abcdef"), None);
    assert_eq!(tag_size("local:x:1"), None);
}

/// A sampled request whose inputs alone do not fit the queue's room is counted skipped
/// and its inputs are not cloned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_that_cannot_fit_the_queue_are_not_cloned() {
    let store = Store::new();
    store.put("m", 1, &demo("linear-small"));
    store.put("m", 2, &demo("linear-small"));
    let cache = &local_cache(&store, |config| config.shadow.queue_bytes = 300);
    let m = id("m");
    cache.set_shadow(&m, spec(1, 100.0, 0)).await.unwrap();
    let (model, _) = cache.get_for_inference(&m, None).await.unwrap();
    let inputs = row(&model);
    assert!(JOB_OVERHEAD + crate::capture::tensors_bytes(&inputs) > 300);
    assert!(cache.shadow_before(&m, None, 2, &inputs).is_none());
    let view = cache.shadow(&m).await.unwrap();
    assert_eq!((view.counts.skipped, view.counts.compared), (1, 0));
    assert_eq!(cache.shadows.pending.load(Ordering::SeqCst), 0);
}

/// A job that panics is caught: counted an error, its queue bytes and its candidate's
/// loading mark given back, and the next job runs and compares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_is_contained_and_counted_an_error() {
    let store = Store::new();
    store.put("m", 1, &demo("linear-small"));
    store.put("m", 2, &demo("linear-small"));
    let cache = &local_cache(&store, |_| {});
    let m = id("m");
    cache.set_shadow(&m, spec(1, 100.0, 0)).await.unwrap();
    cache.shadows.panic_next_load.store(true, Ordering::SeqCst);
    assert!(request(cache, None).await);
    let view = cache.shadow(&m).await.unwrap();
    assert_eq!((view.counts.errors, view.counts.compared), (1, 0));
    assert_eq!(cache.shadows.pending.load(Ordering::SeqCst), 0);
    assert!(cache.shadows.loading().is_empty(), "no loading mark left");
    assert_eq!(cache.metrics.shadow_runs[2].get(), 1);
    assert!(request(cache, None).await);
    let view = cache.shadow(&m).await.unwrap();
    assert_eq!((view.counts.errors, view.counts.compared), (1, 1));
}

/// Setting or dropping a shadow waits for a promotion running here (the same lock), and
/// a promotion deletes only the shadow it promoted, read again just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_changes_wait_for_a_promotion_and_keep_a_newer_shadow() {
    let store = Store::new();
    store.put("m", 1, &demo("linear-small"));
    store.put("m", 2, &demo("linear-small"));
    store.put("m", 3, &demo("linear-small"));
    let cache = local_cache(&store, |_| {});
    let m = id("m");
    let promoting = cache.shadows.changes.lock().await;
    let setting = {
        let (cache, m) = (cache.clone(), m.clone());
        tokio::spawn(async move { cache.set_shadow(&m, spec(1, 50.0, 0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!setting.is_finished(), "set waits for the promotion");
    drop(promoting);
    let set = setting.await.unwrap().unwrap();
    let promoting = cache.shadows.changes.lock().await;
    let dropping = {
        let (cache, m) = (cache.clone(), m.clone());
        tokio::spawn(async move { cache.drop_shadow(&m).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!dropping.is_finished(), "drop waits for the promotion");
    drop(promoting);
    assert!(dropping.await.unwrap().unwrap().is_some());

    // Another scorer sets a shadow between the promotion's read and its delete: kept.
    let file = store.0.join("m/shadow.json");
    std::fs::write(&file, r#"{"version": 2, "percent": 10, "since_ms": 99}"#).unwrap();
    assert!(!cache.drop_promoted(&m, &set.spec).await.unwrap());
    assert!(file.exists());
    let same = ShadowSpec {
        since_ms: 99,
        ..spec(2, 10.0, 99)
    };
    assert!(cache.drop_promoted(&m, &same).await.unwrap());
    assert!(!file.exists());
    assert!(!cache.drop_promoted(&m, &same).await.unwrap());
}
