//! `[push]`: pushed updates over WebSocket and Server-Sent Events (see docs/API.md, "Push").

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

/// `[push]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// At most one update per subscription per this many milliseconds (the latest state).
    pub interval_ms: u64,
    /// WebSocket and SSE connections this node serves at once.
    pub max_connections: usize,
    /// Subscriptions one WebSocket connection may hold.
    pub max_subscriptions: usize,
    /// Largest message a client may send, in bytes (close code 1009 beyond it).
    pub max_message_bytes: usize,
    /// How long a socket may stay blocked (the client not reading) before it is closed.
    pub blocked_timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            interval_ms: 250,
            max_connections: 20_000,
            max_subscriptions: 64,
            max_message_bytes: 4096,
            blocked_timeout_ms: 5000,
        }
    }
}

impl PushConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn blocked_timeout(&self) -> Duration {
        Duration::from_millis(self.blocked_timeout_ms)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(10..=60_000).contains(&self.interval_ms) {
            bail!(
                "push.interval_ms must be 10-60000, got {}",
                self.interval_ms
            );
        }
        if self.max_connections == 0 {
            bail!("push.max_connections must be positive");
        }
        if !(1..=10_000).contains(&self.max_subscriptions) {
            bail!(
                "push.max_subscriptions must be 1-10000, got {}",
                self.max_subscriptions
            );
        }
        if !(256..=1_048_576).contains(&self.max_message_bytes) {
            bail!(
                "push.max_message_bytes must be 256-1048576, got {}",
                self.max_message_bytes
            );
        }
        if !(100..=600_000).contains(&self.blocked_timeout_ms) {
            bail!(
                "push.blocked_timeout_ms must be 100-600000, got {}",
                self.blocked_timeout_ms
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bound_is_named() {
        PushConfig::default().validate().unwrap();
        let bad = |f: fn(&mut PushConfig), field: &str| {
            let mut c = PushConfig::default();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{e}");
        };
        bad(|c| c.interval_ms = 0, "push.interval_ms");
        bad(|c| c.max_connections = 0, "push.max_connections");
        bad(|c| c.max_subscriptions = 0, "push.max_subscriptions");
        bad(|c| c.max_message_bytes = 10, "push.max_message_bytes");
        bad(|c| c.blocked_timeout_ms = 5, "push.blocked_timeout_ms");
    }
}
