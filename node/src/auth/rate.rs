//! Per-key ingest limits: two token buckets, one for requests and one for events.
//!
//! A bucket holds up to its burst of tokens and refills at its rate per second. A request
//! takes one request token and one event token per event of its parsed body, both or
//! neither: a request refused here consumed nothing, so a client that waits `Retry-After`
//! seconds and sends it again gets through. Time is a parameter, so the arithmetic is tested
//! without sleeping.
//!
//! Not for: answering HTTP (see `api::auth`), or limits that hold across nodes: each node
//! keeps its own buckets, so a key sending to N nodes gets up to N times its limits.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::bail;

/// A key's ingest limits as the keys file gives them; `None`: not limited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestLimits {
    pub requests_per_sec: Option<u32>,
    pub request_burst: Option<u32>,
    pub events_per_sec: Option<u32>,
    pub event_burst: Option<u32>,
}

impl IngestLimits {
    /// The buckets these limits describe; zero rates and bursts without a rate are refused.
    pub fn limiter(&self) -> anyhow::Result<Limiter> {
        let requests = bucket("requests", self.requests_per_sec, self.request_burst)?;
        let events = bucket("events", self.events_per_sec, self.event_burst)?;
        let buckets = (requests.is_some() || events.is_some())
            .then(|| Mutex::new(Buckets { requests, events }));
        Ok(Limiter { buckets })
    }

    /// The settings that are set, as keys file lines would name them.
    pub fn settings(&self) -> Vec<(&'static str, u32)> {
        [
            ("requests_per_sec", self.requests_per_sec),
            ("request_burst", self.request_burst),
            ("events_per_sec", self.events_per_sec),
            ("event_burst", self.event_burst),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }
}

fn bucket(what: &str, rate: Option<u32>, burst: Option<u32>) -> anyhow::Result<Option<Bucket>> {
    let singular = what.trim_end_matches('s');
    match (rate, burst) {
        (None, None) => Ok(None),
        (None, Some(_)) => bail!("{singular}_burst is set without {what}_per_sec"),
        (Some(0), _) => bail!("{what}_per_sec must be positive"),
        (Some(_), Some(0)) => bail!("{singular}_burst must be positive"),
        (Some(rate), burst) => Ok(Some(Bucket::new(rate, burst.unwrap_or(rate)))),
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Requests,
    Events,
}

/// Why a request was refused; it consumed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The budget is short now; it will do after `retry_after_secs`.
    #[error("{}", wait_message(*.budget, *.limit, *.events, *.retry_after_secs))]
    Wait {
        budget: Budget,
        /// The key's rate of that budget, per second.
        limit: u32,
        /// The events of the request (0 when refused before its body was read).
        events: u64,
        retry_after_secs: u64,
    },
    /// The request holds more events than the bucket can ever hold: it never passes.
    #[error(
        "body: {events} events, more than this key's event_burst of {burst}; split the request"
    )]
    OverBurst { events: u64, burst: u32 },
}

fn wait_message(budget: Budget, limit: u32, events: u64, secs: u64) -> String {
    match budget {
        Budget::Requests => format!(
            "rate: more than this key's limit of {limit} requests/s; nothing was written, \
             retry after {secs} s"
        ),
        Budget::Events => format!(
            "rate: {events} events, more than this key's remaining budget ({limit} events/s); \
             nothing was written, retry after {secs} s"
        ),
    }
}

/// One key's buckets (none when the key is not limited).
#[derive(Debug)]
pub struct Limiter {
    buckets: Option<Mutex<Buckets>>,
}

#[derive(Debug)]
struct Buckets {
    requests: Option<Bucket>,
    events: Option<Bucket>,
}

impl Limiter {
    /// Whether a request could be admitted now (before its body is read): takes nothing.
    pub fn check_request(&self, now: Instant) -> Result<(), Refused> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let mut b = buckets.lock().expect("rate limiter lock");
        match &mut b.requests {
            Some(r) => r
                .wait(1.0, now)
                .map_err(|secs| r.refused(Budget::Requests, 0, secs)),
            None => Ok(()),
        }
    }

    /// Takes one request and `events` events, or nothing when either budget is short.
    pub fn admit(&self, events: u64, now: Instant) -> Result<(), Refused> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let mut b = buckets.lock().expect("rate limiter lock");
        let Buckets {
            requests,
            events: evs,
        } = &mut *b;
        if let Some(e) = evs.as_ref() {
            if events as f64 > e.capacity {
                return Err(Refused::OverBurst {
                    events,
                    burst: e.capacity as u32,
                });
            }
        }
        let mut refusal: Option<Refused> = None;
        if let Some(r) = requests.as_mut() {
            if let Err(secs) = r.wait(1.0, now) {
                refusal = Some(r.refused(Budget::Requests, events, secs));
            }
        }
        if let Some(e) = evs.as_mut() {
            if let Err(secs) = e.wait(events as f64, now) {
                let later = refusal.as_ref().is_none_or(|r| r.retry_after() < secs);
                if later {
                    refusal = Some(e.refused(Budget::Events, events, secs));
                }
            }
        }
        if let Some(r) = refusal {
            return Err(r);
        }
        if let Some(r) = requests.as_mut() {
            r.tokens -= 1.0;
        }
        if let Some(e) = evs.as_mut() {
            e.tokens -= events as f64;
        }
        Ok(())
    }
}

impl Refused {
    /// Seconds after which the same request would be admitted (if nothing else came).
    pub fn retry_after(&self) -> u64 {
        match self {
            Refused::Wait {
                retry_after_secs, ..
            } => *retry_after_secs,
            Refused::OverBurst { .. } => 0,
        }
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    /// Tokens per second.
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            rate: rate as f64,
            capacity: burst as f64,
            tokens: burst as f64,
            last: None,
        }
    }

    /// Refills up to `now`; Ok if `need` tokens are there, else the whole seconds until
    /// they will be (at least 1).
    fn wait(&mut self, need: f64, now: Instant) -> Result<(), u64> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= need {
            return Ok(());
        }
        Err((((need - self.tokens) / self.rate).ceil() as u64).max(1))
    }

    fn refused(&self, budget: Budget, events: u64, retry_after_secs: u64) -> Refused {
        Refused::Wait {
            budget,
            limit: self.rate as u32,
            events,
            retry_after_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rps: Option<u32>, eps: Option<u32>, event_burst: Option<u32>) -> Limiter {
        IngestLimits {
            requests_per_sec: rps,
            request_burst: None,
            events_per_sec: eps,
            event_burst,
        }
        .limiter()
        .unwrap()
    }

    #[test]
    fn a_key_without_limits_is_never_refused() {
        let l = limits(None, None, None);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(l.admit(1_000_000, now), Ok(()));
        }
    }

    #[test]
    fn requests_refill_at_their_rate() {
        let l = limits(Some(2), None, None);
        let t0 = Instant::now();
        assert_eq!(l.admit(5, t0), Ok(()));
        assert_eq!(l.admit(5, t0), Ok(()));
        let refused = l.admit(5, t0).unwrap_err();
        assert_eq!(refused.retry_after(), 1);
        assert!(matches!(
            refused,
            Refused::Wait {
                budget: Budget::Requests,
                limit: 2,
                ..
            }
        ));
        assert!(l.check_request(t0).is_err());
        let later = t0 + Duration::from_millis(500);
        assert_eq!(l.check_request(later), Ok(()));
        assert_eq!(l.admit(5, later), Ok(()));
        assert!(l.admit(5, later).is_err());
    }

    #[test]
    fn a_request_over_the_remaining_events_takes_nothing() {
        let l = limits(Some(100), Some(10), Some(20));
        let t0 = Instant::now();
        assert_eq!(l.admit(15, t0), Ok(()));
        // 5 left: 6 events are refused, and the refusal took no token of either bucket.
        let refused = l.admit(6, t0).unwrap_err();
        assert_eq!(
            refused,
            Refused::Wait {
                budget: Budget::Events,
                limit: 10,
                events: 6,
                retry_after_secs: 1
            }
        );
        assert_eq!(l.admit(5, t0), Ok(()));
        assert!(l.admit(1, t0).is_err());
        // 20 events need 2 s at 10/s from empty.
        assert_eq!(l.admit(20, t0).unwrap_err().retry_after(), 2);
        assert_eq!(l.admit(20, t0 + Duration::from_secs(2)), Ok(()));
    }

    #[test]
    fn more_events_than_the_burst_never_pass() {
        let l = limits(None, Some(10), None);
        let refused = l.admit(11, Instant::now()).unwrap_err();
        assert_eq!(
            refused,
            Refused::OverBurst {
                events: 11,
                burst: 10
            }
        );
        assert!(
            refused.to_string().contains("split the request"),
            "{refused}"
        );
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        for (limits, expect) in [
            (
                IngestLimits {
                    request_burst: Some(3),
                    ..IngestLimits::default()
                },
                "request_burst is set without requests_per_sec",
            ),
            (
                IngestLimits {
                    events_per_sec: Some(0),
                    ..IngestLimits::default()
                },
                "events_per_sec must be positive",
            ),
        ] {
            let e = limits.limiter().unwrap_err().to_string();
            assert_eq!(e, expect);
        }
    }
}
