//! The scorer's eviction and admission policy.
//!
//! Every resident model has a priority
//!
//! ```text
//! priority = ln(frequency) + size_weight · ln(load cost / bytes)
//! ```
//!
//! where `frequency` is the larger of the scorer's own decayed request count for the model
//! and the pool-wide rate the proxies last reported for it (converted to a count with the
//! same half-life), and `load cost` is the seconds of work the model's load took (CPU time
//! plus the store read; the [`CostModel`] estimate before it was ever loaded).
//!
//! Time here is the scorer's traffic clock ([`crate::clock`]): one unit per request, so a
//! half-life is a number of requests and rates are per request (a share of the scorer's
//! traffic); the caller converts rates in req/s with the measured request rate. It is GreedyDual-Size-Frequency with
//! exponential decay in place of GDSF's inflation clock: the value of keeping a model is how
//! often it is asked for times what a miss costs, per byte it occupies.
//!
//! A miss is always served (the model is loaded for the request) but is **admitted** into
//! the cache only if every resident model it would displace has a lower priority. A batch
//! that touches thousands of cold models once therefore passes through without flushing
//! the hot set: each scanned model has a count of one, below every model that is hot.
//!
//! Priorities are kept in forward-decay form ([`crate::decay`]), so an untouched model's
//! place in the eviction order never changes and nothing is recomputed as time passes.
//!
//! With tenant shares ([`crate::tenants`]; [`Policy::with_tenants`]) the victims are still
//! taken lowest priority first, under two more rules:
//!
//! - **Floors.** A resident of another tenant is passed over when evicting it would leave
//!   its tenant's resident bytes below its floor; only a tenant's own newcomers displace
//!   its floor share. A tenant under its floor claims it: its newcomer, when it still fits
//!   within the floor, displaces other tenants' residents above their own floors (lowest
//!   priority first) whatever their priority, and none of its own.
//! - **Caps.** A newcomer that would put its tenant over its cap may displace only its own
//!   tenant's residents (enough of them to bring the tenant within its cap and the cache
//!   within its budget); if it cannot, it is not admitted (and, as every refusal, still
//!   served by the caller).
//!
//! Otherwise the priority rule holds: every victim has a lower priority than the
//! newcomer. Without shares (or with floors of 0 and caps of 1) the victims are exactly
//! those of the plain policy.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use crate::decay::{Decay, Log};
use crate::tenants::{TenantUsage, Tenants};

/// A cache key: one loaded version of one model. Statistics are kept per model, so every
/// version of a model shares its request count.
pub trait Key: Clone + Ord + Hash + Eq {
    type Model: Clone + Ord + Hash + Eq;
    fn model(&self) -> &Self::Model;
    /// The text tenants' prefixes are matched against: the model's id.
    fn text(model: &Self::Model) -> Cow<'_, str>;
}

impl Key for u32 {
    type Model = u32;
    fn model(&self) -> &u32 {
        self
    }
    /// The number in decimal (the simulator gives each tenant its own leading digit).
    fn text(model: &u32) -> Cow<'_, str> {
        Cow::Owned(model.to_string())
    }
}

/// Seconds a load is expected to take before it has been measured: `fixed + per_byte ×
/// bytes`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    pub fixed: f64,
    pub per_byte: f64,
}

impl CostModel {
    pub fn estimate(&self, bytes: u64) -> f64 {
        self.fixed + self.per_byte * bytes as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Half-life of request counts, in requests (the traffic clock's unit).
    pub half_life: f64,
    /// Exponent of `load cost / bytes` in the priority: 0 ranks by frequency alone, 1 is
    /// GDSF's cost per byte.
    pub size_weight: f64,
    pub cost: CostModel,
    /// How many models' request counts are remembered (resident or not).
    pub history: usize,
}

impl Default for PolicyConfig {
    /// The defaults chosen by the simulator (BENCHMARKS.md, "Cache policy").
    fn default() -> Self {
        PolicyConfig {
            // 10 s at the 1,000 req/s the simulator tuned it at.
            half_life: 10_000.0,
            size_weight: 1.0,
            // The live cost (load thread CPU time plus the store read), measured on the
            // realistic store: a native forest about 3 ns per byte it is charged (7.5 ms
            // of compile and 4 ms of read for a 12 MB file charged 3.7 MB), ONNX Runtime
            // about 2.4 ns, and 50 µs for a tiny model (BENCHMARKS.md, "Cache policy").
            cost: CostModel {
                fixed: 5e-5,
                per_byte: 3e-9,
            },
            history: 200_000,
        }
    }
}

/// What an admission decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission<K> {
    pub admitted: bool,
    /// Residents evicted to make room, lowest priority first.
    pub evicted: Vec<K>,
}

/// Total order on priorities (never NaN by construction).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Prio(f64);

impl Eq for Prio {}

impl PartialOrd for Prio {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Prio {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    bytes: u64,
    cost: f64,
    prio: Prio,
    last_use: f64,
    /// Its tenant's index in `tenants`.
    tenant: usize,
}

/// Each tenant's bounds and what it holds now, by tenant index (the default tenant last).
#[derive(Clone, Debug)]
struct Books {
    tenants: Tenants,
    /// Floor and cap in bytes.
    bounds: Vec<(u64, u64)>,
    /// Resident bytes and models.
    used: Vec<(u64, usize)>,
}

impl Books {
    fn new(tenants: Tenants, capacity: u64) -> Self {
        let n = tenants.count();
        Books {
            bounds: (0..n).map(|t| tenants.bounds(t, capacity)).collect(),
            used: vec![(0, 0); n],
            tenants,
        }
    }

    fn floor(&self, t: usize) -> u64 {
        self.bounds[t].0
    }

    fn cap(&self, t: usize) -> u64 {
        self.bounds[t].1
    }
}

/// One resident model as the policy sees it, for the explain endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Resident<K> {
    pub key: K,
    pub bytes: u64,
    pub load_seconds: f64,
    pub priority: f64,
    pub last_use: f64,
    pub local_rate: f64,
    pub pool_rate: f64,
}

pub struct Policy<K: Key> {
    config: PolicyConfig,
    decay: Decay,
    capacity: u64,
    used: u64,
    resident: HashMap<K, Entry>,
    order: BTreeSet<(Prio, K)>,
    /// This cache's own decayed request count per model.
    local: HashMap<K::Model, Log>,
    next_sweep: usize,
    /// Pool-wide counts from the proxies' last report.
    pool: HashMap<K::Model, Log>,
    /// Bytes and load seconds of models the last admission refused, so a warm-up can tell
    /// it would be refused again without loading it. Pruned with `local`.
    refused: HashMap<K::Model, (u64, f64)>,
    /// Tenant shares and each tenant's resident bytes.
    books: Books,
}

impl<K: Key> Policy<K> {
    pub fn new(capacity: u64, config: PolicyConfig) -> Self {
        Self::with_tenants(capacity, config, Tenants::none())
    }

    /// A policy whose evictions respect `tenants`' floors and caps (module docs).
    pub fn with_tenants(capacity: u64, config: PolicyConfig, tenants: Tenants) -> Self {
        Policy {
            books: Books::new(tenants, capacity),
            decay: Decay::new(config.half_life),
            config,
            capacity,
            used: 0,
            resident: HashMap::new(),
            order: BTreeSet::new(),
            local: HashMap::new(),
            next_sweep: config.history.max(16),
            pool: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn tenants(&self) -> &Tenants {
        &self.books.tenants
    }

    /// The tenant of `model` (an index into [`Policy::tenant_usage`]).
    pub fn tenant_of(&self, model: &K::Model) -> usize {
        if self.books.tenants.is_empty() {
            return self.books.tenants.count() - 1;
        }
        self.books.tenants.of(&K::text(model))
    }

    /// Every tenant's resident bytes, floor and cap (the default tenant last).
    pub fn tenant_usage(&self) -> Vec<TenantUsage> {
        let b = &self.books;
        (0..b.tenants.count())
            .map(|t| {
                let (floor, cap) = b
                    .tenants
                    .shares()
                    .get(t)
                    .map_or((0.0, 1.0), |s| (s.floor, s.cap));
                TenantUsage {
                    name: b.tenants.name(t).to_string(),
                    bytes: b.used[t].0,
                    models: b.used[t].1,
                    floor_bytes: b.floor(t),
                    cap_bytes: b.cap(t),
                    floor,
                    cap,
                }
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.resident.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resident.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.resident.contains_key(key)
    }

    /// Counts one request for `key` at `now`. Returns whether it is resident.
    pub fn record(&mut self, key: &K, now: f64) -> bool {
        let model = key.model();
        let log = self.local.get(model).copied().unwrap_or(Log::ZERO);
        let log = self.decay.add(log, 1.0, now);
        if let Some(slot) = self.local.get_mut(model) {
            *slot = log;
        } else {
            self.local.insert(model.clone(), log);
            if self.local.len() > self.next_sweep {
                self.sweep(now);
            }
        }
        match self.resident.get_mut(key) {
            Some(entry) => {
                entry.last_use = now;
                self.reprioritise(key);
                true
            }
            None => false,
        }
    }

    /// Decides whether a just-loaded `key` of `bytes` stays resident, evicting
    /// lower-priority residents to make room. `load_seconds` is the measured load time.
    /// A key that is already resident is only re-weighed.
    pub fn admit(
        &mut self,
        key: K,
        bytes: u64,
        load_seconds: Option<f64>,
        now: f64,
    ) -> Admission<K> {
        if let Some(old) = self.resident.get(&key) {
            let (old_bytes, tenant) = (old.bytes, old.tenant);
            self.used = self.used - old_bytes + bytes;
            self.books.used[tenant].0 = self.books.used[tenant].0 - old_bytes + bytes;
            if let Some(entry) = self.resident.get_mut(&key) {
                entry.bytes = bytes;
            }
            self.reprioritise(&key);
            let evicted = self.shrink_to_fit(&key);
            return Admission {
                admitted: true,
                evicted,
            };
        }
        let cost = load_seconds.unwrap_or_else(|| self.config.cost.estimate(bytes));
        let prio = self.priority(key.model(), bytes, cost);
        let tenant = self.tenant_of(key.model());
        let Some(victims) = self.victims(prio, bytes, tenant) else {
            self.refused.insert(key.model().clone(), (bytes, cost));
            return Admission {
                admitted: false,
                evicted: Vec::new(),
            };
        };
        self.refused.remove(key.model());
        for victim in &victims {
            self.remove(victim);
        }
        self.used += bytes;
        self.books.used[tenant].0 += bytes;
        self.books.used[tenant].1 += 1;
        self.order.insert((prio, key.clone()));
        self.resident.insert(
            key,
            Entry {
                bytes,
                cost,
                prio,
                last_use: now,
                tenant,
            },
        );
        Admission {
            admitted: true,
            evicted: victims,
        }
    }

    /// The residents a newcomer of tenant `tenant`, priority `prio` and `bytes` would
    /// displace, lowest first, or `None` if it would be refused: it does not fit at all (or
    /// within its tenant's cap), or some resident it would have to displace is worth as
    /// much as it. Other tenants' residents held by their floors are passed over; over its
    /// cap, only the tenant's own residents are candidates (module docs).
    fn victims(&self, prio: Prio, bytes: u64, tenant: usize) -> Option<Vec<K>> {
        let books = &self.books;
        if bytes > self.capacity || bytes > books.cap(tenant) {
            return None;
        }
        let mut free = self.capacity - self.used;
        // What the tenant must give up of its own to stay within its cap (a cap of the
        // whole budget is no cap: the budget itself bounds it).
        let mut own_needed = if books.cap(tenant) < self.capacity {
            (books.used[tenant].0 + bytes).saturating_sub(books.cap(tenant))
        } else {
            0
        };
        let own_only = own_needed > 0;
        // A tenant under its floor, whose newcomer still fits within it, claims its
        // guaranteed share: other tenants' residents above their floors make room for it
        // whatever their priority, and its own residents stay.
        let claiming =
            books.floor(tenant) > 0 && books.used[tenant].0 + bytes <= books.floor(tenant);
        // Bytes taken from each tenant so far (for the floors).
        let mut taken: Vec<u64> = Vec::new();
        let mut victims = Vec::new();
        for (victim_prio, victim) in &self.order {
            if free >= bytes && own_needed == 0 {
                break;
            }
            let entry = &self.resident[victim];
            let t = entry.tenant;
            if t == tenant && claiming {
                continue;
            }
            if t != tenant {
                if own_only {
                    continue;
                }
                let floor = books.floor(t);
                if floor > 0 {
                    if taken.is_empty() {
                        taken = vec![0; books.used.len()];
                    }
                    if books.used[t].0 - taken[t] - entry.bytes < floor {
                        continue;
                    }
                    taken[t] += entry.bytes;
                }
            }
            if *victim_prio >= prio && !claiming {
                return None;
            }
            free += entry.bytes;
            if t == tenant {
                own_needed = own_needed.saturating_sub(entry.bytes);
            }
            victims.push(victim.clone());
        }
        (free >= bytes && own_needed == 0).then_some(victims)
    }

    /// The lowest-priority resident a load of `model` may evict to reserve memory: the
    /// lowest one not held by another tenant's floor. `None` when there is none.
    pub fn lowest_evictable_for(&self, model: &K::Model) -> Option<&K> {
        let tenant = self.tenant_of(model);
        self.order
            .iter()
            .map(|(_, key)| key)
            .find(|key| self.evictable(key, tenant))
    }

    /// Bytes a load of `model` cannot evict: what other tenants hold up to their floors.
    pub fn protected_from(&self, model: &K::Model) -> u64 {
        let tenant = self.tenant_of(model);
        let b = &self.books;
        (0..b.used.len())
            .filter(|&t| t != tenant)
            .map(|t| b.used[t].0.min(b.floor(t)))
            .sum()
    }

    /// Whether resident `key` may be evicted for a newcomer of `tenant`: its own, or its
    /// tenant stays at or above its floor without it.
    fn evictable(&self, key: &K, tenant: usize) -> bool {
        let entry = &self.resident[key];
        let t = entry.tenant;
        t == tenant
            || self.books.floor(t) == 0
            || self.books.used[t].0 - entry.bytes >= self.books.floor(t)
    }

    /// Whether `model`, refused by its last admission, would be refused again now (its
    /// rate has not risen enough, or nothing cheaper has left). `false` for a model never
    /// refused: its size is unknown until it is loaded. A warm-up skips these instead of
    /// loading a model only to drop it.
    pub fn refuses_again(&self, model: &K::Model) -> bool {
        self.refused.get(model).is_some_and(|&(bytes, cost)| {
            self.victims(
                self.priority(model, bytes, cost),
                bytes,
                self.tenant_of(model),
            )
            .is_none()
        })
    }

    /// The resident with the lowest priority: the next to be evicted.
    pub fn lowest(&self) -> Option<&K> {
        self.order.iter().next().map(|(_, key)| key)
    }

    /// Forgets a resident key (an explicit unload, or a version replaced). Its request
    /// count is kept.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.resident.remove(key) {
            Some(entry) => {
                self.order.remove(&(entry.prio, key.clone()));
                self.used -= entry.bytes;
                self.books.used[entry.tenant].0 -= entry.bytes;
                self.books.used[entry.tenant].1 -= 1;
                true
            }
            None => false,
        }
    }

    /// Replaces the pool-wide rates (requests per second, measured at `now`) with the
    /// proxies' latest report, re-ranking the resident models it concerns.
    pub fn set_pool_rates(&mut self, rates: impl IntoIterator<Item = (K::Model, f64)>, now: f64) {
        let fresh: HashMap<K::Model, Log> = rates
            .into_iter()
            .map(|(model, rate)| (model, self.decay.from_rate(rate, now)))
            .collect();
        let old = std::mem::replace(&mut self.pool, fresh);
        let touched: Vec<K> = self
            .resident
            .keys()
            .filter(|k| old.contains_key(k.model()) || self.pool.contains_key(k.model()))
            .cloned()
            .collect();
        for key in touched {
            self.reprioritise(&key);
        }
    }

    /// Models the pool reports as hot that have no resident version, hottest first.
    pub fn hottest_absent(&self, limit: usize, now: f64) -> Vec<(K::Model, f64)> {
        let resident: std::collections::HashSet<&K::Model> =
            self.resident.keys().map(Key::model).collect();
        let mut absent: Vec<(&K::Model, Log)> = self
            .pool
            .iter()
            .filter(|(m, _)| !resident.contains(m))
            .map(|(m, l)| (m, *l))
            .collect();
        absent.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then_with(|| a.0.cmp(b.0)));
        absent.truncate(limit);
        absent
            .into_iter()
            .map(|(m, l)| (m.clone(), self.decay.rate(l, now)))
            .collect()
    }

    /// The resident models, lowest priority (next to go) first.
    pub fn residents(&self, now: f64) -> Vec<Resident<K>> {
        self.order
            .iter()
            .map(|(prio, key)| {
                let entry = &self.resident[key];
                let local = self.local.get(key.model()).copied().unwrap_or(Log::ZERO);
                let pool = self.pool.get(key.model()).copied().unwrap_or(Log::ZERO);
                Resident {
                    key: key.clone(),
                    bytes: entry.bytes,
                    load_seconds: entry.cost,
                    priority: prio.0 - now / self.decay.tau(),
                    last_use: entry.last_use,
                    local_rate: self.decay.rate(local, now),
                    pool_rate: self.decay.rate(pool, now),
                }
            })
            .collect()
    }

    fn frequency(&self, model: &K::Model) -> Log {
        let local = self.local.get(model).copied().unwrap_or(Log::ZERO);
        let pool = self.pool.get(model).copied().unwrap_or(Log::ZERO);
        let log = local.max(pool);
        // A model nobody asked for (a warm-up of a model the pool forgot) still gets a
        // finite priority, the lowest possible.
        if log == Log::ZERO { Log(-1e300) } else { log }
    }

    fn priority(&self, model: &K::Model, bytes: u64, cost: f64) -> Prio {
        let per_byte = cost.max(1e-9) / (bytes.max(1) as f64);
        Prio(self.frequency(model).0 + self.config.size_weight * per_byte.ln())
    }

    fn reprioritise(&mut self, key: &K) {
        let Some(entry) = self.resident.get(key) else {
            return;
        };
        let prio = self.priority(key.model(), entry.bytes, entry.cost);
        if prio != entry.prio {
            self.order.remove(&(entry.prio, key.clone()));
            self.order.insert((prio, key.clone()));
            if let Some(entry) = self.resident.get_mut(key) {
                entry.prio = prio;
            }
        }
    }

    /// After a resident grew, evicts the lowest-priority others (not held by their
    /// tenant's floor) until the budget holds.
    fn shrink_to_fit(&mut self, keep: &K) -> Vec<K> {
        let mut evicted = Vec::new();
        let tenant = self.resident[keep].tenant;
        while self.used > self.capacity {
            let Some(victim) = self
                .order
                .iter()
                .map(|(_, k)| k)
                .find(|k| *k != keep && self.evictable(k, tenant))
                .cloned()
            else {
                break;
            };
            self.remove(&victim);
            evicted.push(victim);
        }
        evicted
    }

    /// Keeps the request-count table bounded: forgets non-resident models whose count has
    /// decayed below one half, and if that is not enough, every non-resident model.
    fn sweep(&mut self, now: f64) {
        let resident: std::collections::HashSet<K::Model> =
            self.resident.keys().map(|k| k.model().clone()).collect();
        let decay = self.decay;
        self.local
            .retain(|m, l| resident.contains(m) || decay.count(*l, now) >= 0.5);
        if self.local.len() > self.config.history {
            self.local.retain(|m, _| resident.contains(m));
        }
        let local = &self.local;
        self.refused.retain(|m, _| local.contains_key(m));
        self.next_sweep = self.local.len() + self.config.history.max(16) / 2;
    }

    /// Request-count entries remembered (for the bounded-memory test).
    pub fn remembered(&self) -> usize {
        self.local.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(size_weight: f64) -> PolicyConfig {
        PolicyConfig {
            half_life: 60.0,
            size_weight,
            cost: CostModel {
                fixed: 0.002,
                per_byte: 5e-9,
            },
            history: 1000,
        }
    }

    /// Requests `key` at `now`, loading and offering it on a miss. Returns whether it hit.
    fn access(p: &mut Policy<u32>, key: u32, bytes: u64, now: f64) -> bool {
        if p.record(&key, now) {
            return true;
        }
        p.admit(key, bytes, None, now);
        false
    }

    #[test]
    fn a_scan_passes_through_without_flushing_the_hot_set() {
        let mut p = Policy::new(10_000, config(0.0));
        let mut t = 0.0;
        // Ten hot models of 1,000 bytes, each asked for 20 times.
        for _ in 0..20 {
            for k in 0..10 {
                access(&mut p, k, 1_000, t);
                t += 0.01;
            }
        }
        assert_eq!(p.len(), 10);
        // A batch touches 5,000 cold models once each, interleaved with a little hot traffic.
        for (i, cold) in (1_000..6_000).enumerate() {
            assert!(
                !access(&mut p, cold, 1_000, t),
                "cold model {cold} cannot hit"
            );
            if i % 50 == 0 {
                access(&mut p, (i / 50 % 10) as u32, 1_000, t);
            }
            t += 0.001;
        }
        for k in 0..10 {
            assert!(p.contains(&k), "hot model {k} was flushed by the scan");
        }
    }

    #[test]
    fn a_rising_model_is_admitted_and_a_cold_one_goes_first() {
        let mut p = Policy::new(3_000, config(0.0));
        for i in 0..30 {
            let t = i as f64;
            access(&mut p, 1, 1_000, t);
            access(&mut p, 2, 1_000, t);
            if i < 5 {
                access(&mut p, 3, 1_000, t); // 3 goes cold after five seconds
            }
        }
        assert!(p.contains(&3));
        let lowest = p.residents(30.0)[0].key;
        assert_eq!(lowest, 3, "the model that went cold must be next to go");
        // Model 4 rises: its first request is refused (one request beats nothing), then
        // its count passes model 3's decayed count and it is admitted in 3's place.
        let mut t = 30.0;
        let mut admitted_at = None;
        for n in 0..10 {
            if access(&mut p, 4, 1_000, t) || p.contains(&4) {
                admitted_at = Some(n);
                break;
            }
            t += 0.1;
        }
        assert!(admitted_at.is_some(), "a rising model must get in");
        assert!(!p.contains(&3), "the cold model is the one evicted");
        assert!(p.contains(&1) && p.contains(&2));
    }

    #[test]
    fn pool_rates_admit_a_model_this_cache_never_saw() {
        let mut p = Policy::new(2_000, config(0.0));
        for i in 0..10 {
            access(&mut p, 1, 1_000, i as f64);
            access(&mut p, 2, 1_000, i as f64);
        }
        // First request for model 9 here, but the pool reports it at 50 req/s.
        p.set_pool_rates([(9, 50.0)], 10.0);
        assert!(!access(&mut p, 9, 1_000, 10.0));
        assert!(
            p.contains(&9),
            "the pool's rate outranks this cache's own counts"
        );
        assert_eq!(p.hottest_absent(10, 11.0), Vec::<(u32, f64)>::new());
        p.set_pool_rates([(9, 50.0), (7, 20.0), (8, 30.0)], 11.0);
        let absent: Vec<u32> = p
            .hottest_absent(10, 11.0)
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(absent, vec![8, 7], "hottest absent first");
    }

    #[test]
    fn a_refused_model_is_known_to_be_refused_again_until_its_rate_rises() {
        let mut p = Policy::new(2_000, config(0.0));
        for i in 0..10 {
            access(&mut p, 1, 1_000, f64::from(i));
            access(&mut p, 2, 1_000, f64::from(i));
        }
        assert!(!p.refuses_again(&5), "never offered: its size is unknown");
        p.set_pool_rates([(5, 0.01)], 10.0);
        assert!(!p.admit(5, 1_000, Some(0.01), 10.0).admitted);
        assert!(
            p.refuses_again(&5),
            "nothing changed: a warm-up would waste a load"
        );
        // The pool now reports it hotter than both residents: worth loading again.
        p.set_pool_rates([(5, 50.0)], 11.0);
        assert!(!p.refuses_again(&5));
        assert!(p.admit(5, 1_000, Some(0.01), 11.0).admitted);
        assert!(
            !p.refuses_again(&5),
            "admitted: no longer remembered as refused"
        );
    }

    #[test]
    fn size_and_load_cost_change_decisions() {
        // A big resident model with some history, and a small newcomer asked for once a
        // second; the cache holds one or the other. Per byte the small model is worth more,
        // so the size-aware policy takes it in after fewer requests than frequency alone.
        let admitted_after = |size_weight: f64| -> u32 {
            let mut p = Policy::new(10_000, config(size_weight));
            for i in 0..5 {
                access(&mut p, 1, 8_000, f64::from(i));
            }
            for n in 1..=30u32 {
                access(&mut p, 2, 4_000, f64::from(4 + n));
                if p.contains(&2) {
                    assert!(!p.contains(&1), "both cannot fit");
                    return n;
                }
            }
            panic!("the small model was never admitted")
        };
        let (sized, blind) = (admitted_after(1.0), admitted_after(0.0));
        assert!(
            sized < blind,
            "size-aware after {sized} requests, blind after {blind}"
        );

        // Same sizes, different measured load costs: the slow-to-load model is kept.
        let mut p = Policy::new(2_000, config(1.0));
        p.record(&1, 0.0);
        p.admit(1, 1_000, Some(0.5), 0.0);
        p.record(&2, 0.0);
        p.admit(2, 1_000, Some(0.001), 0.0);
        p.record(&3, 0.0);
        let decision = p.admit(3, 1_000, Some(0.1), 0.0);
        assert_eq!(decision.evicted, vec![2], "the cheap-to-reload model goes");
        p.record(&4, 0.0);
        let decision = p.admit(4, 1_000, Some(0.01), 0.0);
        assert!(
            !decision.admitted,
            "cheaper than every resident: not admitted"
        );
    }

    #[test]
    fn budget_holds_and_counts_stay_bounded() {
        let mut p = Policy::new(50_000, config(0.5));
        for i in 0..100_000u32 {
            let key = i % 5_000 * 7 % 20_000;
            access(
                &mut p,
                key,
                500 + u64::from(key % 7) * 700,
                f64::from(i) * 0.001,
            );
            assert!(p.used() <= p.capacity());
        }
        assert!(p.remembered() <= 2 * 1000 + p.len(), "{}", p.remembered());
        let sum: u64 = p.residents(100.0).iter().map(|r| r.bytes).sum();
        assert_eq!(sum, p.used());
    }

    fn shares(b_floor: f64, a_cap: f64) -> Tenants {
        // Tenant B's models are numbered 1xxx, tenant A's 2xxxxxx (`Key::text` for u32).
        Tenants::new(vec![
            crate::Share {
                name: "b".into(),
                prefixes: vec!["1".into()],
                floor: b_floor,
                cap: 1.0,
            },
            crate::Share {
                name: "a".into(),
                prefixes: vec!["2".into()],
                floor: 0.0,
                cap: a_cap,
            },
        ])
        .unwrap()
    }

    /// Tenant B's 80 models of 1,000 bytes, each asked for a few times, then tenant A
    /// scanning 5,000 cold models, each asked for three times in a row (so each outranks
    /// B's decayed counts). Returns B's resident bytes, lowest seen during the scan and at
    /// the end.
    fn b_under_a_scan(p: &mut Policy<u32>) -> (u64, u64) {
        let mut t = 0.0;
        for _ in 0..3 {
            for k in 1_000..1_080 {
                access(p, k, 1_000, t);
                t += 0.01;
            }
        }
        let b = p.tenant_of(&1_000);
        assert_eq!(p.tenant_usage()[b].bytes, 80_000, "B's set fits at first");
        let mut lowest = u64::MAX;
        for cold in 2_000_000..2_005_000 {
            for _ in 0..3 {
                access(p, cold, 1_000, t);
                t += 0.01;
            }
            lowest = lowest.min(p.tenant_usage()[b].bytes);
            assert!(p.used() <= p.capacity());
        }
        (lowest, p.tenant_usage()[b].bytes)
    }

    #[test]
    fn a_floor_holds_under_another_tenants_scan() {
        // Without a floor the scan takes B's place: its counts have decayed below the
        // scan's fresh ones.
        let mut plain = Policy::with_tenants(100_000, config(0.0), shares(0.0, 1.0));
        let (_, end) = b_under_a_scan(&mut plain);
        assert!(end < 20_000, "the scan must flush B without a floor: {end}");
        // With a floor of half the budget B never drops below 50,000 bytes.
        let mut floored = Policy::with_tenants(100_000, config(0.0), shares(0.5, 1.0));
        let (lowest, end) = b_under_a_scan(&mut floored);
        assert!(lowest >= 50_000, "B fell to {lowest} under its floor");
        assert!(end >= 50_000);
        // B's own newcomers may still displace its floor share.
        let mut t = 1_000.0;
        for _ in 0..5 {
            access(&mut floored, 1_999, 1_000, t);
            t += 0.01;
        }
        assert!(floored.contains(&1_999), "B's own hot model gets in");
        assert!(floored.tenant_usage()[0].bytes >= 50_000);
    }

    #[test]
    fn a_capped_tenant_displaces_only_its_own_models() {
        let mut p = Policy::with_tenants(100_000, config(0.0), shares(0.0, 0.3));
        let a = p.tenant_of(&2_000_000);
        let mut t = 0.0;
        // A alone, with hot models: it still holds at most 30% of the budget.
        for round in 0..20 {
            for k in 2_000_000..2_000_050 {
                access(&mut p, k, 1_000, t);
                t += 0.001;
                assert!(p.tenant_usage()[a].bytes <= 30_000, "round {round}");
            }
        }
        assert_eq!(p.tenant_usage()[a].bytes, 30_000);
        // B fills the rest; then A's hottest newcomer may evict only A's models.
        for _ in 0..2 {
            for k in 1_000..1_070 {
                access(&mut p, k, 1_000, t);
                t += 0.001;
            }
        }
        assert_eq!(p.used(), 100_000);
        for _ in 0..50 {
            access(&mut p, 2_100_000, 1_000, t);
            t += 0.001;
        }
        assert!(p.contains(&2_100_000));
        assert_eq!(p.tenant_usage()[a].bytes, 30_000);
        assert_eq!(p.tenant_usage()[0].bytes, 70_000, "B lost nothing to A");
        // A model larger than A's cap is never admitted, whatever its rate.
        for _ in 0..50 {
            access(&mut p, 2_200_000, 31_000, t);
            t += 0.001;
        }
        assert!(!p.contains(&2_200_000));
    }

    #[test]
    fn without_floors_or_caps_the_victims_are_the_plain_policys() {
        // The same trace through the plain policy and one with shares of no floor and no
        // cap: every admission and eviction is the same.
        let mut plain = Policy::new(50_000, config(0.5));
        let mut shared = Policy::with_tenants(50_000, config(0.5), shares(0.0, 1.0));
        let mut differ = 0;
        for i in 0..50_000u32 {
            let key = if i % 3 == 0 {
                1_000 + i % 997 * 7 % 500
            } else {
                2_000_000 + i % 4_999 * 13 % 3_000
            };
            let bytes = 500 + u64::from(key % 7) * 700;
            let now = f64::from(i) * 0.001;
            let (hit_a, hit_b) = (plain.record(&key, now), shared.record(&key, now));
            assert_eq!(hit_a, hit_b);
            if !hit_a {
                let (a, b) = (
                    plain.admit(key, bytes, None, now),
                    shared.admit(key, bytes, None, now),
                );
                differ += usize::from(a != b);
            }
        }
        assert_eq!(differ, 0);
        assert_eq!(plain.used(), shared.used());
        let usage = shared.tenant_usage();
        assert_eq!(usage.iter().map(|u| u.bytes).sum::<u64>(), shared.used());
    }

    #[test]
    fn a_reservation_passes_over_floored_residents() {
        let mut p = Policy::with_tenants(10_000, config(0.0), shares(0.5, 1.0));
        for k in 1_000..1_005 {
            access(&mut p, k, 1_000, 0.0);
        }
        for k in 2_000_000..2_000_005 {
            for _ in 0..5 {
                access(&mut p, k, 1_000, 1.0);
            }
        }
        // B holds exactly its floor and has the lowest counts: a load of A's takes A's.
        let victim = *p.lowest_evictable_for(&2_000_009).unwrap();
        assert!(victim >= 2_000_000, "{victim}");
        assert!(
            *p.lowest_evictable_for(&1_009).unwrap() < 2_000,
            "B may take its own"
        );
        assert!(*p.lowest().unwrap() < 2_000);
    }

    #[test]
    fn regrowing_a_resident_evicts_others() {
        let mut p = Policy::new(3_000, config(0.0));
        for k in 0..3 {
            access(&mut p, k, 1_000, 0.0);
        }
        p.record(&0, 1.0);
        let d = p.admit(0, 2_000, None, 1.0);
        assert!(d.admitted);
        assert_eq!(d.evicted.len(), 1);
        assert!(p.used() <= 3_000);
        assert!(p.remove(&0));
        assert!(!p.remove(&0));
    }
}
