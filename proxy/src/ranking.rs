//! Rendezvous (highest random weight) ranking of scorers for a model id.
//!
//! The ranking is a pure function of (model id, set of scorer names): every proxy replica,
//! and every restart, ranks the same way, with no shared state. Removing one of N scorers
//! moves only the models it ranked first (about 1/N of them), each to its next-ranked
//! scorer; adding one takes about 1/(N+1) from the others.
//!
//! `Rendezvous` plugs into Pingora's load balancer as a `BackendSelection`, so
//! `LoadBalancer::select_with` walks the candidates in rank order and skips unhealthy ones.

use std::collections::BTreeSet;
use std::sync::Arc;

pub use manymodels_policy::ranking::rank;
use pingora::lb::Backend;
use pingora::lb::selection::{BackendIter, BackendSelection};

/// The rendezvous identity of a backend: its configured name (`scorer-0.scorers:8001`),
/// stored in the backend's extensions, or its address when it has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScorerName(pub Arc<str>);

pub fn name_of(backend: &Backend) -> String {
    backend
        .ext
        .get::<ScorerName>()
        .map(|n| n.0.to_string())
        .unwrap_or_else(|| backend.addr.to_string())
}

/// The name without allocating; backends made by the proxy's discovery always carry one.
pub fn name_ref(backend: &Backend) -> &str {
    backend.ext.get::<ScorerName>().map(|n| &*n.0).unwrap_or("")
}

/// Pingora selection: backends in rendezvous order for the key (a model id).
pub struct Rendezvous {
    backends: Box<[Backend]>,
    names: Box<[String]>,
}

impl BackendSelection for Rendezvous {
    type Iter = RankedIter;
    type Config = ();

    fn build(backends: &BTreeSet<Backend>) -> Self {
        let backends: Box<[Backend]> = backends.iter().cloned().collect();
        let names = backends.iter().map(name_of).collect();
        Rendezvous { backends, names }
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> Self::Iter {
        let key = String::from_utf8_lossy(key);
        let ranked = rank(&key, self.names.iter().map(String::as_str));
        let order = ranked
            .iter()
            .map(|name| {
                self.names
                    .iter()
                    .position(|n| n == name)
                    .expect("ranked from names")
            })
            .collect();
        RankedIter {
            selection: self.clone(),
            order,
            next: 0,
        }
    }
}

pub struct RankedIter {
    selection: Arc<Rendezvous>,
    order: Vec<usize>,
    next: usize,
}

impl BackendIter for RankedIter {
    fn next(&mut self) -> Option<&Backend> {
        let index = *self.order.get(self.next)?;
        self.next += 1;
        self.selection.backends.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("scorer-{i}.scorers:8001")).collect()
    }

    #[test]
    fn the_mapping_is_pinned() {
        // A change here re-homes every model in every deployed pool: it must be deliberate.
        let pool = names(3);
        let pool: Vec<&str> = pool.iter().map(String::as_str).collect();
        let first: Vec<&str> = [
            "store-0001",
            "store-0002",
            "store-0003",
            "linear-small",
            "forest-1mb",
        ]
        .iter()
        .map(|id| rank(id, pool.iter().copied())[0])
        .collect();
        assert_eq!(
            first, PINNED,
            "rendezvous mapping changed; update PINNED only on purpose"
        );
    }

    const PINNED: [&str; 5] = [
        "scorer-2.scorers:8001",
        "scorer-0.scorers:8001",
        "scorer-0.scorers:8001",
        "scorer-2.scorers:8001",
        "scorer-1.scorers:8001",
    ];

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let all = names(5);
        let before: Vec<&str> = all.iter().map(String::as_str).collect();
        let removed = before[2];
        let after: Vec<&str> = before.iter().copied().filter(|n| *n != removed).collect();
        let keys: Vec<String> = (0..10_000).map(|i| format!("model-{i}")).collect();
        let mut moved = 0;
        for key in &keys {
            let old = rank(key, before.iter().copied());
            let new = rank(key, after.iter().copied());
            if old[0] != new[0] {
                moved += 1;
                assert_eq!(old[0], removed, "{key} moved although its scorer stayed");
                assert_eq!(new[0], old[1], "{key} must move to its next-ranked scorer");
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!(
            (share - 0.2).abs() < 0.03,
            "moved {share} of keys, expected about 1/5"
        );
    }

    #[test]
    fn keys_spread_evenly() {
        let pool = names(3);
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            let first = rank(&format!("m{i}"), pool.iter().map(String::as_str))[0];
            counts[pool.iter().position(|n| n == first).unwrap()] += 1;
        }
        for count in counts {
            assert!((9_000..=11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn the_pingora_selection_walks_backends_in_rank_order() {
        let set: BTreeSet<Backend> = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
            .iter()
            .map(|a| Backend::new(a).unwrap())
            .collect();
        let selection = Arc::new(Rendezvous::build(&set));
        let mut iter = selection.iter(b"store-42");
        let mut walked = Vec::new();
        while let Some(backend) = iter.next() {
            walked.push(backend.addr.to_string());
        }
        let expected = rank(
            "store-42",
            ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
        );
        assert_eq!(walked, expected);
    }
}
