//! Exponentially decayed request counts, kept in "forward" form so they never need a sweep.
//!
//! A count `c` observed at time `t` decays as `c · 2^(-(now - t) / half_life)`. Instead of
//! storing `(c, t)` we store `ln c + t · ln 2 / half_life` (a [`Log`]): the decay is then
//! implicit, two counts compare correctly whatever times they were last updated at, and the
//! eviction order of counts that are not touched never changes. Converting back to a count
//! or a rate needs the current time.

/// Half-life and the constants derived from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decay {
    half_life: f64,
    /// ln 2 / half-life: how much the forward log grows per second.
    k: f64,
}

/// A decayed count in forward-log form. `Log::ZERO` is a count of zero.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Log(pub f64);

impl Log {
    pub const ZERO: Log = Log(f64::NEG_INFINITY);

    pub fn max(self, other: Log) -> Log {
        if other.0 > self.0 { other } else { self }
    }
}

impl Decay {
    /// `half_life` in seconds; must be positive.
    pub fn new(half_life: f64) -> Self {
        assert!(half_life > 0.0, "half-life must be positive");
        Decay {
            half_life,
            k: std::f64::consts::LN_2 / half_life,
        }
    }

    pub fn half_life(&self) -> f64 {
        self.half_life
    }

    /// The mean lifetime of one count (half-life / ln 2): a steady rate `r` settles at a
    /// count of `r · tau`.
    pub fn tau(&self) -> f64 {
        1.0 / self.k
    }

    /// `log` plus `n` new requests at `now`.
    pub fn add(&self, log: Log, n: f64, now: f64) -> Log {
        let current = self.count(log, now);
        Log((current + n).ln() + now * self.k)
    }

    /// The decayed count at `now`.
    pub fn count(&self, log: Log, now: f64) -> f64 {
        if log.0 == f64::NEG_INFINITY {
            0.0
        } else {
            (log.0 - now * self.k).exp()
        }
    }

    /// The request rate (per second) a decayed count stands for.
    pub fn rate(&self, log: Log, now: f64) -> f64 {
        self.count(log, now) * self.k
    }

    /// The forward log of a rate (per second) measured at `now`.
    pub fn from_rate(&self, rate: f64, now: f64) -> Log {
        if rate <= 0.0 {
            Log::ZERO
        } else {
            Log((rate * self.tau()).ln() + now * self.k)
        }
    }

    /// The factor every count is multiplied by over `seconds`.
    pub fn factor(&self, seconds: f64) -> f64 {
        (-seconds * self.k).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_halve_every_half_life() {
        let d = Decay::new(10.0);
        let l = d.add(Log::ZERO, 8.0, 100.0);
        assert!((d.count(l, 100.0) - 8.0).abs() < 1e-9);
        assert!((d.count(l, 110.0) - 4.0).abs() < 1e-9);
        assert!((d.count(l, 130.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_steady_rate_settles_at_rate_times_tau() {
        let d = Decay::new(5.0);
        let mut l = Log::ZERO;
        for i in 0..20_000 {
            l = d.add(l, 1.0, i as f64 * 0.01); // 100 req/s for 200 s
        }
        assert!(
            (d.rate(l, 199.99) - 100.0).abs() < 1.0,
            "{}",
            d.rate(l, 199.99)
        );
        let back = d.from_rate(100.0, 50.0);
        assert!((d.rate(back, 50.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn order_does_not_depend_on_when_counts_were_touched() {
        let d = Decay::new(10.0);
        let a = d.add(Log::ZERO, 4.0, 0.0); // 4 at t=0 is 2 at t=10
        let b = d.add(Log::ZERO, 3.0, 10.0);
        assert!(b > a);
        assert!(d.count(b, 50.0) > d.count(a, 50.0));
    }
}
