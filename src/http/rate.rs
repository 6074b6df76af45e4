//! The minimum-rate rule for bytes a slow peer owes us (a request body) or
//! has to take from us (a response): a transfer may take `grace` whatever
//! its speed, and after that it must keep an average of at least `min_rate`
//! bytes per second since it began. With `min_rate` 0 the rule is only an
//! idle timeout: `grace` without any progress.
//!
//! [`RateClock::deadline`] is the moment the transfer is cut off if no more
//! bytes move: `start + max(grace, done / min_rate)`. Waits are bounded by
//! it, so a stalled or trickling peer is found without any timer of its own.

use std::time::{Duration, Instant};

const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

/// Progress of one transfer against the minimum-rate rule.
#[derive(Debug, Clone, Copy)]
pub struct RateClock {
    start: Instant,
    last: Instant,
    done: u64,
    grace: Duration,
    min_rate: u64,
}

impl RateClock {
    /// A transfer beginning now.
    pub fn start(grace: Duration, min_rate: u64) -> RateClock {
        let now = Instant::now();
        RateClock {
            start: now,
            last: now,
            done: 0,
            grace,
            min_rate,
        }
    }

    /// `n` more bytes moved.
    pub fn add(&mut self, n: usize) {
        if n > 0 {
            self.done += n as u64;
            self.last = Instant::now();
        }
    }

    /// Bytes moved so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// When the transfer is too slow if nothing more moves by then.
    pub fn deadline(&self) -> Instant {
        if self.min_rate == 0 {
            return self.last + self.grace;
        }
        // done / min_rate seconds, in milliseconds without overflow.
        // Capped at a year: Instant + Duration panics on overflow.
        let earned_ms = (self.done.saturating_mul(1000) / self.min_rate).min(YEAR_MS);
        let earned = Duration::from_millis(earned_ms);
        self.start + self.grace.max(earned)
    }

    /// How long a wait may last from now (zero: already too slow).
    pub fn left(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::RateClock;
    use std::time::Duration;

    #[test]
    fn grace_then_average_rate() {
        let mut c = RateClock::start(Duration::from_secs(2), 1000);
        assert_eq!(c.deadline(), c.start + Duration::from_secs(2));
        // 1 byte/s does not buy time past the grace period.
        c.add(3);
        assert_eq!(c.deadline(), c.start + Duration::from_secs(2));
        // 10,000 bytes at >= 1000 B/s may take 10 s in all.
        c.add(9_997);
        assert_eq!(c.done(), 10_000);
        assert_eq!(c.deadline(), c.start + Duration::from_secs(10));
        assert!(c.left() > Duration::from_secs(9));
    }

    #[test]
    fn zero_rate_is_an_idle_timeout() {
        let mut c = RateClock::start(Duration::from_millis(50), 0);
        let first = c.deadline();
        std::thread::sleep(Duration::from_millis(5));
        c.add(1);
        assert!(c.deadline() > first, "progress pushes the idle deadline");
        c.add(0);
        assert_eq!(c.deadline(), c.last + Duration::from_millis(50));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let mut c = RateClock::start(Duration::from_secs(1), 1);
        c.add(usize::MAX);
        assert!(c.deadline() > c.start);
    }
}
