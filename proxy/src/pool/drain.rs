//! The way out of rotation: the scorers draining now.

use std::sync::{Arc, RwLock};

/// Scorers shutting down: their readiness answers 503 with `header::DRAINING` while they
/// keep serving for their `shutdown.drain`. Out of rotation like any scorer that fails its
/// check, but `Pool::draining_holder` still offers one for the models it holds hot, so
/// those are served from its memory until their successors hold them (the drain hand-off).
/// Read only for requests no healthy candidate holds the model for, and by admin calls.
///
/// Set by the health check, pruned to the members by discovery (through admission),
/// cleared by a passive ejection.
#[derive(Default)]
pub(super) struct Draining(RwLock<Vec<Arc<str>>>);

impl Draining {
    pub(super) fn set(&self, name: &str, draining: bool) {
        let mut names = self.0.write().unwrap_or_else(|p| p.into_inner());
        match (draining, names.iter().position(|n| &**n == name)) {
            (true, None) => {
                tracing::info!(scorer = %name, "scorer draining: serving the models it holds until their successors do");
                names.push(Arc::from(name));
            }
            (false, Some(i)) => {
                names.swap_remove(i);
            }
            _ => {}
        }
    }

    /// Keeps only the names `keep` accepts.
    pub(super) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| keep(n));
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| &**n == name)
    }

    /// The names draining now.
    pub(super) fn names(&self) -> Vec<Arc<str>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
