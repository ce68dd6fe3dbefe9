//! Deduplication of client retries: a record whose (entity, player, event id) this
//! partition already saw within the window is a duplicate and is not applied.
//!
//! The window is state of the shard, so it must be exactly as deterministic as the
//! entities: it is a pure function of the partition's records. Time is the records' Kafka
//! timestamps (their arrival: the broker's append time on Tally's topics), never the wall
//! clock. A record is a duplicate when an earlier record of the partition has the same
//! fingerprint and arrived no earlier than `max arrival so far - window`. A record without
//! a timestamp (only message formats older than Kafka 0.10 lack one) is never a duplicate.
//!
//! Nothing of the window is stored: a checkpoint records the offset of the oldest record
//! the window still needs ([`DedupeWindow::oldest_needed`]), and a new owner starts
//! reading the partition there, feeding the records below the resume offset to the window
//! only ([`DedupeWindow::observe`]), so it holds what the old owner held. Reading from an
//! earlier offset than needed is harmless: entries that fell out of the window are never
//! matched, because the rebuilt window reaches the same max arrival (the record that set
//! it is never evicted, so it is always among the records re-read).
//!
//! Fingerprints are 128-bit xxh3 of the length-prefixed parts: two different events
//! collide with probability about 2^-128 per pair, so for any window that fits in memory
//! no distinct event is ever dropped in practice.
//!
//! Not for: deciding whether an event is valid (see `event`).

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};

use twox_hash::XxHash3_128;

/// The fingerprint of what identifies an event for deduplication.
pub type Fingerprint = u128;

/// Fingerprint of (entity key, player, event id), each length-prefixed so that no two
/// different triples write the same bytes.
pub fn fingerprint(key: &str, player: &str, id: &str) -> Fingerprint {
    // On the stack for every key an event can have (three ids of at most 128 bytes): this
    // runs once per record.
    const ON_STACK: usize = 3 * (4 + 128);
    let len = key.len() + player.len() + id.len() + 12;
    let mut stack = [0u8; ON_STACK];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= ON_STACK {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for part in [key, player, id] {
        buf[at..at + 4].copy_from_slice(&(part.len() as u32).to_le_bytes());
        buf[at + 4..at + 4 + part.len()].copy_from_slice(part.as_bytes());
        at += 4 + part.len();
    }
    // 0 marks "no fingerprint" in the window's queue; a hash of 0 is taken as 1.
    XxHash3_128::oneshot(buf).max(1)
}

/// The fingerprints are already uniform: the table uses their low bits as the hash.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed (write_u128 below); anything else folds in.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// One record in arrival order: its offset, arrival, and fingerprint (0: a record that
/// was not applied, kept so the max arrival it set survives a rebuild). 32 bytes.
struct Seen {
    offset: i64,
    arrival: i64,
    fingerprint: Fingerprint,
}

/// The window of one partition.
pub struct DedupeWindow {
    window_ms: i64,
    /// Latest arrival of each fingerprint in the window.
    latest: std::collections::HashMap<Fingerprint, i64, BuildHasherDefault<Identity>>,
    /// Every record in the window, in offset order; the front leaves once it is older
    /// than the window.
    order: VecDeque<Seen>,
    /// Max arrival seen (None: no record yet).
    max_arrival: Option<i64>,
}

/// What the window says of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time within the window: apply it.
    New,
    /// Seen within the window: count it as a duplicate and do not apply it.
    Duplicate,
}

impl DedupeWindow {
    /// A window of `window_ms` (0: off, every record is new).
    pub fn new(window_ms: i64) -> DedupeWindow {
        DedupeWindow {
            window_ms: window_ms.max(0),
            latest: Default::default(),
            order: VecDeque::new(),
            max_arrival: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.window_ms > 0
    }

    /// Records in the window (about 110 bytes of memory each, measured).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The oldest arrival still inside the window.
    fn floor(&self) -> i64 {
        self.max_arrival
            .map_or(i64::MIN, |m| m.saturating_sub(self.window_ms))
    }

    /// Judges a record that is about to be applied, and remembers it.
    pub fn check(&mut self, offset: i64, timestamp: i64, fp: Fingerprint) -> Verdict {
        // A record without a timestamp (only very old message formats lack one) has no
        // arrival: it is never a duplicate and does not move the window.
        if !self.enabled() || timestamp < 0 {
            return Verdict::New;
        }
        let arrival = timestamp;
        self.advance(arrival);
        let floor = self.floor();
        let verdict = match self.latest.get(&fp) {
            Some(&seen) if seen >= floor => Verdict::Duplicate,
            _ => Verdict::New,
        };
        self.remember(offset, arrival, Some(fp));
        verdict
    }

    /// Remembers a record that is not applied (invalid, or below the resume offset while
    /// the window is rebuilt); `fp` is None when it has no fingerprint.
    pub fn observe(&mut self, offset: i64, timestamp: i64, fp: Option<Fingerprint>) {
        if !self.enabled() || timestamp < 0 {
            return;
        }
        self.advance(timestamp);
        self.remember(offset, timestamp, fp);
    }

    fn advance(&mut self, arrival: i64) {
        self.max_arrival = Some(self.max_arrival.map_or(arrival, |m| m.max(arrival)));
        let floor = self.floor();
        while self.order.front().is_some_and(|s| s.arrival < floor) {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            let fp = old.fingerprint;
            if fp != 0 && self.latest.get(&fp) == Some(&old.arrival) {
                self.latest.remove(&fp);
            }
        }
    }

    fn remember(&mut self, offset: i64, arrival: i64, fp: Option<Fingerprint>) {
        if let Some(fp) = fp {
            let latest = self.latest.entry(fp).or_insert(arrival);
            *latest = (*latest).max(arrival);
        }
        self.order.push_back(Seen {
            offset,
            arrival,
            fingerprint: fp.unwrap_or(0),
        });
    }

    /// The offset a new owner must start reading from to rebuild this window, given the
    /// shard's next offset: the oldest record still in the window, or `next_offset`.
    pub fn oldest_needed(&self, next_offset: i64) -> i64 {
        self.order
            .front()
            .map_or(next_offset, |s| s.offset.min(next_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn a_retry_within_the_window_is_a_duplicate_and_after_it_is_new() {
        let mut w = DedupeWindow::new(10 * MIN);
        let a = fingerprint("p1", "p1", "e1");
        assert_eq!(w.check(0, 1_000, a), Verdict::New);
        assert_eq!(w.check(1, 1_000 + 9 * MIN, a), Verdict::Duplicate);
        // Other events of the same player, and the same id of another entity, are new.
        assert_eq!(
            w.check(2, 2_000, fingerprint("p1", "p1", "e2")),
            Verdict::New
        );
        assert_eq!(
            w.check(3, 2_000, fingerprint("c1", "p1", "e1")),
            Verdict::New
        );
        // The retry refreshed e1's arrival: another retry 10 minutes after it is still late.
        assert_eq!(w.check(4, 1_000 + 19 * MIN, a), Verdict::Duplicate);
        assert_eq!(w.check(5, 1_000 + 40 * MIN, a), Verdict::New);
    }

    #[test]
    fn fingerprints_do_not_confuse_how_parts_are_cut() {
        assert_ne!(fingerprint("ab", "c", "d"), fingerprint("a", "bc", "d"));
        assert_ne!(fingerprint("", "ab", ""), fingerprint("ab", "", ""));
        assert_eq!(fingerprint("k", "p", "e"), fingerprint("k", "p", "e"));
        // Keys longer than any event's (from another producer) take the heap path alike.
        let long = "k".repeat(1_000);
        assert_eq!(fingerprint(&long, "p", "e"), fingerprint(&long, "p", "e"));
        assert_ne!(
            fingerprint(&long, "p", "e"),
            fingerprint(&long[1..], "p", "e")
        );
        assert_ne!(fingerprint("k", "p", "e"), 0);
    }

    #[test]
    fn off_means_every_record_is_new() {
        let mut w = DedupeWindow::new(0);
        let a = fingerprint("p", "p", "e");
        assert_eq!(w.check(0, 5, a), Verdict::New);
        assert_eq!(w.check(1, 5, a), Verdict::New);
        assert!(w.is_empty());
        assert_eq!(w.oldest_needed(2), 2);
    }

    /// The decisions of a window rebuilt from any offset at or before `oldest_needed`
    /// equal those of the window that ran all along, whatever the arrival order.
    #[test]
    fn a_window_rebuilt_from_its_mark_decides_exactly_like_the_original() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // 4,000 records: ids drawn from a small set (many retries), arrivals mostly
        // increasing with jitter both ways, some without a timestamp, some invalid.
        let mut t = 1_000_000i64;
        let records: Vec<(i64, i64, Option<Fingerprint>)> = (0..4_000)
            .map(|offset| {
                t += (next() % 20_000) as i64;
                let jitter = (next() % 40_000) as i64 - 20_000;
                let ts = if next() % 50 == 0 { -1 } else { t + jitter };
                let fp = (next() % 30 != 0)
                    .then(|| fingerprint("p", "p", &format!("e{}", next() % 300)));
                (offset, ts, fp)
            })
            .collect();
        let window = 3 * MIN;
        let run = |w: &mut DedupeWindow, recs: &[(i64, i64, Option<Fingerprint>)]| {
            recs.iter()
                .map(|&(o, ts, fp)| match fp {
                    Some(fp) => Some(w.check(o, ts, fp)),
                    None => {
                        w.observe(o, ts, None);
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let mut original = DedupeWindow::new(window);
        let all = run(&mut original, &records);
        assert!(all.contains(&Some(Verdict::Duplicate)) && all.contains(&Some(Verdict::New)));
        for resume in [1usize, 500, 1_777, 3_999] {
            let mut before = DedupeWindow::new(window);
            run(&mut before, &records[..resume]);
            let mark = before.oldest_needed(resume as i64) as usize;
            for start in [mark, mark.saturating_sub(37), 0] {
                let mut rebuilt = DedupeWindow::new(window);
                for &(o, ts, fp) in &records[start..resume] {
                    rebuilt.observe(o, ts, fp);
                }
                let after = run(&mut rebuilt, &records[resume..]);
                assert_eq!(
                    after,
                    all[resume..],
                    "resume {resume}, rebuilt from {start}"
                );
            }
        }
    }
}
