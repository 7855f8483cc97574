//! Per-key limits (`limits.*`): a request rate (a token bucket) and a cap on requests in
//! flight, each per configured key name, and the key's priority. Pure: the clock is passed
//! in (`now`), so every rule is unit-tested without sleeping; `service.rs` admits a request
//! after its key check and holds the [`Permit`] in the request's context until `logging`.
//!
//! The state is bounded by the configuration: one entry per key name that has a setting,
//! made once at start, never one per client or per request. Keys without settings (and
//! requests no key is asked of) pass without a look-up beyond one hash of the name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use manymodels_config::proxy::{KeySettings, RateLimit};
use manymodels_contract::Priority;

/// Which limit refused a request, and when to come back.
#[derive(Clone, Debug, PartialEq)]
pub enum Limited {
    /// Over `limits.rate`: the bucket is empty. `retry_after` is the whole seconds until it
    /// holds a token again (at least 1), which `Retry-After` carries.
    Rate {
        per_second: f64,
        burst: u32,
        retry_after: u64,
    },
    /// Over `limits.inflight`: `cap` requests of the key are in flight (`Retry-After: 1`).
    InFlight { cap: usize },
}

impl Limited {
    /// `Retry-After`, in whole seconds, at least 1.
    pub fn retry_after(&self) -> u64 {
        match self {
            Limited::Rate { retry_after, .. } => *retry_after,
            Limited::InFlight { .. } => 1,
        }
    }

    /// What is said of the limit in the answer's `error`.
    pub fn describe(&self) -> String {
        match self {
            Limited::Rate {
                per_second, burst, ..
            } => format!("its request rate of {per_second}/s (burst {burst})"),
            Limited::InFlight { cap } => format!("its {cap} requests in flight"),
        }
    }
}

/// One admitted request's share of its key's in-flight count: given back when dropped
/// (the request's context drops it in `logging`, or with the context).
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `tokens` now (at most `burst`), refilled at `per_second` from `last`.
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            last: None,
        }
    }

    /// Takes one token at `now`, or says how many whole seconds until one is there.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let burst = f64::from(self.limit.burst);
        if let Some(last) = self.last {
            // A clock that went back (it cannot: `Instant` is monotonic) refills nothing.
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.limit.per_second).min(burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.limit.per_second;
        Err((wait.ceil() as u64).max(1))
    }
}

/// One key name's limits and priority.
#[derive(Debug)]
struct KeyLimits {
    bucket: Option<Mutex<Bucket>>,
    inflight: Option<(usize, Arc<AtomicUsize>)>,
    priority: Option<Priority>,
}

/// Every configured key name's limits (`limits.*`).
#[derive(Debug, Default)]
pub struct Limits {
    keys: HashMap<String, KeyLimits>,
}

impl Limits {
    /// The limits of `settings` (`ProxyConfig::key_settings`), every bucket full.
    pub fn new(settings: &[KeySettings]) -> Self {
        let keys = settings
            .iter()
            .map(|s| {
                let limits = KeyLimits {
                    bucket: s.rate.map(|rate| Mutex::new(Bucket::new(rate))),
                    inflight: s.inflight.map(|cap| (cap, Arc::new(AtomicUsize::new(0)))),
                    priority: s.priority,
                };
                (s.name.clone(), limits)
            })
            .collect();
        Limits { keys }
    }

    /// Admits a request made with the key named `key` at `now`: `Ok` with the permit to
    /// hold until the request ends (`None` when the key has no in-flight cap), or which
    /// limit refused it. The in-flight cap is checked first, so a request it refuses takes
    /// no token; a token taken is not given back (every admitted request counts against
    /// the rate, a malformed one the proxy then refuses too).
    pub fn admit(&self, key: &str, now: Instant) -> Result<Option<Permit>, Limited> {
        let Some(limits) = self.keys.get(key) else {
            return Ok(None);
        };
        let permit = match &limits.inflight {
            None => None,
            Some((cap, count)) => {
                let admitted = count
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < *cap).then_some(n + 1)
                    })
                    .is_ok();
                if !admitted {
                    return Err(Limited::InFlight { cap: *cap });
                }
                Some(Permit(count.clone()))
            }
        };
        if let Some(bucket) = &limits.bucket {
            let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(retry_after) = bucket.take(now) {
                // The permit, if any, is dropped here: the refused request holds nothing.
                return Err(Limited::Rate {
                    per_second: bucket.limit.per_second,
                    burst: bucket.limit.burst,
                    retry_after,
                });
            }
        }
        Ok(permit)
    }

    /// The priority set for `key` (`limits.priority`), if any: it wins over the client's
    /// `x-mm-priority`.
    pub fn priority(&self, key: &str) -> Option<Priority> {
        self.keys.get(key).and_then(|l| l.priority)
    }

    /// Requests of `key` in flight now (0 for a key without a cap).
    pub fn inflight(&self, key: &str) -> usize {
        self.keys
            .get(key)
            .and_then(|l| l.inflight.as_ref())
            .map_or(0, |(_, n)| n.load(Ordering::Acquire))
    }
}

/// A request's priority: the key's own setting (`key_setting`) wins, and then the header is
/// not read at all (a client's malformed header cannot refuse what its key decides); else
/// the client's `x-mm-priority` (`header`), which must be `interactive` or `batch` (`Err`
/// with the message of a 400 otherwise); else none is said (the scorer's default,
/// interactive).
pub fn priority(
    key_setting: Option<Priority>,
    header: Option<&[u8]>,
) -> Result<Option<Priority>, String> {
    if key_setting.is_some() {
        return Ok(key_setting);
    }
    let Some(value) = header else {
        return Ok(None);
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(Priority::parse)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{} must be `interactive` or `batch`",
                manymodels_contract::header::PRIORITY
            )
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(name: &str, rate: Option<(f64, u32)>, inflight: Option<usize>) -> KeySettings {
        KeySettings {
            name: name.into(),
            rate: rate.map(|(per_second, burst)| RateLimit { per_second, burst }),
            inflight,
            priority: None,
        }
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate_and_says_when_to_retry() {
        let limits = Limits::new(&[settings("acme", Some((2.0, 3)), None)]);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(limits.admit("acme", t0).is_ok(), "burst request {i}");
        }
        let refused = limits.admit("acme", t0).unwrap_err();
        assert_eq!(
            refused,
            Limited::Rate {
                per_second: 2.0,
                burst: 3,
                retry_after: 1
            }
        );
        // Half a second at 2/s is one token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limits.admit("acme", t1).is_ok());
        assert!(limits.admit("acme", t1).is_err());
        // A long idle refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limits.admit("acme", t2).is_ok());
        }
        assert!(limits.admit("acme", t2).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_until_a_token_and_at_least_one() {
        // 0.1/s: an empty bucket holds a token again in 10 s.
        let limits = Limits::new(&[settings("slow", Some((0.1, 1)), None)]);
        let t0 = Instant::now();
        assert!(limits.admit("slow", t0).is_ok());
        assert_eq!(limits.admit("slow", t0).unwrap_err().retry_after(), 10);
        // 2.5 s later a quarter token is there: 7.5 s to go, rounded up.
        let t1 = t0 + Duration::from_millis(2_500);
        assert_eq!(limits.admit("slow", t1).unwrap_err().retry_after(), 8);
        // A fast rate still says 1, never 0.
        let fast = Limits::new(&[settings("fast", Some((1000.0, 1)), None)]);
        assert!(fast.admit("fast", t0).is_ok());
        assert_eq!(fast.admit("fast", t0).unwrap_err().retry_after(), 1);
    }

    #[test]
    fn the_inflight_cap_counts_from_admission_until_the_permit_is_dropped() {
        let limits = Limits::new(&[settings("acme", None, Some(2))]);
        let now = Instant::now();
        let first = limits.admit("acme", now).unwrap().expect("a permit");
        let second = limits.admit("acme", now).unwrap().expect("a permit");
        assert_eq!(limits.inflight("acme"), 2);
        let refused = limits.admit("acme", now).unwrap_err();
        assert_eq!(refused, Limited::InFlight { cap: 2 });
        assert_eq!(refused.retry_after(), 1);
        assert_eq!(limits.inflight("acme"), 2, "a refusal holds nothing");
        drop(first);
        assert_eq!(limits.inflight("acme"), 1);
        let third = limits.admit("acme", now).unwrap();
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(limits.inflight("acme"), 0);
    }

    #[test]
    fn a_request_refused_for_its_rate_holds_no_inflight_slot_and_one_refused_in_flight_takes_no_token()
     {
        let limits = Limits::new(&[settings("acme", Some((1.0, 1)), Some(1))]);
        let now = Instant::now();
        let held = limits.admit("acme", now).unwrap();
        // In flight first: refused there, so the (empty) bucket is not asked.
        assert!(matches!(
            limits.admit("acme", now),
            Err(Limited::InFlight { .. })
        ));
        drop(held);
        // Now the slot is free but the bucket is empty: a rate refusal, slot given back.
        assert!(matches!(
            limits.admit("acme", now),
            Err(Limited::Rate { .. })
        ));
        assert_eq!(limits.inflight("acme"), 0);
        let later = now + Duration::from_secs(1);
        assert!(limits.admit("acme", later).unwrap().is_some());
    }

    #[test]
    fn keys_are_limited_apart_and_keys_without_settings_pass() {
        let limits = Limits::new(&[
            settings("acme", Some((1.0, 1)), None),
            settings("globex", Some((1.0, 1)), None),
        ]);
        let now = Instant::now();
        assert!(limits.admit("acme", now).is_ok());
        assert!(limits.admit("acme", now).is_err());
        assert!(limits.admit("globex", now).is_ok(), "its own bucket");
        for _ in 0..100 {
            assert!(limits.admit("other", now).unwrap().is_none());
            assert!(limits.admit("none", now).unwrap().is_none());
        }
        assert_eq!(
            limits.keys.len(),
            2,
            "one entry per configured key, no more"
        );
    }

    #[test]
    fn a_keys_priority_wins_over_the_header_and_a_bad_header_is_refused() {
        use Priority::{Batch, Interactive};
        assert_eq!(priority(None, None), Ok(None));
        assert_eq!(priority(None, Some(b"batch")), Ok(Some(Batch)));
        assert_eq!(priority(None, Some(b"interactive")), Ok(Some(Interactive)));
        assert_eq!(priority(Some(Batch), Some(b"interactive")), Ok(Some(Batch)));
        assert_eq!(priority(Some(Batch), None), Ok(Some(Batch)));
        for bad in [&b"urgent"[..], b"", b"Batch", b"\xff"] {
            let error = priority(None, Some(bad)).unwrap_err();
            assert!(error.contains("x-mm-priority"), "{error}");
        }
        let limits = Limits::new(&[KeySettings {
            name: "etl".into(),
            priority: Some(Batch),
            ..KeySettings::default()
        }]);
        assert_eq!(limits.priority("etl"), Some(Batch));
        assert_eq!(limits.priority("acme"), None);
    }

    #[test]
    fn a_keys_priority_wins_without_reading_a_malformed_header() {
        use Priority::{Batch, Interactive};
        for bad in [&b"urgent"[..], b"", b"Batch", b"\xff"] {
            assert_eq!(priority(Some(Batch), Some(bad)), Ok(Some(Batch)));
            assert_eq!(
                priority(Some(Interactive), Some(bad)),
                Ok(Some(Interactive))
            );
            assert!(priority(None, Some(bad)).is_err(), "no key setting: 400");
        }
    }
}
