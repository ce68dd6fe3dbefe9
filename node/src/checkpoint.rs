//! Checkpoints as data: a snapshot of a shard's dirty entities plus the progress that
//! becomes durable once all of them are written.
//!
//! Ordering is the whole point: every entity row of a snapshot is written first, the
//! shard's resume offset last. A crash in between leaves the old resume offset, and the
//! replay skips, per entity, records at or below the entity's stored offset. Rows carry
//! `USING TIMESTAMP` from their offset, so a stale writer never wins (see `storage`).
//!
//! Not for: deciding when to checkpoint (the shard's tick does that).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::entity;
use crate::metrics::Metrics;
use crate::shard::ShardKind;
use crate::storage::{ChannelSummary, EntityRow, Progress, Store};

/// Rows written concurrently by one checkpoint.
const WRITE_CONCURRENCY: usize = 128;

/// One entity in a snapshot.
pub struct SnapshotEntity {
    pub key: String,
    pub row: EntityRow,
    /// Channels only: the columns top-N views read without loading the state.
    pub summary: Option<ChannelSummary>,
}

/// Everything one checkpoint writes.
pub struct Snapshot {
    pub kind: ShardKind,
    pub topic: String,
    pub partition: i32,
    pub owner: String,
    pub entities: Vec<SnapshotEntity>,
    /// Written after all entities: every record below `resume_offset` is then durable.
    pub progress: Progress,
}

pub fn entity_row<T: Serialize + Clone>(
    key: String,
    state: &T,
    offset: i64,
    summary: Option<ChannelSummary>,
) -> SnapshotEntity {
    SnapshotEntity {
        key,
        row: EntityRow {
            state: entity::encode(state),
            applied_offset: offset,
        },
        summary,
    }
}

/// Writes a snapshot: entities (concurrently), then the progress row.
pub async fn write(store: &Store, snap: &Snapshot, metrics: &Metrics) -> anyhow::Result<()> {
    let started = Instant::now();
    let writes: Vec<_> = snap
        .entities
        .iter()
        .map(|e| write_entity(store, snap, e))
        .collect();
    futures::stream::iter(writes)
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    if snap.progress.resume_offset > 0 {
        store
            .write_progress(&snap.topic, snap.partition, snap.progress, &snap.owner)
            .await?;
    }
    metrics.record_checkpoint(snap.entities.len() as u64, started.elapsed());
    Ok(())
}

async fn write_entity(store: &Store, snap: &Snapshot, e: &SnapshotEntity) -> anyhow::Result<()> {
    match (&snap.kind, &e.summary) {
        (ShardKind::Channels, Some(summary)) => {
            store.write_channel(snap.partition, summary, &e.row).await
        }
        _ => store.write_player(&e.key, &e.row).await,
    }
}
