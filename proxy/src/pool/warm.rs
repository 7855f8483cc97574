//! Background warm loads: asking a scorer to load a model before its requests come.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::hot::HotTable;
use super::rotation::PoolKeys;

/// Warm loads the proxy asked for recently, so one is asked at most once per
/// `WARM_BACKOFF` per (model, scorer), and at most `MAX_WARMING` run at once.
const WARM_BACKOFF: Duration = Duration::from_secs(10);
const MAX_WARMING: usize = 4;

type WarmKey = (Arc<str>, Arc<str>);

/// The warm loads asked for, deduplicated and capped.
pub(super) struct Warmer {
    /// When each (model, scorer) warm load was last asked for.
    warming: Mutex<HashMap<WarmKey, Instant>>,
    slots: Arc<Semaphore>,
    /// Where a warm load that answered 200 is recorded.
    hot: Arc<HotTable>,
    /// The pool keys: each call carries the one its scorer takes.
    keys: Arc<PoolKeys>,
}

impl Warmer {
    pub(super) fn new(hot: Arc<HotTable>, keys: Arc<PoolKeys>) -> Self {
        Warmer {
            warming: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_WARMING)),
            hot,
            keys,
        }
    }

    /// Asks the scorer `name` at `addr` to load `model` (see `Pool::warm`); a 200 records
    /// it in the hot table. Returns whether a warm load started.
    pub(super) fn warm(
        &self,
        model: &str,
        name: &Arc<str>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> bool {
        // A slot first: a warm load not started for want of one is asked again by the next
        // request, not held off for `WARM_BACKOFF` (a draining scorer's models are asked
        // for in bursts, more than `MAX_WARMING` at once).
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return false;
        };
        let key: WarmKey = (Arc::from(model), name.clone());
        if !self.ask(&key) {
            return false;
        }
        let hot = self.hot.clone();
        let authorization = self.keys.authorization_for(name);
        tokio::spawn(async move {
            let _slot = slot;
            let path = manymodels_contract::route::REPOSITORY_LOAD.path(&key.0);
            let addr = addr.to_string();
            let call = crate::http1::post(&addr, &path, authorization.as_deref());
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok((200, _))) => hot.record(&key.0, &key.1),
                Ok(Ok((status, _))) => {
                    tracing::debug!(model = %key.0, scorer = %key.1, status, "warm load refused")
                }
                Ok(Err(e)) => {
                    tracing::debug!(model = %key.0, scorer = %key.1, error = %e, "warm load failed")
                }
                Err(_) => tracing::debug!(model = %key.0, scorer = %key.1, "warm load timed out"),
            }
        });
        true
    }

    /// Notes that `key` is asked for now; `false` when it was within `WARM_BACKOFF`.
    fn ask(&self, key: &WarmKey) -> bool {
        let mut warming = self.warming.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if warming
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < WARM_BACKOFF)
        {
            return false;
        }
        if warming.len() > 10_000 {
            warming.retain(|_, at| now.duration_since(*at) < WARM_BACKOFF);
        }
        warming.insert(key.clone(), now);
        true
    }
}
