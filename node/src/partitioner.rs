//! Kafka's Java default partitioner (murmur2 of the key bytes), the one function that maps
//! a key to its partition everywhere in Tally: ingest, the load tester and query routing.
//!
//! Java clients, Tally's ingest and the load tester therefore put a key where the router
//! expects it. Not for: keyless records (Tally never produces them).

/// Kafka's `Utils.murmur2`: 32-bit murmur2 with seed 0x9747b28c, as Java computes it.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "partition count must be positive");
    ((murmur2(key.as_bytes()) as u32 & 0x7fff_ffff) % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed by Kafka's Java `Utils.murmur2` (its own unit test's cases and more).
    #[test]
    fn matches_kafka_java_vectors() {
        let cases: [(&str, i32); 11] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
            ("1", -1993445489),
            ("12", 126087238),
            ("123", -267702483),
            ("1234", -1614185708),
            ("12345", -1188365604),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), want, "murmur2({key:?})");
        }
    }

    #[test]
    fn partition_is_in_range_and_stable() {
        for i in 0..1000 {
            let key = format!("player-{i}");
            let p = partition_for(&key, 12);
            assert!((0..12).contains(&p));
            assert_eq!(p, partition_for(&key, 12));
        }
    }
}
