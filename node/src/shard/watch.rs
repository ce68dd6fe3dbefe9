//! Entities watched for pushed updates: the shard publishes each one's latest state to a
//! latest-value channel, at most once per push interval, and never waits for a reader.
//!
//! Watching costs nothing while records are applied: on each push tick the shard compares
//! every watched entity's applied offset with the one it last published (and, for a
//! channel, the watermark, since viewers expire without events) and renders only those
//! that changed. A slow reader only ever sees a newer state; the shard never blocks on it.
//! The channel closes when the shard stops (ownership moved), which tells the relay to
//! look for the new owner.
//!
//! Not for: relaying to clients or other nodes (see `push`).

use std::collections::HashMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Hosted, QueryError, ShardState};
use crate::kind::ShardKind;

/// The state of one entity as its owner's shard publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// The view (None: the entity has seen no event).
    pub data: Option<serde_json::Value>,
    /// Offset of the last record applied to the entity (-1: none).
    pub offset: i64,
    pub partition: i32,
    /// The next offset the shard applies.
    pub partition_offset: i64,
}

/// What a watcher receives: the latest state, replaced, never queued.
pub type StateFeed = watch::Receiver<EntityState>;

/// One watched entity.
struct Watched {
    tx: watch::Sender<EntityState>,
    /// The offset and the watermark its last published state was rendered at.
    offset: i64,
    watermark: i64,
}

/// The watched entities of a shard.
#[derive(Default)]
pub struct Watchers(HashMap<CompactString, Watched>);

impl<E: Hosted> ShardState<E> {
    /// Starts watching `id` (or joins its watch): the feed holds its current state at once.
    pub(super) async fn watch(&mut self, id: &str) -> Result<StateFeed, QueryError> {
        if let Some(w) = self.watchers.0.get(id).filter(|w| !w.tx.is_closed()) {
            return Ok(w.tx.subscribe());
        }
        let current = self.query(id).await?;
        let state = match current {
            Some((view, fresh)) => EntityState {
                data: Some(serde_json::to_value(&view).unwrap_or_default()),
                offset: fresh.entity_offset,
                partition: self.args.partition,
                partition_offset: self.next_offset,
            },
            None => EntityState {
                data: None,
                offset: -1,
                partition: self.args.partition,
                partition_offset: self.next_offset,
            },
        };
        let offset = state.offset;
        let (tx, rx) = watch::channel(state);
        self.watchers.0.insert(
            id.into(),
            Watched {
                tx,
                offset,
                watermark: self.watermark,
            },
        );
        Ok(rx)
    }

    /// Publishes the watched entities that changed since their last state; forgets those
    /// nobody reads any more.
    pub(super) fn push_tick(&mut self) {
        if self.watchers.0.is_empty() {
            return;
        }
        let clock = self.clock();
        let (partition, next_offset) = (self.args.partition, self.next_offset);
        let entities = &self.entities;
        self.watchers.0.retain(|key, w| {
            if w.tx.is_closed() {
                return false;
            }
            let Some(slot) = entities.get(key).filter(|s| s.offset >= 0) else {
                return true;
            };
            let moved = slot.offset != w.offset;
            // Viewers expire as the watermark passes their timeout, without an event.
            let expiry = E::KIND == ShardKind::Channels && clock.watermark != w.watermark;
            if !moved && !expiry {
                return true;
            }
            let data = serde_json::to_value(slot.state.view(key, clock)).unwrap_or_default();
            w.watermark = clock.watermark;
            if !moved && w.tx.borrow().data.as_ref() == Some(&data) {
                return true;
            }
            w.offset = slot.offset;
            w.tx.send_replace(EntityState {
                data: Some(data),
                offset: slot.offset,
                partition,
                partition_offset: next_offset,
            });
            true
        });
    }
}
