//! Which scorer serves a request, as a pure function of what the proxy knows about the
//! candidates: their rendezvous order, whether each holds the model hot, and the requests
//! each has in flight. Every routing rule is here; `service.rs` gathers that state (from
//! the pool and the statistics) and carries out the decision (counting it and starting
//! background warm loads).

/// What the proxy knows about one candidate, in rendezvous order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub hot: bool,
    pub inflight: usize,
    /// Out of rotation, shutting down: a candidate only because it holds the model hot
    /// (`Pool::draining_holder`), after the healthy ones.
    pub draining: bool,
}

/// The routing knobs (`routing.*`, `replication.*`).
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub top_k: usize,
    pub load_factor: f64,
    pub min_inflight: usize,
    /// Whether a draining scorer may serve the models it holds (`routing.drain_handoff`).
    pub drain_handoff: bool,
    /// The model is above the replication threshold (see [`replicates`]).
    pub replicate: bool,
}

impl Policy {
    /// How many healthy candidates a model request is chosen among: the top k, and never
    /// fewer than two (a replicated model's second scorer, a spill's target). A request
    /// that names no model is chosen among as many ([`least_busy`]).
    pub fn candidates(&self) -> usize {
        self.top_k.max(2)
    }

    /// Whether to look for a draining scorer that holds the model (the drain hand-off),
    /// given the healthy candidates: only when none of those [`decide`] would prefer for
    /// it (the first k) holds it.
    pub fn wants_draining_holder(&self, healthy: &[View]) -> bool {
        self.drain_handoff && !healthy.iter().take(self.top_k.max(1)).any(|v| v.hot)
    }
}

/// Whether a model's pool-wide `rate` (requests a second) puts it above the replication
/// threshold (`replication.threshold`; `None`: replication is off). The same rule places
/// its statistics (`stats.rs`) and its requests.
pub fn replicates(rate: f64, threshold: Option<f64>) -> bool {
    threshold.is_some_and(|threshold| rate >= threshold)
}

/// The candidate for a request that names no model, by the requests each has in flight:
/// the least busy one (the first of them on a tie), so such requests spread without
/// favouring any scorer. `None` without candidates.
pub fn least_busy(inflight: impl IntoIterator<Item = usize>) -> Option<usize> {
    inflight
        .into_iter()
        .enumerate()
        .min_by_key(|(_, n)| *n)
        .map(|(i, _)| i)
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Index into the candidates of the scorer to send the request to.
    pub chosen: usize,
    /// Sent to a lower-ranked scorer because it holds the model and the first does not.
    pub hot_route: bool,
    /// Moved off an overloaded scorer to another that holds the model.
    pub spilled: bool,
    /// Sent to a draining scorer that holds the model, because no healthy candidate does
    /// yet (the drain hand-off).
    pub drained: bool,
    /// Candidate to warm in the background (a repository load), if any.
    pub warm: Option<usize>,
}

/// Chooses among `candidates` (rendezvous order, at least one):
///
/// 1. The first-ranked scorer, unless another of the top k holds the model hot and the
///    first does not: then that one, and the first is warmed so the model moves home
///    (after a scorer joined or restarted) without a cold request.
///    If none of them does but a draining scorer (after the healthy candidates) holds it,
///    that one serves while the first is warmed: a scorer shutting down hands its hot
///    models over without a cold request.
/// 2. A model above the replication threshold lives on its first two scorers: once both
///    hold it, the one with fewer requests in flight serves; until then the second is
///    warmed.
/// 3. If the chosen scorer has more requests in flight than `load_factor` × `mean`
///    (and at least `min_inflight`), the request spills to another candidate **that
///    already holds the model**. Spilling never sends a request to a scorer that would
///    have to load the model first: that would trade a short queue for a cold load, and a
///    burst for a cold model would cost a load per scorer instead of one.
///
/// A draining scorer is chosen only by the hand-off of step 1 (or when it is the only
/// candidate): never to spread a replicated model or to take a spill.
pub fn decide(candidates: &[View], mean_inflight: f64, policy: Policy) -> Decision {
    let mut decision = Decision::default();
    let top = &candidates[..candidates.len().min(policy.top_k.max(1))];
    if !candidates[0].hot {
        if let Some(i) = top.iter().position(|c| c.hot && !c.draining) {
            decision.chosen = i;
            decision.hot_route = true;
            decision.warm = Some(0);
        } else if let Some(i) = candidates.iter().position(|c| c.hot && c.draining) {
            decision.chosen = i;
            decision.warm = Some(0);
        }
    }
    if policy.replicate
        && candidates.len() >= 2
        && !candidates[0].draining
        && !candidates[1].draining
    {
        match (candidates[0].hot, candidates[1].hot) {
            (true, true) => {
                decision.chosen = if candidates[1].inflight < candidates[0].inflight {
                    1
                } else {
                    0
                };
            }
            (true, false) => decision.warm = Some(1),
            _ => {}
        }
    }
    let limit = (policy.load_factor * mean_inflight).max(policy.min_inflight as f64);
    let chosen = candidates[decision.chosen];
    if chosen.hot
        && chosen.inflight as f64 > limit
        && let Some(other) = candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != decision.chosen && c.hot && !c.draining)
            .min_by_key(|(_, c)| c.inflight)
            .map(|(i, _)| i)
        && candidates[other].inflight < chosen.inflight
    {
        decision.chosen = other;
        decision.spilled = true;
    }
    decision.drained = candidates[decision.chosen].draining;
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        top_k: 2,
        load_factor: 2.0,
        min_inflight: 8,
        drain_handoff: true,
        replicate: false,
    };

    fn view(hot: bool, inflight: usize) -> View {
        View {
            hot,
            inflight,
            draining: false,
        }
    }

    fn draining(hot: bool, inflight: usize) -> View {
        View {
            draining: true,
            ..view(hot, inflight)
        }
    }

    #[test]
    fn a_cold_model_goes_to_its_first_ranked_scorer_however_busy() {
        let d = decide(
            &[view(false, 500), view(false, 0), view(false, 0)],
            10.0,
            POLICY,
        );
        assert_eq!(
            d,
            Decision {
                chosen: 0,
                ..Decision::default()
            }
        );
    }

    #[test]
    fn a_model_hot_on_the_second_is_served_there_and_warmed_on_the_first() {
        let d = decide(
            &[view(false, 0), view(true, 0), view(false, 0)],
            0.0,
            POLICY,
        );
        assert_eq!(
            d,
            Decision {
                chosen: 1,
                hot_route: true,
                warm: Some(0),
                ..Decision::default()
            }
        );
        // Beyond the top k it does not count.
        let d = decide(
            &[view(false, 0), view(false, 0), view(true, 0)],
            0.0,
            POLICY,
        );
        assert_eq!(d.chosen, 0);
    }

    #[test]
    fn an_overloaded_scorer_spills_only_to_one_that_holds_the_model() {
        // Hot only on the first: no spill, however loaded.
        let d = decide(
            &[view(true, 100), view(false, 0), view(false, 0)],
            34.0,
            POLICY,
        );
        assert_eq!(d.chosen, 0);
        assert!(!d.spilled);
        // Hot on the third too: spill there.
        let d = decide(
            &[view(true, 100), view(false, 0), view(true, 2)],
            34.0,
            POLICY,
        );
        assert_eq!((d.chosen, d.spilled), (2, true));
        // Not over the limit: stay.
        let d = decide(&[view(true, 5), view(true, 0)], 2.5, POLICY);
        assert_eq!((d.chosen, d.spilled), (0, false));
    }

    #[test]
    fn a_replicated_model_is_warmed_on_the_second_then_spread_over_both() {
        let policy = Policy {
            replicate: true,
            ..POLICY
        };
        let d = decide(&[view(true, 3), view(false, 0)], 1.5, policy);
        assert_eq!((d.chosen, d.warm), (0, Some(1)));
        let d = decide(&[view(true, 3), view(true, 1)], 2.0, policy);
        assert_eq!(d.chosen, 1);
        let d = decide(&[view(true, 1), view(true, 3)], 2.0, policy);
        assert_eq!(d.chosen, 0);
    }

    #[test]
    fn a_draining_holder_serves_only_until_a_healthy_candidate_holds_the_model() {
        // Not yet on the healthy candidates: the draining holder serves, the first warms.
        let d = decide(
            &[view(false, 0), view(false, 0), draining(true, 50)],
            1.0,
            POLICY,
        );
        assert_eq!(
            (d.chosen, d.warm, d.drained, d.hot_route),
            (2, Some(0), true, false)
        );
        // Once the first holds it, the draining one gets nothing.
        let d = decide(
            &[view(true, 0), view(false, 0), draining(true, 0)],
            1.0,
            POLICY,
        );
        assert_eq!((d.chosen, d.drained), (0, false));
        // A healthy holder within the top k is preferred to the draining one.
        let d = decide(
            &[view(false, 0), view(true, 0), draining(true, 0)],
            1.0,
            POLICY,
        );
        assert_eq!((d.chosen, d.hot_route, d.drained), (1, true, false));
        // Never a spill target, however loaded the chosen scorer.
        let d = decide(
            &[view(true, 100), view(false, 0), draining(true, 0)],
            34.0,
            POLICY,
        );
        assert_eq!((d.chosen, d.spilled), (0, false));
        // Never the replica of a replicated model.
        let policy = Policy {
            replicate: true,
            ..POLICY
        };
        let d = decide(&[view(true, 9), draining(true, 0)], 5.0, policy);
        assert_eq!((d.chosen, d.warm, d.drained), (0, None, false));
        // The only candidate left: it serves.
        let d = decide(&[draining(true, 3)], 3.0, POLICY);
        assert_eq!((d.chosen, d.drained), (0, true));
    }

    #[test]
    fn a_draining_holder_is_looked_for_only_when_no_preferred_candidate_holds_the_model() {
        let cold = [view(false, 0), view(false, 0), view(true, 0)];
        assert!(
            POLICY.wants_draining_holder(&cold),
            "hot only past the top k"
        );
        assert!(
            POLICY.wants_draining_holder(&[]),
            "no healthy candidate at all"
        );
        assert!(!POLICY.wants_draining_holder(&[view(false, 0), view(true, 9)]));
        let off = Policy {
            drain_handoff: false,
            ..POLICY
        };
        assert!(
            !off.wants_draining_holder(&cold),
            "routing.drain_handoff = false"
        );
        assert_eq!(
            Policy { top_k: 1, ..POLICY }.candidates(),
            2,
            "never fewer than two"
        );
        assert_eq!(Policy { top_k: 3, ..POLICY }.candidates(), 3);
    }

    #[test]
    fn replication_starts_at_the_threshold_and_never_without_one() {
        assert!(replicates(5.0, Some(5.0)));
        assert!(!replicates(4.9, Some(5.0)));
        assert!(!replicates(1e9, None));
    }

    #[test]
    fn a_request_naming_no_model_goes_to_the_least_busy_candidate() {
        assert_eq!(least_busy([3, 1, 4, 1]), Some(1), "the first of a tie");
        assert_eq!(least_busy([0]), Some(0));
        assert_eq!(least_busy([]), None);
    }
}
