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

pub use channel::{Channel, ChannelCounters, ChannelDelta, ChannelView, Presence};
pub use player::{Player, PlayerView};

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// An entity a shard hosts: a pure state machine over the records of its partition.
pub trait Entity: Default {
    /// Applies one event. `watermark` is the partition's event-time watermark including
    /// this event; `timeout_ms` the viewer timeout. No I/O, no clock.
    fn apply_event(&mut self, event: &Event, watermark: i64, timeout_ms: i64);
}

impl Entity for Player {
    fn apply_event(&mut self, event: &Event, _watermark: i64, _timeout_ms: i64) {
        self.apply(event.ts, &event.body);
    }
}

impl Entity for Channel {
    fn apply_event(&mut self, event: &Event, watermark: i64, timeout_ms: i64) {
        self.apply(event.ts, &event.player, &event.body, watermark, timeout_ms);
    }
}

/// The exactly-once rule for one record: apply the record at `offset` unless the entity
/// already reflects it (`applied` is the offset of the last record applied, -1 for none).
/// Returns whether the entity changed.
pub fn apply_record<E: Entity>(
    state: &mut E,
    applied: &mut i64,
    offset: i64,
    event: &Event,
    watermark: i64,
    timeout_ms: i64,
) -> bool {
    if offset <= *applied {
        return false;
    }
    state.apply_event(event, watermark, timeout_ms);
    *applied = offset;
    true
}

/// The stored form of an entity: a version tag, then the state. A new layout becomes a new
/// variant, and loading converts older ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stored<T> {
    V1(T),
}

/// Encodes an entity for its Cassandra row.
pub fn encode<T: Serialize + Clone>(state: &T) -> Vec<u8> {
    // Sized for a typical player up front: growing byte by byte reallocates several times.
    postcard::to_extend(&Stored::V1(state), Vec::with_capacity(128))
        .expect("entity state always encodes")
}

/// [`encode`] into an allocation of exactly its size (a small state goes through a
/// buffer on the stack), for states kept encoded in memory.
pub fn encode_boxed<T: Serialize + Clone>(state: &T) -> Box<[u8]> {
    let mut buf = [0u8; 256];
    match postcard::to_slice(&Stored::V1(state), &mut buf) {
        Ok(bytes) => Box::from(&*bytes),
        Err(_) => encode(state).into_boxed_slice(),
    }
}

/// Decodes an entity row written by [`encode`] or [`encode_boxed`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> anyhow::Result<T> {
    let Stored::V1(state) = postcard::from_bytes::<Stored<T>>(bytes)
        .map_err(|e| anyhow::anyhow!("decode entity blob of {} bytes: {e}", bytes.len()))?;
    Ok(state)
}

#[cfg(test)]
mod properties;
