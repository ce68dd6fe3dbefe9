//! Distinct counts that merge: HyperLogLog++ (the `hyperloglogplus` crate) at precision
//! 14, hashed with XXH3 (seed 0) so a sketch means the same in every process and version.
//!
//! Error bound: below about 12,000 distinct values the sketch is in its sparse form (25-bit
//! precision) and practically exact; above, the standard error is 1.04 / sqrt(2^14) =
//! 0.81 %, so 99.7 % of estimates are within 2.5 % (three standard errors). A dense
//! sketch is about 13 KB. See the test on a million ids.

use std::hash::BuildHasher;

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};

/// Registers: 2^14.
pub const PRECISION: u8 = 14;

#[cfg(test)]
const HASH_OF_P1: u64 = 10_532_715_150_641_468_958;

/// The hasher of every sketch: XXH3-64 with seed 0.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StableHash;

impl BuildHasher for StableHash {
    type Hasher = twox_hash::XxHash3_64;

    fn build_hasher(&self) -> Self::Hasher {
        twox_hash::XxHash3_64::with_seed(0)
    }
}

/// A set of ids, counted approximately.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sketch(HyperLogLogPlus<String, StableHash>);

impl Default for Sketch {
    fn default() -> Self {
        Sketch::new()
    }
}

impl Sketch {
    pub fn new() -> Sketch {
        Sketch(HyperLogLogPlus::new(PRECISION, StableHash).expect("precision 14 is valid"))
    }

    pub fn insert(&mut self, id: &str) {
        self.0.insert_any(id);
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.0
            .merge(&other.0)
            .expect("every sketch has the same precision");
    }

    /// The estimated number of distinct ids, rounded.
    pub fn estimate(&self) -> u64 {
        // Counting folds the sketch's insert buffer in, hence the copy.
        self.0.clone().count().round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_count_exactly() {
        let mut s = Sketch::new();
        for i in 0..1000 {
            s.insert(&format!("player-{i}"));
            s.insert(&format!("player-{i}"));
        }
        assert_eq!(s.estimate(), 1000);
    }

    #[test]
    fn a_million_players_count_within_the_documented_bound_also_merged_and_stored() {
        // Four partitions of 250,000 players each, like the global partials.
        let mut parts: Vec<Sketch> = (0..4).map(|_| Sketch::new()).collect();
        for i in 0..1_000_000u32 {
            parts[(i % 4) as usize].insert(&format!("p{i}"));
        }
        let mut all = Sketch::new();
        for p in &parts {
            let stored = postcard::to_allocvec(p).unwrap();
            let loaded: Sketch = postcard::from_bytes(&stored).unwrap();
            all.merge(&loaded);
        }
        let estimate = all.estimate() as f64;
        let error = (estimate - 1e6).abs() / 1e6;
        assert!(error < 0.025, "estimate {estimate}: error {error}");
        // Merging is a union: a sketch merged with itself counts the same.
        let mut twice = all.clone();
        twice.merge(&all);
        assert_eq!(twice.estimate(), all.estimate());
    }

    #[test]
    fn the_hash_is_the_same_in_every_process() {
        // XXH3-64, seed 0, of "p1" and str's 0xff terminator: a fixed value, so a sketch
        // stored by one build is read the same by the next.
        assert_eq!(
            StableHash.hash_one("p1"),
            StableHash.hash_one(String::from("p1"))
        );
        assert_eq!(StableHash.hash_one("p1"), HASH_OF_P1);
    }
}
