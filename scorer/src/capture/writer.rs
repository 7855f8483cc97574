//! The writer task: batches captured lines per model and hour and puts each batch in the
//! store as one JSON-lines object at
//! `<capture.prefix>/<model>/<yyyy>/<MM>/<dd>/<HH>/<scorer>-<unix ms>-<n>.jsonl` (UTC, the
//! hour the model answered), every `capture.flush_interval`, as soon as a model's batch
//! reaches `capture.batch_bytes`, and on shutdown.
//!
//! A batch the store refuses is kept (its bytes still count against
//! `capture.queue_bytes`, so a failing store makes new captures drop rather than grow
//! memory) and tried again at the next flushes, [`ATTEMPTS`] times in all, under the same
//! object name; then its lines are dropped and counted as `failed`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Capture, Entry, Message};
use crate::tensor::NamedTensor;

/// Tries of one batch before its lines are dropped as `failed`.
pub const ATTEMPTS: u32 = 3;

/// Lines of one model and hour, not yet written.
struct Batch {
    body: Vec<u8>,
    lines: u64,
    /// What its lines count against `capture.queue_bytes`.
    reserved: u64,
}

/// A batch the store refused, with its object name, to try again.
struct Failed {
    path: String,
    body: Bytes,
    lines: u64,
    reserved: u64,
    attempts: u32,
}

/// One line as written (the contract's `CaptureLine`, borrowed).
#[derive(Serialize)]
struct Line<'a> {
    request_id: &'a str,
    time: String,
    model: &'a str,
    version: u64,
    latency_ms: f64,
    protocol: &'a str,
    inputs: &'a [NamedTensor],
    outputs: &'a [NamedTensor],
}

pub(super) async fn run(capture: Arc<Capture>, mut receiver: mpsc::UnboundedReceiver<Message>) {
    let mut writer = Writer {
        capture,
        batches: HashMap::new(),
        failed: Vec::new(),
    };
    let mut ticker = tokio::time::interval(writer.capture.config.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            message = receiver.recv() => match message {
                Some(Message::Line(entry)) => writer.add(*entry).await,
                Some(Message::Flush(done)) => {
                    writer.flush_all(true).await;
                    let _ = done.send(());
                }
                None => {
                    writer.flush_all(true).await;
                    return;
                }
            },
            _ = ticker.tick() => writer.flush_all(false).await,
        }
    }
}

struct Writer {
    capture: Arc<Capture>,
    /// By (model, hour since the epoch).
    batches: HashMap<(String, u64), Batch>,
    failed: Vec<Failed>,
}

impl Writer {
    async fn add(&mut self, entry: Entry) {
        let hour = entry.answered.as_secs() / 3600;
        let line = Line {
            request_id: &entry.request_id,
            time: rfc3339(entry.answered),
            model: &entry.model,
            version: entry.version,
            latency_ms: entry.latency.as_secs_f64() * 1000.0,
            protocol: entry.protocol,
            inputs: &entry.inputs,
            outputs: &entry.outputs,
        };
        let key = (entry.model.clone(), hour);
        let batch = self.batches.entry(key.clone()).or_insert_with(|| Batch {
            body: Vec::new(),
            lines: 0,
            reserved: 0,
        });
        let before = batch.body.len();
        if serde_json::to_writer(&mut batch.body, &line).is_err() {
            // Cannot happen for these types; the line is dropped rather than half written.
            self.capture.release(entry.bytes);
            self.capture.metrics.capture[3].inc();
            return;
        }
        batch.body.push(b'\n');
        batch.lines += 1;
        // The line as JSON is larger than its tensors were (a float's digits, a bool's
        // `false`): what it holds now is counted, so the queue's bound covers the batches
        // too (new lines are dropped while they are over it).
        let written = (batch.body.len() - before) as u64;
        let grown = written.saturating_sub(entry.bytes);
        self.capture
            .pending_bytes
            .fetch_add(grown, Ordering::AcqRel);
        batch.reserved += entry.bytes + grown;
        if batch.body.len() as u64 >= self.capture.config.batch_bytes
            && let Some(batch) = self.batches.remove(&key)
        {
            self.write(&key, batch, false).await;
        }
    }

    /// Writes every batch and tries the failed ones again; `last`: this is their final
    /// try (shutdown), so what fails now is dropped.
    async fn flush_all(&mut self, last: bool) {
        for failed in std::mem::take(&mut self.failed) {
            self.put(failed, last).await;
        }
        let mut batches: Vec<_> = self.batches.drain().collect();
        batches.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, batch) in batches {
            self.write(&key, batch, last).await;
        }
    }

    async fn write(&mut self, (model, hour): &(String, u64), batch: Batch, last: bool) {
        let path = layout_path(
            &self.capture.config.prefix,
            model,
            *hour,
            &self.capture.scorer,
            now_ms(),
            next_object(),
        );
        let failed = Failed {
            path,
            body: Bytes::from(batch.body),
            lines: batch.lines,
            reserved: batch.reserved,
            attempts: 0,
        };
        self.put(failed, last).await;
    }

    async fn put(&mut self, mut batch: Failed, last: bool) {
        batch.attempts += 1;
        match self
            .capture
            .store
            .put_object(&batch.path, batch.body.clone())
            .await
        {
            Ok(()) => {
                self.capture.metrics.capture[2].inc_by(batch.lines);
                self.capture.release(batch.reserved);
            }
            Err(error) if !last && batch.attempts < ATTEMPTS => {
                tracing::warn!(%error, path = batch.path, attempt = batch.attempts, "capture batch not written; will try again");
                self.failed.push(batch);
            }
            Err(error) => {
                tracing::warn!(%error, path = batch.path, lines = batch.lines, "capture batch dropped after failed writes");
                self.capture.metrics.capture[3].inc_by(batch.lines);
                self.capture.release(batch.reserved);
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A number per object this process writes, so two batches written in one millisecond
/// never share a name.
fn next_object() -> u64 {
    static OBJECTS: AtomicU64 = AtomicU64::new(0);
    OBJECTS.fetch_add(1, Ordering::Relaxed)
}

/// The object name of a batch of `model`'s lines answered in `hour` (hours since the
/// epoch): `<prefix>/<model>/<yyyy>/<MM>/<dd>/<HH>/<scorer>-<unix ms>-<n>.jsonl`.
pub fn layout_path(prefix: &str, model: &str, hour: u64, scorer: &str, ms: u64, n: u64) -> String {
    let (year, month, day) = civil_from_days((hour / 24) as i64);
    format!(
        "{prefix}/{model}/{year:04}/{month:02}/{day:02}/{:02}/{scorer}-{ms}-{n}.jsonl",
        hour % 24
    )
}

/// `since_epoch` as RFC 3339 UTC with milliseconds (`2026-12-07T02:58:01.123Z`).
pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// The date `days` after 1970-01-01: the forecasts' calendar (`contract::forecast::Date`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    // A wall clock's day is always within years 1..=9999.
    let date = manymodels_contract::forecast::Date::from_days(days).unwrap_or(
        manymodels_contract::forecast::Date {
            year: 1970,
            month: 1,
            day: 1,
        },
    );
    (date.year, date.month, date.day)
}
