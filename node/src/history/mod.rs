//! History: event-time buckets (minute, hour, day) per player, per channel and per
//! partition (the global partials), hosted by the shard like its entities.
//!
//! A bucket is a small virtual entity. It is resident while it is current or dirty, loaded
//! from Cassandra when a record needs one that may be stored (a late event), written by the
//! shard's checkpoint before the entity rows (see `store::checkpoint`), and dropped once
//! it is clean and over. Exactly once, like entities: a bucket row records the offset
//! below which every record of the partition is reflected in it (`covered`), and a replay
//! applies a record to a bucket only above the covered offset it loaded.
//!
//! Which buckets may be stored: an entity's buckets after its latest event (`frontier`)
//! cannot be, because every record before the shard's resume offset has an event time at
//! or below it; a channel's sampled buckets reach the partition's watermark at start, so
//! its frontier includes that too. Everything else that is not resident is loaded, also
//! for an entity this shard created: it may have written the bucket and dropped it.
//!
//! - [`step`]: steps and the sample grid; [`bucket`]: what a bucket holds;
//!   [`sketch`]: distinct counts.
//!
//! Not for: the HTTP answers (see `api::history`) or the storage format (see `store`).

pub mod bucket;
pub mod cache;
pub mod sketch;
pub mod step;

use compact_str::CompactString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use smallvec::SmallVec;

use crate::dirty::{DirtyQueue, Due};
use crate::resident::Resident;

pub use bucket::{ChannelBucket, GlobalBucket, PlayerBucket};
pub use step::{Step, SAMPLE_MS};

/// A resident bucket.
#[derive(Debug, Clone)]
pub struct Slot<B> {
    pub step: Step,
    pub start: i64,
    pub state: B,
    /// Records at or below this offset are reflected in `state` (-1: none).
    pub covered: i64,
    pub dirty: bool,
}

impl<B> Slot<B> {
    pub fn end(&self) -> i64 {
        self.start.saturating_add(self.step.millis())
    }
}

/// A bucket as stored: its state and covered offset.
#[derive(Debug, Clone)]
pub struct StoredBucket<B> {
    pub state: B,
    pub covered: i64,
}

/// Where a bucket lives in Cassandra: `(scope, id)` is the row's partition, `start` its
/// clustering key, in the table of its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Player = 0,
    Channel = 1,
    /// A player partition's global partial; the id is the partition number.
    PlayersPartition = 2,
    /// A channel partition's global partial (concurrency).
    ChannelsPartition = 3,
}

/// One bucket to write.
#[derive(Debug, Clone)]
pub struct BucketRow {
    pub scope: Scope,
    pub id: CompactString,
    pub step: Step,
    pub start: i64,
    pub state: Box<[u8]>,
    pub covered: i64,
}

/// A bucket that is over, kept encoded until a checkpoint has written it (see
/// [`Buckets::seal_over`]): a fifth of the memory of a [`Slot`], and the bytes its row
/// gets. A late event for it decodes it back into a slot.
#[derive(Debug)]
struct Sealed {
    step: Step,
    start: i64,
    covered: i64,
    dirty: bool,
    state: Box<[u8]>,
}

/// The buckets of one entity that are resident. Its current bucket of each step is inline:
/// found in the entity's slot of [`History::entities`], which the apply loop prefetches,
/// rather than behind a pointer that would miss the cache for every record.
#[derive(Debug)]
struct Buckets<B> {
    slots: SmallVec<[Slot<B>; 3]>,
    sealed: Vec<Sealed>,
    /// No sealed bucket of a step (by `Step::index`) starts after this: a new bucket, the
    /// usual case, is known not to be sealed without reading `sealed` (a cache miss).
    sealed_upto: [i64; 3],
    dirty: bool,
}

impl<B> Default for Buckets<B> {
    fn default() -> Self {
        Buckets {
            slots: SmallVec::new(),
            sealed: Vec::new(),
            sealed_upto: [i64::MIN; 3],
            dirty: false,
        }
    }
}

impl<B> Buckets<B> {
    /// Whether the bucket of `step` at `start` is here, in a slot or sealed.
    fn has(&self, step: Step, start: i64) -> bool {
        self.slots
            .iter()
            .any(|s| s.step == step && s.start == start)
            || self.sealed_position(step, start).is_some()
    }

    /// Where in `sealed` the bucket of `step` at `start` is.
    fn sealed_position(&self, step: Step, start: i64) -> Option<usize> {
        if start > self.sealed_upto[step.index()] {
            return None;
        }
        self.sealed
            .iter()
            .position(|s| s.step == step && s.start == start)
    }
}

impl<B: Default + Clone + Serialize + DeserializeOwned> Buckets<B> {
    /// The bucket of `step` at `start`: resident, sealed (decoded back), or made new
    /// (covering nothing). Making one new first seals the entity's buckets of that step
    /// that are over as of `watermark`, so an entity keeps about one slot per step.
    fn slot_mut(&mut self, step: Step, start: i64, watermark: i64) -> &mut Slot<B> {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.step == step && s.start == start)
        {
            return &mut self.slots[i];
        }
        let slot = match self.sealed_position(step, start) {
            Some(i) => {
                let s = self.sealed.swap_remove(i);
                Slot {
                    step,
                    start,
                    state: crate::entity::decode(&s.state)
                        .expect("a sealed bucket decodes: this process encoded it"),
                    covered: s.covered,
                    dirty: s.dirty,
                }
            }
            None => {
                let fresh = Slot {
                    step,
                    start,
                    state: B::default(),
                    covered: -1,
                    dirty: false,
                };
                if let Some(i) = self.seal_over(step, watermark) {
                    self.slots[i] = fresh;
                    return &mut self.slots[i];
                }
                fresh
            }
        };
        self.slots.push(slot);
        self.slots.last_mut().expect("just pushed")
    }

    /// Encodes the slots of `step` that end at or before the start of the watermark's
    /// bucket, and returns the place of one of them, free for a new slot. Clean ones are
    /// sealed too, not dropped: their checkpoint may still fail (see
    /// [`History::mark_all_dirty`]); [`History::passivate`] drops them after it.
    fn seal_over(&mut self, step: Step, watermark: i64) -> Option<usize> {
        let current = step.start(watermark);
        let mut free = None;
        let mut i = 0;
        while i < self.slots.len() {
            let s = &self.slots[i];
            if s.step != step || s.end() > current {
                i += 1;
                continue;
            }
            let upto = &mut self.sealed_upto[step.index()];
            *upto = (*upto).max(s.start);
            if self.sealed.len() < 8 {
                // Exactly the room needed while the list is short (an entity seals a
                // handful between checkpoints), not the doubling a vector grows by.
                self.sealed.reserve_exact(1);
            }
            self.sealed.push(Sealed {
                step,
                start: s.start,
                covered: s.covered,
                dirty: s.dirty,
                state: crate::entity::encode_boxed(&s.state),
            });
            if free.is_none() {
                free = Some(i);
                i += 1;
            } else {
                self.slots.swap_remove(i);
            }
        }
        free
    }
}

/// A shard's resident buckets: its entities' (`B`) and its partition's global ones.
pub struct History<B> {
    pub enabled: bool,
    /// Retention of each step, milliseconds: older buckets take no more events.
    retention_ms: [i64; 3],
    /// Found like the shard's entities, and prefetched with them (see [`History::prefetch`]);
    /// a slot's offset, touch time and dirty flag are not used here.
    entities: Resident<Buckets<B>>,
    /// Entities with dirty buckets, oldest first change first (see `crate::dirty`).
    dirty_entities: DirtyQueue,
    /// The shard's clock as of the batch being applied, milliseconds: when a bucket's
    /// first unwritten change happened.
    pub now_ms: u64,
    global: Vec<Slot<GlobalBucket>>,
    /// Where in `global` each step's bucket was last found: nearly every record credits
    /// the same ones, so this saves the scan.
    global_hint: std::cell::Cell<[usize; 3]>,
    /// Channels whose viewers may be present at the watermark (sampled at each point).
    pub live: foldhash::HashSet<CompactString>,
    /// The last sample point taken.
    pub sampled_to: i64,
    /// The watermark's minute at the last [`History::passivate`], and whether entities
    /// left memory since: the shard passivates buckets only when either changed.
    pub swept_minute: i64,
    pub entities_left: bool,
}

impl<B> History<B> {
    pub fn new(enabled: bool, sampled_to: i64) -> History<B> {
        History {
            enabled,
            retention_ms: [i64::MAX; 3],
            entities: Resident::default(),
            dirty_entities: DirtyQueue::default(),
            now_ms: 0,
            global: Vec::new(),
            global_hint: std::cell::Cell::new([0; 3]),
            live: Default::default(),
            sampled_to,
            swept_minute: i64::MIN,
            entities_left: false,
        }
    }

    /// Sets how long each step's buckets are kept (`retention_secs` by `Step::index`).
    pub fn with_retention(mut self, retention_secs: [u64; 3]) -> Self {
        self.retention_ms =
            retention_secs.map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64);
        self
    }

    /// Whether the bucket of `step` holding `ts` ended more than the step's retention
    /// before `watermark`: its row may have expired, so it takes no more events (they
    /// still count in the live counters).
    pub fn expired(&self, step: Step, ts: i64, watermark: i64) -> bool {
        let end = step.start(ts).saturating_add(step.millis());
        end.saturating_add(self.retention_ms[step.index()]) < watermark
    }

    /// Marks every resident bucket dirty, as changed at `durable_offset` (the resume
    /// offset that is durable) when the shard's clock began: a checkpoint failed, the next
    /// one that is due writes them.
    pub fn mark_all_dirty(&mut self, durable_offset: i64) {
        self.dirty_entities.clear();
        for slot in self.entities.iter_mut() {
            let b = &mut slot.state;
            b.dirty = true;
            b.slots.iter_mut().for_each(|s| s.dirty = true);
            b.sealed.iter_mut().for_each(|s| s.dirty = true);
            self.dirty_entities
                .push(slot.key.clone(), durable_offset, 0);
        }
        self.global.iter_mut().for_each(|s| s.dirty = true);
    }

    /// The entity's resident buckets, made (empty) if it has none.
    fn buckets_mut(&mut self, key: &str) -> &mut Buckets<B> {
        &mut self
            .entities
            .get_or_insert_with(key, Buckets::default)
            .state
    }

    /// Starts loading the table line where the lookup of `key`'s buckets starts (call it
    /// two records ahead), as [`Resident::prefetch_index`].
    pub fn prefetch_index(&self, key: &str) {
        if self.enabled {
            self.entities.prefetch_index(key);
        }
    }

    /// Starts loading `key`'s buckets into the cache (call it one record ahead), as
    /// [`Resident::prefetch`].
    pub fn prefetch(&self, key: &str) {
        if self.enabled {
            self.entities.prefetch(key);
        }
    }

    /// Whether the entity's bucket is resident (in a slot or sealed).
    pub fn contains(&self, key: &str, step: Step, start: i64) -> bool {
        self.entities
            .get(key)
            .is_some_and(|b| b.state.has(step, start))
    }

    pub fn contains_global(&self, step: Step, start: i64) -> bool {
        self.find_global(step, start).is_some()
    }

    /// The index in `global` of the partition's bucket of `step` at `start`, made new if
    /// absent.
    fn global_index(&mut self, step: Step, start: i64) -> usize {
        match self.find_global(step, start) {
            Some(i) => i,
            None => {
                self.insert_global(step, start, None);
                self.global.len() - 1
            }
        }
    }

    /// The index of the partition's bucket of `step` at `start` in `global`.
    fn find_global(&self, step: Step, start: i64) -> Option<usize> {
        let mut hint = self.global_hint.get();
        let at = hint[step.index()];
        if self
            .global
            .get(at)
            .is_some_and(|s| s.step == step && s.start == start)
        {
            return Some(at);
        }
        let i = self
            .global
            .iter()
            .position(|s| s.step == step && s.start == start)?;
        hint[step.index()] = i;
        self.global_hint.set(hint);
        Some(i)
    }

    /// Makes a bucket resident (a load found `stored`, or nothing: a new bucket).
    pub fn insert(&mut self, key: &str, step: Step, start: i64, stored: Option<StoredBucket<B>>)
    where
        B: Default,
    {
        if self.contains(key, step, start) {
            return;
        }
        let (state, covered) = stored.map_or_else(|| (B::default(), -1), |s| (s.state, s.covered));
        self.buckets_mut(key).slots.push(Slot {
            step,
            start,
            state,
            covered,
            dirty: false,
        });
    }

    pub fn insert_global(
        &mut self,
        step: Step,
        start: i64,
        stored: Option<StoredBucket<GlobalBucket>>,
    ) {
        if self.contains_global(step, start) {
            return;
        }
        let (state, covered) =
            stored.map_or_else(|| (new_global(step), -1), |s| (s.state, s.covered));
        self.global.push(Slot {
            step,
            start,
            state,
            covered,
            dirty: false,
        });
    }

    /// Credits the record at `offset` to the entity's bucket of each step holding `ts` and,
    /// with `global`, to the partition's: `f(step, entity bucket, global bucket)`, each
    /// None when the record is already reflected in it. Buckets are made new if absent;
    /// steps whose bucket expired as of `watermark` are left out. One map lookup.
    pub fn credit(
        &mut self,
        key: &str,
        ts: i64,
        offset: i64,
        watermark: i64,
        global: bool,
        mut f: impl FnMut(Step, Option<&mut B>, Option<&mut GlobalBucket>),
    ) where
        B: Default + Clone + Serialize + DeserializeOwned,
    {
        let live = Step::ALL.map(|step| !self.expired(step, ts, watermark));
        let mut at = [usize::MAX; 3];
        if global {
            for step in Step::ALL.into_iter().filter(|s| live[s.index()]) {
                let start = step.start(ts);
                at[step.index()] = self.global_index(step, start);
            }
        }
        let buckets = &mut self
            .entities
            .get_or_insert_with(key, Buckets::default)
            .state;
        let mut dirtied = false;
        for step in Step::ALL.into_iter().filter(|s| live[s.index()]) {
            let start = step.start(ts);
            let slot = buckets.slot_mut(step, start, watermark);
            let mine = (offset > slot.covered).then(|| {
                slot.dirty = true;
                dirtied = true;
                &mut slot.state
            });
            let theirs = self.global.get_mut(at[step.index()]).and_then(|g| {
                (offset > g.covered).then(|| {
                    g.dirty = true;
                    &mut g.state
                })
            });
            f(step, mine, theirs);
        }
        if dirtied && !buckets.dirty {
            buckets.dirty = true;
            self.dirty_entities.push(key.into(), offset, self.now_ms);
        }
    }

    /// Which of the entity's buckets of each step (starts by `Step::index`) are resident,
    /// looking only for the steps `wanted` (false for the others).
    pub fn resident(&self, key: &str, starts: [i64; 3], wanted: [bool; 3]) -> [bool; 3] {
        if wanted == [false; 3] {
            return [false; 3];
        }
        let Some(b) = self.entities.get(key).map(|s| &s.state) else {
            return [false; 3];
        };
        Step::ALL.map(|step| wanted[step.index()] && b.has(step, starts[step.index()]))
    }

    /// The partition's bucket of `step` at `ts`, made new if absent; None when the record
    /// at `offset` is already reflected in it. Marks it dirty.
    pub fn global_mut(&mut self, step: Step, ts: i64, offset: i64) -> Option<&mut GlobalBucket> {
        let start = step.start(ts);
        let i = self.global_index(step, start);
        let slot = &mut self.global[i];
        if offset <= slot.covered {
            return None;
        }
        slot.dirty = true;
        Some(&mut slot.state)
    }

    /// Takes the dirty buckets of the entities that are `due`, and those of `with` (the
    /// entities whose rows this checkpoint writes: an entity row never gets ahead of its
    /// buckets), for a checkpoint taken at `next_offset`: each is written as covering
    /// `next_offset - 1`. When anything is taken, so is every resident partition bucket,
    /// dirty or not: its covered offset then stays at or above the offset of every entity
    /// row written, and a replay that loads an entity ahead of the records it re-reads
    /// never samples or credits a partition bucket from that entity's later state.
    pub fn snapshot(
        &mut self,
        (entity_scope, partition_scope, partition): (Scope, Scope, i32),
        next_offset: i64,
        due: Due,
        with: &[CompactString],
    ) -> (Vec<BucketRow>, Vec<BucketRow>)
    where
        B: Serialize + Clone,
    {
        let covered = next_offset - 1;
        let keys = self.dirty_entities.take_due(due);
        // Room for a slot of each step and one sealed bucket per entity, taken up front: a
        // catch-up checkpoint takes a row for most of a million entities, and growing the
        // vector by doubling would copy it (and fault in fresh pages) several times over.
        // Capacity never written costs no memory.
        let mut rows = Vec::with_capacity((keys.len() + with.len()) * (Step::ALL.len() + 1));
        for key in keys.iter().chain(with) {
            let Some(buckets) = self.entities.get_mut(key).map(|s| &mut s.state) else {
                continue;
            };
            if !buckets.dirty {
                // Taken already (with its entity), or a second entry of the key.
                continue;
            }
            buckets.dirty = false;
            for slot in buckets.slots.iter_mut().filter(|s| s.dirty) {
                slot.dirty = false;
                rows.push(BucketRow {
                    scope: entity_scope,
                    id: key.clone(),
                    step: slot.step,
                    start: slot.start,
                    state: crate::entity::encode_boxed(&slot.state),
                    covered,
                });
            }
            for sealed in buckets.sealed.iter_mut().filter(|s| s.dirty) {
                sealed.dirty = false;
                rows.push(BucketRow {
                    scope: entity_scope,
                    id: key.clone(),
                    step: sealed.step,
                    start: sealed.start,
                    state: sealed.state.clone(),
                    covered,
                });
            }
        }
        let mut global = Vec::new();
        let anything = !rows.is_empty() || !with.is_empty();
        for slot in self.global.iter_mut().filter(|s| anything || s.dirty) {
            slot.dirty = false;
            global.push(BucketRow {
                scope: partition_scope,
                id: partition.to_string().into(),
                step: slot.step,
                start: slot.start,
                state: crate::entity::encode_boxed(&slot.state),
                covered,
            });
        }
        (global, rows)
    }

    /// The offset of the oldest bucket change no checkpoint has taken: a replay from
    /// there re-applies every unwritten one. None when none waits.
    pub fn oldest_unwritten(&self) -> Option<i64> {
        self.dirty_entities.oldest_offset()
    }

    /// Drops clean buckets that are over as of the partition's `watermark` (they end at or
    /// before the start of its current bucket), and every clean bucket of an entity that
    /// is no longer resident. Returns how many were dropped.
    pub fn passivate(&mut self, watermark: i64, resident: impl Fn(&str) -> bool) -> usize {
        let over = |s: &Slot<_>| !s.dirty && s.end() <= s.step.start(watermark);
        let mut dropped = 0;
        self.entities.retain_mut(|slot| {
            let gone = !resident(&slot.key);
            let b = &mut slot.state;
            let before = b.slots.len() + b.sealed.len();
            b.slots.retain(|s| s.dirty || !(gone || over(s)));
            // Sealed buckets are over: clean ones are written.
            b.sealed.retain(|s| s.dirty);
            dropped += before - b.slots.len() - b.sealed.len();
            !b.slots.is_empty() || !b.sealed.is_empty()
        });
        let before = self.global.len();
        self.global
            .retain(|s| s.dirty || s.end() > s.step.start(watermark));
        dropped + before - self.global.len()
    }

    /// Whether any bucket waits to be written (due or not).
    #[cfg(test)]
    pub fn is_dirty(&self) -> bool {
        !self.dirty_entities.is_empty() || self.global.iter().any(|s| s.dirty)
    }
}

/// A new global bucket: day buckets carry the sketch of their players.
pub fn new_global(step: Step) -> GlobalBucket {
    GlobalBucket {
        players: (step == Step::Day).then(|| Box::new(sketch::Sketch::new())),
        ..GlobalBucket::default()
    }
}

/// Whether the bucket of `step` at `start` of an entity that is not resident may be stored:
/// it does not begin after the entity's frontier. (Whether the entity itself was ever
/// stored does not matter: this shard may have written the bucket and dropped it since.)
pub fn may_be_stored(step: Step, start: i64, frontier: i64) -> bool {
    start <= step.start(frontier)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPES: (Scope, Scope, i32) = (Scope::Player, Scope::PlayersPartition, 7);
    /// Every bucket due.
    const NOW: Due = Due {
        now_ms: 0,
        period_ms: 0,
        all: true,
    };

    /// Credits a kill at `ts` (record `offset`); which steps took it.
    fn take(h: &mut History<PlayerBucket>, key: &str, ts: i64, offset: i64) -> [bool; 3] {
        let mut took = [false; 3];
        h.credit(key, ts, offset, ts, false, |step, mine, _| {
            if let Some(b) = mine {
                b.kills += 1;
                took[step.index()] = true;
            }
        });
        took
    }

    #[test]
    fn a_record_at_or_below_the_covered_offset_is_not_applied_again() {
        let mut h: History<PlayerBucket> = History::new(true, 0);
        h.insert(
            "p",
            Step::Minute,
            0,
            Some(StoredBucket {
                state: PlayerBucket::default(),
                covered: 10,
            }),
        );
        assert_eq!(take(&mut h, "p", 5, 10), [false, true, true]);
        assert_eq!(take(&mut h, "p", 5, 11), [true, true, true]);
        // A new bucket covers nothing.
        assert_eq!(take(&mut h, "q", 5, 0), [true, true, true]);
    }

    #[test]
    fn a_snapshot_writes_each_dirty_bucket_once_as_covering_the_progress() {
        let mut h: History<PlayerBucket> = History::new(true, 0);
        take(&mut h, "p", 5, 3);
        take(&mut h, "p", 6, 4);
        h.global_mut(Step::Day, 5, 4).unwrap().active = 1;
        let (global, rows) = h.snapshot(SCOPES, 9, NOW, &[]);
        assert_eq!(rows.len(), 3, "one row per step");
        assert!(rows.iter().all(|r| r.covered == 8));
        assert_eq!(global.len(), 1);
        assert_eq!(global[0].id, "7");
        assert!(!h.is_dirty());
        assert_eq!(h.oldest_unwritten(), None);
        h.mark_all_dirty(9);
        assert!(h.is_dirty());
        assert_eq!(h.oldest_unwritten(), Some(9));
        let (global, rows) = h.snapshot(SCOPES, 12, NOW, &[]);
        assert_eq!((global.len(), rows.len(), rows[0].covered), (1, 3, 11));
    }

    #[test]
    fn buckets_wait_out_their_period_unless_their_entity_row_is_written() {
        let mut h: History<PlayerBucket> = History::new(true, 0);
        let period = 10_000;
        h.now_ms = 1_000;
        take(&mut h, "p", 5, 3);
        h.global_mut(Step::Day, 5, 3).unwrap().active = 1;
        h.now_ms = 4_000;
        take(&mut h, "q", 5, 4);
        take(&mut h, "p", 6, 5);
        // Not due: only the dirty partition bucket is taken, and the oldest unwritten
        // change is p's first.
        let (global, rows) = h.snapshot(SCOPES, 6, Due::at(5_000, period), &[]);
        assert_eq!((global.len(), rows.len()), (1, 0));
        assert_eq!(h.oldest_unwritten(), Some(3));
        // p is due; q's row is written with its entity's.
        let (global, rows) = h.snapshot(SCOPES, 6, Due::at(11_000, period), &["q".into()]);
        assert_eq!(rows.len(), 6, "both players, one row per step");
        assert!(rows.iter().all(|r| r.covered == 5));
        // Every resident partition bucket goes with anything else, dirty or not.
        assert_eq!(global.len(), 1);
        assert_eq!(global[0].covered, 5);
        // q's queue entry is left, and holds the resume offset until it is due.
        assert_eq!(h.oldest_unwritten(), Some(4));
        let (global, rows) = h.snapshot(SCOPES, 6, Due::at(14_000, period), &[]);
        assert!(
            global.is_empty() && rows.is_empty(),
            "q was written already"
        );
        assert_eq!(h.oldest_unwritten(), None);
    }

    #[test]
    fn clean_buckets_leave_memory_once_over_or_once_their_entity_left() {
        let mut h: History<PlayerBucket> = History::new(true, 0);
        take(&mut h, "p", 5, 0);
        take(&mut h, "q", 70_000, 1);
        h.snapshot(SCOPES, 2, NOW, &[]);
        // At 70 s the first minute is over; the day is not.
        assert_eq!(h.passivate(70_000, |_| true), 1);
        assert!(h.contains("p", Step::Day, 0));
        assert!(h.contains("q", Step::Minute, 60_000));
        // q left memory: its buckets go too.
        h.passivate(70_000, |k| k != "q");
        assert!(!h.contains("q", Step::Minute, 60_000));
        // A dirty bucket stays whatever happens.
        take(&mut h, "p", 5, 3);
        h.insert("p", Step::Day, 86_400_000, None);
        assert_eq!(
            h.passivate(i64::MAX, |_| false),
            1,
            "only the clean second day bucket"
        );
        assert!(h.contains("p", Step::Minute, 0));
    }

    #[test]
    fn buckets_that_are_over_are_sealed_and_a_late_event_opens_them_again() {
        let mut h: History<PlayerBucket> = History::new(true, 0);
        let minute = |ts: i64| Step::Minute.start(ts);
        // Three minutes of one player: the first two are sealed as the next begins.
        take(&mut h, "p", 5, 0);
        take(&mut h, "p", 60_005, 1);
        take(&mut h, "p", 120_005, 2);
        let b = &h.entities.get("p").expect("resident").state;
        assert_eq!(b.slots.len(), 3, "one slot per step");
        assert_eq!(b.sealed.len(), 2);
        assert_eq!(b.sealed.capacity(), 2, "a short list has no spare room");
        assert!(h.contains("p", Step::Minute, minute(5)));
        assert_eq!(h.resident("p", [0, 0, 0], [true; 3]), [true, true, true]);
        assert_eq!(
            h.resident("p", [0, 0, 0], [false, true, true]),
            [false, true, true]
        );
        // Every bucket is written once, sealed ones with the same state as a slot's.
        let first_minute = |rows: &[BucketRow]| -> PlayerBucket {
            let row = rows.iter().find(|r| r.step == Step::Minute && r.start == 0);
            crate::entity::decode(&row.expect("the first minute is written").state).unwrap()
        };
        let (_, rows) = h.snapshot(SCOPES, 3, NOW, &[]);
        assert_eq!(rows.len(), 5, "three minutes, an hour, a day");
        assert_eq!(first_minute(&rows).kills, 1);
        // A late event opens the sealed minute with its state.
        assert_eq!(take(&mut h, "p", 10, 3), [true, true, true]);
        let (_, rows) = h.snapshot(SCOPES, 4, NOW, &[]);
        assert_eq!(first_minute(&rows).kills, 2);
        // A failed checkpoint makes sealed buckets dirty again; a good one lets them go.
        h.mark_all_dirty(0);
        let (_, rows) = h.snapshot(SCOPES, 4, NOW, &[]);
        assert!(rows
            .iter()
            .any(|r| r.step == Step::Minute && r.start == 60_000));
        h.passivate(120_005, |_| true);
        assert!(
            !h.contains("p", Step::Minute, 60_000),
            "clean and over: dropped"
        );
        assert!(h.contains("p", Step::Minute, 120_000), "current: kept");

        // A loaded bucket keeps its covered offset through sealing: a replayed record is
        // still skipped after it opens again.
        let stored = StoredBucket {
            state: PlayerBucket::default(),
            covered: 10,
        };
        h.insert("q", Step::Minute, 0, Some(stored));
        take(&mut h, "q", 60_005, 11);
        assert_eq!(h.entities.get("q").expect("resident").state.sealed.len(), 1);
        assert!(!take(&mut h, "q", 5, 10)[Step::Minute.index()]);
        assert!(take(&mut h, "q", 5, 12)[Step::Minute.index()]);
    }

    #[test]
    fn a_sealed_bucket_holds_the_bytes_of_its_row_small_or_large() {
        let mut b = PlayerBucket {
            kills: 3,
            ..PlayerBucket::default()
        };
        assert_eq!(
            &*crate::entity::encode_boxed(&b),
            &crate::entity::encode(&b)[..]
        );
        // Past the stack buffer: a bucket with purchases in many currencies.
        b.revenue = (0..60u8).map(|i| ([b'A', b'A' + i % 26, i], 999)).collect();
        let bytes = crate::entity::encode(&b);
        assert!(bytes.len() > 256);
        assert_eq!(&*crate::entity::encode_boxed(&b), &bytes[..]);
    }

    #[test]
    fn buckets_after_the_frontier_are_new() {
        assert!(may_be_stored(Step::Minute, 60_000, 60_000));
        assert!(may_be_stored(Step::Minute, 0, 60_000));
        assert!(!may_be_stored(Step::Minute, 120_000, 119_999));
    }
}
