//! Offline cache simulation: replays a trace against the scorer's policy (the same
//! [`Policy`] code the scorer runs, fed by the same [`PoolStats`] the proxy keeps), plain
//! LRU, and Belady's offline policy, and reports request and byte miss ratios.
//!
//! Every request must be served, so a miss always loads the model (its bytes count as
//! loaded); the policy then decides whether it stays.

use std::collections::{BTreeSet, HashMap};

use crate::clock::TrafficClock;
use crate::policy::{CostModel, Policy, PolicyConfig};
use crate::stats::PoolStats;
use crate::tenants::{Share, Tenants};
use crate::trace::{Request, Rng, Zipf};

/// A cache under simulation.
pub trait Cache {
    fn name(&self) -> String;
    /// Serves request number `i`; returns whether it hit.
    fn access(&mut self, i: usize, request: &Request, bytes: u64) -> bool;
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub requests: u64,
    pub misses: u64,
    pub bytes_requested: u64,
    pub bytes_loaded: u64,
    /// Seconds of load work the misses cost, by the live cost model
    /// ([`PolicyConfig::default`]'s `cost`, calibrated on the scorer's measured loads).
    pub load_seconds: f64,
}

impl Outcome {
    pub fn request_miss_ratio(&self) -> f64 {
        self.misses as f64 / self.requests.max(1) as f64
    }

    pub fn byte_miss_ratio(&self) -> f64 {
        self.bytes_loaded as f64 / self.bytes_requested.max(1) as f64
    }

    pub fn hit_ratio(&self) -> f64 {
        1.0 - self.request_miss_ratio()
    }

    fn add(&mut self, other: &Outcome) {
        self.requests += other.requests;
        self.misses += other.misses;
        self.bytes_requested += other.bytes_requested;
        self.bytes_loaded += other.bytes_loaded;
        self.load_seconds += other.load_seconds;
    }
}

/// Replays `trace` (sizes indexed by model) through `cache`.
pub fn run(cache: &mut dyn Cache, trace: &[Request], sizes: &[u64]) -> Outcome {
    let mut outcome = Outcome {
        name: cache.name(),
        ..Outcome::default()
    };
    let cost = PolicyConfig::default().cost;
    for (i, request) in trace.iter().enumerate() {
        let bytes = sizes[request.model as usize];
        outcome.requests += 1;
        outcome.bytes_requested += bytes;
        if !cache.access(i, request, bytes) {
            outcome.misses += 1;
            outcome.bytes_loaded += bytes;
            outcome.load_seconds += cost.estimate(bytes);
        }
    }
    outcome
}

/// Replays `trace` through `cache` with each model's size from `size`, and counts the
/// outcome per tenant: `tenant` gives a model's index, below `tenants`.
pub fn run_by_tenant(
    cache: &mut dyn Cache,
    trace: &[Request],
    size: impl Fn(u32) -> u64,
    tenant: impl Fn(u32) -> usize,
    tenants: usize,
) -> Vec<Outcome> {
    let mut outcomes = vec![
        Outcome {
            name: cache.name(),
            ..Outcome::default()
        };
        tenants
    ];
    let cost = PolicyConfig::default().cost;
    for (i, request) in trace.iter().enumerate() {
        let bytes = size(request.model);
        let outcome = &mut outcomes[tenant(request.model)];
        outcome.requests += 1;
        outcome.bytes_requested += bytes;
        if !cache.access(i, request, bytes) {
            outcome.misses += 1;
            outcome.bytes_loaded += bytes;
            outcome.load_seconds += cost.estimate(bytes);
        }
    }
    outcomes
}

/// Noisy neighbours: tenant B's steady Zipf traffic over its models beside tenant A
/// scanning cold models as fast as it can (`cargo xtask bench policy`'s tenant scenario).
#[derive(Clone, Copy, Debug)]
pub struct Neighbours {
    /// Tenant B's models (ids `B_BASE..`), asked for by Zipf(1.0) popularity.
    pub b_models: u32,
    /// Tenant A's models (ids `A_BASE..`), scanned in order, round after round.
    pub a_models: u32,
    /// B's requests; A's are interleaved at `a_per_b` per B request (0: B alone).
    pub b_requests: usize,
    pub a_per_b: usize,
    /// B's requests per second (A's come in between, as fast as they are sent).
    pub rate: f64,
    pub seed: u64,
}

impl Neighbours {
    /// Tenant B's first model id: its ids start with `1` in decimal.
    pub const B_BASE: u32 = 1_000_000;
    /// Tenant A's first model id: its ids start with `2`.
    pub const A_BASE: u32 = 2_000_000;

    /// The trace: B's Zipf requests at `rate`, each followed by `a_per_b` of A's scan.
    pub fn trace(&self) -> Vec<Request> {
        let mut rng = Rng::new(self.seed);
        let zipf = Zipf::new(self.b_models as usize, 1.0);
        let mut perm: Vec<u32> = (0..self.b_models).collect();
        rng.shuffle(&mut perm);
        let dt = 1.0 / self.rate;
        let step = dt / (self.a_per_b + 1) as f64;
        let mut out = Vec::with_capacity(self.b_requests * (self.a_per_b + 1));
        let mut scan = 0u32;
        for i in 0..self.b_requests {
            let t = i as f64 * dt;
            out.push(Request {
                t,
                model: Self::B_BASE + perm[zipf.sample(&mut rng)],
            });
            for j in 0..self.a_per_b {
                out.push(Request {
                    t: t + (j + 1) as f64 * step,
                    model: Self::A_BASE + scan,
                });
                scan = (scan + 1) % self.a_models.max(1);
            }
        }
        out
    }

    /// Tenant 0 is B, 1 is A, 2 the default tenant (no model of this trace).
    pub fn tenant(model: u32) -> usize {
        if model >= Self::A_BASE { 1 } else { 0 }
    }

    /// The shares: B with `b_floor` of the budget, A capped at `a_cap`.
    pub fn shares(b_floor: f64, a_cap: f64) -> Tenants {
        Tenants::new(vec![
            Share {
                name: "b".into(),
                prefixes: vec!["1".into()],
                floor: b_floor,
                cap: 1.0,
            },
            Share {
                name: "a".into(),
                prefixes: vec!["2".into()],
                floor: 0.0,
                cap: a_cap,
            },
        ])
        .expect("valid shares")
    }
}

/// Replays `trace` through a pool: each request goes to the first-ranked of `scorers`
/// (the proxy's rendezvous ranking of `names[model]`), each scorer with its own cache
/// made by `make`. Returns the pool's totals.
pub fn run_pool(
    trace: &[Request],
    sizes: &[u64],
    names: &[String],
    scorers: &[String],
    mut make: impl FnMut() -> Box<dyn Cache>,
) -> Outcome {
    let owner: Vec<usize> = names
        .iter()
        .map(|name| {
            let first = crate::ranking::rank(name, scorers.iter().map(String::as_str))[0];
            scorers.iter().position(|s| s == first).expect("ranked")
        })
        .collect();
    let mut parts: Vec<Vec<(usize, Request)>> = vec![Vec::new(); scorers.len()];
    for (i, r) in trace.iter().enumerate() {
        parts[owner[r.model as usize]].push((i, *r));
    }
    let mut total = Outcome::default();
    for part in parts {
        let mut cache = make();
        total.name = cache.name();
        let requests: Vec<Request> = part.iter().map(|(_, r)| *r).collect();
        total.add(&run(cache.as_mut(), &requests, sizes));
    }
    total
}

/// Byte-bounded least-recently-used; admits everything that fits.
pub struct Lru {
    capacity: u64,
    used: u64,
    clock: u64,
    by_time: BTreeSet<(u64, u32)>,
    resident: HashMap<u32, (u64, u64)>,
}

impl Lru {
    pub fn new(capacity: u64) -> Self {
        Lru {
            capacity,
            used: 0,
            clock: 0,
            by_time: BTreeSet::new(),
            resident: HashMap::new(),
        }
    }
}

impl Cache for Lru {
    fn name(&self) -> String {
        "lru".into()
    }

    fn access(&mut self, _: usize, r: &Request, bytes: u64) -> bool {
        self.clock += 1;
        if let Some((time, size)) = self.resident.get_mut(&r.model) {
            self.by_time.remove(&(*time, r.model));
            *time = self.clock;
            let _ = size;
            self.by_time.insert((self.clock, r.model));
            return true;
        }
        if bytes > self.capacity {
            return false;
        }
        while self.used + bytes > self.capacity {
            let (time, victim) = *self.by_time.iter().next().expect("used > 0");
            self.by_time.remove(&(time, victim));
            let (_, size) = self.resident.remove(&victim).expect("resident");
            self.used -= size;
        }
        self.used += bytes;
        self.by_time.insert((self.clock, r.model));
        self.resident.insert(r.model, (self.clock, bytes));
        false
    }
}

/// Belady's offline policy with bypass: on a miss, evict the residents used furthest in
/// the future, and do not admit a model whose next use is further than theirs.
pub struct Belady {
    capacity: u64,
    used: u64,
    next_use: Vec<usize>,
    by_next: BTreeSet<(usize, u32)>,
    resident: HashMap<u32, (usize, u64)>,
}

impl Belady {
    pub fn new(capacity: u64, trace: &[Request]) -> Self {
        let mut next_use = vec![usize::MAX; trace.len()];
        let mut seen: HashMap<u32, usize> = HashMap::new();
        for (i, r) in trace.iter().enumerate().rev() {
            if let Some(&n) = seen.get(&r.model) {
                next_use[i] = n;
            }
            seen.insert(r.model, i);
        }
        Belady {
            capacity,
            used: 0,
            next_use,
            by_next: BTreeSet::new(),
            resident: HashMap::new(),
        }
    }
}

impl Cache for Belady {
    fn name(&self) -> String {
        "belady".into()
    }

    fn access(&mut self, i: usize, r: &Request, bytes: u64) -> bool {
        let next = self.next_use[i];
        if let Some((at, _)) = self.resident.get_mut(&r.model) {
            self.by_next.remove(&(*at, r.model));
            *at = next;
            self.by_next.insert((next, r.model));
            return true;
        }
        if bytes > self.capacity || next == usize::MAX {
            return false;
        }
        let mut free = self.capacity - self.used;
        let mut victims = Vec::new();
        for &(at, victim) in self.by_next.iter().rev() {
            if free >= bytes {
                break;
            }
            if at < next {
                return false; // everything left is needed sooner than this model
            }
            free += self.resident[&victim].1;
            victims.push((at, victim));
        }
        for (at, victim) in victims {
            self.by_next.remove(&(at, victim));
            self.used -= self.resident.remove(&victim).expect("resident").1;
        }
        self.used += bytes;
        self.by_next.insert((next, r.model));
        self.resident.insert(r.model, (next, bytes));
        false
    }
}

/// The best fixed set of residents with hindsight: the models with the most requests in
/// the whole trace per byte^`size_weight`, filling the budget; nothing else is ever
/// admitted. Under independent requests this is what perfect frequency knowledge buys.
pub struct Static {
    resident: std::collections::HashSet<u32>,
    size_weight: f64,
}

impl Static {
    pub fn new(capacity: u64, trace: &[Request], sizes: &[u64], size_weight: f64) -> Self {
        let mut counts = vec![0u64; sizes.len()];
        for r in trace {
            counts[r.model as usize] += 1;
        }
        let mut order: Vec<u32> = (0..sizes.len() as u32)
            .filter(|&m| counts[m as usize] > 0)
            .collect();
        let value =
            |m: u32| counts[m as usize] as f64 / (sizes[m as usize] as f64).powf(size_weight);
        order.sort_by(|&a, &b| value(b).total_cmp(&value(a)));
        let mut used = 0;
        let mut resident = std::collections::HashSet::new();
        for m in order {
            if used + sizes[m as usize] <= capacity {
                used += sizes[m as usize];
                resident.insert(m);
            }
        }
        Static {
            resident,
            size_weight,
        }
    }
}

impl Static {
    /// The best fixed set for load work: the models with the most load seconds per byte
    /// over the whole trace (requests × the cost model's seconds for their size), filling
    /// the budget. An offline reference for load seconds.
    pub fn by_cost(capacity: u64, trace: &[Request], sizes: &[u64], cost: CostModel) -> Self {
        let mut counts = vec![0u64; sizes.len()];
        for r in trace {
            counts[r.model as usize] += 1;
        }
        let value = |m: usize| counts[m] as f64 * cost.estimate(sizes[m]) / sizes[m].max(1) as f64;
        let mut order: Vec<usize> = (0..sizes.len()).filter(|&m| counts[m] > 0).collect();
        order.sort_by(|&a, &b| value(b).total_cmp(&value(a)));
        let mut used = 0;
        let mut resident = std::collections::HashSet::new();
        for m in order {
            if used + sizes[m] <= capacity {
                used += sizes[m];
                resident.insert(m as u32);
            }
        }
        Static {
            resident,
            size_weight: f64::NAN,
        }
    }
}

impl Cache for Static {
    fn name(&self) -> String {
        if self.size_weight.is_nan() {
            "static oracle (load seconds)".into()
        } else {
            format!("static oracle (size_weight={})", self.size_weight)
        }
    }

    fn access(&mut self, _: usize, r: &Request, _: u64) -> bool {
        self.resident.contains(&r.model)
    }
}

/// The scorer's policy, fed pool-wide statistics the way the proxy feeds it: every
/// request is counted in a [`PoolStats`], which is ticked every second and pushed to the
/// policy every `push_every` seconds (`None`: the policy sees only its own counts). The
/// policy runs on the scorer's traffic clock, as in the scorer: one unit per request, and
/// the pushed rates (req/s) divided by the measured request rate.
pub struct Managed {
    policy: Policy<u32>,
    clock: TrafficClock,
    /// Decay by wall-clock seconds instead (the policy before the traffic clock; for
    /// comparison only: `half_life` is then in seconds).
    wall_clock: bool,
    stats: Option<PoolStats<u32>>,
    push_every: f64,
    last_tick: f64,
    last_push: f64,
}

impl Managed {
    pub fn new(capacity: u64, config: PolicyConfig, push_every: Option<f64>) -> Self {
        Self::with_tenants(capacity, config, push_every, Tenants::none())
    }

    /// The policy with tenant shares (`Key::text` of a `u32` model is its decimal number,
    /// so a tenant's prefix is its models' leading digits).
    pub fn with_tenants(
        capacity: u64,
        config: PolicyConfig,
        push_every: Option<f64>,
        tenants: Tenants,
    ) -> Self {
        Managed {
            policy: Policy::with_tenants(capacity, config, tenants),
            clock: TrafficClock::new(0.0),
            wall_clock: false,
            stats: push_every.map(|_| PoolStats::new(config.half_life, 16_384, 0.0)),
            push_every: push_every.unwrap_or(f64::INFINITY),
            last_tick: 0.0,
            last_push: 0.0,
        }
    }
}

impl Managed {
    /// The same policy with counts decaying by wall-clock time (`half_life` seconds), as
    /// before the traffic clock, without pool statistics: the comparison the rate sweep of
    /// `cargo xtask bench policy` prints.
    pub fn wall_clock(capacity: u64, config: PolicyConfig) -> Self {
        let mut managed = Managed::new(capacity, config, None);
        managed.wall_clock = true;
        managed
    }
}

impl Cache for Managed {
    fn name(&self) -> String {
        let c = self.policy.config();
        format!(
            "managed(h={} {}, size_weight={}{})",
            c.half_life,
            if self.wall_clock { "s" } else { "requests" },
            c.size_weight,
            if self.stats.is_some() { ", pool" } else { "" }
        )
    }

    fn access(&mut self, _: usize, r: &Request, bytes: u64) -> bool {
        let now = if self.wall_clock {
            r.t
        } else {
            self.clock.tick(1.0, r.t)
        };
        if let Some(stats) = &mut self.stats {
            stats.record(&r.model);
            if r.t - self.last_tick >= 1.0 {
                stats.tick(r.t);
                self.last_tick = r.t;
            }
            if r.t - self.last_push >= self.push_every {
                let per_second = self.clock.per_second();
                self.policy
                    .set_pool_rates(stats.hot().map(|(k, v)| (*k, v / per_second)), now);
                self.last_push = r.t;
            }
        }
        if self.policy.record(&r.model, now) {
            return true;
        }
        self.policy.admit(r.model, bytes, None, now);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Shape, TraceSpec, generate, lognormal_sizes};

    fn setup(shape: Shape) -> (Vec<Request>, Vec<u64>, u64) {
        let spec = TraceSpec {
            shape,
            models: 2_000,
            requests: 60_000,
            rate: 1_000.0,
            seed: 3,
        };
        let sizes = lognormal_sizes(spec.models, 3);
        let budget = sizes.iter().sum::<u64>() / 10;
        (generate(&spec), sizes, budget)
    }

    #[test]
    fn belady_is_a_floor_for_lru_and_the_policy() {
        let (trace, sizes, budget) = setup(Shape::Zipf(1.0));
        let lru = run(&mut Lru::new(budget), &trace, &sizes);
        let opt = run(&mut Belady::new(budget, &trace), &trace, &sizes);
        let ours = run(
            &mut Managed::new(budget, PolicyConfig::default(), Some(2.0)),
            &trace,
            &sizes,
        );
        assert!(opt.misses < lru.misses && opt.misses < ours.misses);
        assert!(ours.request_miss_ratio() < lru.request_miss_ratio());
        assert!(ours.byte_miss_ratio() < lru.byte_miss_ratio());
    }

    /// B's hit ratio alone, beside A's scan without shares, and beside it with B's floor.
    fn neighbours_hit_ratios() -> (f64, f64, f64) {
        let spec = Neighbours {
            b_models: 500,
            a_models: 5_000,
            b_requests: 40_000,
            a_per_b: 0,
            rate: 1_000.0,
            seed: 7,
        };
        let size = |_| 10_000;
        // The budget holds B's whole set (5 MB) and a little more, not A's scan as well.
        let budget = 6_000_000;
        let b = |trace: &[Request], tenants: Tenants| {
            let mut cache = Managed::with_tenants(budget, PolicyConfig::default(), None, tenants);
            run_by_tenant(&mut cache, trace, size, Neighbours::tenant, 3)[0].hit_ratio()
        };
        let alone = b(&spec.trace(), Tenants::none());
        let noisy = Neighbours { a_per_b: 4, ..spec }.trace();
        (
            alone,
            b(&noisy, Tenants::none()),
            b(&noisy, Neighbours::shares(0.8, 1.0)),
        )
    }

    #[test]
    fn a_floor_keeps_a_tenant_whole_beside_a_scan_and_no_floor_does_not() {
        let (alone, plain, floored) = neighbours_hit_ratios();
        assert!(alone > 0.9, "B alone: {alone}");
        // Within one point of B alone with the floor; at least five points lost without.
        assert!((alone - floored).abs() < 0.01, "{alone} vs {floored}");
        assert!(
            plain < alone - 0.05,
            "{alone} vs {plain}: no visible damage"
        );
    }

    #[test]
    fn per_tenant_outcomes_add_up_to_the_whole() {
        let trace = Neighbours {
            b_models: 50,
            a_models: 500,
            b_requests: 2_000,
            a_per_b: 2,
            rate: 100.0,
            seed: 1,
        }
        .trace();
        assert_eq!(trace.len(), 6_000);
        assert!(
            trace.windows(2).all(|w| w[0].t < w[1].t),
            "time goes forward"
        );
        let size = |m: u32| 1_000 + u64::from(m % 3) * 500;
        let mut by_tenant = Managed::new(60_000, PolicyConfig::default(), None);
        let parts = run_by_tenant(&mut by_tenant, &trace, size, Neighbours::tenant, 3);
        let sizes: Vec<u64> = (0..Neighbours::A_BASE + 500).map(size).collect();
        let whole = run(
            &mut Managed::new(60_000, PolicyConfig::default(), None),
            &trace,
            &sizes,
        );
        assert_eq!(
            parts.iter().map(|o| o.requests).sum::<u64>(),
            whole.requests
        );
        assert_eq!(parts.iter().map(|o| o.misses).sum::<u64>(), whole.misses);
        assert_eq!(
            (parts[0].requests, parts[1].requests, parts[2].requests),
            (2_000, 4_000, 0)
        );
    }

    #[test]
    fn lru_keeps_what_fits_and_counts_bytes() {
        let sizes = vec![10, 10, 10];
        let trace: Vec<Request> = [0u32, 1, 0, 2, 1, 0]
            .iter()
            .enumerate()
            .map(|(i, &model)| Request { t: i as f64, model })
            .collect();
        // Room for two: 0 1 0(hit) 2(evicts 1) 1(evicts 0) 0(evicts 2)
        let out = run(&mut Lru::new(20), &trace, &sizes);
        assert_eq!((out.requests, out.misses, out.bytes_loaded), (6, 5, 50));
        let opt = run(&mut Belady::new(20, &trace), &trace, &sizes);
        // 0 1 0(hit) 2(bypass: used never again) 1(hit) 0(hit)
        assert_eq!(opt.misses, 3);
    }

    #[test]
    fn the_pool_splits_by_rendezvous_owner() {
        let (trace, sizes, budget) = setup(Shape::Zipf(1.0));
        let names: Vec<String> = (0..2_000).map(|i| format!("gen-{i:05}")).collect();
        let scorers: Vec<String> = (0..3).map(|i| format!("scorer-{i}")).collect();
        let pool = run_pool(&trace, &sizes, &names, &scorers, || {
            Box::new(Lru::new(budget / 3))
        });
        assert_eq!(pool.requests, trace.len() as u64);
        let single = run(&mut Lru::new(budget), &trace, &sizes);
        // Three thirds of a cache behave about like the whole.
        assert!((pool.hit_ratio() - single.hit_ratio()).abs() < 0.05);
    }
}
