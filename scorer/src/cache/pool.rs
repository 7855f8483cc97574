//! The pool's statistics as the proxies push them: each proxy's latest report, combined
//! into one rate per model (`manymodels_policy::PoolView`), which ranks the resident
//! models, picks warm-ups and sizes the working set.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use manymodels_policy::{PoolView, StatsRefusal, StatsReport};

/// The proxies' latest reports.
pub(super) struct PoolRates {
    view: Mutex<PoolView>,
    /// A proxy whose report is older than this (seconds) no longer counts.
    stale_after: f64,
}

impl PoolRates {
    pub(super) fn new(stale_after: f64) -> Self {
        PoolRates {
            view: Mutex::new(PoolView::default()),
            stale_after,
        }
    }

    pub(super) fn view(&self) -> MutexGuard<'_, PoolView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `report` (refused when a new proxy would exceed `max_sources`: the view keeps
    /// the others) and answers the combined rates.
    pub(super) fn apply(
        &self,
        report: StatsReport,
        now: f64,
        max_sources: usize,
    ) -> Result<HashMap<String, f64>, StatsRefusal> {
        let mut view = self.view();
        view.apply_bounded(report, now, self.stale_after, max_sources)?;
        Ok(view.combined())
    }

    /// Each model's pool-wide rate, requests per second.
    pub(super) fn combined(&self) -> HashMap<String, f64> {
        self.view().combined()
    }
}
