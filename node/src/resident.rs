//! The resident entities of a shard: slots in a dense, chunked slab, found by key through a
//! hash table of slot numbers.
//!
//! A shard holds up to millions of entities, so the cost per entity matters more than
//! anything else here. A plain `HashMap<String, Slot>` stores every slot inside the table,
//! which runs at 45-90% load: with 192-byte slots that is about 430 bytes per player at
//! 45%, plus a heap allocation for each key. Here the table holds only a `u32` per entity
//! (5 bytes a bucket with its control byte), the slots sit packed in fixed-size chunks
//! (no doubling, no copy when growing), and keys up to 24 bytes live inline in the slot.
//!
//! Removing swaps the last slot into the hole, so slot numbers are not stable across
//! removals; callers keep keys, never slot numbers, across anything that may remove.
//!
//! Not for: deciding what to evict or when (see `shard`).

use compact_str::CompactString;
use hashbrown::HashTable;

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
    index: HashTable<u32>,
    chunks: Vec<Vec<Slot<E>>>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<E> Default for Resident<E> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            chunks: Vec::new(),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// Prefetches the cache lines of `len` bytes at `p`, up to four.
fn prefetch_lines(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..len.div_ceil(64).min(4) {
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

    fn hash(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn find(&self, key: &str) -> Option<u32> {
        let chunks = &self.chunks;
        self.index
            .find(self.hash(key), |&i| at(chunks, i).key == key)
            .copied()
    }

    /// Asks the CPU to start loading the slot of `key` (if resident) into the cache, and
    /// returns at once. The shard calls it for the next record before decoding the current
    /// one, so the slot, usually a miss in a table of millions, arrives while the decoding
    /// runs instead of stalling the lookup. Only the index is read here, never a slot.
    pub fn prefetch(&self, key: &str) {
        let chunks = &self.chunks;
        let _ = self.index.find(self.hash(key), |&i| {
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
        let Self {
            index,
            chunks,
            hasher,
            ..
        } = self;
        index.insert_unique(hash, i, |&j| {
            use std::hash::BuildHasher;
            hasher.hash_one(at(chunks, j).key.as_str())
        });
    }

    /// Every resident slot, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot<E>> {
        self.chunks.iter().flatten()
    }

    /// Removes every slot `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&Slot<E>) -> bool) {
        let mut i = 0;
        while i < self.len {
            if keep(at(&self.chunks, i as u32)) {
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
        match self.index.find_entry(hash, |&j| j == i) {
            Ok(entry) => drop(entry.remove()),
            Err(_) => unreachable!("every slot is indexed"),
        }
        if i != last {
            // The last slot moves into the hole: its index entry now names `i`.
            let hash = self.hash(&at(&self.chunks, last).key);
            *self
                .index
                .find_mut(hash, |&j| j == last)
                .expect("every slot is indexed") = i;
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
