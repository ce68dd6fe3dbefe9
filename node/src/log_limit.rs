//! Rate limits for log lines that bad input could repeat once per record or per event.
//!
//! A [`LogLimit`] lets one line through per interval and counts the ones it held back; the
//! next line that passes says how many were suppressed. The counters in `metrics` beside
//! each such line stay exact: the limit only thins the log.
//!
//! Not for: metrics (see `metrics`) or errors that happen once (log those plainly).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One line per `interval` at most.
pub struct LogLimit {
    interval: Duration,
    /// Milliseconds since [`epoch`] at which the next line may pass (0: at once).
    next_at_ms: AtomicU64,
    /// Lines held back since the last one that passed.
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimit {
    pub const fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            next_at_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(lines suppressed before this one) if this line may be logged now, else None
    /// (and the line is counted as suppressed).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed())
    }

    fn allow_at(&self, now: Duration) -> Option<u64> {
        let now_ms = now.as_millis() as u64;
        let next = self.next_at_ms.load(Ordering::Relaxed);
        let passes = now_ms >= next
            && self
                .next_at_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if passes {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_are_counted() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let at = Duration::from_millis;
        assert_eq!(limit.allow_at(at(5_000)), Some(0));
        for ms in [5_001, 5_500, 5_999] {
            assert_eq!(limit.allow_at(at(ms)), None);
        }
        // The next line passes and reports the three held back.
        assert_eq!(limit.allow_at(at(6_000)), Some(3));
        assert_eq!(limit.allow_at(at(6_001)), None);
        assert_eq!(limit.allow_at(at(9_000)), Some(1));
    }
}
