//! Entities watched for pushed updates: the shard publishes each one's latest state to a
//! latest-value channel, at most once per push interval, and never waits for a reader.
//!
//! While anything is watched, applying a record costs one lookup of its key among the
//! watched (nothing while nothing is). After a batch, a watched entity it changed is
//! published at once if it was not within the push interval; else a push tick publishes
//! it once the interval has passed, so updates are coalesced to one per interval. The
//! tick runs ten times per interval (every 5 ms at least) and compares
//! every watched entity's applied offset with the one it last published (and, for a
//! channel, the watermark, since viewers expire without events) and renders only those
//! that changed. A slow reader only ever sees a newer state; the shard never blocks on it.
//! The channel closes when the shard stops (ownership moved), which tells the relay to
//! look for the new owner.
//!
//! Not for: relaying to clients or other nodes (see `push`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use compact_str::CompactString;
use tokio::sync::watch;

use super::{EventClock, Hosted, QueryError, ShardState};
use crate::kind::ShardKind;
use crate::resident::Slot;

/// The state of one entity as its owner's shard publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityState {
    /// The view as JSON text, rendered once here for every relay and client (None: the
    /// entity has seen no event).
    pub data: Option<Arc<str>>,
    /// Offset of the last record applied to the entity (-1: none).
    pub offset: i64,
    pub partition: i32,
    /// The next offset the shard applies.
    pub partition_offset: i64,
    /// When the shard published it (None: relayed from another node).
    pub published: Option<Instant>,
}

/// What a watcher receives: the latest state, replaced, never queued.
pub type StateFeed = watch::Receiver<EntityState>;

/// One watched entity.
struct Watched {
    tx: watch::Sender<EntityState>,
    /// The offset and the watermark its last published state was rendered at.
    offset: i64,
    watermark: i64,
    /// When it was last published.
    sent_at: Instant,
}

/// The watched entities of a shard, and those changed since the last batch.
#[derive(Default)]
pub struct Watchers {
    map: HashMap<CompactString, Watched>,
    changed: Vec<CompactString>,
}

impl Watchers {
    /// Notes that `key` changed, if it is watched (a lookup per applied record while
    /// anything is watched; nothing otherwise).
    pub fn note(&mut self, key: &str) {
        if !self.map.is_empty() && self.map.contains_key(key) {
            self.changed.push(key.into());
        }
    }
}

impl<E: Hosted> ShardState<E> {
    /// Starts watching `id` (or joins its watch): the feed holds its current state at once.
    pub(super) async fn watch(&mut self, id: &str) -> Result<StateFeed, QueryError> {
        if let Some(w) = self.watchers.map.get(id).filter(|w| !w.tx.is_closed()) {
            return Ok(w.tx.subscribe());
        }
        let current = self.query(id).await?;
        let state = match current {
            Some((view, fresh)) => EntityState {
                data: Some(render(&view)),
                offset: fresh.entity_offset,
                partition: self.args.partition,
                partition_offset: self.next_offset,
                published: Some(Instant::now()),
            },
            None => EntityState {
                data: None,
                offset: -1,
                partition: self.args.partition,
                partition_offset: self.next_offset,
                published: Some(Instant::now()),
            },
        };
        let offset = state.offset;
        let (tx, rx) = watch::channel(state);
        self.watchers.map.insert(
            id.into(),
            Watched {
                tx,
                offset,
                watermark: self.watermark,
                sent_at: Instant::now(),
            },
        );
        Ok(rx)
    }

    /// After a batch: publishes at once each watched entity it changed that was not
    /// published within the push interval, so the first change after a quiet spell goes
    /// out without waiting for the tick; later ones wait for it (coalesced).
    pub(super) fn push_changed(&mut self) {
        if self.watchers.changed.is_empty() {
            return;
        }
        let clock = self.clock();
        let now = Instant::now();
        let interval = self.args.push_interval;
        let (partition, next_offset) = (self.args.partition, self.next_offset);
        let mut changed = std::mem::take(&mut self.watchers.changed);
        changed.sort_unstable();
        changed.dedup();
        for key in changed.drain(..) {
            let Some(w) = self.watchers.map.get_mut(&key) else {
                continue;
            };
            if now.duration_since(w.sent_at) < interval {
                continue; // the tick publishes it, coalesced
            }
            if let Some(slot) = self.entities.get(&key).filter(|s| s.offset >= 0) {
                publish::<E>(w, &key, slot, clock, partition, next_offset, now);
            }
        }
        self.watchers.changed = changed;
    }

    /// Publishes the watched entities that changed since their last state; forgets those
    /// nobody reads any more.
    pub(super) fn push_tick(&mut self) {
        if self.watchers.map.is_empty() {
            return;
        }
        let clock = self.clock();
        let now = Instant::now();
        let interval = self.args.push_interval;
        let (partition, next_offset) = (self.args.partition, self.next_offset);
        let entities = &self.entities;
        self.watchers.map.retain(|key, w| {
            if w.tx.is_closed() {
                return false;
            }
            if now.duration_since(w.sent_at) < interval {
                return true; // published within the interval: the next tick looks again
            }
            if let Some(slot) = entities.get(key).filter(|s| s.offset >= 0) {
                publish::<E>(w, key, slot, clock, partition, next_offset, now);
            }
            true
        });
    }
}

/// Publishes `slot`'s state to `w` if it changed since `w` last published: its offset
/// moved, or (a channel) its viewers expired as the watermark moved.
fn publish<E: Hosted>(
    w: &mut Watched,
    key: &str,
    slot: &Slot<E>,
    clock: EventClock,
    partition: i32,
    next_offset: i64,
    now: Instant,
) {
    let moved = slot.offset != w.offset;
    let expiry = E::KIND == ShardKind::Channels && clock.watermark != w.watermark;
    if !moved && !expiry {
        return;
    }
    let data = render(&slot.state.view(key, clock));
    w.watermark = clock.watermark;
    if !moved && w.tx.borrow().data.as_deref() == Some(&*data) {
        return;
    }
    w.offset = slot.offset;
    w.sent_at = now;
    w.tx.send_replace(EntityState {
        data: Some(data),
        offset: slot.offset,
        partition,
        partition_offset: next_offset,
        published: Some(now),
    });
}

/// A view's JSON text (views are plain structs: serializing them cannot fail).
fn render(view: &impl serde::Serialize) -> Arc<str> {
    serde_json::to_string(view).unwrap_or_default().into()
}
