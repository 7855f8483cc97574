//! The working set of this scorer's share: the signal the pool scales on
//! (`manymodels_policy::pressure`). The rates are the pool-wide ones the proxies push for
//! the models this scorer owns; a model's size is what it weighs here when resident, what
//! it weighed when it last was, or, for a model never loaded here, the mean of the known
//! sizes (its first request will load it and tell).

use std::collections::HashMap;
use std::sync::Mutex;

use manymodels_policy::pressure::{COVERAGE, working_set_bytes};

use super::ModelCache;
use crate::model_id::ModelId;

/// The most sizes remembered; past it, those of models no proxy reports are forgotten.
const MAX_SIZES: usize = 65_536;

/// The last known size of each model that was resident.
#[derive(Debug, Default)]
pub(super) struct Sizes(Mutex<HashMap<ModelId, u64>>);

impl Sizes {
    /// The fewest bytes that would serve `COVERAGE` of `rates` (each model's rate in this
    /// scorer's share) from memory, learning the sizes of the `resident` models first.
    pub(super) fn working_set(
        &self,
        rates: &HashMap<String, f64>,
        resident: Vec<(ModelId, u64)>,
    ) -> u64 {
        let mut sizes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (id, weight) in resident {
            sizes.insert(id, weight);
        }
        if sizes.len() > MAX_SIZES {
            sizes.retain(|id, _| rates.contains_key(id.as_str()));
        }
        let mean = if sizes.is_empty() {
            0
        } else {
            sizes.values().sum::<u64>() / sizes.len() as u64
        };
        let mut models: Vec<(f64, u64)> = rates
            .iter()
            .map(|(id, rate)| {
                let size = ModelId::parse(id)
                    .ok()
                    .and_then(|id| sizes.get(&id).copied())
                    .unwrap_or(mean);
                (*rate, size)
            })
            .collect();
        working_set_bytes(&mut models, COVERAGE)
    }
}

impl ModelCache {
    /// The fewest bytes that would serve `COVERAGE` of this scorer's share of the pool's
    /// request rate from memory. Zero before the first statistics push.
    pub fn working_set(&self) -> u64 {
        let rates = self.pool.combined();
        let resident: Vec<(ModelId, u64)> = self
            .state()
            .models()
            .map(|(_, m)| (m.id.clone(), m.weight))
            .collect();
        self.sizes.working_set(&rates, resident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_never_resident_counts_at_the_mean_size() {
        let sizes = Sizes::default();
        let rates: HashMap<String, f64> = [
            ("a".to_string(), 10.0),
            ("b".to_string(), 10.0),
            ("c".to_string(), 0.001),
        ]
        .into_iter()
        .collect();
        let a = ModelId::parse("a").unwrap();
        // Only `a` was ever resident (100 bytes): `b`, as hot, is taken at the mean (100).
        let bytes = sizes.working_set(&rates, vec![(a, 100)]);
        assert_eq!(bytes, 200, "a and b cover the share; c is noise");
        // Sizes are remembered after the model left.
        assert_eq!(sizes.working_set(&rates, Vec::new()), 200);
    }
}
