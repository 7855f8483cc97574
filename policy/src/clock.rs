//! The clock request counts decay on: it advances by one per request, not per second.
//!
//! Counts that decay by wall-clock time see a window of `rate × half-life` requests: at
//! 160 req/s over 2,000 models and a 10 s half-life, the tail's counts are 0 or 1 and
//! ranking it is close to recency; at 5,000 req/s the same half-life holds 30 times more
//! history. On a traffic clock the window is `half_life` requests at any rate, so the same
//! sequence of requests is ranked the same at 50 req/s as at 5,000.
//!
//! Rates still travel in requests per second (the proxies' reports, the explain view):
//! [`TrafficClock::per_second`] is the measured request rate that converts a rate per
//! request of this clock (a share of its traffic) to and from requests per second.

/// Requests counted so far, and the request rate measured on the wall clock.
#[derive(Clone, Debug)]
pub struct TrafficClock {
    requests: f64,
    /// Requests per second, smoothed over about `WINDOW` seconds.
    per_second: f64,
    /// Requests and wall time at the last rate update.
    mark: (f64, f64),
    measured: bool,
}

/// Seconds the measured rate is smoothed over.
const WINDOW: f64 = 10.0;
/// Seconds between rate updates.
const STEP: f64 = 1.0;
/// The rate assumed before one is measured, and the least ever assumed (a scorer with a
/// trickle of traffic must not turn pool rates into huge shares).
const FLOOR: f64 = 1.0;

impl TrafficClock {
    /// A clock started at wall time `wall` (seconds).
    pub fn new(wall: f64) -> Self {
        TrafficClock {
            requests: 0.0,
            per_second: FLOOR,
            mark: (0.0, wall),
            measured: false,
        }
    }

    /// Counts `n` requests at wall time `wall`; returns the clock's new time.
    pub fn tick(&mut self, n: f64, wall: f64) -> f64 {
        self.requests += n;
        self.observe(wall);
        self.requests
    }

    /// Updates the measured rate at wall time `wall`. Without requests nothing moves: the
    /// clock stands still and the rate stays the last one measured (an idle gap is not
    /// traffic), so rates converted with it do not drift while nothing happens.
    pub fn observe(&mut self, wall: f64) {
        let elapsed = wall - self.mark.1;
        if elapsed < STEP {
            return;
        }
        if self.requests == self.mark.0 {
            self.mark.1 = wall;
            return;
        }
        let rate = (self.requests - self.mark.0) / elapsed;
        self.per_second = if self.measured {
            let keep = (-elapsed / WINDOW).exp();
            self.per_second * keep + rate * (1.0 - keep)
        } else {
            rate
        };
        self.measured = true;
        self.mark = (self.requests, wall);
    }

    /// The clock's time: requests counted so far.
    pub fn now(&self) -> f64 {
        self.requests
    }

    /// The measured request rate (req/s), at least `FLOOR`.
    pub fn per_second(&self) -> f64 {
        self.per_second.max(FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_requests_and_measures_their_rate() {
        let mut clock = TrafficClock::new(0.0);
        // 200 req/s for 20 s.
        for i in 1..=4000 {
            clock.tick(1.0, i as f64 / 200.0);
        }
        assert_eq!(clock.now(), 4000.0);
        assert!(
            (clock.per_second() - 200.0).abs() < 5.0,
            "{}",
            clock.per_second()
        );
        // Then 20 req/s: the rate follows within a few windows.
        for i in 1..=1200 {
            clock.tick(1.0, 20.0 + i as f64 / 20.0);
        }
        assert!(
            (clock.per_second() - 20.0).abs() < 2.0,
            "{}",
            clock.per_second()
        );
        // Idle: the clock stands still and the rate stays; traffic after the gap is
        // measured from the gap's end.
        let rate = clock.per_second();
        clock.observe(500.0);
        clock.observe(600.0);
        assert_eq!(clock.per_second(), rate);
        assert_eq!(clock.now(), 5200.0);
        for i in 1..=100 {
            clock.tick(1.0, 600.0 + i as f64 / 20.0);
        }
        assert!(
            (clock.per_second() - 20.0).abs() < 2.0,
            "{}",
            clock.per_second()
        );
    }
}
