//! `[history]`: event-time buckets per player, channel and partition (see docs/API.md,
//! "History").

use anyhow::bail;
use serde::Deserialize;

use crate::history::Step;

/// Longest retention Cassandra can keep a row for (its TTL limit: 20 years).
const MAX_RETENTION_SECS: u64 = 630_720_000;

/// `[history]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Whether shards keep history buckets at all.
    pub enabled: bool,
    /// How long minute buckets are kept, seconds (default 7 days).
    pub minute_retention_secs: u64,
    /// How long hour buckets are kept, seconds (default 90 days).
    pub hour_retention_secs: u64,
    /// How long day buckets are kept, seconds (default 3 years).
    pub day_retention_secs: u64,
    /// Most buckets one history query may answer (`from`..`to` at `step`).
    pub max_points: usize,
    /// Buckets ending less than this long before the partition's watermark are reported
    /// as `open`: late events are still expected there, seconds.
    pub grace_secs: u64,
    /// Bytes of stored buckets the owner keeps for repeated history queries, MiB (0: none;
    /// see `history::cache`).
    pub cache_mib: usize,
    /// How long a cached entity's buckets are answered before they are read again, seconds.
    pub cache_secs: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            enabled: true,
            minute_retention_secs: 7 * 86_400,
            hour_retention_secs: 90 * 86_400,
            day_retention_secs: 3 * 365 * 86_400,
            max_points: 20_000,
            grace_secs: 3_600,
            cache_mib: 64,
            cache_secs: 300,
        }
    }
}

impl HistoryConfig {
    /// The retention of `step`'s buckets, seconds.
    pub fn retention_secs(&self, step: Step) -> u64 {
        match step {
            Step::Minute => self.minute_retention_secs,
            Step::Hour => self.hour_retention_secs,
            Step::Day => self.day_retention_secs,
        }
    }

    /// The TTL a bucket row of `step` is written with.
    pub fn ttl_secs(&self, step: Step) -> i32 {
        self.retention_secs(step).min(MAX_RETENTION_SECS) as i32
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for step in Step::ALL {
            let secs = self.retention_secs(step);
            if secs < step.millis() as u64 / 1000 || secs > MAX_RETENTION_SECS {
                bail!(
                    "history.{}_retention_secs must be {}-{MAX_RETENTION_SECS} (one {} to 20 years), got {secs}",
                    step.label(),
                    step.millis() / 1000,
                    step.label()
                );
            }
        }
        if !(1..=1_000_000).contains(&self.max_points) {
            bail!(
                "history.max_points must be 1-1000000, got {}",
                self.max_points
            );
        }
        if self.grace_secs > MAX_RETENTION_SECS {
            bail!(
                "history.grace_secs must be at most {MAX_RETENTION_SECS}, got {}",
                self.grace_secs
            );
        }
        if self.cache_mib > 65_536 {
            bail!(
                "history.cache_mib must be at most 65536 (64 GiB), got {}",
                self.cache_mib
            );
        }
        if !(1..=86_400).contains(&self.cache_secs) {
            bail!(
                "history.cache_secs must be 1-86400 (one second to a day), got {}",
                self.cache_secs
            );
        }
        Ok(())
    }

    /// The owner's cache of stored buckets this configures.
    pub fn cache(&self) -> crate::history::cache::HistoryCache {
        crate::history::cache::HistoryCache::new(
            self.cache_mib << 20,
            std::time::Duration::from_secs(self.cache_secs),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bound_is_named() {
        HistoryConfig::default().validate().unwrap();
        let bad = |f: fn(&mut HistoryConfig), field: &str| {
            let mut c = HistoryConfig::default();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{e}");
        };
        bad(
            |c| c.minute_retention_secs = 59,
            "history.minute_retention_secs",
        );
        bad(
            |c| c.day_retention_secs = u64::MAX,
            "history.day_retention_secs",
        );
        bad(|c| c.hour_retention_secs = 0, "history.hour_retention_secs");
        bad(|c| c.max_points = 0, "history.max_points");
        bad(|c| c.grace_secs = u64::MAX, "history.grace_secs");
        bad(|c| c.cache_mib = 65_537, "history.cache_mib");
        bad(|c| c.cache_secs = 0, "history.cache_secs");
        bad(|c| c.cache_secs = 86_401, "history.cache_secs");
        assert_eq!(HistoryConfig::default().ttl_secs(Step::Day), 94_608_000);
    }
}
