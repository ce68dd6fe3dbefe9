//! The one retry policy: capped exponential backoff.
//!
//! Everything that waits for a dependency to come back (Cassandra at start, migrations,
//! Kafka topics, an entity load, an ingest transaction) retries through [`Backoff`], so the
//! delays and the log line of a failed attempt look the same everywhere.
//!
//! Not for: deciding whether an error is worth retrying; callers decide that.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Delays that double from `initial` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    factor: u32,
}

impl Backoff {
    /// Starts at `initial`, multiplies by `factor` after each delay, never exceeds `max`.
    pub fn new(initial: Duration, factor: u32, max: Duration) -> Backoff {
        Backoff {
            next: initial.min(max),
            max,
            factor: factor.max(1),
        }
    }

    /// The default for a dependency that is down: 200 ms, doubling, at most 5 s.
    pub fn dependency() -> Backoff {
        Backoff::new(Duration::from_millis(200), 2, Duration::from_secs(5))
    }

    /// The delay before the next attempt; each call returns a longer one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * self.factor).min(self.max);
        delay
    }
}

/// Retries `f` with [`Backoff::dependency`] until it succeeds or `cancel` fires, logging
/// each failure as `{what} failed`. Returns None when cancelled.
pub async fn until_ok<T, F, Fut>(what: &str, cancel: &CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::dependency();
    loop {
        let attempt = tokio::select! {
            r = f() => r,
            _ = cancel.cancelled() => return None,
        };
        match attempt {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "{what} failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_the_factor_and_stop_at_the_cap() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), 3, ms(1000));
        let delays: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(100), ms(300), ms(900), ms(1000), ms(1000)]);
        // An initial delay over the cap starts at the cap; a factor of 0 acts as 1.
        let mut b = Backoff::new(ms(50), 0, ms(10));
        assert_eq!((b.next_delay(), b.next_delay()), (ms(10), ms(10)));
    }

    #[tokio::test]
    async fn until_ok_retries_until_success_and_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let got = until_ok("test op", &cancel, || {
            calls += 1;
            let n = calls;
            async move {
                anyhow::ensure!(n >= 3, "attempt {n} fails");
                Ok(n)
            }
        })
        .await;
        assert_eq!(got, Some(3));

        cancel.cancel();
        let never = until_ok("test op", &cancel, || async {
            anyhow::bail!("always fails");
            #[allow(unreachable_code)]
            Ok(())
        })
        .await;
        assert_eq!(never, None);
    }
}
