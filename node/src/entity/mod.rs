//! Players and channels as pure state machines: `state + event -> state`.
//!
//! These are the "virtual actors" of Tally. A shard hosts many of them and applies the
//! records of its partition to them in offset order; nothing here does I/O or reads the
//! wall clock, so an entity's state after offset k is a pure function of the partition's
//! records up to k. That is what makes checkpoint-and-replay exactly once.
//!
//! Not for: scheduling, storage or routing (see `shard`, `checkpoint`, `api`).

pub mod channel;
pub mod player;

pub use channel::{Channel, ChannelView};
pub use player::{Player, PlayerView};

use serde::{Deserialize, Serialize};

/// The stored form of an entity: a version tag, then the state. A new layout becomes a new
/// variant, and loading converts older ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stored<T> {
    V1(T),
}

/// Encodes an entity for its Cassandra row.
pub fn encode<T: Serialize + Clone>(state: &T) -> Vec<u8> {
    postcard::to_stdvec(&Stored::V1(state)).expect("entity state always encodes")
}

/// Decodes an entity row written by [`encode`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> anyhow::Result<T> {
    let Stored::V1(state) = postcard::from_bytes::<Stored<T>>(bytes)
        .map_err(|e| anyhow::anyhow!("decode entity blob of {} bytes: {e}", bytes.len()))?;
    Ok(state)
}
