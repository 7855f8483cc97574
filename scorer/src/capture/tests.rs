//! The capture's seams without a socket: sampling, the queue's byte bound, the layout and
//! line format, the writer's batching and its bounded retries, over the in-memory store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use manymodels_config::scorer::ScorerConfig;
use manymodels_contract::capture::{CaptureLine, CaptureRule, CaptureRules};

use super::*;
use crate::cache::testing::MemoryStore;
use crate::tensor::{DataType, NamedTensor, TensorData};

fn capture_over(store: Arc<MemoryStore>, adjust: impl FnOnce(&mut CaptureConfig)) -> Arc<Capture> {
    let mut config = ScorerConfig::for_local_store(Path::new(".")).capture;
    adjust(&mut config);
    let metrics = Arc::new(Metrics::new(1 << 30));
    Arc::new(Capture::new(config, store, "scorer a:1", metrics))
}

fn tensor(name: &str, data: Vec<f32>) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        datatype: DataType::Fp32,
        shape: vec![1, data.len() as i64],
        data: TensorData::Fp32(data),
    }
}

async fn set(capture: &Capture, prefix: &str, rate: f64) {
    capture
        .change(|rules: &mut CaptureRules| {
            rules
                .set(CaptureRule::new(prefix, rate, false).unwrap())
                .map_err(StoreError::Conflict)
        })
        .await
        .unwrap();
}

/// Every line of every object under the capture prefix, by object path.
fn objects(store: &MemoryStore) -> Vec<(String, Vec<CaptureLine>)> {
    let objects = store.objects.lock().unwrap();
    objects
        .iter()
        .filter(|(path, _)| path.starts_with("_captures/"))
        .map(|(path, body)| {
            let lines = std::str::from_utf8(body)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (path.clone(), lines)
        })
        .collect()
}

#[test]
fn sampling_takes_about_the_rate() {
    let n = 100_000;
    let taken = (0..n).filter(|_| sampled(0.25)).count() as f64 / n as f64;
    // The binomial's standard deviation at n = 100,000 is 0.0014: 0.01 is seven of them.
    assert!((taken - 0.25).abs() < 0.01, "{taken}");
    assert!((0..1000).all(|_| sampled(1.0)));
    assert!((0..1000).all(|_| !sampled(0.0)));
}

#[test]
fn the_layout_is_utc_hours_and_the_time_rfc_3339() {
    // 2026-12-07T02:58:01.123Z
    let at = Duration::from_millis(1_796_612_281_123);
    assert_eq!(rfc3339(at), "2026-12-07T02:58:01.123Z");
    assert_eq!(
        layout_path("_captures", "m-1", at.as_secs() / 3600, "s1", 5, 7),
        "_captures/m-1/2026/12/07/02/s1-5-7.jsonl"
    );
    assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
    // A leap day, and the last hour of a year.
    assert_eq!(
        layout_path("p", "m", 11_016 * 24 + 5, "s", 0, 0),
        "p/m/2000/02/29/05/s-0-0.jsonl"
    );
    assert_eq!(
        rfc3339(Duration::from_secs(1_767_225_599)),
        "2025-12-31T23:59:59.000Z"
    );
    assert_eq!(file_name_of("scorer a:1/x"), "scorer_a_1_x");
    assert_eq!(file_name_of(".."), "scorer");
    assert_eq!(file_name_of(""), "scorer");
}

#[tokio::test]
async fn with_no_rules_nothing_is_sampled_and_rules_come_from_the_store() {
    let store = MemoryStore::new();
    let capture = capture_over(store.clone(), |_| {});
    let inputs = [tensor("x", vec![1.0])];
    assert!(!capture.is_active());
    assert!(capture.before("m", &inputs).is_none());
    // Another scorer wrote the document: a reload takes it.
    store.objects.lock().unwrap().insert(
        RULES_PATH.into(),
        bytes::Bytes::from_static(br#"{"rules":[{"prefix":"m","rate":1.0}]}"#),
    );
    capture.reload().await.unwrap();
    assert!(capture.before("m", &inputs).is_some());
    assert!(capture.before("other", &inputs).is_none());
    // A document that does not parse keeps the rules in force.
    store
        .objects
        .lock()
        .unwrap()
        .insert(RULES_PATH.into(), bytes::Bytes::from_static(b"nope"));
    assert!(capture.reload().await.is_err());
    assert!(capture.before("m", &inputs).is_some());
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let store = MemoryStore::new();
    // Room for two lines of 1,000 floats in and out (8,420 bytes each as counted), and no
    // writer running.
    let capture = capture_over(store.clone(), |c| c.queue_bytes = 20_000);
    set(&capture, "m", 1.0).await;
    let inputs = vec![tensor("x", vec![0.5; 1000])];
    for _ in 0..10 {
        let sampled = capture.before("m", &inputs).unwrap();
        capture.after(sampled, "m", 1, &inputs, Duration::from_micros(5));
    }
    let counters = capture.counters();
    assert_eq!((counters.queued, counters.dropped), (2, 8));
    assert!(counters.queue_bytes <= 20_000, "{counters:?}");
    // Once written, the bytes are given back and the queue takes lines again.
    capture.start();
    capture.flush(Duration::from_secs(5)).await;
    let counters = capture.counters();
    assert_eq!((counters.written, counters.queue_bytes), (2, 0));
    let sampled = capture.before("m", &inputs).unwrap();
    capture.after(sampled, "m", 1, &inputs, Duration::ZERO);
    assert_eq!(capture.counters().queued, 3);
}

#[tokio::test]
async fn lines_are_batched_per_model_in_the_layout() {
    let store = MemoryStore::new();
    let capture = capture_over(store.clone(), |_| {});
    set(&capture, "a", 1.0).await;
    capture.start();
    for (model, x) in [("a1", 1.0), ("a2", 2.0), ("a1", 3.0), ("b", 4.0)] {
        let inputs = vec![tensor("x", vec![x, 0.25])];
        if let Some(sampled) = capture.before(model, &inputs) {
            capture.after(
                sampled,
                model,
                3,
                &[tensor("y", vec![x * 2.0])],
                Duration::from_millis(2),
            );
        }
    }
    capture.flush(Duration::from_secs(5)).await;
    let objects = objects(&store);
    assert_eq!(objects.len(), 2, "{objects:?}");
    let (path, lines) = &objects[0];
    // `_captures/a1/<yyyy>/<MM>/<dd>/<HH>/scorer_a_1-<ms>-<n>.jsonl`
    let parts: Vec<&str> = path.split('/').collect();
    assert_eq!(parts.len(), 7, "{path}");
    assert_eq!(&parts[..2], ["_captures", "a1"]);
    assert!(parts[6].starts_with("scorer_a_1-") && parts[6].ends_with(".jsonl"));
    assert_eq!(lines.len(), 2);
    let line = &lines[1];
    assert_eq!((line.model.as_str(), line.version), ("a1", 3));
    assert_eq!(line.protocol, "unknown");
    assert_eq!(line.inputs[0].data, serde_json::json!([3.0, 0.25]));
    assert_eq!(line.inputs[0].shape, vec![1, 2]);
    assert_eq!(line.outputs[0].datatype, "FP32");
    assert_eq!(line.outputs[0].data, serde_json::json!([6.0]));
    assert!((line.latency_ms - 2.0).abs() < 1e-9);
    assert!(
        line.time.ends_with('Z') && line.time.len() == 24,
        "{}",
        line.time
    );
    // The hour folder is the line's hour.
    assert_eq!(
        format!("{}/{}/{}/{}", parts[2], parts[3], parts[4], parts[5]),
        line.time[..13].replace(['-', 'T'], "/")
    );
    assert_eq!(objects[1].0.split('/').nth(1), Some("a2"));
}

#[tokio::test]
async fn a_batch_reaching_batch_bytes_is_written_before_the_interval() {
    let store = MemoryStore::new();
    let capture = capture_over(store.clone(), |c| {
        c.batch_bytes = 2_000;
        c.flush_interval = Duration::from_secs(3600);
    });
    set(&capture, "m", 1.0).await;
    capture.start();
    let inputs = vec![tensor("x", vec![0.5; 300])];
    for _ in 0..3 {
        let sampled = capture.before("m", &inputs).unwrap();
        capture.after(sampled, "m", 1, &inputs, Duration::ZERO);
    }
    // Each line is over 2,000 bytes of JSON: each is its own object, without a flush.
    for _ in 0..100 {
        if objects(&store).len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(objects(&store).len(), 3);
}

#[tokio::test]
async fn a_failing_store_is_tried_again_then_the_lines_are_counted_failed() {
    let store = MemoryStore::new();
    let capture = capture_over(store.clone(), |c| {
        c.flush_interval = Duration::from_millis(50)
    });
    set(&capture, "m", 1.0).await;
    capture.start();
    let inputs = vec![tensor("x", vec![1.0])];
    store.set_unavailable(true);
    let sampled = capture.before("m", &inputs).unwrap();
    capture.after(sampled, "m", 1, &inputs, Duration::ZERO);
    // Held (its bytes counted) while it is tried again, then dropped as failed.
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(capture.counters().queue_bytes > 0);
    for _ in 0..100 {
        if capture.counters().failed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counters = capture.counters();
    assert_eq!(
        (counters.written, counters.failed, counters.queue_bytes),
        (0, 1, 0)
    );

    // A store back before the tries run out gets the batch.
    let sampled = capture.before("m", &inputs).unwrap();
    capture.after(sampled, "m", 1, &inputs, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(80)).await;
    store.set_unavailable(false);
    for _ in 0..100 {
        if capture.counters().written == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(capture.counters().written, 1);
    assert_eq!(objects(&store).len(), 1);
}

#[tokio::test]
async fn the_last_flush_tries_once_and_counts_what_fails() {
    let store = MemoryStore::new();
    let capture = capture_over(store.clone(), |c| {
        c.flush_interval = Duration::from_secs(3600)
    });
    set(&capture, "m", 1.0).await;
    capture.start();
    let inputs = vec![tensor("x", vec![1.0])];
    let sampled = capture.before("m", &inputs).unwrap();
    capture.after(sampled, "m", 1, &inputs, Duration::ZERO);
    store.set_unavailable(true);
    capture.flush(Duration::from_secs(5)).await;
    let counters = capture.counters();
    assert_eq!(
        (counters.written, counters.failed, counters.queue_bytes),
        (0, 1, 0)
    );
}
