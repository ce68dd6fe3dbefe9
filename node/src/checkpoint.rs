//! Checkpoints as data: a snapshot of a shard's dirty entities plus the progress that
//! becomes durable once all of them are written.
//!
//! Ordering is the whole point: every entity row of a snapshot is written first, the
//! shard's resume offset last. Channels write a log entry (see `channel_log`). A crash in between leaves the old resume offset, and the
//! replay skips, per entity, records at or below the entity's stored offset. Rows carry
//! `USING TIMESTAMP` from their offset, so a stale writer never wins (see `storage`).
//!
//! Not for: deciding when to checkpoint (the shard's tick does that).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::channel_log::ChannelWrite;
use crate::entity;
use crate::metrics::Metrics;
use crate::storage::{ChannelSummary, EntityRow, Progress, Store};

/// Rows written concurrently by one checkpoint.
const WRITE_CONCURRENCY: usize = 128;

/// One entity in a snapshot.
pub enum SnapshotEntity {
    Player {
        key: String,
        row: EntityRow,
    },
    Channel {
        key: String,
        /// The columns top-N views read without loading the channel.
        summary: ChannelSummary,
        write: ChannelWrite,
        offset: i64,
    },
}

impl SnapshotEntity {
    pub fn key(&self) -> &str {
        match self {
            SnapshotEntity::Player { key, .. } | SnapshotEntity::Channel { key, .. } => key,
        }
    }
}

/// Everything one checkpoint writes.
pub struct Snapshot {
    pub topic: String,
    pub partition: i32,
    pub owner: String,
    pub entities: Vec<SnapshotEntity>,
    /// Written after all entities: every record below `resume_offset` is then durable.
    pub progress: Progress,
}

pub fn player_row<T: Serialize + Clone>(key: String, state: &T, offset: i64) -> SnapshotEntity {
    SnapshotEntity::Player {
        key,
        row: EntityRow {
            state: entity::encode(state),
            applied_offset: offset,
        },
    }
}

/// Writes a snapshot: entities (concurrently), then the progress row.
pub async fn write(store: &Store, snap: &Snapshot, metrics: &Metrics) -> anyhow::Result<()> {
    let started = Instant::now();
    let writes: Vec<_> = snap
        .entities
        .iter()
        .map(|e| write_entity(store, snap.partition, e))
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

async fn write_entity(store: &Store, partition: i32, e: &SnapshotEntity) -> anyhow::Result<()> {
    match e {
        SnapshotEntity::Player { key, row } => store.write_player(key, row).await,
        SnapshotEntity::Channel {
            key,
            summary,
            write,
            offset,
        } => {
            // In order: the entry carrying the head goes last, so the head never names
            // an entry not yet written.
            for row in &write.rows {
                store.write_log_row(partition, key, row).await?;
            }
            for (gen, at) in &write.deletes {
                store.delete_log_gen(partition, key, *gen, *at).await?;
            }
            store
                .write_channel_summary(partition, summary, *offset)
                .await
        }
    }
}
