//! Rate-limited logging: a flood of bad input costs a log line every few seconds, not one
//! per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per interval and counts the rest, so a flood of bad input costs a
/// log line every few seconds, not one per message.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    start: Instant,
    /// Milliseconds since `start` of the last event let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were suppressed since the last.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let now_ms = now.duration_since(self.start).as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ms >= last + self.interval.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_per_interval() {
        let rl = RateLimit::new(Duration::from_secs(10));
        let t0 = rl.start;
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(rl.check_at(t0 + Duration::from_secs(2)), None);
        assert_eq!(rl.check_at(t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(rl.check_at(t0 + Duration::from_secs(12)), None);
    }
}
