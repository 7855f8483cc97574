//! The resident set: the models in memory, the policy that ranks them, the memory that
//! loads in flight have reserved, and the recent evictions. Plain data kept under the
//! cache's one lock: no I/O and nothing async, so every rule here is unit-tested directly.
//!
//! Memory: residents are charged their weight and kept within `cache.budget` by the
//! policy. A load reserves the memory it may touch (file buffer, transient structures and
//! the model itself) **before it starts** (`reserve`), and residents plus reservations stay
//! under the *ceiling*, `budget × (1 + LOAD_HEADROOM) + LOAD_ALLOWANCE`. A reservation that
//! does not fit evicts the lowest-priority residents (the memory is needed: every request
//! is served), or waits for other loads to finish when evicting every resident would not
//! be enough. A load that needs more than the whole ceiling reserves all of it and runs
//! alone. Whether a model can fit at all is decided on its size, not its load (`fits`).
//!
//! Shadow versions (a candidate version a shadow runs on after the live answer,
//! `cache::shadow`) are residents of their own kind: the first evicted whenever any load
//! or admission needs room, and loaded and admitted only into free room of the budget or
//! room other shadow versions give up (`reserve_shadow`, `admit_shadow`), never by evicting
//! a resident that serves requests. A counted request for a shadow version (a client
//! naming it, or its promotion to live) makes it an ordinary resident.
//!
//! A shadow version's load reserves apart from the live loads (`shadow_reserved`). A shadow
//! reservation is granted only when residents plus every reservation (live and shadow)
//! stay within the budget, and the shadow reservations in flight never exceed the load
//! room above the budget (`ceiling - budget`). A live `reserve` counts them against the
//! ceiling (the memory bound holds: residents plus every reservation stay within the
//! ceiling) but never waits for them: a live load never waits because a shadow is loading.
//! The one cost a shadow load can put on live serving is that a live load arriving while
//! it runs, with the cache full, evicts up to the shadow's reservation more of the
//! lowest-ranked residents than it would have (the room the shadow took was free when it
//! took it); the memory contract wins over that.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use manymodels_policy::{Policy, TrafficClock};

use super::{Eviction, ModelKey, Reason};
use crate::engine::LoadedModel;
use crate::metrics::Metrics;
use crate::model_id::ModelId;

/// Reservations may take residents plus reservations this far over the budget before a
/// reservation evicts residents: room for the loads in flight next to a full cache.
pub const LOAD_HEADROOM: f64 = 0.1;

/// Fixed room for loads on top of the headroom, so a small budget still loads without
/// evicting for every load (part of the documented fixed overhead).
pub const LOAD_ALLOWANCE: u64 = 32 << 20;

/// Recent evictions kept for the explain endpoint.
pub const EVICTION_LOG: usize = 200;

/// What a resident is charged.
pub trait Charged {
    fn weight(&self) -> u64;
}

impl Charged for LoadedModel {
    fn weight(&self) -> u64 {
        self.weight
    }
}

/// The answer to a reservation.
#[derive(Debug)]
pub enum Reserve<M> {
    /// Reserved this many bytes (at most the ceiling); these residents were evicted to
    /// make room (drop them outside the lock).
    Granted(u64, Vec<Arc<M>>),
    /// Other loads hold too much: try again when one finishes.
    Wait,
}

/// What a shadow version's admission did.
#[derive(Debug)]
pub enum ShadowAdmitted<M> {
    /// The version was resident already: this one (left as it was, not marked a shadow
    /// version); the loaded copy is not kept.
    Resident(Arc<M>),
    /// The loaded copy was admitted, or not.
    Loaded(Admitted<M>),
}

#[cfg(test)]
impl<M> ShadowAdmitted<M> {
    /// The admission of a copy loaded for the shadow (panics when it was resident).
    pub fn loaded(self) -> Admitted<M> {
        match self {
            ShadowAdmitted::Loaded(admitted) => admitted,
            ShadowAdmitted::Resident(_) => panic!("resident already"),
        }
    }
}

/// What an admission did.
#[derive(Debug)]
pub struct Admitted<M> {
    pub admitted: bool,
    /// Evicted to make room (drop them outside the lock).
    pub dropped: Vec<Arc<M>>,
}

pub struct Resident<M> {
    policy: Policy<ModelKey>,
    /// The policy's time: one unit per request counted here (`manymodels_policy::clock`).
    clock: TrafficClock,
    models: HashMap<ModelKey, Arc<M>>,
    evictions: VecDeque<Eviction>,
    /// Bytes reserved by live loads in flight, and held for memory outside the set.
    reserved: u64,
    /// Bytes reserved by shadow versions' loads in flight: never counted by a live
    /// `reserve` (at most `ceiling - budget`, see the module's notes).
    shadow_reserved: u64,
    /// Loads holding a granted reservation (holds do not count).
    active: usize,
    ceiling: u64,
    /// Warm-up loads that have not served a request yet.
    unhit_warmups: HashSet<ModelKey>,
    /// Residents that are shadow versions (loaded for shadows, serving no request): the
    /// first to go when room is needed.
    shadows: HashSet<ModelKey>,
    metrics: Arc<Metrics>,
}

impl<M: Charged> Resident<M> {
    /// `allowance`: fixed room for loads on top of the headroom (`LOAD_ALLOWANCE`).
    pub fn new(policy: Policy<ModelKey>, allowance: u64, metrics: Arc<Metrics>) -> Self {
        let ceiling = (policy.capacity() as f64 * (1.0 + LOAD_HEADROOM)) as u64 + allowance;
        Resident {
            policy,
            clock: TrafficClock::new(0.0),
            models: HashMap::new(),
            evictions: VecDeque::new(),
            reserved: 0,
            shadow_reserved: 0,
            active: 0,
            ceiling,
            unhit_warmups: HashSet::new(),
            shadows: HashSet::new(),
            metrics,
        }
    }

    pub fn policy(&self) -> &Policy<ModelKey> {
        &self.policy
    }

    /// The budget residents are kept within.
    pub fn capacity(&self) -> u64 {
        self.policy.capacity()
    }

    /// The most residents plus reservations may hold.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// Every byte reserved: live loads, held memory and shadow loads.
    pub fn reserved(&self) -> u64 {
        self.reserved + self.shadow_reserved
    }

    /// The bytes shadow versions' loads in flight reserve.
    #[cfg(test)]
    pub fn shadow_reserved(&self) -> u64 {
        self.shadow_reserved
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn contains(&self, key: &ModelKey) -> bool {
        self.models.contains_key(key)
    }

    pub fn models(&self) -> impl Iterator<Item = (&ModelKey, &Arc<M>)> {
        self.models.iter()
    }

    pub fn model(&self, key: &ModelKey) -> Option<&Arc<M>> {
        self.models.get(key)
    }

    pub fn evictions(&self) -> &VecDeque<Eviction> {
        &self.evictions
    }

    /// A request for `key` at wall time `wall` (seconds since start): counted when
    /// `count` (warm-ups are not demand), and answered from memory when resident.
    pub fn lookup(&mut self, key: &ModelKey, wall: f64, count: bool) -> Option<Arc<M>> {
        if count {
            let now = self.clock.tick(1.0, wall);
            self.policy.record(key, now);
        }
        let model = self.models.get(key)?.clone();
        if count {
            self.unhit_warmups.remove(key);
            // A request served by a shadow version: it is demanded now (a client names
            // it, or it was promoted), an ordinary resident.
            if !self.shadows.is_empty() {
                self.shadows.remove(key);
            }
        }
        Some(model)
    }

    /// Makes `key` an ordinary resident (a shadow version about to go live).
    pub fn unmark_shadow(&mut self, key: &ModelKey) {
        self.shadows.remove(key);
    }

    /// Whether `key` is a resident shadow version.
    #[cfg(test)]
    pub fn is_shadow(&self, key: &ModelKey) -> bool {
        self.shadows.contains(key)
    }

    /// The resident shadow version to evict first (the smallest key, so the choice is
    /// deterministic), other than `except`.
    fn shadow_victim(&self, except: Option<&ModelKey>) -> Option<ModelKey> {
        self.shadows
            .iter()
            .filter(|k| Some(*k) != except)
            .min()
            .cloned()
    }

    /// The bytes charged to resident shadow versions other than `except`.
    fn shadow_bytes(&self, except: Option<&ModelKey>) -> u64 {
        self.shadows
            .iter()
            .filter(|k| Some(*k) != except)
            .filter_map(|k| self.models.get(k))
            .map(|m| m.weight())
            .sum()
    }

    /// Evicts shadow versions (other than `except`) while `needed` says room is still
    /// needed; answers what left.
    fn evict_shadows_while(
        &mut self,
        except: Option<&ModelKey>,
        now: f64,
        needed: impl Fn(&Self) -> bool,
    ) -> Vec<Arc<M>> {
        let mut dropped = Vec::new();
        while needed(self) {
            let Some(victim) = self.shadow_victim(except) else {
                break;
            };
            match self.evict(&victim, Reason::Capacity, now) {
                Some(model) => dropped.push(model),
                None => {
                    self.shadows.remove(&victim);
                }
            }
        }
        dropped
    }

    /// Reserves `bytes` for a shadow version's load: granted only when residents plus
    /// every reservation stay within the budget (not the ceiling: the headroom above it is
    /// the live loads') and the shadow reservations in flight within `ceiling - budget`,
    /// after evicting other shadow versions if need be; never evicts a resident that
    /// serves requests and never waits. Kept apart from the live reservations: a live
    /// `reserve` does not count it. `None`: no room (nothing evicted).
    pub fn reserve_shadow(&mut self, bytes: u64, now: f64) -> Option<(u64, Vec<Arc<M>>)> {
        let capacity = self.capacity();
        if self.shadow_reserved + bytes > self.ceiling - capacity {
            return None;
        }
        let without_shadows = self.policy.used() - self.shadow_bytes(None);
        if without_shadows + self.reserved + self.shadow_reserved + bytes > capacity {
            return None;
        }
        let dropped = self.evict_shadows_while(None, now, |r| {
            r.policy.used() + r.reserved + r.shadow_reserved + bytes > capacity
        });
        self.shadow_reserved += bytes;
        Some((bytes, dropped))
    }

    /// Gives back a reservation granted by `reserve_shadow`.
    pub fn release_shadow(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.shadow_reserved, "released more than reserved");
        self.shadow_reserved = self.shadow_reserved.saturating_sub(bytes);
    }

    /// Admits a just-loaded shadow version when it fits the budget as it is, or once other
    /// shadow versions leave; otherwise it is not kept (served its job, then freed) and
    /// nothing is evicted. A version resident already (promoted, or loaded for a client
    /// naming it, while the job loaded it) stays as it is, unmarked:
    /// [`ShadowAdmitted::Resident`] answers it, and the loaded copy is not kept.
    pub fn admit_shadow(
        &mut self,
        key: ModelKey,
        model: Arc<M>,
        cost: f64,
        now: f64,
    ) -> ShadowAdmitted<M> {
        if let Some(resident) = self.models.get(&key) {
            return ShadowAdmitted::Resident(resident.clone());
        }
        ShadowAdmitted::Loaded(self.admit_new_shadow(key, model, cost, now))
    }

    fn admit_new_shadow(
        &mut self,
        key: ModelKey,
        model: Arc<M>,
        cost: f64,
        now: f64,
    ) -> Admitted<M> {
        let weight = model.weight();
        let capacity = self.capacity();
        if self.policy.used() - self.shadow_bytes(Some(&key)) + weight > capacity {
            self.log(&key, weight, Reason::NotAdmitted, now);
            return Admitted {
                admitted: false,
                dropped: Vec::new(),
            };
        }
        let mut dropped =
            self.evict_shadows_while(Some(&key), now, |r| r.policy.used() + weight > capacity);
        let decision = self
            .policy
            .admit(key.clone(), weight, Some(cost), self.clock.now());
        for victim in &decision.evicted {
            if let Some(gone) = self.forget(victim, Reason::Capacity, now) {
                dropped.push(gone);
            }
        }
        if decision.admitted {
            self.shadows.insert(key.clone());
            self.models.insert(key, model);
        } else {
            self.log(&key, weight, Reason::NotAdmitted, now);
        }
        Admitted {
            admitted: decision.admitted,
            dropped,
        }
    }

    /// Reserves `bytes` for a load of `model` about to start (at most the whole ceiling).
    /// A load waits only while another load runs: with none running (what is reserved is
    /// held memory, or loads that wait themselves) it is granted over the ceiling rather
    /// than wait for ever. Other tenants' residents held by their floors are never evicted
    /// for it (`Policy::lowest_evictable_for`).
    pub fn reserve(&mut self, model: &ModelId, bytes: u64, now: f64) -> Reserve<M> {
        let bytes = bytes.min(self.ceiling);
        let shadows = self.shadow_reserved;
        if self.policy.used() + self.reserved + shadows + bytes <= self.ceiling {
            self.reserved += bytes;
            self.active += 1;
            return Reserve::Granted(bytes, Vec::new());
        }
        if self.policy.protected_from(model) + self.reserved + bytes > self.ceiling
            && self.active > 0
        {
            // Even evicting all it may would not make room: other loads must finish first.
            return Reserve::Wait;
        }
        // Shadow versions go first, whatever their rank.
        let ceiling = self.ceiling;
        let mut dropped = self.evict_shadows_while(None, now, |r| {
            r.policy.used() + r.reserved + shadows + bytes > ceiling
        });
        while self.policy.used() + self.reserved + shadows + bytes > self.ceiling {
            let Some(victim) = self.policy.lowest_evictable_for(model).cloned() else {
                break;
            };
            if let Some(model) = self.evict(&victim, Reason::Capacity, now) {
                dropped.push(model);
            }
        }
        self.reserved += bytes;
        self.active += 1;
        Reserve::Granted(bytes, dropped)
    }

    /// Accounts for `bytes` that exist already (a model out of the set that requests still
    /// use): reserved at once, over the ceiling if need be.
    pub fn hold(&mut self, bytes: u64) {
        self.reserved += bytes;
    }

    /// Gives back a reservation (`load`: granted by `reserve`, else by `hold`).
    pub fn release(&mut self, bytes: u64, load: bool) {
        debug_assert!(bytes <= self.reserved, "released more than reserved");
        self.reserved = self.reserved.saturating_sub(bytes);
        if load {
            self.active = self.active.saturating_sub(1);
        }
    }

    /// Whether a warm-up may start: residents plus reservations are under the budget, so
    /// a load reserving up to the headroom evicts nobody (a budget smaller than the
    /// headroom, where fixed reservations alone exceed it, counts the headroom instead).
    pub fn has_room(&self) -> bool {
        let headroom = self.ceiling - self.capacity();
        self.policy.used() + self.reserved() < self.capacity().max(headroom)
    }

    /// Whether a model of `weight` could ever be resident.
    pub fn fits(&self, weight: u64) -> bool {
        weight <= self.capacity()
    }

    /// Lets the policy decide whether a just-loaded model stays; `cost` is the seconds its
    /// load cost. A warm-up load is watched until its first hit.
    pub fn admit(
        &mut self,
        key: ModelKey,
        model: Arc<M>,
        cost: f64,
        now: f64,
        warmup: bool,
    ) -> Admitted<M> {
        // Shadow versions make room first, whatever their rank.
        let (weight, capacity) = (model.weight(), self.capacity());
        let mut dropped = if self.models.contains_key(&key) {
            Vec::new()
        } else {
            self.evict_shadows_while(Some(&key), now, |r| r.policy.used() + weight > capacity)
        };
        let decision = self
            .policy
            .admit(key.clone(), model.weight(), Some(cost), self.clock.now());
        for victim in &decision.evicted {
            if let Some(gone) = self.forget(victim, Reason::Capacity, now) {
                dropped.push(gone);
            }
        }
        if decision.admitted {
            if warmup {
                self.unhit_warmups.insert(key.clone());
            }
            self.models.insert(key, model);
        } else {
            self.log(&key, model.weight(), Reason::NotAdmitted, now);
            if warmup {
                self.metrics.warmup_wasted.inc();
            }
        }
        Admitted {
            admitted: decision.admitted,
            dropped,
        }
    }

    /// Swaps `old` out and `new` in (a version change), under one lock.
    pub fn replace(
        &mut self,
        old: &ModelKey,
        new: ModelKey,
        model: Arc<M>,
        cost: f64,
        now: f64,
    ) -> Vec<Arc<M>> {
        let mut dropped: Vec<Arc<M>> = self.evict(old, Reason::Replaced, now).into_iter().collect();
        dropped.extend(self.admit(new, model, cost, now, false).dropped);
        dropped
    }

    /// Swaps `old` out for `new`, which is already resident (a canary promoted, or a
    /// version first asked for by number), under one lock; `None`, and `old` kept, when
    /// `new` is no longer resident.
    pub fn retire(&mut self, old: &ModelKey, new: &ModelKey, now: f64) -> Option<Vec<Arc<M>>> {
        if !self.models.contains_key(new) {
            return None;
        }
        Some(self.evict(old, Reason::Replaced, now).into_iter().collect())
    }

    /// Drops every version of `id` (an explicit unload).
    pub fn unload(&mut self, id: &ModelId, now: f64) -> Vec<Arc<M>> {
        let keys: Vec<ModelKey> = self
            .models
            .keys()
            .filter(|k| k.id == *id)
            .cloned()
            .collect();
        keys.iter()
            .filter_map(|key| self.evict(key, Reason::Unload, now))
            .collect()
    }

    /// The proxies' pool-wide rates (req/s), as shares of this scorer's traffic.
    pub fn set_pool_rates(&mut self, rates: impl IntoIterator<Item = (ModelId, f64)>, wall: f64) {
        self.clock.observe(wall);
        let per_second = self.clock.per_second();
        let now = self.clock.now();
        self.policy
            .set_pool_rates(rates.into_iter().map(|(id, r)| (id, r / per_second)), now);
    }

    /// Models the pool reports hot with no resident version, hottest first, with rates
    /// in req/s.
    pub fn hottest_absent(&self, limit: usize) -> Vec<(ModelId, f64)> {
        let per_second = self.clock.per_second();
        self.policy
            .hottest_absent(limit, self.clock.now())
            .into_iter()
            .map(|(id, r)| (id, r * per_second))
            .collect()
    }

    /// The residents, lowest priority first, with rates in req/s and idle time in seconds
    /// (both converted from the traffic clock with the measured request rate).
    pub fn residents(&self) -> Vec<(manymodels_policy::Resident<ModelKey>, f64)> {
        let per_second = self.clock.per_second();
        let now = self.clock.now();
        self.policy
            .residents(now)
            .into_iter()
            .map(|mut r| {
                r.local_rate *= per_second;
                r.pool_rate *= per_second;
                let idle = (now - r.last_use) / per_second;
                (r, idle)
            })
            .collect()
    }

    /// Removes a resident from the policy and the set.
    fn evict(&mut self, key: &ModelKey, reason: Reason, now: f64) -> Option<Arc<M>> {
        self.policy.remove(key);
        self.forget(key, reason, now)
    }

    /// Removes a resident the policy already let go of.
    fn forget(&mut self, key: &ModelKey, reason: Reason, now: f64) -> Option<Arc<M>> {
        let model = self.models.remove(key)?;
        self.shadows.remove(key);
        self.log(key, model.weight(), reason, now);
        if self.unhit_warmups.remove(key) {
            self.metrics.warmup_wasted.inc();
        }
        Some(model)
    }

    fn log(&mut self, key: &ModelKey, bytes: u64, reason: Reason, now: f64) {
        self.metrics
            .evictions
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::debug!(model = %key.id, version = key.version, bytes, reason = reason.as_str(), "model left the hot cache");
        if self.evictions.len() == EVICTION_LOG {
            self.evictions.pop_front();
        }
        self.evictions.push_back(Eviction {
            model: key.id.to_string(),
            version: key.version,
            bytes,
            reason,
            at: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manymodels_policy::PolicyConfig;

    #[derive(Debug)]
    struct Fake(u64);

    impl Charged for Fake {
        fn weight(&self) -> u64 {
            self.0
        }
    }

    fn id(name: &str) -> ModelId {
        ModelId::parse(name).unwrap()
    }

    fn key(name: &str) -> ModelKey {
        ModelKey {
            id: ModelId::parse(name).unwrap(),
            version: 1,
        }
    }

    fn resident(budget: u64) -> Resident<Fake> {
        let metrics = Arc::new(Metrics::new(budget));
        Resident::new(Policy::new(budget, PolicyConfig::default()), 0, metrics)
    }

    /// Loads `name` of `weight` with `requests` requests counted first.
    fn load(r: &mut Resident<Fake>, name: &str, weight: u64, requests: usize, now: f64) -> bool {
        for _ in 0..requests {
            r.lookup(&key(name), now, true);
        }
        r.admit(key(name), Arc::new(Fake(weight)), 0.01, now, false)
            .admitted
    }

    #[test]
    fn reservations_use_the_headroom_first_then_evict_the_least_valuable() {
        let mut r = resident(1000);
        assert_eq!(r.ceiling(), 1100);
        assert!(load(&mut r, "hot", 400, 50, 0.0));
        assert!(load(&mut r, "cold", 500, 1, 0.0));
        // 900 resident: 200 more fit under the ceiling without evicting anything.
        assert!(matches!(r.reserve(&id("x"), 200, 1.0), Reserve::Granted(200, d) if d.is_empty()));
        assert_eq!(r.reserved(), 200);
        // 100 more does not: the cold model goes, the hot one stays.
        match r.reserve(&id("x"), 100, 1.0) {
            Reserve::Granted(100, dropped) => assert_eq!(dropped.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(r.contains(&key("hot")) && !r.contains(&key("cold")));
        assert_eq!(r.evictions().back().unwrap().reason, Reason::Capacity);
        assert!(r.policy().used() + r.reserved() <= r.ceiling());
        r.release(200, true);
        r.release(100, true);
        assert_eq!(r.reserved(), 0);
    }

    #[test]
    fn a_reservation_waits_for_other_loads_and_a_huge_one_takes_the_whole_ceiling() {
        let mut r = resident(1000);
        assert!(load(&mut r, "a", 300, 5, 0.0));
        assert!(matches!(r.reserve(&id("x"), 700, 0.0), Reserve::Granted(700, d) if d.is_empty()));
        // 700 reserved: another 500 cannot fit even with the cache emptied.
        assert!(matches!(r.reserve(&id("x"), 500, 0.0), Reserve::Wait));
        assert!(r.contains(&key("a")), "waiting evicts nothing");
        // A load larger than the ceiling waits to run alone, then takes all of it.
        assert!(matches!(r.reserve(&id("x"), 5000, 0.0), Reserve::Wait));
        r.release(700, true);
        match r.reserve(&id("x"), 5000, 0.0) {
            Reserve::Granted(1100, dropped) => assert_eq!(dropped.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.reserve(&id("x"), 1, 0.0), Reserve::Wait));
        r.release(1100, true);
        assert!(matches!(r.reserve(&id("x"), 500, 0.0), Reserve::Granted(500, d) if d.is_empty()));
        assert!(!r.fits(1001) && r.fits(1000));
        assert!(r.has_room(), "500 reserved under a ceiling of 1100");
        assert!(matches!(
            r.reserve(&id("x"), 600, 0.0),
            Reserve::Granted(600, _)
        ));
        assert!(!r.has_room(), "the reservations take the ceiling");
        r.release(600, true);
        r.release(500, true);
        // Residents and reservations together fill the budget: no room for a warm-up.
        assert!(load(&mut r, "c", 850, 5, 0.0) && r.has_room());
        assert!(matches!(
            r.reserve(&id("x"), 200, 0.0),
            Reserve::Granted(200, _)
        ));
        assert!(!r.has_room());
        r.release(200, true);
        r.unload(&ModelId::parse("c").unwrap(), 0.0);
        // A budget smaller than the fixed load allowance: reservations far above the
        // budget still leave room under the headroom.
        let metrics = Arc::new(Metrics::new(100));
        let mut tiny: Resident<Fake> =
            Resident::new(Policy::new(100, PolicyConfig::default()), 10_000, metrics);
        assert!(matches!(
            tiny.reserve(&id("x"), 3_000, 0.0),
            Reserve::Granted(3_000, _)
        ));
        assert!(tiny.has_room());
        assert!(matches!(
            tiny.reserve(&id("x"), 7_100, 0.0),
            Reserve::Granted(7_100, _)
        ));
        assert!(!tiny.has_room());
        // Held memory alone never makes a load wait for ever: with no load running, the
        // reservation is granted over the ceiling (everything evictable goes first).
        r.hold(1000);
        assert!(load(&mut r, "b", 50, 5, 0.0));
        match r.reserve(&id("x"), 500, 0.0) {
            Reserve::Granted(500, dropped) => assert_eq!(dropped.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(r.reserve(&id("x"), 10, 0.0), Reserve::Wait),
            "one load runs now"
        );
        r.release(500, true);
        r.release(1000, false);
        assert_eq!(r.reserved(), 0);
        // The allowance is room on top of the headroom.
        let metrics = Arc::new(Metrics::new(1000));
        let roomy: Resident<Fake> =
            Resident::new(Policy::new(1000, PolicyConfig::default()), 500, metrics);
        assert_eq!(roomy.ceiling(), 1600);
    }

    #[test]
    fn a_warm_up_evicted_before_its_first_hit_is_counted_once() {
        let mut r = resident(1000);
        let now = 0.0;
        assert!(
            r.admit(key("w1"), Arc::new(Fake(400)), 0.01, now, true)
                .admitted
        );
        assert!(
            r.admit(key("w2"), Arc::new(Fake(400)), 0.01, now, true)
                .admitted
        );
        // w1 serves a request: no longer a candidate for waste.
        assert!(r.lookup(&key("w1"), now, true).is_some());
        // A model with many requests displaces both.
        for _ in 0..100 {
            r.lookup(&key("big"), now, true);
        }
        let out = r.admit(key("big"), Arc::new(Fake(900)), 1.0, now, false);
        assert!(out.admitted);
        assert_eq!(out.dropped.len(), 2);
        assert_eq!(r.metrics.warmup_wasted.get(), 1);
        // A warm-up the policy refuses outright is wasted too.
        let refused = r.admit(key("w3"), Arc::new(Fake(500)), 1e-9, now, true);
        assert!(!refused.admitted);
        assert_eq!(r.metrics.warmup_wasted.get(), 2);
    }

    /// A shadow version takes only free room of the budget (or room other shadow versions
    /// give up), never a live model's; any load or admission that needs room evicts shadow
    /// versions first; a counted request makes one an ordinary resident.
    #[test]
    fn shadow_versions_take_only_free_room_and_leave_first() {
        // A ceiling of 2100: the shadow loads in flight may take up to 1100.
        let metrics = Arc::new(Metrics::new(1000));
        let mut r: Resident<Fake> =
            Resident::new(Policy::new(1000, PolicyConfig::default()), 1000, metrics);
        assert!(load(&mut r, "live", 600, 1, 0.0));
        // 400 free in the budget: a 500-byte shadow load is refused, nothing evicted,
        // though the ceiling (2100) would have taken it.
        assert!(r.reserve_shadow(500, 1.0).is_none());
        assert!(r.contains(&key("live")));
        assert_eq!(r.reserved(), 0);
        match r.reserve_shadow(300, 1.0) {
            Some((300, dropped)) => assert!(dropped.is_empty()),
            other => panic!("{other:?}"),
        }
        r.release_shadow(300);
        assert!(
            r.admit_shadow(key("s1"), Arc::new(Fake(300)), 0.01, 1.0)
                .loaded()
                .admitted
        );
        assert!(r.is_shadow(&key("s1")) && !r.is_shadow(&key("live")));
        // A second shadow that does not fit beside both: the first makes room.
        let second = r
            .admit_shadow(key("s2"), Arc::new(Fake(350)), 0.01, 1.0)
            .loaded();
        assert!(second.admitted);
        assert_eq!(second.dropped.len(), 1);
        assert!(!r.contains(&key("s1")) && r.contains(&key("live")));
        // One that would need the live model's room: not kept, nothing evicted.
        let third = r
            .admit_shadow(key("s3"), Arc::new(Fake(500)), 0.01, 1.0)
            .loaded();
        assert!(!third.admitted && third.dropped.is_empty());
        assert!(r.contains(&key("s2")) && r.contains(&key("live")));
        assert_eq!(r.evictions().back().unwrap().reason, Reason::NotAdmitted);
        // A shadow reservation may evict shadow versions for its room.
        match r.reserve_shadow(400, 1.0) {
            Some((400, dropped)) => assert_eq!(dropped.len(), 1),
            other => panic!("{other:?}"),
        }
        r.release_shadow(400);
        assert!(!r.contains(&key("s2")));
        // A live admission that needs room takes it from a shadow version first, even one
        // the policy ranks above the live model (the newcomer has more requests than
        // the live model; the shadow has none, counted or pooled).
        assert!(
            r.admit_shadow(key("s4"), Arc::new(Fake(350)), 100.0, 1.0)
                .loaded()
                .admitted
        );
        assert!(load(&mut r, "new", 300, 5, 2.0));
        assert!(!r.contains(&key("s4")), "the shadow left");
        assert!(r.contains(&key("live")) && r.contains(&key("new")));
        // A live reservation that needs room takes it from a shadow version first.
        r.unload(&id("new"), 2.0);
        assert!(
            r.admit_shadow(key("s5"), Arc::new(Fake(350)), 100.0, 2.0)
                .loaded()
                .admitted
        );
        match r.reserve(&id("x"), 1200, 3.0) {
            Reserve::Granted(1200, dropped) => assert_eq!(dropped.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(!r.contains(&key("s5")) && r.contains(&key("live")));
        r.release(1200, true);
        // A counted request for a shadow version makes it an ordinary resident.
        assert!(
            r.admit_shadow(key("s6"), Arc::new(Fake(100)), 0.01, 3.0)
                .loaded()
                .admitted
        );
        assert!(r.lookup(&key("s6"), 3.0, false).is_some());
        assert!(r.is_shadow(&key("s6")), "not counted: still a shadow");
        assert!(r.lookup(&key("s6"), 3.0, true).is_some());
        assert!(!r.is_shadow(&key("s6")));
    }

    /// A live load never evicts a live model nor waits because a shadow version's load
    /// holds a reservation: the shadow's reservations are kept apart (and bounded by the
    /// room above the budget).
    #[test]
    fn a_live_reservation_counts_shadow_reservations_but_never_waits_for_them() {
        let metrics = Arc::new(Metrics::new(1000));
        let mut r: Resident<Fake> =
            Resident::new(Policy::new(1000, PolicyConfig::default()), 1000, metrics);
        assert_eq!(r.ceiling(), 2100);
        assert!(load(&mut r, "live", 600, 5, 0.0));
        assert!(matches!(r.reserve_shadow(400, 1.0), Some((400, d)) if d.is_empty()));
        assert_eq!((r.reserved(), r.shadow_reserved()), (400, 400));
        // 600 resident + 400 shadow + 1100 = the ceiling: granted, nobody evicted.
        match r.reserve(&id("x"), 1100, 1.0) {
            Reserve::Granted(1100, dropped) => assert!(dropped.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(r.contains(&key("live")));
        r.release(1100, true);
        // 1500 more would pass the ceiling with the shadow's 400: the memory bound wins,
        // the lowest resident goes; the load is granted at once, never made to wait for
        // the shadow's load.
        match r.reserve(&id("y"), 1500, 1.0) {
            Reserve::Granted(1500, dropped) => assert_eq!(dropped.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(!r.contains(&key("live")));
        r.release(1500, true);
        // Another shadow load sees every reservation: 400 + 700 is over the budget.
        assert!(r.reserve_shadow(700, 1.0).is_none());
        r.release_shadow(400);
        assert_eq!(r.reserved(), 0);
        // The shadow loads in flight stay within the room above the budget (1100).
        assert!(r.reserve_shadow(1000, 2.0).is_some());
        assert!(r.reserve_shadow(100, 2.0).is_none(), "over the budget");
        r.release_shadow(1000);
        let metrics = Arc::new(Metrics::new(1000));
        let mut small: Resident<Fake> =
            Resident::new(Policy::new(1000, PolicyConfig::default()), 0, metrics);
        assert!(
            small.reserve_shadow(101, 0.0).is_none(),
            "over 100 above the budget"
        );
        assert!(small.reserve_shadow(100, 0.0).is_some());
    }

    /// A shadow version loaded while the same version became resident (promoted, or
    /// named by a client) leaves the resident one as it is, unmarked, and answers it.
    #[test]
    fn a_shadow_admission_of_a_resident_version_keeps_it_live() {
        let mut r = resident(1000);
        let live = Arc::new(Fake(300));
        assert!(r.admit(key("m"), live.clone(), 0.01, 0.0, false).admitted);
        match r.admit_shadow(key("m"), Arc::new(Fake(300)), 0.01, 1.0) {
            ShadowAdmitted::Resident(model) => assert!(Arc::ptr_eq(&model, &live)),
            other => panic!("{other:?}"),
        }
        assert!(!r.is_shadow(&key("m")));
        assert!(Arc::ptr_eq(r.model(&key("m")).unwrap(), &live));
        assert_eq!(r.policy().used(), 300);
        assert!(r.evictions().is_empty());
    }

    #[test]
    fn replace_and_unload_log_their_reasons() {
        let mut r = resident(1000);
        assert!(load(&mut r, "m", 100, 3, 0.0));
        let v2 = ModelKey {
            id: ModelId::parse("m").unwrap(),
            version: 2,
        };
        let dropped = r.replace(&key("m"), v2.clone(), Arc::new(Fake(120)), 0.01, 1.0);
        assert_eq!(dropped.len(), 1);
        assert!(r.contains(&v2) && !r.contains(&key("m")));
        assert_eq!(r.evictions().back().unwrap().reason, Reason::Replaced);
        assert_eq!(r.unload(&ModelId::parse("m").unwrap(), 2.0).len(), 1);
        assert_eq!(r.len(), 0);
        assert_eq!(r.policy().used(), 0);
        assert_eq!(r.evictions().back().unwrap().reason, Reason::Unload);
    }
}
