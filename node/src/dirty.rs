//! What changed since it was last written: keys in the order of their first unwritten
//! change, each with that change's offset and time, so a checkpoint can write an entity at
//! most once per `shard.flush_period_ms` and still record a resume offset below every
//! change it left unwritten.
//!
//! A queue may hold a key twice (a write that failed puts its keys back in front, while a
//! newer entry of the same key may stand further back); the owner of the state skips a key
//! it finds clean. An extra entry only holds the resume offset back until it is due, never
//! past its period.
//!
//! Not for: what is written or in which order (see `store::checkpoint`).

use std::collections::VecDeque;

use compact_str::CompactString;

/// Which keys a checkpoint takes: those whose first unwritten change is at least
/// `period_ms` old at `now_ms`, or every key when `all` (a flush).
#[derive(Debug, Clone, Copy)]
pub struct Due {
    pub now_ms: u64,
    pub period_ms: u64,
    pub all: bool,
}

impl Due {
    pub fn at(now_ms: u64, period_ms: u64) -> Due {
        Due {
            now_ms,
            period_ms,
            all: false,
        }
    }
}

/// Keys with unwritten changes, oldest first change first.
#[derive(Debug, Default)]
pub struct DirtyQueue {
    entries: VecDeque<Dirty>,
}

#[derive(Debug)]
struct Dirty {
    key: CompactString,
    /// The offset of the key's first unwritten change.
    offset: i64,
    /// When that change was applied, milliseconds on the shard's clock.
    at_ms: u64,
}

impl DirtyQueue {
    /// Notes `key`'s first change since it was last written: the record at `offset`,
    /// applied at `at_ms`. Offsets arrive in order, so the queue stays sorted by them.
    pub fn push(&mut self, key: CompactString, offset: i64, at_ms: u64) {
        self.entries.push_back(Dirty { key, offset, at_ms });
    }

    /// Puts `keys` back in front, as changed at `offset` when the clock began (due at once
    /// on any clock older than a period): their write failed. `offset` must be at most
    /// every offset in the queue (the resume offset that is durable is).
    pub fn requeue(&mut self, keys: impl DoubleEndedIterator<Item = CompactString>, offset: i64) {
        for key in keys.rev() {
            self.entries.push_front(Dirty {
                key,
                offset,
                at_ms: 0,
            });
        }
    }

    /// Takes the keys that are `due`, oldest first.
    pub fn take_due(&mut self, due: Due) -> Vec<CompactString> {
        let n = if due.all {
            self.entries.len()
        } else {
            self.entries
                .partition_point(|d| d.at_ms.saturating_add(due.period_ms) <= due.now_ms)
        };
        self.entries.drain(..n).map(|d| d.key).collect()
    }

    /// The offset of the oldest change not taken yet: a replay from there re-applies
    /// everything unwritten. None when nothing is waiting.
    pub fn oldest_offset(&self) -> Option<i64> {
        self.entries.front().map(|d| d.offset)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every entry (the owner puts back what it still needs).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: Vec<CompactString>) -> Vec<String> {
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn a_key_is_due_one_period_after_its_first_change_and_the_rest_holds_the_resume_offset() {
        let mut q = DirtyQueue::default();
        q.push("a".into(), 10, 1_000);
        q.push("b".into(), 12, 1_500);
        q.push("c".into(), 20, 4_000);
        assert_eq!(q.oldest_offset(), Some(10));
        // Nothing is due before its period is over.
        assert!(q.take_due(Due::at(1_999, 1_000)).is_empty());
        assert_eq!(keys(q.take_due(Due::at(2_500, 1_000))), ["a", "b"]);
        assert_eq!(q.oldest_offset(), Some(20));
        assert_eq!(q.len(), 1);
        // A period of 0: everything is due.
        assert_eq!(keys(q.take_due(Due::at(4_000, 0))), ["c"]);
        assert_eq!(q.oldest_offset(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn all_takes_everything_whatever_its_age() {
        let mut q = DirtyQueue::default();
        q.push("a".into(), 1, 5_000);
        q.push("b".into(), 2, 6_000);
        assert_eq!(
            keys(q.take_due(Due {
                all: true,
                ..Due::at(0, 60_000)
            })),
            ["a", "b"]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn requeued_keys_come_first_as_changed_when_the_clock_began() {
        let mut q = DirtyQueue::default();
        q.push("c".into(), 30, 9_000);
        q.requeue(["a".into(), "b".into()].into_iter(), 7);
        assert_eq!(q.oldest_offset(), Some(7));
        assert_eq!(keys(q.take_due(Due::at(60_000, 60_000))), ["a", "b"]);
        assert_eq!(q.oldest_offset(), Some(30));
    }

    #[test]
    fn a_clock_near_its_end_never_makes_a_key_due_early() {
        let mut q = DirtyQueue::default();
        q.push("a".into(), 1, u64::MAX - 10);
        assert!(q.take_due(Due::at(u64::MAX - 1, 60_000)).is_empty());
        assert_eq!(keys(q.take_due(Due::at(u64::MAX, u64::MAX))), ["a"]);
    }
}
