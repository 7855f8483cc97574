//! The scorer's memory contract on a real process: the byte budget holds while three
//! budgets of models are scored (ONNX Runtime and native), a burst of concurrent big loads
//! stays within the documented peak, and inside a memory cgroup with the chart's limit the
//! kernel kills nothing.

use std::time::Duration;

use manymodels_models::{GeneratedModel, Spec};
use manymodels_tests::{
    ScorerProcess, TOLERANCE, TempDir, assert_predictions, generated_rows, post_json, rows_body,
    write_model,
};
use serde_json::json;

/// Scores three budgets' worth of ~300 KB forests round-robin: the charged bytes never
/// exceed the budget by more than one model, models are evicted, every answer is still
/// right, and unloading everything gives the memory back to the OS. With ONNX Runtime
/// sessions (the budget is then about 25 MB).
#[tokio::test]
async fn byte_budget_holds_while_three_budgets_of_models_are_scored() {
    byte_budget_holds("engine.native=off", 0).await;
}

/// The same with native models, which weigh a tenth as much, so the budget is about
/// 1.5 MB and the process's fixed load overhead (allocator arenas of the load threads,
/// freed load buffers below glibc's trim granularity; README, "How much memory a model is
/// charged") dominates the allowance: 16 MiB.
#[tokio::test]
async fn byte_budget_holds_with_native_models() {
    byte_budget_holds("engine.native=auto", 16 << 20).await;
}

/// Builds `count` generated models (`spec(i)`) into `store` as version 1 of `id(i)`.
fn forests(
    store: &std::path::Path,
    count: u64,
    id: impl Fn(u64) -> String,
    spec: impl Fn(u64) -> Spec,
) -> Vec<GeneratedModel> {
    (0..count)
        .map(|i| {
            let model = manymodels_models::build(&spec(i));
            write_model(store, &id(i), 1, &model.bytes).unwrap();
            model
        })
        .collect()
}

async fn byte_budget_holds(engine: &str, fixed_overhead: u64) {
    let store = TempDir::new("budget");
    let models = forests(
        store.path(),
        24,
        |i| format!("forest-{i:02}"),
        |i| Spec::Forest {
            features: 8,
            trees: 40,
            depth: 8,
            seed: 1000 + i,
        },
    );
    // Measure what the models really weigh in one scorer, then give another a third of it.
    let measure = ScorerProcess::local(store.path(), &["cache.budget=1GiB", engine]);
    let client = reqwest::Client::new();
    let mut weights = Vec::new();
    let mut previous = 0.0;
    for i in 0..models.len() {
        let (status, _) = post_json(
            &client,
            &format!("{}/v2/repository/models/forest-{i:02}/load", measure.url),
            &json!({}),
        )
        .await;
        assert_eq!(status, 200);
        let resident = measure.metrics().await.get("mm_scorer_resident_bytes");
        weights.push((resident - previous) as u64);
        previous = resident;
    }
    drop(measure);
    let total_weight: u64 = weights.iter().sum();
    let largest: u64 = *weights.iter().max().unwrap();
    let budget = total_weight / 3;
    let scorer = ScorerProcess::local(store.path(), &[&format!("cache.budget={budget}"), engine]);
    let rss_before = scorer.rss_bytes();
    let mut peak_resident = 0.0f64;
    let mut peak_rss = 0u64;
    for round in 0..3 {
        for (i, model) in models.iter().enumerate() {
            let rows = generated_rows(8, 2, (round * 100 + i) as u64);
            let url = format!("{}/v2/models/forest-{i:02}/infer", scorer.url);
            let (status, body) = post_json(&client, &url, &rows_body(&rows)).await;
            assert_eq!(status, 200, "{body}");
            let want = model.predict_batch(&rows.concat());
            assert_predictions(&format!("forest-{i}"), &body, &want, TOLERANCE);
            let resident = scorer.metrics().await.get("mm_scorer_resident_bytes");
            peak_resident = peak_resident.max(resident);
            peak_rss = peak_rss.max(scorer.rss_bytes());
            assert!(
                resident <= (budget + largest) as f64,
                "resident {resident} over budget {budget} + one model {largest}"
            );
        }
    }
    let metrics = scorer.metrics().await;
    // Either way a session is dropped: displaced by a model of higher priority, or
    // served and not kept.
    let dropped = metrics.get("mm_scorer_cache_evictions_total{reason=\"capacity\"}")
        + metrics.get("mm_scorer_cache_evictions_total{reason=\"not_admitted\"}");
    assert!(dropped >= 24.0, "expected evictions, got {dropped}");
    assert!(
        peak_resident > 0.5 * budget as f64,
        "cache never filled: {peak_resident}"
    );
    let rss_full = scorer.rss_bytes();
    for i in 0..models.len() {
        let url = format!("{}/v2/repository/models/forest-{i:02}/unload", scorer.url);
        let (status, _) = post_json(&client, &url, &json!({})).await;
        assert_eq!(status, 200);
    }
    // The heap trim after evictions runs on a blocking thread; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = scorer.rss_bytes();
    eprintln!(
        "rss before {rss_before}, peak {peak_rss}, full {rss_full}, after unloading {rss_after}, budget {budget}"
    );
    assert!(
        rss_full <= rss_before + budget * 3 / 2 + 2 * largest + fixed_overhead,
        "RSS should follow the budget: {rss_before} -> {rss_full} with budget {budget}"
    );
    assert!(
        rss_full > rss_before + budget / 4,
        "loading a budget of models should cost memory: {rss_before} -> {rss_full}"
    );
    // Half of what the models cost beyond the fixed overhead comes back.
    let growth = (rss_full - rss_before).saturating_sub(fixed_overhead);
    assert!(
        rss_after < rss_full - growth / 2,
        "unloading should give back at least half the memory: {rss_before} -> {rss_full} -> {rss_after}"
    );
}

/// Eight ~10 MB generated forests (`big-0` ... `big-7`), seeds from `seed`.
fn big_forests(store: &std::path::Path, seed: u64) -> Vec<GeneratedModel> {
    forests(
        store,
        8,
        |i| format!("big-{i}"),
        |i| Spec::Forest {
            features: 16,
            trees: 100,
            depth: 11,
            seed: seed + i,
        },
    )
}

/// Sixteen concurrent one-row requests of round `round`, request `k` for model
/// `pick(k)`: every answer must be 200 and equal the generator's prediction.
async fn burst_round(
    client: &reqwest::Client,
    scorer: &ScorerProcess,
    models: &[GeneratedModel],
    round: usize,
    pick: impl Fn(usize) -> usize,
    context: &str,
) {
    let requests = (0..16).map(|k| {
        let i = pick(k) % models.len();
        let rows = generated_rows(16, 1, (round * 16 + k) as u64);
        let url = format!("{}/v2/models/big-{i}/infer", scorer.url);
        let client = client.clone();
        async move {
            let (status, body) = post_json(&client, &url, &rows_body(&rows)).await;
            (i, rows, status, body)
        }
    });
    for (i, rows, status, body) in futures::future::join_all(requests).await {
        assert_eq!(status, 200, "{context} round {round} big-{i}: {body}");
        let want = &models[i].predict_batch(&rows.concat())[..1];
        assert_predictions(
            &format!("{context} round {round} big-{i}"),
            &body,
            want,
            TOLERANCE,
        );
    }
}

/// Memory is a contract during loads too: eight ~10 MB forests, requested sixteen at a
/// time for three rounds against a budget that holds two or three of them, so big loads
/// run concurrently and keep evicting. The scorer's own peak RSS (`VmHWM`, the kernel's
/// high-water mark) stays within its idle RSS plus `cache.budget × 1.1` plus the
/// documented fixed overhead (`BURST_OVERHEAD`: the 32 MiB load allowance and 32 MiB of
/// allocator slack; README, "Memory"), with both engines.
#[tokio::test]
async fn a_burst_of_concurrent_big_loads_stays_within_the_memory_bound() {
    const MIB: u64 = 1 << 20;
    // The load allowance (32 MiB, `cache::resident::LOAD_ALLOWANCE`) and 32 MiB of
    // allocator slack (README, "Memory").
    const BURST_OVERHEAD: u64 = 64 * MIB;
    let store = TempDir::new("burst");
    let models = big_forests(store.path(), 7000);
    let file = models.iter().map(|m| m.bytes.len() as u64).max().unwrap();
    let client = reqwest::Client::new();
    for (engine, budget) in [
        ("engine.native=off", 32 * file),
        ("engine.native=auto", file),
    ] {
        let scorer = ScorerProcess::local(
            store.path(),
            &[
                &format!("cache.budget={budget}"),
                engine,
                "cache.max_concurrent_loads=4",
            ],
        );
        let idle = scorer.rss_bytes();
        for round in 0..3 {
            burst_round(&client, &scorer, &models, round, |k| k + round, engine).await;
        }
        let metrics = scorer.metrics().await;
        let evicted = metrics.get("mm_scorer_cache_evictions_total{reason=\"capacity\"}")
            + metrics.get("mm_scorer_cache_evictions_total{reason=\"not_admitted\"}");
        let peak = scorer.peak_rss_bytes();
        let bound = idle + budget * 11 / 10 + BURST_OVERHEAD;
        eprintln!(
            "{engine}: file {file}, budget {budget}, idle RSS {idle}, peak RSS {peak} (bound {bound}, {:.2} budgets over idle), {evicted} evictions, {} loads",
            (peak - idle) as f64 / budget as f64,
            metrics.get("mm_scorer_model_loads_total")
        );
        assert!(
            evicted >= 4.0,
            "{engine}: the budget never bound ({evicted} evictions)"
        );
        assert!(
            peak <= bound,
            "{engine}: peak RSS {peak} over idle {idle} + budget {budget} x 1.1 + {BURST_OVERHEAD}"
        );
    }
}

/// The memory contract as Kubernetes enforces it: a scorer inside a memory cgroup whose
/// limit is the chart's (`scorer.fixedMemoryMiB` 192 MiB + `cache.budget` × 1.1), with
/// native images on, through rounds of sixteen concurrent requests for eight ~10 MB
/// forests against a budget that holds about half of them. The store's files and the
/// images are read through the page cache and the images written through it, all charged
/// to the cgroup as on AKS. The kernel kills nothing, every answer is right, the process's
/// peak RSS (anonymous and mapped file memory, `VmHWM`) stays within the documented bound
/// (idle + budget × 1.1 + 64 MiB), and so does the cgroup's anonymous memory; page cache
/// fills the rest of the limit and is reclaimed, never a reason to kill.
#[tokio::test]
async fn a_scorer_in_a_memory_cgroup_with_the_charts_limit_is_never_oom_killed() {
    use manymodels_tests::cgroup::MemoryCgroup;
    const MIB: u64 = 1 << 20;
    let store = TempDir::new("cgroup");
    let images = TempDir::new("cgroup-images");
    let models = big_forests(store.path(), 9000);
    let file = models.iter().map(|m| m.bytes.len() as u64).max().unwrap();
    // The files were written by this process, so their page cache is charged to its
    // cgroup: drop it, so the scorer's reads are charged to the scorer's, as in a pod
    // that reads its store from a volume.
    // (Written pages are dirty until written back; only clean pages can be dropped.)
    assert!(
        std::process::Command::new("sync")
            .status()
            .expect("sync runs")
            .success()
    );
    for i in 0..models.len() {
        let path = store.path().join(format!("big-{i}/1/model.onnx"));
        let dropped = std::process::Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .expect("dd runs");
        assert!(dropped.success());
    }
    // Native forests hold about a third of their file: a budget of one file holds two or
    // three of the eight.
    let budget = file;
    let limit = 192 * MIB + budget * 11 / 10;
    let group = MemoryCgroup::create("scorer", limit).expect(
        "a memory cgroup (v1 at /sys/fs/cgroup/memory or v2 at /sys/fs/cgroup) this test can write",
    );
    let scorer = ScorerProcess::local_in(
        &group.procs(),
        store.path(),
        &[
            &format!("cache.budget={budget}"),
            &format!("images.dir={}", images.path().display()),
            "cache.max_concurrent_loads=4",
        ],
    );
    let idle = scorer.rss_bytes();
    let client = reqwest::Client::new();
    for round in 0..6 {
        burst_round(
            &client,
            &scorer,
            &models,
            round,
            |k| k * 3 + round,
            "cgroup",
        )
        .await;
    }
    let usage = group.usage();
    let metrics = scorer.metrics().await;
    let peak = scorer.peak_rss_bytes();
    let bound = idle + budget * 11 / 10 + 64 * MIB;
    let image_loads = metrics.get("mm_scorer_images_total{event=\"loaded\"}");
    let evicted = metrics.get("mm_scorer_cache_evictions_total{reason=\"capacity\"}")
        + metrics.get("mm_scorer_cache_evictions_total{reason=\"not_admitted\"}");
    eprintln!(
        "cgroup {:?}, limit {limit}: peak usage {}, now {} (anon {}, file {}), OOM kills {}; process idle RSS {idle}, peak RSS {peak}, bound {bound}; {image_loads} image loads, {evicted} evictions",
        group.version_of(),
        usage.peak,
        usage.current,
        usage.anon,
        usage.file,
        usage.oom_kills
    );
    assert_eq!(usage.oom_kills, 0, "OOM kills in the scorer's cgroup");
    assert!(
        evicted >= 4.0,
        "the budget never bound ({evicted} evictions)"
    );
    assert!(image_loads >= 8.0, "loads from images: {image_loads}");
    assert!(
        usage.peak > idle,
        "the scorer's memory was charged to its cgroup: peak {}",
        usage.peak
    );
    assert!(
        usage.file > 0,
        "the files the scorer read and wrote were charged to its cgroup"
    );
    assert!(peak <= bound, "peak RSS {peak} over the bound {bound}");
    assert!(
        usage.anon <= bound,
        "anonymous memory {} over the bound {bound}",
        usage.anon
    );
    drop(scorer);
}
