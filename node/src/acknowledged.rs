//! The events this node's ingest acknowledged recently, so that a client's retry of the
//! same events is answered as such (`duplicates` in the ingest answer) and not written to
//! Kafka again.
//!
//! This is a courtesy, not the guarantee: a retry sent to another node, or one that comes
//! after this node restarted, is not recognised here, and is still counted once because
//! the shards deduplicate every record (see `shard::dedupe`). So the set may forget: it
//! keeps `window` of acknowledgements and at most `capacity` of them, oldest out first.
//!
//! Not for: deciding what counts (the shards do).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shard::dedupe::Fingerprint;

/// Recently acknowledged events, by fingerprint.
pub struct Acknowledged {
    window: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// When each fingerprint was last acknowledged, and that acknowledgement's number.
    at: HashMap<Fingerprint, (Instant, u64)>,
    /// Acknowledgements in order, oldest first, numbered.
    order: VecDeque<(Instant, u64, Fingerprint)>,
    next: u64,
}

impl Acknowledged {
    /// Keeps acknowledgements for `window`, at most `capacity` of them (0: keeps none).
    pub fn new(window: Duration, capacity: usize) -> Acknowledged {
        Acknowledged {
            window,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Which of `fps` were acknowledged within the window.
    pub fn seen(&self, fps: &[Fingerprint]) -> Vec<bool> {
        let now = Instant::now();
        let inner = self.inner.lock().expect("acknowledged lock");
        fps.iter()
            .map(|fp| {
                inner
                    .at
                    .get(fp)
                    .is_some_and(|(t, _)| now.duration_since(*t) <= self.window)
            })
            .collect()
    }

    /// Records that `fps` were acknowledged now.
    pub fn record(&self, fps: impl IntoIterator<Item = Fingerprint>) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("acknowledged lock");
        for fp in fps {
            let n = inner.next;
            inner.next += 1;
            inner.at.insert(fp, (now, n));
            inner.order.push_back((now, n, fp));
        }
        while let Some(&(t, n, fp)) = inner.order.front() {
            let expired = now.duration_since(t) > self.window;
            if !expired && inner.order.len() <= self.capacity {
                break;
            }
            inner.order.pop_front();
            // Only if this was its latest acknowledgement.
            if inner.at.get(&fp).is_some_and(|&(_, latest)| latest == n) {
                inner.at.remove(&fp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_what_was_acknowledged_within_its_bounds() {
        let acked = Acknowledged::new(Duration::from_secs(60), 3);
        acked.record([1, 2]);
        assert_eq!(acked.seen(&[1, 2, 3]), [true, true, false]);
        // Over capacity, the oldest acknowledgements go first.
        acked.record([3, 4]);
        assert_eq!(acked.seen(&[1, 2, 3, 4]), [false, true, true, true]);
        // Acknowledged again: refreshed, not doubled.
        acked.record([2]);
        acked.record([5]);
        assert_eq!(acked.seen(&[2, 3, 4, 5]), [true, false, true, true]);
    }

    #[test]
    fn forgets_after_the_window_and_keeps_nothing_at_capacity_zero() {
        let acked = Acknowledged::new(Duration::from_millis(30), 100);
        acked.record([7]);
        assert_eq!(acked.seen(&[7]), [true]);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(acked.seen(&[7]), [false]);
        let none = Acknowledged::new(Duration::from_secs(60), 0);
        none.record([1]);
        assert_eq!(none.seen(&[1]), [false]);
    }
}
