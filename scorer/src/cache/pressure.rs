//! The working set of this scorer's share: the signal the pool scales on
//! (`manymodels_policy::pressure`). The rates are the pool-wide ones the proxies push for
//! the models this scorer owns; a model's size is what it weighs here when resident, what
//! it weighed when it last was, or, for a model never loaded here, the mean of the known
//! sizes (its first request will load it and tell).

use std::collections::HashMap;

use manymodels_policy::pressure::{COVERAGE, working_set_bytes};

use super::ModelCache;
use crate::model_id::ModelId;

/// The most sizes remembered; past it, those of models no proxy reports are forgotten.
const MAX_SIZES: usize = 65_536;

/// The last known size of each model that was resident.
#[derive(Debug, Default)]
pub(super) struct Sizes(HashMap<ModelId, u64>);

impl ModelCache {
    /// The fewest bytes that would serve `COVERAGE` of this scorer's share of the pool's
    /// request rate from memory. Zero before the first statistics push.
    pub fn working_set(&self) -> u64 {
        let rates = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .combined();
        let resident: Vec<(ModelId, u64)> = self
            .state()
            .models()
            .map(|(_, m)| (m.id.clone(), m.weight))
            .collect();
        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        for (id, weight) in resident {
            sizes.0.insert(id, weight);
        }
        if sizes.0.len() > MAX_SIZES {
            sizes.0.retain(|id, _| rates.contains_key(id.as_str()));
        }
        let mean = if sizes.0.is_empty() {
            0
        } else {
            sizes.0.values().sum::<u64>() / sizes.0.len() as u64
        };
        let mut models: Vec<(f64, u64)> = rates
            .iter()
            .map(|(id, rate)| {
                let size = ModelId::parse(id)
                    .ok()
                    .and_then(|id| sizes.0.get(&id).copied())
                    .unwrap_or(mean);
                (*rate, size)
            })
            .collect();
        working_set_bytes(&mut models, COVERAGE)
    }
}
