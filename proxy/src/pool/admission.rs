//! Admission to rotation: a discovered scorer takes requests only once it passed a
//! readiness check.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;

use super::drain::Draining;
use crate::ranking::{Rendezvous, name_ref};

/// Scorers that passed a readiness check since they joined the pool. Pingora starts every
/// discovered backend healthy until its first check; with a StatefulSet behind a headless
/// Service that publishes not-ready addresses, a pod is discovered as soon as it is
/// scheduled, before it listens, let alone warms. So discovery hands every backend that has
/// not passed a check yet to Pingora disabled, and the health check (`ScorerCheck`)
/// enables it the moment its first check passes. A disabled scorer is a member all the
/// same: the statistics push still gives it its share (so it warms before it reports
/// ready); it only takes no requests. A scorer that leaves is forgotten, so one that comes
/// back on the same address is checked again first.
#[derive(Default)]
pub(super) struct Admission {
    passed: Mutex<HashSet<SocketAddr>>,
    lb: OnceLock<Weak<LoadBalancer<Rendezvous>>>,
    /// The way out of rotation: scorers draining now, set by the health check, pruned to
    /// the members by discovery, read by routing (`Pool::draining_holder`).
    draining: Arc<Draining>,
}

impl Admission {
    /// The load balancer whose backends a first passed check enables (set once it is
    /// built: it owns the discovery and the check that share this).
    pub(super) fn attach(&self, lb: &Arc<LoadBalancer<Rendezvous>>) {
        let _ = self.lb.set(Arc::downgrade(lb));
    }

    /// The scorers draining now.
    pub(super) fn draining(&self) -> &Arc<Draining> {
        &self.draining
    }

    /// Pingora's enablement map for a discovered membership (keyed by the backend's hash,
    /// as Pingora's `DefaultHasher` computes it): enabled exactly when it passed a check.
    pub(super) fn enablement(&self, backends: &BTreeSet<Backend>) -> HashMap<u64, bool> {
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        let present: HashSet<&SocketAddr> = backends.iter().map(|b| &b.addr).collect();
        passed.retain(|addr| present.contains(addr));
        // A scorer that left the membership while draining is no longer checked: forget it.
        self.draining
            .retain(|name| backends.iter().any(|b| name_ref(b) == name));
        backends
            .iter()
            .map(|b| {
                let mut hasher = DefaultHasher::new();
                b.hash(&mut hasher);
                (hasher.finish(), passed.contains(&b.addr))
            })
            .collect()
    }

    /// `backend` passed a readiness check: on its first, it enters rotation.
    pub(super) fn passed(&self, backend: &Backend) {
        let first = self
            .passed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(backend.addr.clone());
        if first && let Some(lb) = self.lb.get().and_then(Weak::upgrade) {
            lb.backends().set_enable(backend, true);
            tracing::info!(scorer = %name_ref(backend), addr = %backend.addr, "scorer passed its first readiness check");
        }
    }
}
