//! Time steps of history buckets (minute, hour, day; UTC) and the grid of concurrency
//! samples inside them.
//!
//! A bucket of step `s` starting at `t` holds the events with `t <= ts < t + s` (event
//! time, milliseconds since the epoch). Starts are multiples of the step counted from the
//! epoch, so days start at 00:00 UTC; times before 1970 work the same way (floor division).

use serde::Serialize;

/// Event-time distance between two concurrency samples of a channel.
pub const SAMPLE_MS: i64 = 10_000;

/// A bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Minute,
    Hour,
    Day,
}

impl Step {
    /// Every step, shortest first (the order of every listing and of stored rows).
    pub const ALL: [Step; 3] = [Step::Minute, Step::Hour, Step::Day];

    pub fn millis(self) -> i64 {
        match self {
            Step::Minute => 60_000,
            Step::Hour => 3_600_000,
            Step::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `ts` (saturating at `i64::MIN`).
    #[inline]
    pub fn start(self, ts: i64) -> i64 {
        /// Each step's floor with its size a constant: a multiplication, not a division
        /// (several per record).
        #[inline(always)]
        fn floor<const MS: i64>(ts: i64) -> i64 {
            ts.div_euclid(MS).saturating_mul(MS)
        }
        match self {
            Step::Minute => floor::<60_000>(ts),
            Step::Hour => floor::<3_600_000>(ts),
            Step::Day => floor::<86_400_000>(ts),
        }
    }

    /// The name used in queries, JSON and table names.
    pub fn label(self) -> &'static str {
        match self {
            Step::Minute => "minute",
            Step::Hour => "hour",
            Step::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.label() == s)
    }

    /// The Cassandra table of this step's buckets.
    pub fn table(self) -> &'static str {
        match self {
            Step::Minute => "history_minute",
            Step::Hour => "history_hour",
            Step::Day => "history_day",
        }
    }

    /// Concurrency samples in one bucket (6 a minute).
    pub fn samples(self) -> usize {
        (self.millis() / SAMPLE_MS) as usize
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The first sample point after `t`: the next multiple of [`SAMPLE_MS`].
/// Saturates at the last point before `i64::MAX`.
pub fn next_sample(t: i64) -> i64 {
    t.div_euclid(SAMPLE_MS)
        .saturating_add(1)
        .checked_mul(SAMPLE_MS)
        .unwrap_or(i64::MAX - i64::MAX % SAMPLE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_at_multiples_of_their_step_even_before_the_epoch() {
        assert_eq!(Step::Minute.start(0), 0);
        assert_eq!(Step::Minute.start(59_999), 0);
        assert_eq!(Step::Minute.start(60_000), 60_000);
        assert_eq!(Step::Hour.start(-1), -3_600_000);
        assert_eq!(Step::Day.start(86_400_000 * 3 + 5), 86_400_000 * 3);
        assert_eq!(Step::Day.start(i64::MAX), i64::MAX - i64::MAX % 86_400_000);
        // Each step's constant floor is the floor by its size, at the limits too.
        let edges = [
            i64::MIN,
            i64::MIN + 1,
            -86_400_001,
            -60_000,
            -1,
            0,
            1,
            59_999,
            i64::MAX,
        ];
        for ts in edges
            .into_iter()
            .chain((0..1000).map(|i| i * 7_919_993 - 3_000_000_000))
        {
            for step in Step::ALL {
                let m = step.millis();
                assert_eq!(
                    step.start(ts),
                    ts.div_euclid(m).saturating_mul(m),
                    "{step:?} {ts}"
                );
            }
        }
    }

    #[test]
    fn samples_lie_on_a_ten_second_grid() {
        assert_eq!(next_sample(0), 10_000);
        assert_eq!(next_sample(9_999), 10_000);
        assert_eq!(next_sample(10_000), 20_000);
        assert_eq!(next_sample(-1), 0);
        assert_eq!(next_sample(i64::MAX), i64::MAX - i64::MAX % SAMPLE_MS);
        assert_eq!(Step::Minute.samples(), 6);
        assert_eq!(Step::Hour.samples(), 360);
        assert_eq!(Step::Day.samples(), 8640);
    }

    #[test]
    fn steps_parse_their_labels_only() {
        for s in Step::ALL {
            assert_eq!(Step::parse(s.label()), Some(s));
        }
        assert_eq!(Step::parse("week"), None);
        assert_eq!(Step::parse("Minute"), None);
    }
}
