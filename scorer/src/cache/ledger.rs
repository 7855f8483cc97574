//! The memory books: the resident set shared with the reservations of loads in flight
//! (and of evicted models still in use), what a load may reserve, and giving freed pages
//! back to the OS.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use tokio::sync::Notify;

use super::loader::{self, Phase};
use super::resident::{Reserve, Resident};
use super::{ModelCache, ModelKey};
use crate::engine::LoadedModel;
use crate::error::ScorerError;
use crate::metrics::Metrics;

/// The resident set with what waits on it: shared with the reservations, which give
/// their bytes back when dropped, wherever they are.
pub(super) struct Ledger {
    pub(super) state: std::sync::Mutex<Resident<LoadedModel>>,
    /// Signalled whenever a reservation is given back.
    pub(super) released: Notify,
    pub(super) metrics: Arc<Metrics>,
}

impl Ledger {
    pub(super) fn state(&self) -> MutexGuard<'_, Resident<LoadedModel>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Memory reserved for a load in flight, or for a model that left the cache while
/// requests still use it; given back when dropped.
pub(super) struct Reservation {
    ledger: Arc<Ledger>,
    bytes: u64,
    /// Granted to a load by `Resident::reserve` (else held memory).
    load: bool,
}

impl Reservation {
    /// Whether the load it covers is big enough to trim the heap after.
    pub(super) fn trims(&self) -> bool {
        loader::trims_after(self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut state = self.ledger.state();
            state.release(self.bytes, self.load);
            self.ledger
                .metrics
                .reserved_bytes
                .set(state.reserved() as i64);
        }
        self.ledger.released.notify_waiters();
    }
}

impl ModelCache {
    /// Frees models that left memory, outside the lock, and gives the pages back. One
    /// that requests still use stays accounted (a reservation of its weight, released when
    /// its last request lets go), so the next load cannot count on memory not yet free.
    pub(super) fn dropped(&self, models: Vec<Arc<LoadedModel>>) {
        if models.is_empty() {
            return;
        }
        for model in &models {
            if Arc::strong_count(model) > 1 {
                self.keep_accounted(model);
            }
        }
        drop(models);
        self.freed.store(true, Ordering::Relaxed);
        self.trim_if_freed();
    }

    /// Reserves `model`'s weight for as long as the model lives (it is outside the
    /// resident set, so nothing else charges it). Never waits: the memory exists already.
    pub(super) fn keep_accounted(&self, model: &Arc<LoadedModel>) {
        model.hold(Box::new(self.hold(model.weight)));
    }

    /// Accounts for `bytes` that are in memory already (never waits).
    pub(super) fn hold(&self, bytes: u64) -> Reservation {
        {
            let mut state = self.state();
            state.hold(bytes);
            self.metrics.reserved_bytes.set(state.reserved() as i64);
        }
        Reservation {
            ledger: self.ledger.clone(),
            bytes,
            load: false,
        }
    }

    /// A loaded model, unless it is larger than the whole budget.
    pub(super) fn fitting(
        &self,
        key: &ModelKey,
        model: LoadedModel,
        cpu: f64,
        reservation: Reservation,
    ) -> Result<(LoadedModel, f64, Reservation), ScorerError> {
        if self.state().fits(model.weight) {
            Ok((model, cpu, reservation))
        } else {
            Err(self.too_large(key, model.weight))
        }
    }

    pub(super) fn too_large(&self, key: &ModelKey, needed: u64) -> ScorerError {
        ScorerError::TooLarge {
            id: key.id.to_string(),
            version: key.version,
            needed,
            budget: self.config.budget.bytes(),
        }
    }

    /// Reserves the memory a load by `phase` of a `file`-byte model may hold, waiting for
    /// other loads to give theirs back when needed. Refuses at once, evicting nothing, a
    /// model whose expected size could never fit the budget.
    pub(super) async fn reserve(
        &self,
        key: &ModelKey,
        phase: Phase,
        file: u64,
    ) -> Result<Reservation, ScorerError> {
        // The ONNX file itself is held by the caller; an image is never held whole (its
        // arrays are read into the model), so its reservation is the whole model.
        let bytes = match phase {
            Phase::Image => loader::reservation(phase, file),
            Phase::Native | Phase::OnnxRuntime => {
                loader::reservation(phase, file).saturating_sub(file)
            }
        };
        let expected = match phase {
            Phase::Native => file / 2,
            Phase::OnnxRuntime => self.config.weigh(file),
            Phase::Image => file,
        };
        if !self.state().fits(expected) {
            return Err(self.too_large(key, expected));
        }
        loop {
            let released = self.ledger.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let outcome = {
                let now = self.now();
                let mut state = self.state();
                let outcome = state.reserve(bytes, now);
                self.metrics.reserved_bytes.set(state.reserved() as i64);
                outcome
            };
            match outcome {
                Reserve::Granted(bytes, dropped) => {
                    self.dropped(dropped);
                    return Ok(Reservation {
                        ledger: self.ledger.clone(),
                        bytes,
                        load: true,
                    });
                }
                Reserve::Wait => released.await,
            }
        }
    }

    /// After evictions, give freed heap pages back to the OS so RSS follows the budget:
    /// glibc keeps freed memory in its arenas otherwise. Measured: with a trim after every
    /// eviction, RSS under churn stays within about one budget of the idle process; without,
    /// it grew to 2.4 budgets (BENCHMARKS.md). The trim runs on a blocking thread, off the
    /// request path.
    pub(super) fn trim_if_freed(&self) {
        // A plain load first: most look-ups find nothing freed, and a swap would write
        // the shared cache line on every request.
        if self.freed.load(Ordering::Relaxed) && self.freed.swap(false, Ordering::Relaxed) {
            tokio::task::spawn_blocking(trim_heap);
        }
    }
}

#[cfg(target_env = "gnu")]
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
pub(crate) fn trim_heap() {}
