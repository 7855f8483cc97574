//! Cache pressure, the signal the scorer pool scales on: the **working set**, the fewest
//! bytes that would serve a share `coverage` of the request rate from memory (the hottest
//! models first, each at its size), against the budget.
//!
//! Why this and not the hit ratio or the load rate: both of those move only once the
//! working set no longer fits, when misses are already happening. The working set grows
//! with the traffic that makes it (new models, a flatter popularity), while everything
//! still fits; a pool that scales when it reaches a fraction of the budget adds scorers
//! before the hit ratio falls (`cargo xtask bench autoscale`, BENCHMARKS.md).

/// The request rate share the working set covers: the scorers should answer 95% of
/// requests from memory.
pub const COVERAGE: f64 = 0.95;

/// The fewest bytes that cover `coverage` (0 to 1) of the summed rate of `models`
/// (`(rate, bytes)`), taking the hottest first. Sorts `models` in place.
pub fn working_set_bytes(models: &mut [(f64, u64)], coverage: f64) -> u64 {
    models.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = models.iter().map(|(rate, _)| rate.max(0.0)).sum();
    let wanted = total * coverage.clamp(0.0, 1.0);
    let mut covered = 0.0;
    let mut bytes = 0u64;
    for (rate, size) in models.iter() {
        if covered >= wanted || *rate <= 0.0 {
            break;
        }
        covered += rate;
        bytes = bytes.saturating_add(*size);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_working_set_is_the_hottest_models_that_cover_the_share() {
        // 50 + 30 of 100 req/s is 80%, so 95% also needs the 15 req/s model.
        let mut models = vec![(5.0, 1_000), (50.0, 10), (15.0, 300), (30.0, 20)];
        assert_eq!(working_set_bytes(&mut models, 0.95), 330);
        assert_eq!(working_set_bytes(&mut models, 0.5), 10);
        assert_eq!(working_set_bytes(&mut models, 1.0), 1_330);
        assert_eq!(working_set_bytes(&mut models, 0.0), 0);
        assert_eq!(working_set_bytes(&mut [], 0.95), 0);
        // Models with no traffic are never wanted.
        assert_eq!(working_set_bytes(&mut [(0.0, 5), (1.0, 7)], 1.0), 7);
    }

    #[test]
    fn spreading_the_same_traffic_over_more_models_grows_the_working_set() {
        let concentrated: Vec<(f64, u64)> =
            (1..=100).map(|r| (1.0 / f64::from(r), 1_000)).collect();
        let spread: Vec<(f64, u64)> = (1..=200)
            .map(|r| (0.5 / f64::from(r).sqrt(), 1_000))
            .collect();
        assert!(
            working_set_bytes(&mut spread.clone(), COVERAGE)
                > working_set_bytes(&mut concentrated.clone(), COVERAGE)
        );
    }
}
