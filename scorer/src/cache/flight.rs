//! Single flight: concurrent requests for one key share one run of its work (a model's
//! load), however many wait for it; the next request after it finished starts a new one.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

/// The runs in flight, by key.
pub(super) struct Flights<K, V> {
    cells: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Clone + Eq + Hash, V: Clone> Flights<K, V> {
    pub(super) fn new() -> Self {
        Flights {
            cells: Mutex::new(HashMap::new()),
        }
    }

    fn cells(&self) -> MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key`'s run in flight, or of `work` run now as that run. Every caller
    /// that joined the run gets a clone of its value.
    pub(super) async fn join<F: Future<Output = V>>(&self, key: &K, work: impl FnOnce() -> F) -> V {
        let cell = self.cells().entry(key.clone()).or_default().clone();
        let value = cell.get_or_init(work).await.clone();
        let mut cells = self.cells();
        if cells.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            cells.remove(key);
        }
        value
    }

    /// Whether a run for a key that `matches` is in flight.
    pub(super) fn any(&self, matches: impl Fn(&K) -> bool) -> bool {
        self.cells().keys().any(matches)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_a_later_one_starts_another() {
        let flights: Arc<Flights<&str, usize>> = Arc::new(Flights::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let join = |flights: Arc<Flights<&'static str, usize>>, runs: Arc<AtomicUsize>| async move {
            flights
                .join(&"m", || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
        };
        let callers: Vec<_> = (0..8)
            .map(|_| tokio::spawn(join(flights.clone(), runs.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(flights.any(|k| *k == "m"));
        assert!(!flights.any(|k| *k == "other"));
        for caller in callers {
            assert_eq!(
                caller.await.unwrap(),
                1,
                "every caller got the one run's value"
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!flights.any(|_| true), "nothing left in flight");
        assert_eq!(join(flights.clone(), runs.clone()).await, 2, "a new run");
    }
}
