//! Payload capture: a sampled share of the requests of the models a rule names, written to
//! the model store as JSON lines (`docs/capture.md`).
//!
//! The rules live in the store (`_manymodels/capture.json`, [`RULES_PATH`]) so every scorer,
//! and a restarted one, agrees; each scorer reads them every `versions.check_interval` and
//! at once on `POST /v2/mm/capture/refresh` (the proxy calls it on every scorer after a
//! change). On the request path ([`Capture::before`], from `infer::run_checked`) a model no
//! rule matches costs one atomic load when there are no rules, one read lock and a scan of
//! at most [`MAX_RULES`] prefixes otherwise. A sampled request clones its inputs and, once
//! answered, its outputs into a queue bounded in bytes (`capture.queue_bytes`) with
//! try-send semantics: a full queue drops the line and counts it; serving never waits.
//! One writer task batches the lines per model and hour and puts each batch as one object
//! ([`writer`]).
//!
//! It deliberately does not capture failed requests (there are no outputs), nor the
//! request's wire bytes: the inputs are the typed tensors the engine ran, whatever the
//! wire format was.

mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use manymodels_config::scorer::CaptureConfig;
use manymodels_contract::capture::{CaptureCounters, CaptureRules};
pub use manymodels_contract::capture::{MAX_RULES, RULES_PATH};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{ModelStore, StoreError};
use crate::tensor::NamedTensor;

pub use writer::{layout_path, rfc3339};

/// The capture state of one scorer.
pub struct Capture {
    /// Whether any rule exists: the one load a request pays when capture is off.
    active: AtomicBool,
    rules: RwLock<Arc<CaptureRules>>,
    /// Serialises this scorer's rule changes (read, change, write the document).
    changing: tokio::sync::Mutex<()>,
    store: Arc<dyn ModelStore>,
    config: CaptureConfig,
    /// The scorer's name as a file name takes it.
    scorer: String,
    /// Bytes captured and not yet written or dropped: in the queue or in a batch.
    pending_bytes: AtomicU64,
    sender: mpsc::UnboundedSender<Message>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    metrics: Arc<Metrics>,
}

/// What the writer task is sent.
enum Message {
    Line(Box<Entry>),
    /// Write every batch now, then answer.
    Flush(oneshot::Sender<()>),
}

/// One captured request, as queued.
struct Entry {
    request_id: String,
    model: String,
    version: u64,
    /// When the model answered, since the Unix epoch.
    answered: Duration,
    latency: Duration,
    protocol: &'static str,
    inputs: Vec<NamedTensor>,
    outputs: Vec<NamedTensor>,
    /// What it counts against `capture.queue_bytes`.
    bytes: u64,
}

/// A request sampled before its run: what the line needs from before the engine took the
/// inputs.
pub struct Sampled {
    request_id: String,
    protocol: &'static str,
    inputs: Vec<NamedTensor>,
}

impl Capture {
    pub fn new(
        config: CaptureConfig,
        store: Arc<dyn ModelStore>,
        scorer_name: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Capture {
            active: AtomicBool::new(false),
            rules: RwLock::new(Arc::new(CaptureRules::default())),
            changing: tokio::sync::Mutex::new(()),
            store,
            config,
            scorer: file_name_of(scorer_name),
            pending_bytes: AtomicU64::new(0),
            sender,
            receiver: Mutex::new(Some(receiver)),
            metrics,
        }
    }

    /// Starts the writer task (once; later calls do nothing). Until it runs, sampled lines
    /// wait in the queue (and a full queue drops).
    pub fn start(self: &Arc<Self>) {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(receiver) = receiver {
            tokio::spawn(writer::run(self.clone(), receiver));
        }
    }

    /// Where captures go in the store (`capture.prefix`).
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The rules in force here.
    pub fn rules(&self) -> Arc<CaptureRules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn install(&self, rules: CaptureRules) {
        let active = !rules.rules.is_empty();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        self.active.store(active, Ordering::Relaxed);
    }

    /// Reads the rules from the store and uses them. A store that fails or a document
    /// that does not parse keeps the rules in force (and is logged): capture neither
    /// starts nor stops on a failed read.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let rules = self.read_rules().await.inspect_err(|e| {
            tracing::warn!(error = %e, path = RULES_PATH, "capture rules not read; keeping the rules in force");
        })?;
        self.install(rules);
        Ok(())
    }

    async fn read_rules(&self) -> Result<CaptureRules, StoreError> {
        match self.store.read_object(RULES_PATH).await? {
            None => Ok(CaptureRules::default()),
            Some(bytes) => CaptureRules::parse(&bytes).map_err(|error| StoreError::InvalidFile {
                file: RULES_PATH,
                error,
            }),
        }
    }

    /// Changes the rules document in the store (read, `change`, write) and uses the
    /// result here. `change` answers `Err` to refuse (nothing is written). Two scorers
    /// changing the rules at the same instant can lose one change (the last write wins):
    /// rule changes are rare operator calls.
    pub async fn change<E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut CaptureRules) -> Result<(), E>,
    ) -> Result<(), E> {
        let _one = self.changing.lock().await;
        let mut rules = self.read_rules().await?;
        change(&mut rules)?;
        let body = serde_json::to_vec_pretty(&rules).expect("rules serialize");
        self.store.put_object(RULES_PATH, body.into()).await?;
        self.install(rules);
        Ok(())
    }

    /// Before a run of model `id`: `Some` (with the inputs cloned) when a rule takes the
    /// model and the draw samples this request, else `None`, at the cost of one atomic
    /// load when no rule exists.
    pub fn before(&self, id: &str, inputs: &[NamedTensor]) -> Option<Sampled> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        let rate = self
            .rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rate(id)?;
        if !sampled(rate) {
            return None;
        }
        // A full queue drops the line anyway: count it now, without copying the tensors.
        if self.pending_bytes.load(Ordering::Relaxed) >= self.config.queue_bytes {
            self.metrics.capture[1].inc();
            return None;
        }
        let context = crate::request::current();
        Some(Sampled {
            request_id: context
                .as_ref()
                .map(|c| c.id_str().to_string())
                .unwrap_or_default(),
            protocol: context.as_ref().map_or("unknown", |c| c.protocol),
            inputs: inputs.to_vec(),
        })
    }

    /// After a sampled run answered: queues the line, or drops it (counted) when the
    /// queue is full. Never waits.
    pub fn after(
        &self,
        sampled: Sampled,
        id: &str,
        version: u64,
        outputs: &[NamedTensor],
        latency: Duration,
    ) {
        let outputs = outputs.to_vec();
        let bytes = 256
            + sampled.request_id.len() as u64
            + id.len() as u64
            + tensors_bytes(&sampled.inputs)
            + tensors_bytes(&outputs);
        let entry = Entry {
            request_id: sampled.request_id,
            model: id.to_string(),
            version,
            answered: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            latency,
            protocol: sampled.protocol,
            inputs: sampled.inputs,
            outputs,
            bytes,
        };
        self.offer(entry);
    }

    /// Puts `entry` in the queue if its bytes fit under `capture.queue_bytes`.
    fn offer(&self, entry: Entry) {
        let limit = self.config.queue_bytes;
        let fits = self
            .pending_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                let after = pending.checked_add(entry.bytes)?;
                (after <= limit).then_some(after)
            })
            .is_ok();
        if !fits {
            self.metrics.capture[1].inc();
            return;
        }
        let bytes = entry.bytes;
        if self.sender.send(Message::Line(Box::new(entry))).is_err() {
            self.release(bytes);
            self.metrics.capture[1].inc();
            return;
        }
        self.metrics.capture[0].inc();
        self.metrics
            .capture_queue_bytes
            .set(self.pending_bytes.load(Ordering::Relaxed) as i64);
    }

    /// Gives back `bytes` of the queue's bound (written or dropped).
    fn release(&self, bytes: u64) {
        let left = self.pending_bytes.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        self.metrics.capture_queue_bytes.set(left as i64);
    }

    /// Writes every batch now and waits for it (at most `wait`): on shutdown, and for
    /// tests. Lines queued after the call may wait for the next flush.
    pub async fn flush(&self, wait: Duration) {
        let (done, flushed) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(wait, flushed).await;
        }
    }

    /// This scorer's counters.
    pub fn counters(&self) -> CaptureCounters {
        let [queued, dropped, written, failed] = &self.metrics.capture;
        CaptureCounters {
            queued: queued.get(),
            dropped: dropped.get(),
            written: written.get(),
            failed: failed.get(),
            queue_bytes: self.pending_bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether any rule exists.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }
}

/// Roughly the memory of `tensors` (their data, names and shapes).
pub(crate) fn tensors_bytes(tensors: &[NamedTensor]) -> u64 {
    use crate::tensor::TensorData;
    tensors
        .iter()
        .map(|t| {
            let data = match &t.data {
                TensorData::Fp32(v) => v.len() * 4,
                TensorData::Fp64(v) => v.len() * 8,
                TensorData::Int32(v) => v.len() * 4,
                TensorData::Int64(v) => v.len() * 8,
                TensorData::Bool(v) => v.len(),
                TensorData::Bytes(v) => v.iter().map(|s| s.len() + 24).sum(),
            };
            (64 + t.name.len() + t.shape.len() * 8 + data) as u64
        })
        .sum()
}

/// A draw with probability `rate` (the per-thread draw tracing samples with).
fn sampled(rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && manymodels_boot::telemetry::draw() < rate)
}

/// `name` as a file name takes it: `[A-Za-z0-9._-]` kept, anything else `_`, at most 64
/// characters, never empty.
pub fn file_name_of(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "scorer".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests;
