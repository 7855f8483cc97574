//! Shadows: a model's candidate version run on a share of its live inference requests,
//! after the live answer, on the scorer that served it; the two answers are compared and
//! counted, and the candidate's is never returned.
//!
//! The shadow is model state in the store (`<id>/shadow.json`, the contract's
//! `ShadowSpec`, read in the same look-up as `alias.json` and `canary.json`), followed as
//! the canary is: at once after an admin call (and the proxy's refresh fan-out), else
//! within `versions.check_interval`. Only a shadow whose version is in the store and is
//! not the live one runs (`ModelState::candidate`).
//!
//! Sampling is deterministic per model, as the canary's split is: of the inference
//! requests that name no version and were answered by this scorer's live version (not the
//! canary's arm), request n is sampled when ⌊(n+1)·p⌋ > ⌊n·p⌋. REST inference and gRPC
//! `ModelInfer` are sampled (`infer::run`); the records routes are not. On the request
//! path a model without a shadow costs one atomic load while no model has one, one lock
//! and a map look-up otherwise (a model with one, also its live version's look-up); a
//! sampled request clones its typed inputs (before the engine takes them) and, once
//! answered, its outputs into a job.
//!
//! Jobs wait in a queue bounded in bytes (`shadow.queue_bytes`; full: the job is dropped
//! and counted `skipped`, serving never waits) drained by `shadow.concurrency` worker
//! tasks, each one job at a time, each run inline when the candidate is measured quick
//! and free, else on a blocking thread, as live calls are (`infer::run_checked`).
//!
//! Memory: a job never loads the live version, and never evicts a resident that serves
//! requests. The candidate is used when resident; otherwise it is loaded (at batch
//! priority, `slots`) only into free room of the budget or room other shadow versions
//! give up (`Resident::reserve_shadow`, `admit_shadow`), the file's room reserved before
//! the file is read (its size from the store's tag); else the job is `skipped` and the
//! candidate is not tried again for [`NO_ROOM_RETRY`]. A shadow load's reservations are
//! kept apart from the live loads', which never count them (so a live load never evicts
//! nor waits because a shadow is loading; the bound is in `resident`). Shadow versions
//! are the first evicted when any load needs room (`resident`). A version that became
//! resident while a job loaded it (promoted, or named by a client) is left as it is.
//!
//! A job is run contained: a panic in it is caught and counted an error, and its queue
//! bytes and its candidate's "loading" mark are given back by drop guards however it
//! ends, so its worker keeps taking jobs.
//!
//! Counts are kept per (model, candidate version, `since_ms`): a new spec starts from zero.
//! At most [`MAX_SHADOWS`] models are counted at once: shadows are set one by one by
//! operators, so the cap only bounds memory against a store full of `shadow.json` files.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manymodels_config::scorer::ShadowConfig;
use manymodels_contract::Priority;
use manymodels_contract::shadow::{ShadowCounts, ShadowView, verdict};
use tokio::sync::mpsc;

use futures::FutureExt;

use super::ledger::Reservation;
use super::resident::ShadowAdmitted;
use super::{ModelCache, ModelKey, Refresh};
use crate::engine::LoadedModel;
use crate::error::ScorerError;
use crate::metrics::Metrics;
use crate::model_id::ModelId;
use crate::store::{ModelState, SHADOW_FILE, ShadowSpec, StoreError, check_shadow};
use crate::tensor::{NamedTensor, TensorData};

/// The most models whose shadows this scorer counts at once; a shadow beyond it is not
/// followed (logged) until another is dropped.
pub const MAX_SHADOWS: usize = 1_000;

/// How long a candidate that found no room is not loaded again (its jobs are skipped).
pub const NO_ROOM_RETRY: Duration = Duration::from_secs(5);

/// What a job counts against `shadow.queue_bytes` beyond its tensors.
const JOB_OVERHEAD: u64 = 256;

/// The defaults of `shadow.*`, until `ModelCache::with_shadows` sets the configured ones.
const DEFAULT_CONFIG: ShadowConfig = ShadowConfig {
    queue_bytes: 16 << 20,
    concurrency: NonZeroUsize::MIN,
};

tokio::task_local! {
    /// Set around a shadow version's load: its reservations take only free room.
    static SHADOW_LOAD: ();
}

/// Whether the load running on this task is a shadow version's (`miss::reserve` asks).
pub(super) fn loading_shadow() -> bool {
    SHADOW_LOAD.try_with(|_| ()).is_ok()
}

/// The error a shadow version's reservation ends with when there is no free room.
pub(super) fn no_room(key: &ModelKey) -> ScorerError {
    ScorerError::NoRoomForShadow {
        id: key.id.to_string(),
        version: key.version,
    }
}

/// The deterministic share: request n is sampled when ⌊(n+1)·p⌋ > ⌊n·p⌋ (the canary's
/// rule, `canary::Split::pick`), so the share holds to within one request over any run.
#[derive(Clone, Debug, Default, PartialEq)]
struct Sampler {
    requests: u64,
    sampled: u64,
}

impl Sampler {
    fn pick(&mut self, percent: f64) -> bool {
        let share = percent / 100.0;
        let n = self.requests as f64;
        self.requests += 1;
        let sampled = ((n + 1.0) * share).floor() > (n * share).floor();
        if sampled {
            self.sampled += 1;
        }
        sampled
    }
}

/// One model's shadow as this scorer follows and counts it.
#[derive(Clone, Debug)]
struct Entry {
    spec: ShadowSpec,
    sampler: Sampler,
    counts: ShadowCounts,
}

impl Entry {
    fn new(spec: ShadowSpec) -> Self {
        Entry {
            spec,
            sampler: Sampler::default(),
            counts: ShadowCounts::default(),
        }
    }

    /// Whether `spec` is the shadow these counts are of: the same candidate set at the same
    /// time. Its share, tolerance or rule may change (a file edited by hand) without
    /// starting over.
    fn same_shadow(&self, spec: &ShadowSpec) -> bool {
        self.spec.version == spec.version && self.spec.since_ms == spec.since_ms
    }
}

/// A request sampled for a shadow, decided before the live run.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticket {
    version: u64,
    since_ms: u64,
    tolerance: f64,
}

/// A sampled request's inputs, cloned before the engine took them.
pub struct Sampled {
    ticket: Ticket,
    inputs: Vec<NamedTensor>,
}

/// What a worker runs: the candidate on the live request's inputs, compared with the live
/// outputs.
pub struct Job {
    id: ModelId,
    ticket: Ticket,
    inputs: Vec<NamedTensor>,
    live: Vec<NamedTensor>,
    live_micros: u64,
    /// What it counts against `shadow.queue_bytes`.
    bytes: u64,
}

/// The queue's receiving end, shared by the workers (one waits on it at a time).
pub type JobQueue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>;

/// How the two answers of one request compare.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Every output agreed: present in both with the same shape, labels equal, floats
    /// within the tolerance.
    pub agreed: bool,
    /// A label output (integer, string or boolean) differed in some element.
    pub label_flip: bool,
    /// Float elements compared, and the sum and maximum of their absolute differences.
    pub elements: u64,
    pub sum_abs_diff: f64,
    pub max_abs_diff: f64,
}

/// What one job came to.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Compared { comparison: Comparison, micros: u64 },
    Error,
    Skipped,
}

impl Outcome {
    /// Its index in `metrics::SHADOW_OUTCOMES`.
    fn metric(&self) -> usize {
        match self {
            Outcome::Compared { comparison, .. } if comparison.agreed => 0,
            Outcome::Compared { .. } => 1,
            Outcome::Error => 2,
            Outcome::Skipped => 3,
        }
    }
}

/// Compares the live outputs with the candidate's, output by output (by name): an output
/// missing from either side or of another shape disagrees; integer, string and boolean
/// outputs (labels) must be equal element by element (a difference is a label flip);
/// float outputs (FP32 or FP64, either side) agree when every element differs by at most
/// `tolerance`, and their differences are counted. A NaN agrees only with a NaN, an
/// infinity only with itself; neither is counted in the differences (which stay finite,
/// for JSON).
pub fn compare(live: &[NamedTensor], shadow: &[NamedTensor], tolerance: f64) -> Comparison {
    let mut c = Comparison {
        agreed: live.len() == shadow.len(),
        ..Comparison::default()
    };
    for l in live {
        let Some(s) = shadow.iter().find(|s| s.name == l.name) else {
            c.agreed = false;
            continue;
        };
        if l.shape != s.shape || l.data.len() != s.data.len() {
            c.agreed = false;
            continue;
        }
        if let (Some(a), Some(b)) = (floats(&l.data), floats(&s.data)) {
            for (a, b) in a.zip(b) {
                if a.is_nan() || b.is_nan() {
                    c.agreed &= a.is_nan() && b.is_nan();
                    continue;
                }
                let d = if a == b { 0.0 } else { (a - b).abs() };
                if !d.is_finite() {
                    // An infinity against a number: disagrees, and is no finite difference.
                    c.agreed = false;
                    continue;
                }
                c.elements += 1;
                c.sum_abs_diff += d;
                c.max_abs_diff = c.max_abs_diff.max(d);
                if d > tolerance {
                    c.agreed = false;
                }
            }
            continue;
        }
        let equal = match (&l.data, &s.data) {
            (TensorData::Bytes(a), TensorData::Bytes(b)) => Some(a == b),
            (TensorData::Bool(a), TensorData::Bool(b)) => Some(a == b),
            _ => match (integers(&l.data), integers(&s.data)) {
                (Some(a), Some(b)) => Some(a.eq(b)),
                _ => None,
            },
        };
        match equal {
            Some(true) => {}
            Some(false) => {
                c.agreed = false;
                c.label_flip = true;
            }
            // A label on one side and a score on the other.
            None => c.agreed = false,
        }
    }
    c
}

fn floats(data: &TensorData) -> Option<Box<dyn Iterator<Item = f64> + '_>> {
    match data {
        TensorData::Fp32(v) => Some(Box::new(v.iter().map(|&x| f64::from(x)))),
        TensorData::Fp64(v) => Some(Box::new(v.iter().copied())),
        _ => None,
    }
}

fn integers(data: &TensorData) -> Option<Box<dyn Iterator<Item = i64> + '_>> {
    match data {
        TensorData::Int32(v) => Some(Box::new(v.iter().map(|&x| i64::from(x)))),
        TensorData::Int64(v) => Some(Box::new(v.iter().copied())),
        _ => None,
    }
}

/// Puts `inputs` (checked against the live version) in `model`'s input order, and the
/// indices of `model`'s outputs named like the live ones: the candidate must take the
/// same inputs (names, datatypes, ranks, fixed dimensions), else the job is an error.
fn arrange(
    model: &LoadedModel,
    mut inputs: Vec<NamedTensor>,
    live: &[NamedTensor],
) -> Result<(Vec<NamedTensor>, Vec<usize>), String> {
    if inputs.len() != model.inputs.len() {
        return Err(format!(
            "the candidate takes {} inputs, the request has {}",
            model.inputs.len(),
            inputs.len()
        ));
    }
    let mut arranged = Vec::with_capacity(inputs.len());
    for spec in &model.inputs {
        let at = inputs
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| {
                format!(
                    "the candidate's input '{}' is not in the request",
                    spec.name
                )
            })?;
        let tensor = inputs.swap_remove(at);
        let fits = tensor.datatype == spec.datatype
            && tensor.shape.len() == spec.shape.len()
            && tensor
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(&d, &want)| want < 0 || d == want);
        if !fits {
            return Err(format!(
                "input '{}' ({} {:?}) does not fit the candidate's ({} {:?})",
                spec.name,
                tensor.datatype.as_str(),
                tensor.shape,
                spec.datatype.as_str(),
                spec.shape
            ));
        }
        arranged.push(tensor);
    }
    let selected = live
        .iter()
        .filter_map(|l| model.outputs.iter().position(|o| o.name == l.name))
        .collect();
    Ok((arranged, selected))
}

/// The shadows this scorer follows, their counts, and the queue of jobs.
pub(super) struct Shadows {
    /// How many models have a followed shadow: the one load a request pays when none has.
    followed: AtomicUsize,
    entries: Mutex<HashMap<ModelId, Entry>>,
    config: ShadowConfig,
    /// Bytes of jobs queued or running.
    pending: AtomicU64,
    sender: mpsc::UnboundedSender<Job>,
    receiver: JobQueue,
    started: AtomicBool,
    /// Candidates being loaded by a job (`None`), or that found no room (until when).
    loading: Mutex<HashMap<ModelKey, Option<Instant>>>,
    /// One change of a shadow at a time on this scorer (set, drop, promote): a second
    /// judge finds the shadow gone, and a promotion never deletes a shadow set meanwhile.
    pub(super) changes: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Test hook: the next candidate load panics (after it is marked loading).
    #[cfg(test)]
    panic_next_load: AtomicBool,
}

impl Shadows {
    pub(super) fn new(config: ShadowConfig, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Shadows {
            followed: AtomicUsize::new(0),
            entries: Mutex::new(HashMap::new()),
            config,
            pending: AtomicU64::new(0),
            sender,
            receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
            started: AtomicBool::new(false),
            loading: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            metrics,
            #[cfg(test)]
            panic_next_load: AtomicBool::new(false),
        }
    }

    pub(super) fn with_defaults(metrics: Arc<Metrics>) -> Self {
        Self::new(DEFAULT_CONFIG, metrics)
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<ModelId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn loading(&self) -> MutexGuard<'_, HashMap<ModelKey, Option<Instant>>> {
        self.loading.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the store's shadow of `id` (`None`: none runs): the same shadow keeps its
    /// counts, another starts from zero.
    pub(super) fn follow(&self, id: &ModelId, spec: Option<&ShadowSpec>) {
        let mut entries = self.entries();
        let full = entries.len() >= MAX_SHADOWS;
        match spec {
            None => {
                entries.remove(id);
            }
            Some(spec) => match entries.get_mut(id) {
                Some(entry) if entry.same_shadow(spec) => entry.spec = spec.clone(),
                Some(entry) => *entry = Entry::new(spec.clone()),
                None if full => {
                    tracing::warn!(model = %id, max = MAX_SHADOWS, "shadow not followed: this scorer counts the most shadows it may");
                }
                None => {
                    entries.insert(id.clone(), Entry::new(spec.clone()));
                }
            },
        }
        self.followed.store(entries.len(), Ordering::Relaxed);
    }

    /// Whether any model has a followed shadow (one atomic load).
    fn any(&self) -> bool {
        self.followed.load(Ordering::Relaxed) > 0
    }

    /// Whether this request of `id`, answered by `served`, is sampled: `id` has a shadow,
    /// `served` is not its candidate and is the live version (`is_live`, asked only for a
    /// model with a shadow, under this lock: the lock order is this one, then `Lives`',
    /// which calls nothing while held), and the share takes it.
    fn pick(&self, id: &ModelId, served: u64, is_live: impl FnOnce() -> bool) -> Option<Ticket> {
        let mut entries = self.entries();
        let entry = entries.get_mut(id)?;
        if entry.spec.version == served || !is_live() || !entry.sampler.pick(entry.spec.percent) {
            return None;
        }
        Some(Ticket {
            version: entry.spec.version,
            since_ms: entry.spec.since_ms,
            tolerance: entry.spec.tolerance,
        })
    }

    /// Counts `outcome` for `id`'s shadow, if it is still the one the job was for.
    fn record(&self, id: &ModelId, ticket: &Ticket, outcome: &Outcome, live_micros: u64) {
        self.metrics.shadow_runs[outcome.metric()].inc();
        let mut entries = self.entries();
        let Some(entry) = entries
            .get_mut(id)
            .filter(|e| e.spec.version == ticket.version && e.spec.since_ms == ticket.since_ms)
        else {
            return;
        };
        let counts = &mut entry.counts;
        match outcome {
            Outcome::Compared { comparison, micros } => {
                counts.compared += 1;
                counts.agreed += u64::from(comparison.agreed);
                counts.label_flips += u64::from(comparison.label_flip);
                counts.elements += comparison.elements;
                counts.sum_abs_diff += comparison.sum_abs_diff;
                counts.max_abs_diff = counts.max_abs_diff.max(comparison.max_abs_diff);
                counts.live_micros += live_micros;
                counts.shadow_micros += micros;
            }
            Outcome::Error => counts.errors += 1,
            Outcome::Skipped => counts.skipped += 1,
        }
    }

    /// Queues `job` if it fits under `shadow.queue_bytes`; otherwise counts it skipped.
    /// Never waits.
    fn offer(&self, job: Job) -> bool {
        let limit = self.config.queue_bytes;
        let fits = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                let after = pending.checked_add(job.bytes)?;
                (after <= limit).then_some(after)
            })
            .is_ok();
        if !fits {
            self.record(&job.id, &job.ticket, &Outcome::Skipped, 0);
            return false;
        }
        if let Err(mpsc::error::SendError(job)) = self.sender.send(job) {
            self.release(job.bytes);
            self.record(&job.id, &job.ticket, &Outcome::Skipped, 0);
            return false;
        }
        true
    }

    /// Whether a job of `bytes` fits the queue's room now (a sampled request whose inputs
    /// alone do not fit clones nothing).
    fn fits(&self, bytes: u64) -> bool {
        self.pending
            .load(Ordering::Relaxed)
            .checked_add(bytes)
            .is_some_and(|after| after <= self.config.queue_bytes)
    }

    fn release(&self, bytes: u64) {
        self.pending.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Marks `key` as loading for a job; `None` when another job loads it, or it found
    /// no room within [`NO_ROOM_RETRY`]. The mark goes with the guard (`Loading::done`, or
    /// dropped: a job that panicked or was dropped).
    fn start_loading<'a>(&'a self, key: &ModelKey) -> Option<Loading<'a>> {
        let mut loading = self.loading();
        match loading.get(key) {
            Some(None) => None,
            Some(Some(until)) if Instant::now() < *until => None,
            _ => {
                loading.insert(key.clone(), None);
                Some(Loading {
                    shadows: self,
                    key: key.clone(),
                    done: false,
                })
            }
        }
    }

    /// The load of `key` ended: found no room (`no_room`), or done either way.
    fn done_loading(&self, key: &ModelKey, no_room: bool) {
        let mut loading = self.loading();
        if no_room {
            loading.insert(key.clone(), Some(Instant::now() + NO_ROOM_RETRY));
        } else {
            loading.remove(key);
        }
        // Forget old refusals: the map stays as small as the shadows.
        let now = Instant::now();
        loading.retain(|_, until| until.is_none_or(|until| now < until));
    }

    /// The counted shadow of `id` if it is `spec`'s.
    fn counts(&self, id: &ModelId, spec: &ShadowSpec) -> ShadowCounts {
        self.entries()
            .get(id)
            .filter(|e| e.same_shadow(spec))
            .map(|e| e.counts.clone())
            .unwrap_or_default()
    }

    /// Every followed shadow, by model.
    fn followed(&self) -> Vec<(ModelId, ShadowSpec, ShadowCounts)> {
        let mut all: Vec<_> = self
            .entries()
            .iter()
            .map(|(id, e)| (id.clone(), e.spec.clone(), e.counts.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// A candidate marked loading by a job (`Shadows::start_loading`).
struct Loading<'a> {
    shadows: &'a Shadows,
    key: ModelKey,
    done: bool,
}

impl Loading<'_> {
    /// The load ended: found no room (`no_room`), or done either way.
    fn done(mut self, no_room: bool) {
        self.done = true;
        self.shadows.done_loading(&self.key, no_room);
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shadows.done_loading(&self.key, false);
        }
    }
}

/// A job's end, however it comes: gives its bytes back to the queue and counts its
/// outcome (an error when it ended without one: a panic, or its task dropped).
struct JobEnd<'a> {
    shadows: &'a Shadows,
    id: &'a ModelId,
    ticket: &'a Ticket,
    bytes: u64,
    live_micros: u64,
    outcome: Option<Outcome>,
}

impl Drop for JobEnd<'_> {
    fn drop(&mut self) {
        self.shadows.release(self.bytes);
        let outcome = self.outcome.take().unwrap_or(Outcome::Error);
        self.shadows
            .record(self.id, self.ticket, &outcome, self.live_micros);
    }
}

/// The size of a model file from the store's tag of it (`local:<size>:…`,
/// `azure:<size>:…`), when the tag says it.
fn tag_size(tag: &str) -> Option<u64> {
    let mut parts = tag.splitn(3, ':');
    match parts.next()? {
        "local" | "azure" => parts.next()?.parse().ok(),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ModelCache {
    /// Uses `config` (`shadow.*`) for the queue and the workers.
    pub fn with_shadows(mut self, config: ShadowConfig) -> Self {
        self.shadows = Shadows::new(config, self.metrics.clone());
        self
    }

    /// Before the live run of an inference request for `id` that named `named` and was
    /// answered by `served`: `Some` (the inputs cloned) when `id` has a shadow, the request
    /// named no version, `served` is this scorer's live version (not the canary's arm)
    /// and the share samples it. One atomic load while no model has a shadow.
    pub fn shadow_before(
        &self,
        id: &ModelId,
        named: Option<u64>,
        served: u64,
        inputs: &[NamedTensor],
    ) -> Option<Sampled> {
        if !self.shadows.any() || named.is_some() {
            return None;
        }
        let ticket = self
            .shadows
            .pick(id, served, || self.lives.version(id) == Some(served))?;
        // A queue without room for the inputs alone would drop the job: count it now,
        // without copying the tensors.
        if !self
            .shadows
            .fits(JOB_OVERHEAD + crate::capture::tensors_bytes(inputs))
        {
            self.shadows.record(id, &ticket, &Outcome::Skipped, 0);
            return None;
        }
        Some(Sampled {
            ticket,
            inputs: inputs.to_vec(),
        })
    }

    /// After the sampled request's live run answered `live` in `took`: queues its job (or
    /// counts it skipped when the queue is full). Never waits. `true` when queued.
    pub fn shadow_after(
        &self,
        id: &ModelId,
        sampled: Sampled,
        live: &[NamedTensor],
        took: Duration,
    ) -> bool {
        let live = live.to_vec();
        let bytes = JOB_OVERHEAD
            + crate::capture::tensors_bytes(&sampled.inputs)
            + crate::capture::tensors_bytes(&live);
        self.shadows.offer(Job {
            id: id.clone(),
            ticket: sampled.ticket,
            inputs: sampled.inputs,
            live,
            live_micros: took.as_micros() as u64,
            bytes,
        })
    }

    /// Hands the job queue to `spawn` once per worker (`shadow.concurrency`), the first
    /// time it is called; later calls do nothing. Until then jobs wait in the queue.
    pub fn start_shadow_workers(&self, mut spawn: impl FnMut(JobQueue)) {
        if self.shadows.started.load(Ordering::Relaxed)
            || self.shadows.started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        for _ in 0..self.shadows.config.concurrency.get() {
            spawn(self.shadows.receiver.clone());
        }
    }

    /// Runs one job: the candidate (from memory, or loaded into free room) on the
    /// request's inputs, inline when measured quick (`inline_max`) and free, else on a
    /// blocking thread; compares and counts. Contained: a panic in the job is caught and
    /// counted an error, and the job's queue bytes are given back however it ends, so the
    /// worker calling it goes on.
    pub async fn run_shadow(&self, job: Job, inline_max: Duration) {
        let Job {
            id,
            ticket,
            inputs,
            live,
            live_micros,
            bytes,
        } = job;
        let mut end = JobEnd {
            shadows: &self.shadows,
            id: &id,
            ticket: &ticket,
            bytes,
            live_micros,
            outcome: None,
        };
        let run = std::panic::AssertUnwindSafe(
            self.shadow_outcome(&id, &ticket, inputs, &live, inline_max),
        );
        let outcome = match run.catch_unwind().await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(model = %id, version = ticket.version, "a shadow job panicked: counted as an error");
                Outcome::Error
            }
        };
        drop(live);
        end.outcome = Some(outcome);
    }

    async fn shadow_outcome(
        &self,
        id: &ModelId,
        ticket: &Ticket,
        inputs: Vec<NamedTensor>,
        live: &[NamedTensor],
        inline_max: Duration,
    ) -> Outcome {
        let model = match self.shadow_candidate(id, ticket.version).await {
            Ok(Some(model)) => model,
            Ok(None) => return Outcome::Skipped,
            Err(error) => {
                tracing::debug!(model = %id, version = ticket.version, %error, "shadow version not loaded");
                return Outcome::Error;
            }
        };
        let (inputs, selected) = match arrange(&model, inputs, live) {
            Ok(arranged) => arranged,
            Err(error) => {
                tracing::debug!(model = %id, version = ticket.version, %error, "shadow inputs refused");
                return Outcome::Error;
            }
        };
        let started = Instant::now();
        let ran = match model.run_quick(inline_max, inputs, &selected) {
            crate::engine::Quick::Ran(ran) => ran,
            crate::engine::Quick::Later(inputs) => {
                let running = model.clone();
                match tokio::task::spawn_blocking(move || running.infer(inputs, &selected)).await {
                    Ok(ran) => ran,
                    Err(_) => return Outcome::Error,
                }
            }
        };
        let micros = started.elapsed().as_micros() as u64;
        match ran {
            Ok(outputs) => Outcome::Compared {
                comparison: compare(live, &outputs, ticket.tolerance),
                micros,
            },
            Err(error) => {
                tracing::debug!(model = %id, version = ticket.version, %error, "shadow run failed");
                Outcome::Error
            }
        }
    }

    /// The candidate `version` of `id` for a job: the resident one (not counted as a
    /// request), else loaded at batch priority into free room of the budget or room other
    /// shadow versions give up; `None` (skipped) when there is none, or another job is
    /// loading it. A remembered load failure is an error, as for any request.
    async fn shadow_candidate(
        &self,
        id: &ModelId,
        version: u64,
    ) -> Result<Option<Arc<LoadedModel>>, ScorerError> {
        let key = ModelKey {
            id: id.clone(),
            version,
        };
        if let Some(model) = self.state().lookup(&key, self.now(), false) {
            return Ok(Some(model));
        }
        if let Some(error) = self.failures.get(&(id.clone(), Some(version))).await {
            return Err(error);
        }
        let Some(loading) = self.shadows.start_loading(&key) else {
            return Ok(None);
        };
        #[cfg(test)]
        if self.shadows.panic_next_load.swap(false, Ordering::SeqCst) {
            panic!("a test's panic in a shadow load");
        }
        let loaded = SHADOW_LOAD
            .scope(
                (),
                self.within_load_timeout(&key, self.load(key.clone(), Priority::Batch)),
            )
            .await;
        let (model, cost, reservation) = match loaded {
            Ok(loaded) => loaded,
            Err(ScorerError::NoRoomForShadow { .. }) => {
                loading.done(true);
                return Ok(None);
            }
            Err(error) => {
                loading.done(false);
                return Err(error);
            }
        };
        let now = self.now();
        let admitted = self
            .state()
            .admit_shadow(key.clone(), model.clone(), cost, now);
        let admitted = match admitted {
            ShadowAdmitted::Resident(resident) => {
                // Became resident meanwhile (promoted, or named by a client): that one
                // serves the job and stays as it is; the copy just loaded goes.
                drop(model);
                drop(reservation);
                self.ledger.mark_freed();
                loading.done(false);
                return Ok(Some(resident));
            }
            ShadowAdmitted::Loaded(admitted) => admitted,
        };
        if !admitted.admitted {
            // Runs this job, then leaves: accounted until then.
            self.ledger.keep_accounted(&model);
            self.ledger.mark_freed();
        }
        drop(reservation);
        self.ledger.dropped(admitted.dropped);
        loading.done(!admitted.admitted);
        Ok(Some(model))
    }

    /// Reserves free room (`Ledger::reserve_shadow`) for the file of the shadow version
    /// `key` before it is read: its size from the store's tag (`tag`, or one `stat` or
    /// `HEAD`), else from its digest. `NoRoomForShadow` when it does not fit.
    pub(super) async fn reserve_shadow_file(
        &self,
        key: &ModelKey,
        tag: Option<&str>,
    ) -> Result<Reservation, ScorerError> {
        let (id, version) = (&key.id, key.version);
        let not_found = |e| ScorerError::from_store(e, id, Some(version));
        let mut size = tag.and_then(tag_size);
        if size.is_none() && tag.is_none() {
            let tag = self
                .store
                .source_tag(id, version)
                .await
                .map_err(not_found)?;
            size = tag_size(&tag);
        }
        let size = match size {
            Some(size) => size,
            None => {
                self.store
                    .digest(id, version)
                    .await
                    .map_err(not_found)?
                    .bytes
            }
        };
        if !self.ledger.fits(size) {
            return Err(self.too_large(key, size));
        }
        self.ledger.reserve_shadow(size).ok_or_else(|| no_room(key))
    }

    /// Follows the store's shadow of `id` (read in `state`).
    pub(super) fn follow_shadow(&self, id: &ModelId, state: &ModelState) {
        self.shadows.follow(id, state.candidate());
    }

    /// `spec` with this scorer's counts, verdict and whether its version is in memory.
    fn shadow_view(&self, id: &ModelId, spec: ShadowSpec, live: Option<u64>) -> ShadowView {
        let counts = self.shadows.counts(id, &spec);
        let resident = self.state().contains(&ModelKey {
            id: id.clone(),
            version: spec.version,
        });
        ShadowView {
            model: id.to_string(),
            live,
            verdict: verdict(spec.rule.as_ref(), &counts),
            spec,
            counts,
            resident,
        }
    }

    /// The store's state of `id` for a call that replaces its shadow: a `shadow.json` that
    /// does not parse fails every other look-up of the model (503, naming the file); this
    /// one removes it first (logged), as `existing_replacing_canary` does for a canary.
    async fn existing_replacing_shadow(
        &self,
        id: &ModelId,
    ) -> Result<(ModelState, bool), ScorerError> {
        match self.store.model_state(id).await {
            Err(StoreError::InvalidFile {
                file: SHADOW_FILE,
                error,
            }) => {
                tracing::warn!(model = %id, %error, "removing a shadow file that is not valid");
                self.store
                    .write_shadow(id, None)
                    .await
                    .map_err(|e| ScorerError::from_store(e, id, None))?;
                Ok((self.existing(id).await?, true))
            }
            state => {
                let state = state.map_err(|e| ScorerError::from_store(e, id, None))?;
                if state.versions.is_empty() {
                    return Err(ScorerError::ModelNotFound(id.to_string()));
                }
                Ok((state, false))
            }
        }
    }

    /// `id`'s shadow in the store, with this scorer's counts.
    pub async fn shadow(&self, id: &ModelId) -> Result<ShadowView, ScorerError> {
        let state = self.existing(id).await?;
        let spec = state
            .shadow
            .clone()
            .ok_or_else(|| ScorerError::NoShadow(id.to_string()))?;
        let live = self.lives.version(id).or(state.live());
        Ok(self.shadow_view(id, spec, live))
    }

    /// Sets `id`'s shadow in the store (its `since_ms` now, so its counts start from zero
    /// everywhere) and follows it here at once. The candidate must be in the store (404)
    /// and not the live version (409). Nothing is loaded: the first sampled request loads
    /// the candidate if it finds room.
    pub async fn set_shadow(
        &self,
        id: &ModelId,
        mut spec: ShadowSpec,
    ) -> Result<ShadowView, ScorerError> {
        check_shadow(&spec).map_err(ScorerError::InvalidInput)?;
        // Never while a promotion runs here: it could delete the shadow set now.
        let _one = self.shadows.changes.lock().await;
        let (state, _) = self.existing_replacing_shadow(id).await?;
        if !state.versions.contains(&spec.version) {
            return Err(ScorerError::VersionNotFound {
                id: id.to_string(),
                version: spec.version.to_string(),
            });
        }
        let live = self.lives.version(id).or(state.live());
        if live == Some(spec.version) || state.live() == Some(spec.version) {
            return Err(ScorerError::Conflict(format!(
                "version {} of '{id}' is the live version: a shadow compares another version with it",
                spec.version
            )));
        }
        // Later than any shadow set before, even within one millisecond.
        let before = state.shadow.as_ref().map_or(0, |s| s.since_ms);
        spec.since_ms = now_ms().max(before + 1);
        self.store
            .write_shadow(id, Some(spec.clone()))
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        tracing::info!(model = %id, version = spec.version, percent = spec.percent, since_ms = spec.since_ms, "shadow set");
        let refresh = self.refresh(id).await?;
        Ok(self.shadow_view(id, spec, Some(refresh.live)))
    }

    /// Drops `id`'s shadow from the store; answers it as it was (`None` when what was
    /// dropped was a shadow file that is not valid).
    pub async fn drop_shadow(&self, id: &ModelId) -> Result<Option<ShadowSpec>, ScorerError> {
        let _one = self.shadows.changes.lock().await;
        let (state, repaired) = self.existing_replacing_shadow(id).await?;
        let Some(spec) = state.shadow else {
            if repaired {
                self.refresh(id).await?;
                return Ok(None);
            }
            return Err(ScorerError::NoShadow(id.to_string()));
        };
        self.store
            .write_shadow(id, None)
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        tracing::info!(model = %id, version = spec.version, "shadow dropped");
        self.refresh(id).await?;
        Ok(Some(spec))
    }

    /// Promotes `id`'s shadow: pins its version (`alias.json`), drops the shadow, then
    /// moves this scorer to the pinned version (from memory when the candidate is
    /// resident). With `since_ms`, only the shadow set then (409 otherwise), so two
    /// judges never promote twice; one change of a shadow at a time runs here (set, drop
    /// and promote take the same lock), and the store is read again just before the
    /// shadow is deleted, so a shadow set meanwhile elsewhere is kept (`drop_promoted`).
    pub async fn promote_shadow(
        &self,
        id: &ModelId,
        since_ms: Option<u64>,
    ) -> Result<(ShadowSpec, Refresh), ScorerError> {
        let _one = self.shadows.changes.lock().await;
        let state = self.existing(id).await?;
        let spec = state
            .shadow
            .clone()
            .ok_or_else(|| ScorerError::NoShadow(id.to_string()))?;
        if let Some(since_ms) = since_ms
            && since_ms != spec.since_ms
        {
            return Err(ScorerError::Conflict(format!(
                "the shadow of '{id}' was set at {} ms, not {since_ms}: it was replaced",
                spec.since_ms
            )));
        }
        if !state.versions.contains(&spec.version) {
            return Err(ScorerError::VersionNotFound {
                id: id.to_string(),
                version: spec.version.to_string(),
            });
        }
        self.store
            .write_alias(id, Some(spec.version))
            .await
            .map_err(|e| ScorerError::from_store(e, id, None))?;
        let dropped = self.drop_promoted(id, &spec).await?;
        tracing::info!(model = %id, version = spec.version, since_ms = spec.since_ms, dropped, "shadow promoted: alias written");
        // About to serve requests: no longer a shadow version to evict first.
        self.state().unmark_shadow(&ModelKey {
            id: id.clone(),
            version: spec.version,
        });
        let refresh = self.refresh(id).await?;
        Ok((spec, refresh))
    }

    /// Deletes `id`'s shadow after its promotion if the store still holds the one promoted
    /// (`spec`: same version, same `since_ms`), read again just before; a shadow set
    /// meanwhile (by another scorer: this one's changes wait for the promotion) is kept
    /// and logged. `true` when deleted. What remains is the window between this read and
    /// the delete (one store round trip) against a writer on another scorer.
    async fn drop_promoted(&self, id: &ModelId, spec: &ShadowSpec) -> Result<bool, ScorerError> {
        let current = match self.store.model_state(id).await {
            Ok(state) => state.shadow,
            Err(StoreError::InvalidFile {
                file: SHADOW_FILE,
                error,
            }) => {
                tracing::warn!(model = %id, %error, "after a promotion the shadow file is not valid: left for an operator");
                return Ok(false);
            }
            Err(e) => return Err(ScorerError::from_store(e, id, None)),
        };
        match current {
            Some(now) if now.version == spec.version && now.since_ms == spec.since_ms => {
                self.store
                    .write_shadow(id, None)
                    .await
                    .map_err(|e| ScorerError::from_store(e, id, None))?;
                Ok(true)
            }
            Some(now) => {
                tracing::warn!(model = %id, promoted = spec.since_ms, since_ms = now.since_ms, version = now.version, "a shadow set during the promotion is kept");
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Every shadow this scorer follows, with its counts, narrowed to models starting with
    /// one of `prefixes` (when given).
    pub fn shadow_views(&self, prefixes: Option<&[String]>) -> Vec<ShadowView> {
        self.shadows
            .followed()
            .into_iter()
            .filter(|(id, _, _)| {
                prefixes.is_none_or(|p| p.iter().any(|p| id.as_str().starts_with(p.as_str())))
            })
            .map(|(id, spec, _)| {
                let live = self.lives.version(&id);
                self.shadow_view(&id, spec, live)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
