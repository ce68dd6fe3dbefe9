//! The resident entities of a shard: slots in a dense, chunked slab, found by key through a
//! hash table of slot numbers.
//!
//! A shard holds up to millions of entities, so the cost per entity matters more than
//! anything else here. A plain `HashMap<String, Slot>` stores every slot inside the table,
//! which runs at 45-90% load: with 192-byte slots that is about 430 bytes per player at
//! 45%, plus a heap allocation for each key. Here the table holds only 8 bytes per entry
//! (32 bits of the key's hash and the slot number), the slots sit packed in fixed-size
//! chunks (no doubling, no copy when growing), and keys up to 24 bytes live inline in the
//! slot.
//!
//! The table is open addressing with linear probing, written here rather than taken from
//! hashbrown for one reason: a caller can prefetch the table line an entry's probe starts
//! at ([`Resident::prefetch_index`]) before it prefetches the slot ([`Resident::prefetch`]),
//! two records ahead, so neither the table nor the slot is a cache miss by the time the
//! record is applied. With millions of random players both would otherwise miss.
//!
//! Removing swaps the last slot into the hole, so slot numbers are not stable across
//! removals; callers keep keys, never slot numbers, across anything that may remove.
//!
//! Not for: deciding what to evict or when (see `shard` and `history`).

use compact_str::CompactString;

/// Slots per chunk. A chunk of players is about 768 KiB.
const CHUNK: usize = 4096;

/// An entity resident in a shard.
pub struct Slot<E> {
    pub key: CompactString,
    pub state: E,
    /// Offset of the last record applied (-1: none).
    pub offset: i64,
    /// Seconds since shard start of the last event or query.
    pub touched: u32,
    /// Changed since the last checkpoint snapshot (its key is in the shard's dirty list).
    pub dirty: bool,
}

/// Resident entities by key. Hashed with foldhash (randomly seeded, several times faster
/// than SipHash on short keys): a lookup per record is the shard's hottest path.
pub struct Resident<E> {
    index: Index,
    chunks: Vec<Vec<Slot<E>>>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<E> Default for Resident<E> {
    fn default() -> Self {
        Self {
            index: Index::default(),
            chunks: Vec::new(),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// An empty table entry; others are `pack(hash, slot)`, never 0.
const EMPTY: u64 = 0;

fn pack(hash: u32, slot: u32) -> u64 {
    ((hash as u64) << 32) | (slot as u64 + 1)
}

fn hash_of(entry: u64) -> u32 {
    (entry >> 32) as u32
}

fn slot_of(entry: u64) -> u32 {
    (entry as u32) - 1
}

/// Slot numbers by key hash: open addressing, linear probing, at most 3/4 full, removal by
/// backward shift (no tombstones, so probes stay short however many entities come and go).
#[derive(Default)]
struct Index {
    /// A power of two in length (or empty).
    entries: Vec<u64>,
    len: usize,
}

impl Index {
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// Where the probe for `hash` starts, or None while the table is empty.
    fn home(&self, hash: u32) -> Option<*const u64> {
        let mask = self.entries.len().checked_sub(1)?;
        Some(self.entries.as_ptr().wrapping_add(hash as usize & mask))
    }

    /// Position of the first entry with `hash` whose slot `is` accepts.
    fn find(&self, hash: u32, mut is: impl FnMut(u32) -> bool) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut pos = hash as usize & mask;
        loop {
            let e = self.entries[pos];
            if e == EMPTY {
                return None; // never full, so every probe ends at an empty entry
            }
            if hash_of(e) == hash && is(slot_of(e)) {
                return Some(pos);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Adds an entry; the caller knows `slot` is not in the table yet.
    fn insert(&mut self, hash: u32, slot: u32) {
        assert!(slot < u32::MAX, "fewer than 2^32 - 1 resident entities");
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        let mask = self.mask();
        let mut pos = hash as usize & mask;
        while self.entries[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.entries[pos] = pack(hash, slot);
        self.len += 1;
    }

    fn grow(&mut self) {
        let size = (self.entries.len() * 2).max(16);
        let old = std::mem::replace(&mut self.entries, vec![EMPTY; size]);
        let mask = self.mask();
        for e in old.into_iter().filter(|&e| e != EMPTY) {
            let mut pos = hash_of(e) as usize & mask;
            while self.entries[pos] != EMPTY {
                pos = (pos + 1) & mask;
            }
            self.entries[pos] = e;
        }
    }

    /// Removes the entry at `pos`, shifting later entries of the same run back so that no
    /// probe passes over a hole.
    fn remove_at(&mut self, pos: usize) {
        let mask = self.mask();
        let mut hole = pos;
        let mut next = (hole + 1) & mask;
        while self.entries[next] != EMPTY {
            let e = self.entries[next];
            let home = hash_of(e) as usize & mask;
            // `e` may fill the hole unless its probe starts after the hole (cyclically).
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.entries[hole] = e;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.entries[hole] = EMPTY;
        self.len -= 1;
    }
}

/// The most cache lines prefetched for one slot: a player's (3 lines) and its history
/// buckets with their current minute, hour and day inline (11 lines) whole.
const MAX_PREFETCH_LINES: usize = 12;

/// Prefetches the cache lines of `len` bytes at `p`, up to [`MAX_PREFETCH_LINES`].
fn prefetch_lines(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..len.div_ceil(64).min(MAX_PREFETCH_LINES) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint; it never faults or reads memory visibly, whatever
        // the address. SSE is part of every x86_64 target.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line * 64).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

fn at<E>(chunks: &[Vec<Slot<E>>], i: u32) -> &Slot<E> {
    &chunks[i as usize / CHUNK][i as usize % CHUNK]
}

impl<E> Resident<E> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated for slots and the index (not what entities allocate themselves).
    pub fn allocated_bytes(&self) -> usize {
        let slots: usize = self.chunks.iter().map(Vec::capacity).sum();
        slots * std::mem::size_of::<Slot<E>>()
            + self.index.entries.capacity() * std::mem::size_of::<u64>()
    }

    /// The low 32 bits of the key's hash: the table's probe start and the entry's tag.
    fn hash(&self, key: &str) -> u32 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key) as u32
    }

    fn find(&self, key: &str) -> Option<u32> {
        let chunks = &self.chunks;
        let at_pos = self
            .index
            .find(self.hash(key), |i| at(chunks, i).key == key)?;
        Some(slot_of(self.index.entries[at_pos]))
    }

    /// Asks the CPU to start loading the table line where the lookup of `key` starts, and
    /// returns at once. Call it two records ahead; [`Resident::prefetch`] one record ahead.
    pub fn prefetch_index(&self, key: &str) {
        if let Some(home) = self.index.home(self.hash(key)) {
            prefetch_lines(home.cast(), 8);
        }
    }

    /// Asks the CPU to start loading the slot of `key` (if resident) into the cache, and
    /// returns at once. The shard calls it for the next record before decoding the current
    /// one, so the slot, usually a miss in a table of millions, arrives while the decoding
    /// runs instead of stalling the lookup. Only the table is read here, never a slot.
    pub fn prefetch(&self, key: &str) {
        let chunks = &self.chunks;
        let _ = self.index.find(self.hash(key), |i| {
            let chunk = &chunks[i as usize / CHUNK];
            let slot = chunk.as_ptr().wrapping_add(i as usize % CHUNK);
            prefetch_lines(slot.cast(), std::mem::size_of::<Slot<E>>());
            false // keep probing: the candidates are only prefetched, not compared
        });
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    pub fn get(&self, key: &str) -> Option<&Slot<E>> {
        self.find(key).map(|i| at(&self.chunks, i))
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Slot<E>> {
        let i = self.find(key)? as usize;
        Some(&mut self.chunks[i / CHUNK][i % CHUNK])
    }

    /// Makes `key` resident with `state`, replacing what was resident under it.
    pub fn insert(&mut self, key: CompactString, state: E, offset: i64, touched: u32) {
        if let Some(slot) = self.get_mut(&key) {
            slot.state = state;
            slot.offset = offset;
            slot.touched = touched;
            return;
        }
        self.push(key, state, offset, touched);
    }

    /// The slot of `key`, made with `make()` (offset -1, touched 0) if absent: one lookup.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> E) -> &mut Slot<E> {
        let i = match self.find(key) {
            Some(i) => i,
            None => self.push(key.into(), make(), -1, 0),
        } as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Adds a slot for `key`, which is not resident; returns its number.
    fn push(&mut self, key: CompactString, state: E, offset: i64, touched: u32) -> u32 {
        let hash = self.hash(&key);
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let i = u32::try_from(self.len).expect("fewer than 2^32 resident entities");
        self.chunks
            .last_mut()
            .expect("a chunk with room")
            .push(Slot {
                key,
                state,
                offset,
                touched,
                dirty: false,
            });
        self.len += 1;
        self.index.insert(hash, i);
        i
    }

    /// Every resident slot, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot<E>> {
        self.chunks.iter().flatten()
    }

    /// Every resident slot, to change in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot<E>> {
        self.chunks.iter_mut().flatten()
    }

    /// Removes every slot `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&Slot<E>) -> bool) {
        self.retain_mut(|slot| keep(slot));
    }

    /// Removes every slot `keep` refuses; `keep` may change the slots it keeps (never
    /// their keys).
    pub fn retain_mut(&mut self, mut keep: impl FnMut(&mut Slot<E>) -> bool) {
        let mut i = 0;
        while i < self.len {
            let (ci, si) = (i / CHUNK, i % CHUNK);
            if keep(&mut self.chunks[ci][si]) {
                i += 1;
            } else {
                self.remove_at(i as u32);
            }
        }
    }

    /// Removes slot `i`, moving the last slot into its place.
    fn remove_at(&mut self, i: u32) {
        let last = (self.len - 1) as u32;
        let hash = self.hash(&at(&self.chunks, i).key);
        let pos = self
            .index
            .find(hash, |j| j == i)
            .expect("every slot is indexed");
        self.index.remove_at(pos);
        if i != last {
            // The last slot moves into the hole: its entry now names `i`.
            let hash = self.hash(&at(&self.chunks, last).key);
            let pos = self
                .index
                .find(hash, |j| j == last)
                .expect("every slot is indexed");
            self.index.entries[pos] = pack(hash, i);
            let (ci, si) = (i as usize / CHUNK, i as usize % CHUNK);
            let (cl, sl) = (last as usize / CHUNK, last as usize % CHUNK);
            if ci == cl {
                self.chunks[ci].swap(si, sl);
            } else {
                let (head, tail) = self.chunks.split_at_mut(cl);
                std::mem::swap(&mut head[ci][si], &mut tail[0][sl]);
            }
        }
        let chunk = self.chunks.last_mut().expect("a slot to remove");
        chunk.pop();
        if chunk.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn get_or_insert_with_makes_a_slot_once_and_finds_it_after() {
        let mut m: Resident<u32> = Resident::default();
        let long = "p/ü ?#%+1-".repeat(8); // past the 24 bytes kept inline
        for key in ["a", long.as_str()] {
            let slot = m.get_or_insert_with(key, || 7);
            assert_eq!((slot.state, slot.offset, slot.touched), (7, -1, 0));
            slot.state = 8;
            assert_eq!(m.get_or_insert_with(key, || unreachable!()).state, 8);
        }
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&long).map(|s| s.state), Some(8));
    }

    #[test]
    fn behaves_like_a_map_through_inserts_and_removals() {
        let mut r: Resident<u64> = Resident::default();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        // Enough keys to span several chunks; removals hit the first, middle and last chunk.
        for n in 0..(3 * CHUNK as u64 + 17) {
            let key = format!("player-{n}");
            r.insert(key.as_str().into(), n, n as i64, 0);
            model.insert(key, n);
        }
        r.insert("player-5".into(), 500, 5, 0);
        model.insert("player-5".into(), 500);
        r.retain(|s| s.state % 3 != 0);
        model.retain(|_, v| *v % 3 != 0);
        assert_eq!(r.len(), model.len());
        for (k, v) in &model {
            assert_eq!(r.get(k).map(|s| s.state), Some(*v), "{k}");
        }
        assert!(!r.contains_key("player-3"));
        // A prefetch is only a hint: resident or not, it changes nothing.
        r.prefetch("player-4");
        r.prefetch("player-3");
        r.prefetch_index("player-4");
        Resident::<u8>::default().prefetch_index("nobody");
        assert_eq!(r.len(), model.len());
        assert!(r.get("nobody").is_none());
        let mut seen: Vec<(String, u64)> = r.iter().map(|s| (s.key.to_string(), s.state)).collect();
        seen.sort();
        let expected: Vec<(String, u64)> = model.clone().into_iter().collect();
        assert_eq!(seen, expected);
        r.get_mut("player-7").unwrap().state = 70;
        assert_eq!(r.get("player-7").unwrap().state, 70);
        r.retain(|_| false);
        assert!(r.is_empty());
        assert_eq!(r.iter().count(), 0);
        r.insert("again".into(), 1, 1, 0);
        assert_eq!(r.get("again").unwrap().state, 1);
    }

    #[test]
    fn the_table_keeps_every_entry_findable_through_collisions_and_removals() {
        // Hashes chosen to collide and to wrap around the end of the table.
        let mut index = Index::default();
        let mut model: Vec<(u32, u32)> = Vec::new();
        let mut seed = 7u64;
        let mut rand = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for round in 0..20_000u32 {
            if model.is_empty() || rand() % 3 != 0 {
                let hash = match rand() % 4 {
                    0 => 15,         // last position of a 16-entry table
                    1 => rand() % 4, // a few shared probe starts
                    _ => rand(),
                };
                index.insert(hash, round);
                model.push((hash, round));
            } else {
                let (hash, slot) = model.swap_remove(rand() as usize % model.len());
                let pos = index.find(hash, |s| s == slot).expect("present");
                index.remove_at(pos);
            }
            assert_eq!(index.len, model.len());
            if round % 97 == 0 {
                for &(hash, slot) in &model {
                    let pos = index.find(hash, |s| s == slot);
                    assert!(pos.is_some(), "slot {slot} lost at round {round}");
                }
            }
        }
        for (hash, slot) in model.drain(..) {
            let pos = index.find(hash, |s| s == slot).expect("present");
            index.remove_at(pos);
        }
        assert!(index.entries.iter().all(|&e| e == EMPTY));
    }

    #[test]
    fn long_keys_work_like_short_ones() {
        let mut r: Resident<u8> = Resident::default();
        let long = "x".repeat(100);
        r.insert(long.as_str().into(), 1, 0, 0);
        r.insert("short".into(), 2, 0, 0);
        assert_eq!(r.get(&long).unwrap().state, 1);
        r.retain(|s| s.state == 2);
        assert!(r.get(&long).is_none());
        assert_eq!(r.get("short").unwrap().state, 2);
    }
}
