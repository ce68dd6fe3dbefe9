//! Whether the ingest producer can commit, as the node reports it on `/readyz`.
//!
//! Not for: deciding whose fault a failure was (see `producer`).

use std::time::{Duration, Instant};

use tracing::info;

use super::HealthHook;

/// A failure is reported this long after the last one unless a transaction commits first.
pub const FAILURE_HOLD: Duration = Duration::from_secs(30);

/// Whether the producer can commit, as the node reports it. A group that failed without any
/// commit is reported until a transaction commits, or until [`FAILURE_HOLD`] has
/// passed without another failure: with no commit to prove recovery, requests must be let
/// in to find out, and a load balancer that trusts `/readyz` would otherwise never send
/// one. Fencing is reported until the node restarts.
pub(super) struct HealthTracker {
    hook: HealthHook,
    failing: Option<Failing>,
}

struct Failing {
    reason: String,
    /// When the report lapses; None: never (fenced).
    until: Option<Instant>,
}

impl HealthTracker {
    pub(super) fn new(hook: HealthHook) -> HealthTracker {
        HealthTracker {
            hook,
            failing: None,
        }
    }

    pub(super) fn committed(&mut self) {
        if self.failing.take().is_some() {
            info!("ingest transactions commit again");
            (self.hook)(None);
        }
    }

    pub(super) fn failed(&mut self, reason: String, permanent: bool, now: Instant) {
        let until = (!permanent).then_some(now + FAILURE_HOLD);
        let changed = self.failing.as_ref().map(|f| &f.reason) != Some(&reason);
        if let Some(f) = &self.failing {
            if f.until.is_none() {
                return; // fenced stays fenced
            }
        }
        self.failing = Some(Failing {
            reason: reason.clone(),
            until,
        });
        if changed {
            (self.hook)(Some(reason));
        }
    }

    /// Lifts a failure report whose hold has passed.
    pub(super) fn expire(&mut self, now: Instant) {
        if self
            .failing
            .as_ref()
            .is_some_and(|f| f.until.is_some_and(|u| u <= now))
        {
            self.failing = None;
            info!(
                "no ingest failure for {} s; reporting ingest healthy until a transaction fails",
                FAILURE_HOLD.as_secs()
            );
            (self.hook)(None);
        }
    }

    pub(super) fn expires_at(&self) -> Option<Instant> {
        self.failing.as_ref().and_then(|f| f.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recording_tracker() -> (HealthTracker, Arc<Mutex<Vec<Option<String>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let hook: HealthHook = Box::new(move |r| s.lock().unwrap().push(r));
        (HealthTracker::new(hook), seen)
    }

    #[test]
    fn a_failure_is_reported_until_a_commit_and_each_change_once() {
        let (mut h, seen) = recording_tracker();
        let t0 = Instant::now();
        h.committed();
        h.failed("kafka: down".into(), false, t0);
        h.failed("kafka: down".into(), false, t0);
        h.failed("kafka: other".into(), false, t0);
        h.committed();
        h.committed();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                Some("kafka: down".to_string()),
                Some("kafka: other".to_string()),
                None
            ]
        );
        assert_eq!(h.expires_at(), None);
    }

    #[test]
    fn a_failure_lapses_after_the_hold_without_another_failure() {
        let (mut h, seen) = recording_tracker();
        let t0 = Instant::now();
        h.failed("kafka: down".into(), false, t0);
        assert_eq!(h.expires_at(), Some(t0 + FAILURE_HOLD));
        h.expire(t0 + FAILURE_HOLD - Duration::from_millis(1));
        assert_eq!(seen.lock().unwrap().len(), 1, "still within the hold");
        // A new failure restarts the hold.
        let t1 = t0 + Duration::from_secs(10);
        h.failed("kafka: down".into(), false, t1);
        h.expire(t0 + FAILURE_HOLD);
        assert_eq!(seen.lock().unwrap().len(), 1);
        h.expire(t1 + FAILURE_HOLD);
        assert_eq!(seen.lock().unwrap().last(), Some(&None));
        assert_eq!(h.expires_at(), None);
    }

    #[test]
    fn fencing_is_reported_for_good() {
        let (mut h, seen) = recording_tracker();
        let t0 = Instant::now();
        h.failed("kafka: fenced".into(), true, t0);
        assert_eq!(h.expires_at(), None);
        h.expire(t0 + FAILURE_HOLD * 10);
        h.failed("kafka: other".into(), false, t0);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Some("kafka: fenced".to_string())]
        );
    }
}
