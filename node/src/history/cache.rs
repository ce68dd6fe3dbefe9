//! The owner's cache of stored history buckets: what a history query reads from Cassandra,
//! kept in memory and kept current by the owner's own checkpoints, so a repeated query of
//! the same player or channel is answered without Cassandra.
//!
//! Coherent because the owner is the only writer of its partitions' bucket rows: a
//! checkpoint writes its rows to Cassandra, then through to the cache. An entry holds every
//! stored row of one `(scope, id, step)` from its `from` on, so it answers any range that
//! starts there or later, the buckets still filling included.
//!
//! - A fill (a query the cache cannot answer) first marks the entry as filling, then reads
//!   Cassandra. Rows written through meanwhile are kept where they are newer: every row
//!   carries the offset it covers, and the higher one wins, in a fill and in a write alike.
//! - A partition's entries exist only while this node's shard owns it, with the generation
//!   it was acquired with: released, acquired again, or a checkpoint that failed part way
//!   (Cassandra may hold rows the cache missed) drops them all.
//! - Bounded: `history.cache_mib` of rows at most, the least recently used entries go
//!   first; an entry is read again from Cassandra after `history.cache_secs`, which also
//!   bounds how long a row Cassandra has expired by its TTL can still be answered.
//!
//! Not for: building buckets (see the parent module) or answering (see `api::history`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BucketRow, Scope, Step};
use crate::kind::ShardId;

/// Bytes an entry's row costs beyond its state: start, covered, the shared pointer and
/// its header, and the tree's share.
const ROW_OVERHEAD: usize = 64;

/// Bytes an entry costs beyond its rows: itself, its id and its place in the maps.
const ENTRY_OVERHEAD: usize = 192;

/// How far a partition's history is durable: its watermark and resume offset, as of the
/// last checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durable {
    pub watermark: i64,
    pub offset: i64,
}

/// A stored bucket row: its start, the offset it covers and its encoded state.
pub type StoredRow = (i64, i64, Vec<u8>);

/// What a query got from the cache: the rows of its range, oldest first, and the
/// partition's durable progress.
#[derive(Debug)]
pub struct Hit {
    pub rows: Vec<(i64, Arc<[u8]>)>,
    pub durable: Durable,
}

/// See the module doc.
#[derive(Debug)]
pub struct HistoryCache {
    budget: usize,
    max_age: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    owned: HashMap<ShardId, Owned>,
    /// By id; the few entries of one id differ in scope and step.
    entries: HashMap<Box<str>, Vec<Entry>>,
    bytes: usize,
    /// Counts uses, for least-recently-used eviction.
    clock: u64,
    next_gen: u64,
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    gen: u64,
    durable: Durable,
}

#[derive(Debug)]
struct Entry {
    scope: Scope,
    step: Step,
    shard: ShardId,
    gen: u64,
    /// Every stored row with `start >= from` is in `rows` (once not filling).
    from: i64,
    filling: bool,
    filled_at: Instant,
    used: u64,
    rows: BTreeMap<i64, (i64, Arc<[u8]>)>,
    bytes: usize,
}

impl Entry {
    /// Keeps `state` for `start` unless the row there covers more; the bytes it adds.
    fn put(&mut self, start: i64, covered: i64, state: &[u8]) -> isize {
        match self.rows.get_mut(&start) {
            Some((c, _)) if *c > covered => 0,
            Some((c, s)) => {
                let grown = state.len() as isize - s.len() as isize;
                (*c, *s) = (covered, Arc::from(state));
                grown
            }
            None => {
                self.rows.insert(start, (covered, Arc::from(state)));
                (ROW_OVERHEAD + state.len()) as isize
            }
        }
    }
}

/// A fill in progress; dropped without [`HistoryCache::finish`] (the query failed or was
/// cancelled), it takes its entry back out.
#[must_use]
pub struct Fill<'a> {
    cache: &'a HistoryCache,
    key: (Scope, Step, ShardId, u64),
    id: Box<str>,
    done: bool,
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.cache.lock();
            inner.remove_where(&self.id, |e| {
                (e.scope, e.step, e.shard, e.gen) == self.key && e.filling
            });
        }
    }
}

impl Inner {
    fn apply(&mut self, grown: isize) {
        self.bytes = self.bytes.saturating_add_signed(grown);
    }

    fn remove_where(&mut self, id: &str, mut f: impl FnMut(&Entry) -> bool) {
        let Some(list) = self.entries.get_mut(id) else {
            return;
        };
        let mut freed = 0;
        list.retain(|e| {
            let drop = f(e);
            if drop {
                freed += e.bytes;
            }
            !drop
        });
        if list.is_empty() {
            self.entries.remove(id);
        }
        self.bytes -= freed;
    }

    fn forget_shard(&mut self, shard: ShardId) {
        let mut freed = 0;
        self.entries.retain(|_, list| {
            list.retain(|e| {
                let drop = e.shard == shard;
                if drop {
                    freed += e.bytes;
                }
                !drop
            });
            !list.is_empty()
        });
        self.bytes -= freed;
    }

    /// Drops the least recently used entries (never one filling) until the rows take at
    /// most 90% of `budget`.
    fn evict(&mut self, budget: usize) {
        if self.bytes <= budget {
            return;
        }
        let mut by_use: Vec<(u64, Box<str>, Scope, Step)> = self
            .entries
            .iter()
            .flat_map(|(id, list)| {
                list.iter()
                    .filter(|e| !e.filling)
                    .map(|e| (e.used, id.clone(), e.scope, e.step))
            })
            .collect();
        by_use.sort_unstable_by_key(|(used, ..)| *used);
        let target = budget / 10 * 9;
        for (_, id, scope, step) in by_use {
            if self.bytes <= target {
                break;
            }
            self.remove_where(&id, |e| e.scope == scope && e.step == step && !e.filling);
        }
    }
}

impl HistoryCache {
    /// A cache of at most `budget` bytes of rows (0: nothing is kept), each entry read
    /// again after `max_age`.
    pub fn new(budget: usize, max_age: Duration) -> HistoryCache {
        HistoryCache {
            budget,
            max_age,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("history cache lock")
    }

    /// Bytes of rows held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// This node's shard now owns `shard`, whose durable progress was read as `durable`.
    pub fn acquire(&self, shard: ShardId, durable: Durable) {
        let mut inner = self.lock();
        inner.next_gen += 1;
        let gen = inner.next_gen;
        inner.owned.insert(shard, Owned { gen, durable });
        inner.forget_shard(shard);
    }

    /// This node no longer writes `shard`'s rows.
    pub fn release(&self, shard: ShardId) {
        let mut inner = self.lock();
        inner.owned.remove(&shard);
        inner.forget_shard(shard);
    }

    /// A checkpoint of `shard` failed: Cassandra may hold rows of it the cache missed.
    pub fn write_failed(&self, shard: ShardId) {
        self.lock().forget_shard(shard);
    }

    /// A checkpoint of `shard` wrote `rows`, then made `durable` its progress.
    pub fn written(&self, shard: ShardId, rows: &[BucketRow], durable: Durable) {
        let mut inner = self.lock();
        let Some(owned) = inner.owned.get_mut(&shard) else {
            return;
        };
        if durable.offset >= owned.durable.offset {
            owned.durable = durable;
        }
        let gen = owned.gen;
        if inner.entries.is_empty() {
            return;
        }
        let mut grown = 0;
        for row in rows {
            let Some(list) = inner.entries.get_mut(row.id.as_str()) else {
                continue;
            };
            for e in list.iter_mut() {
                if e.scope == row.scope
                    && e.step == row.step
                    && e.shard == shard
                    && e.gen == gen
                    && row.start >= e.from
                {
                    let g = e.put(row.start, row.covered, &row.state);
                    e.bytes = e.bytes.saturating_add_signed(g);
                    grown += g;
                }
            }
        }
        inner.apply(grown);
        inner.evict(self.budget);
    }

    /// The rows of `(scope, id, step)` with `from <= start < to` and the partition's
    /// progress, if an entry holds them.
    pub fn get(
        &self,
        shard: ShardId,
        (scope, id, step): (Scope, &str, Step),
        from: i64,
        to: i64,
    ) -> Option<Hit> {
        let mut inner = self.lock();
        let owned = *inner.owned.get(&shard)?;
        inner.clock += 1;
        let clock = inner.clock;
        let e = inner.entries.get_mut(id)?.iter_mut().find(|e| {
            e.scope == scope
                && e.step == step
                && e.shard == shard
                && e.gen == owned.gen
                && !e.filling
                && e.from <= from
        })?;
        if e.filled_at.elapsed() >= self.max_age {
            return None;
        }
        e.used = clock;
        let rows = if from < to {
            e.rows
                .range(from..to)
                .map(|(start, (_, s))| (*start, s.clone()))
                .collect()
        } else {
            Vec::new()
        };
        Some(Hit {
            rows,
            durable: owned.durable,
        })
    }

    /// The partition's durable progress as this owner last wrote it, if it owns `shard`.
    pub fn durable(&self, shard: ShardId) -> Option<Durable> {
        self.lock().owned.get(&shard).map(|o| o.durable)
    }

    /// Starts filling `(scope, id, step)` from `from` on, if this node owns `shard`, the
    /// cache keeps anything, and no other query fills the same entry. The caller reads
    /// every stored row from `from` on, then hands them to [`HistoryCache::finish`].
    pub fn fill(
        &self,
        shard: ShardId,
        (scope, id, step): (Scope, &str, Step),
        from: i64,
    ) -> Option<Fill<'_>> {
        if self.budget == 0 {
            return None;
        }
        let mut inner = self.lock();
        let gen = inner.owned.get(&shard)?.gen;
        let list = inner.entries.entry(id.into()).or_default();
        let entry = Entry {
            scope,
            step,
            shard,
            gen,
            from,
            filling: true,
            filled_at: Instant::now(),
            used: 0,
            rows: BTreeMap::new(),
            bytes: ENTRY_OVERHEAD,
        };
        let mut freed = 0;
        match list.iter_mut().find(|e| e.scope == scope && e.step == step) {
            Some(e) if e.filling => return None,
            // A stale or too short entry is read again whole.
            Some(e) => {
                freed = e.bytes;
                *e = entry;
            }
            None => list.push(entry),
        }
        inner.bytes = inner.bytes - freed + ENTRY_OVERHEAD;
        Some(Fill {
            cache: self,
            key: (scope, step, shard, gen),
            id: id.into(),
            done: false,
        })
    }

    /// Ends `fill` with the rows Cassandra holds from its `from` on.
    pub fn finish(&self, mut fill: Fill<'_>, rows: &[StoredRow]) {
        fill.done = true;
        let mut inner = self.lock();
        let (scope, step, shard, gen) = fill.key;
        let owned = inner.owned.get(&shard).map(|o| o.gen) == Some(gen);
        let size: usize = rows.iter().map(|r| ROW_OVERHEAD + r.2.len()).sum();
        if !owned || size > self.budget / 4 {
            // Not ours any more, or too large to keep: nothing of it stays.
            inner.remove_where(&fill.id, |e| {
                e.scope == scope && e.step == step && e.gen == gen
            });
            return;
        }
        inner.clock += 1;
        let clock = inner.clock;
        let Some(e) = inner.entries.get_mut(&fill.id).and_then(|l| {
            l.iter_mut()
                .find(|e| e.scope == scope && e.step == step && e.gen == gen)
        }) else {
            return;
        };
        let mut grown = 0;
        for (start, covered, state) in rows {
            grown += e.put(*start, *covered, state);
        }
        e.bytes = e.bytes.saturating_add_signed(grown);
        (e.filling, e.filled_at, e.used) = (false, Instant::now(), clock);
        inner.apply(grown);
        inner.evict(self.budget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ShardKind;

    const P0: ShardId = (ShardKind::Players, 0);
    const P1: ShardId = (ShardKind::Players, 1);
    const KEY: (Scope, &str, Step) = (Scope::Player, "p", Step::Hour);

    fn cache() -> HistoryCache {
        let c = HistoryCache::new(1 << 20, Duration::from_secs(300));
        c.acquire(
            P0,
            Durable {
                watermark: 5,
                offset: 7,
            },
        );
        c
    }

    fn row(start: i64, covered: i64, state: &[u8]) -> BucketRow {
        BucketRow {
            scope: Scope::Player,
            id: "p".into(),
            step: Step::Hour,
            start,
            state: state.into(),
            covered,
        }
    }

    fn states(hit: &Hit) -> Vec<(i64, Vec<u8>)> {
        hit.rows.iter().map(|(s, b)| (*s, b.to_vec())).collect()
    }

    fn filled(c: &HistoryCache, from: i64, rows: &[StoredRow]) {
        let fill = c.fill(P0, KEY, from).expect("fills");
        c.finish(fill, rows);
    }

    #[test]
    fn a_filled_entry_answers_ranges_from_its_start_on_and_nothing_before() {
        let c = cache();
        assert!(c.get(P0, KEY, 0, 100).is_none());
        filled(
            &c,
            10,
            &[(10, 1, vec![1]), (30, 2, vec![3]), (50, 3, vec![5])],
        );
        let hit = c.get(P0, KEY, 10, 40).unwrap();
        assert_eq!(states(&hit), [(10, vec![1]), (30, vec![3])]);
        assert_eq!(
            hit.durable,
            Durable {
                watermark: 5,
                offset: 7
            }
        );
        assert_eq!(states(&c.get(P0, KEY, 40, 1000).unwrap()), [(50, vec![5])]);
        assert!(c.get(P0, KEY, 9, 40).is_none(), "before the entry's start");
        assert!(c.get(P1, KEY, 10, 40).is_none(), "another partition");
        assert!(c
            .get(P0, (Scope::Channel, "p", Step::Hour), 10, 40)
            .is_none());
        assert!(c.get(P0, (Scope::Player, "p", Step::Day), 10, 40).is_none());
    }

    #[test]
    fn checkpoints_write_through_and_the_row_covering_more_wins() {
        let c = cache();
        filled(&c, 10, &[(10, 4, vec![1])]);
        let durable = Durable {
            watermark: 9,
            offset: 20,
        };
        c.written(
            P0,
            &[row(10, 3, &[0]), row(70, 5, &[7]), row(0, 5, &[9])],
            durable,
        );
        let hit = c.get(P0, KEY, 10, 100).unwrap();
        assert_eq!(
            states(&hit),
            [(10, vec![1]), (70, vec![7])],
            "older write lost; before from ignored"
        );
        assert_eq!(hit.durable, durable);
        c.written(
            P0,
            &[row(10, 6, &[2, 2])],
            Durable {
                watermark: 8,
                offset: 19,
            },
        );
        let hit = c.get(P0, KEY, 10, 100).unwrap();
        assert_eq!(states(&hit)[0], (10, vec![2, 2]));
        assert_eq!(hit.durable, durable, "an older progress does not go back");
        assert_eq!(c.bytes(), ENTRY_OVERHEAD + 2 * ROW_OVERHEAD + 3);
    }

    #[test]
    fn rows_written_while_a_fill_reads_are_kept_where_they_are_newer() {
        let c = cache();
        let fill = c.fill(P0, KEY, 0).unwrap();
        assert!(c.fill(P0, KEY, 0).is_none(), "one fill at a time");
        assert!(
            c.get(P0, KEY, 0, 100).is_none(),
            "not answered while filling"
        );
        c.written(
            P0,
            &[row(10, 8, &[8]), row(20, 1, &[1])],
            Durable::default(),
        );
        c.finish(
            fill,
            &[(10, 5, vec![5]), (20, 6, vec![6]), (30, 6, vec![3])],
        );
        let hit = c.get(P0, KEY, 0, 100).unwrap();
        assert_eq!(states(&hit), [(10, vec![8]), (20, vec![6]), (30, vec![3])]);
    }

    #[test]
    fn a_fill_dropped_unfinished_leaves_nothing() {
        let c = cache();
        drop(c.fill(P0, KEY, 0).unwrap());
        assert!(c.get(P0, KEY, 0, 100).is_none());
        assert_eq!(c.bytes(), 0);
        filled(&c, 0, &[(1, 1, vec![1])]);
        assert!(c.get(P0, KEY, 0, 100).is_some(), "fills again");
    }

    #[test]
    fn release_acquire_and_failed_checkpoints_drop_the_partitions_entries() {
        let c = cache();
        filled(&c, 0, &[(1, 1, vec![1])]);
        c.write_failed(P0);
        assert!(c.get(P0, KEY, 0, 100).is_none());
        assert_eq!(c.bytes(), 0);

        filled(&c, 0, &[(1, 1, vec![1])]);
        let fill_then_released = c.fill(P0, (Scope::Player, "q", Step::Hour), 0).unwrap();
        c.release(P0);
        assert!(c.get(P0, KEY, 0, 100).is_none());
        assert!(c.fill(P0, KEY, 0).is_none(), "not owned: nothing is filled");
        c.written(P0, &[row(1, 9, &[9])], Durable::default());
        c.acquire(P0, Durable::default());
        c.finish(fill_then_released, &[(1, 1, vec![1])]);
        assert!(
            c.get(P0, (Scope::Player, "q", Step::Hour), 0, 100)
                .is_none(),
            "a fill of an earlier ownership"
        );
        assert!(c.get(P0, KEY, 0, 100).is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn entries_age_out_and_the_least_recently_used_go_first() {
        let c = HistoryCache::new(0, Duration::from_secs(300));
        c.acquire(P0, Durable::default());
        assert!(c.fill(P0, KEY, 0).is_none(), "a budget of 0 keeps nothing");

        let c = HistoryCache::new(1 << 20, Duration::ZERO);
        c.acquire(P0, Durable::default());
        filled(&c, 0, &[(1, 1, vec![1])]);
        assert!(c.get(P0, KEY, 0, 100).is_none(), "aged out");

        // Four entries of 10 rows of 1000 bytes (10,832 bytes each) fit a budget of 48,000;
        // the fifth evicts.
        let c = HistoryCache::new(48_000, Duration::from_secs(300));
        c.acquire(P0, Durable::default());
        let rows: Vec<StoredRow> = (0..10).map(|i| (i, 1, vec![0; 1000])).collect();
        let ids = ["a", "b", "c", "d", "e"];
        for id in &ids[..4] {
            let key = (Scope::Player, *id, Step::Hour);
            let fill = c.fill(P0, key, 0).unwrap();
            c.finish(fill, &rows);
        }
        assert!(c.get(P0, (Scope::Player, "a", Step::Hour), 0, 10).is_some());
        let fill = c.fill(P0, (Scope::Player, "e", Step::Hour), 0).unwrap();
        c.finish(fill, &rows);
        let kept: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| c.get(P0, (Scope::Player, id, Step::Hour), 0, 10).is_some())
            .collect();
        assert_eq!(kept, ["a", "d", "e"], "b and c were used least recently");
        assert!(c.bytes() <= 48_000 / 10 * 9);

        // Many small entries (one row each): the budget holds, counting each entry's own
        // cost, and the latest stay.
        let c = HistoryCache::new(100_000, Duration::from_secs(300));
        c.acquire(P0, Durable::default());
        for i in 0..10_000 {
            let id = format!("small-{i}");
            let fill = c.fill(P0, (Scope::Player, &id, Step::Hour), 0).unwrap();
            c.finish(fill, &[(0, 1, vec![1; 8])]);
            assert!(c.bytes() <= 100_000, "{} bytes after {i}", c.bytes());
        }
        assert!(c
            .get(P0, (Scope::Player, "small-9999", Step::Hour), 0, 1)
            .is_some());
        assert!(c
            .get(P0, (Scope::Player, "small-0", Step::Hour), 0, 1)
            .is_none());
        let c = HistoryCache::new(48_000, Duration::from_secs(300));
        c.acquire(P0, Durable::default());

        // An entry larger than a quarter of the budget is not kept.
        let big: Vec<StoredRow> = (0..20).map(|i| (i, 1, vec![0; 1000])).collect();
        let fill = c.fill(P0, (Scope::Player, "big", Step::Hour), 0).unwrap();
        c.finish(fill, &big);
        assert!(c
            .get(P0, (Scope::Player, "big", Step::Hour), 0, 10)
            .is_none());
    }
}
