//! The memory books: the resident set shared with the reservations of loads in flight
//! (and of evicted models still in use), the policy's clock, and giving freed pages back
//! to the OS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use super::loader;
use super::resident::{Reserve, Resident};
use crate::engine::LoadedModel;
use crate::metrics::Metrics;
use crate::model_id::ModelId;

/// The resident set with what waits on it: shared with the reservations, which give
/// their bytes back when dropped, wherever they are.
pub(super) struct Ledger {
    state: Mutex<Resident<LoadedModel>>,
    /// Signalled whenever a reservation is given back.
    released: Notify,
    metrics: Arc<Metrics>,
    /// The policy's clock starts here.
    started: Instant,
    /// Set when an eviction freed a model; cleared by the next trim.
    freed: AtomicBool,
}

impl Ledger {
    pub(super) fn new(state: Resident<LoadedModel>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Ledger {
            state: Mutex::new(state),
            released: Notify::new(),
            metrics,
            started: Instant::now(),
            freed: AtomicBool::new(false),
        })
    }

    pub(super) fn state(&self) -> MutexGuard<'_, Resident<LoadedModel>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds since start: the policy's clock.
    pub(super) fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// When the clock started.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// Frees models that left memory, outside the lock, and gives the pages back. One
    /// that requests still use stays accounted (a reservation of its weight, released when
    /// its last request lets go), so the next load cannot count on memory not yet free.
    pub(super) fn dropped(self: &Arc<Self>, models: Vec<Arc<LoadedModel>>) {
        if models.is_empty() {
            return;
        }
        for model in &models {
            if Arc::strong_count(model) > 1 {
                self.keep_accounted(model);
            }
        }
        drop(models);
        self.mark_freed();
        self.trim_if_freed();
    }

    /// Reserves `model`'s weight for as long as the model lives (it is outside the
    /// resident set, so nothing else charges it). Never waits: the memory exists already.
    pub(super) fn keep_accounted(self: &Arc<Self>, model: &Arc<LoadedModel>) {
        model.hold(Box::new(self.hold(model.weight)));
    }

    /// Accounts for `bytes` that are in memory already (never waits).
    pub(super) fn hold(self: &Arc<Self>, bytes: u64) -> Reservation {
        {
            let mut state = self.state();
            state.hold(bytes);
            self.metrics.reserved_bytes.set(state.reserved() as i64);
        }
        Reservation {
            ledger: self.clone(),
            bytes,
            kind: Kind::Held,
        }
    }

    /// Whether a model of `bytes` could ever be resident.
    pub(super) fn fits(&self, bytes: u64) -> bool {
        self.state().fits(bytes)
    }

    /// Reserves `bytes` for a load, evicting the lowest-priority residents when they do
    /// not fit, or waiting for other loads to give theirs back.
    pub(super) async fn reserve(self: &Arc<Self>, model: &ModelId, bytes: u64) -> Reservation {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let outcome = {
                let now = self.now();
                let mut state = self.state();
                let outcome = state.reserve(model, bytes, now);
                self.metrics.reserved_bytes.set(state.reserved() as i64);
                outcome
            };
            match outcome {
                Reserve::Granted(bytes, dropped) => {
                    self.dropped(dropped);
                    return Reservation {
                        ledger: self.clone(),
                        bytes,
                        kind: Kind::Load,
                    };
                }
                Reserve::Wait => released.await,
            }
        }
    }

    /// Reserves `bytes` for a shadow version's load: within the budget, evicting only
    /// other shadow versions, never waiting (`Resident::reserve_shadow`); `None` when
    /// there is no such room. Kept apart from the live loads' reservations, which do not
    /// count it.
    pub(super) fn reserve_shadow(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let granted = {
            let now = self.now();
            let mut state = self.state();
            let granted = state.reserve_shadow(bytes, now);
            self.metrics.reserved_bytes.set(state.reserved() as i64);
            granted
        };
        let (bytes, dropped) = granted?;
        self.dropped(dropped);
        Some(Reservation {
            ledger: self.clone(),
            bytes,
            kind: Kind::Shadow,
        })
    }

    /// Notes that memory was freed: the next look-up trims the heap.
    pub(super) fn mark_freed(&self) {
        self.freed.store(true, Ordering::Relaxed);
    }

    /// After evictions, give freed heap pages back to the OS so RSS follows the budget:
    /// glibc keeps freed memory in its arenas otherwise. Measured (BENCHMARKS.md, "Memory
    /// per model"): churning three budgets of forests through a 24.4 MB budget, RSS peaked
    /// at 76.0 MB with the trim and reached 101.2 MB without. The trim runs on a blocking
    /// thread, off the request path.
    pub(super) fn trim_if_freed(&self) {
        // A plain load first: most look-ups find nothing freed, and a swap would write
        // the shared cache line on every request.
        if self.freed.load(Ordering::Relaxed) && self.freed.swap(false, Ordering::Relaxed) {
            tokio::task::spawn_blocking(trim_heap);
        }
    }
}

/// Memory reserved for a load in flight, or for a model that left the cache while
/// requests still use it; given back when dropped.
pub(super) struct Reservation {
    ledger: Arc<Ledger>,
    bytes: u64,
    kind: Kind,
}

/// Who granted a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `Resident::reserve`: a live load.
    Load,
    /// `Resident::hold`: memory that exists already.
    Held,
    /// `Resident::reserve_shadow`: a shadow version's load, kept apart.
    Shadow,
}

impl Reservation {
    /// Whether the load it covers is big enough to trim the heap after.
    pub(super) fn trims(&self) -> bool {
        loader::trims_after(self.bytes)
    }

    /// The bytes it reserves.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut state = self.ledger.state();
            match self.kind {
                Kind::Shadow => state.release_shadow(self.bytes),
                Kind::Load | Kind::Held => state.release(self.bytes, self.kind == Kind::Load),
            }
            self.ledger
                .metrics
                .reserved_bytes
                .set(state.reserved() as i64);
        }
        self.ledger.released.notify_waiters();
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
