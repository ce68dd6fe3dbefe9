//! Checkpoints as data: a snapshot of a shard's dirty entities plus the progress that
//! becomes durable once all of them are written.
//!
//! Ordering is the whole point: every entity row of a snapshot is written first, the
//! shard's resume offset last. Channels write a log entry (see `channel_log`). A crash in
//! between leaves the old resume offset, and the replay skips, per entity, records at or
//! below the entity's stored offset. Rows carry `USING TIMESTAMP` from their offset, so a
//! stale writer never wins (see `store`).
//!
//! Not for: deciding when to checkpoint (the shard's tick does that).

use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;

use crate::entity;
use crate::history::BucketRow;
use crate::kind::ShardKind;
use crate::metrics::Metrics;
use crate::store::channel_log::ChannelWrite;
use crate::store::{player_bucket, ChannelSummary, EntityRow, Progress, Store};

/// Rows one checkpoint has in flight at most.
const ROWS_IN_FLIGHT: usize = 256;

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

    /// Bytes of encoded state it writes (keys, row data and log entries, without CQL).
    fn encoded_bytes(&self) -> usize {
        match self {
            SnapshotEntity::Player { key, row } => key.len() + row.state.len(),
            SnapshotEntity::Channel {
                key,
                summary,
                write,
                ..
            } => {
                let rows: usize = write
                    .rows
                    .iter()
                    .map(|r| r.entry.len() + r.head.as_ref().map_or(0, Vec::len))
                    .sum();
                key.len() + summary.id.len() + rows
            }
        }
    }
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
    /// Written after the progress: the offset a new owner starts reading at to rebuild the
    /// dedupe window (see `shard::dedupe`). Written last, so a crash in between leaves an
    /// older, smaller mark, which only makes the rebuild read more.
    pub dedupe_from: i64,
    /// History buckets, written before everything else: the partition's global buckets
    /// first, then the entities' (see `history`). Empty with history off.
    pub global_buckets: Vec<BucketRow>,
    pub buckets: Vec<BucketRow>,
    /// The TTL of each step's rows, seconds (by `Step::index`).
    pub bucket_ttl: [i32; 3],
}

pub fn player_row<T: Serialize + Clone>(key: String, state: &T, offset: i64) -> SnapshotEntity {
    SnapshotEntity::Player {
        key,
        row: EntityRow {
            // Exactly its size: a catch-up checkpoint holds a row for most entities.
            state: entity::encode_boxed(state).into_vec(),
            applied_offset: offset,
        },
    }
}

/// Player rows per batch, and the bytes a batch stops growing at.
const BATCH_ROWS: usize = 64;
const BATCH_BYTES: usize = 32 * 1024;

/// One request of a checkpoint.
enum Write<'a> {
    /// Player rows, in bucket order.
    Players(Vec<(i32, &'a str, &'a EntityRow)>),
    Channel {
        key: &'a str,
        summary: &'a ChannelSummary,
        write: &'a ChannelWrite,
        offset: i64,
    },
}

/// Writes a snapshot: entities (concurrently; players in batches), then the progress row.
pub async fn write(store: &Store, snap: &Snapshot, metrics: &Metrics) -> anyhow::Result<()> {
    let started = Instant::now();
    // Buckets before entities, global ones before the entities' buckets: a record an
    // entity row reflects is then reflected in its buckets, and a record an entity bucket
    // reflects in the partition's, so a replay that skips a record for one skips it for
    // what it feeds (the bucket credits are computed from the entity before the record).
    for rows in [&snap.global_buckets, &snap.buckets] {
        let mut running = FuturesUnordered::new();
        for batch in bucket_batches(rows) {
            if running.len() * BATCH_ROWS >= ROWS_IN_FLIGHT {
                if let Some(result) = running.next().await {
                    result?;
                }
            }
            running.push(store.write_buckets(batch, snap.bucket_ttl));
        }
        while let Some(result) = running.next().await {
            result?;
        }
    }
    if !snap.buckets.is_empty() || !snap.global_buckets.is_empty() {
        let rows = (snap.buckets.len() + snap.global_buckets.len()) as u64;
        metrics.add_bucket_writes(snap.kind, rows);
    }
    let mut pending = requests(&snap.entities).into_iter().peekable();
    // Futures are made as they are polled (a write future is kilobytes), and the rows in
    // flight are bounded: Cassandra falls into long GC pauses when flooded.
    let mut running = FuturesUnordered::new();
    let mut rows_in_flight = 0;
    loop {
        while let Some(w) =
            pending.next_if(|w| rows_in_flight == 0 || rows_in_flight + w.rows() <= ROWS_IN_FLIGHT)
        {
            rows_in_flight += w.rows();
            let rows = w.rows();
            running.push(async move { (rows, write_one(store, snap.partition, w).await) });
        }
        match running.next().await {
            Some((rows, result)) => {
                rows_in_flight -= rows;
                result?
            }
            None => break,
        }
    }
    if snap.progress.resume_offset > 0 {
        store
            .write_progress(&snap.topic, snap.partition, snap.progress, &snap.owner)
            .await?;
        store
            .write_dedupe_from(&snap.topic, snap.partition, snap.progress, snap.dedupe_from)
            .await?;
    }
    let bytes: usize = snap
        .entities
        .iter()
        .map(SnapshotEntity::encoded_bytes)
        .sum();
    let rows = snap.entities.len() as u64;
    metrics.record_checkpoint(snap.kind, rows, bytes as u64, started.elapsed());
    Ok(())
}

/// Bucket rows cut into batches of at most `BATCH_ROWS` rows and `BATCH_BYTES` (a row
/// larger than that alone), so no batch nears Cassandra's batch size limit (50 KiB).
fn bucket_batches(rows: &[BucketRow]) -> Vec<&[BucketRow]> {
    let mut out = Vec::new();
    let (mut from, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size = row.id.len() + row.state.len();
        if i > from && (i - from >= BATCH_ROWS || bytes + size > BATCH_BYTES) {
            out.push(&rows[from..i]);
            (from, bytes) = (i, 0);
        }
        bytes += size;
    }
    if from < rows.len() {
        out.push(&rows[from..]);
    }
    out
}

impl Write<'_> {
    fn rows(&self) -> usize {
        match self {
            Write::Players(rows) => rows.len(),
            Write::Channel { write, .. } => write.rows.len() + 1,
        }
    }
}

/// Puts player rows in bucket order and cuts them into batches of at most `BATCH_ROWS`
/// rows or about `BATCH_BYTES`. Rows of a bucket are adjacent, so a batch holds few
/// buckets: after a bulk load, when a shard has hundreds of dirty players per bucket, most
/// batches are a single Cassandra mutation; in a light steady stream a batch still carries
/// up to `BATCH_ROWS` rows in one request.
fn requests(entities: &[SnapshotEntity]) -> Vec<Write<'_>> {
    let mut out = Vec::new();
    let mut players: Vec<(i32, &str, &EntityRow)> = Vec::new();
    for e in entities {
        match e {
            SnapshotEntity::Player { key, row } => players.push((player_bucket(key), key, row)),
            SnapshotEntity::Channel {
                key,
                summary,
                write,
                offset,
            } => out.push(Write::Channel {
                key,
                summary,
                write,
                offset: *offset,
            }),
        }
    }
    players.sort_unstable_by_key(|(bucket, _, _)| *bucket);
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (bucket, key, row) in players {
        bytes += key.len() + row.state.len();
        batch.push((bucket, key, row));
        if batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES {
            out.push(Write::Players(std::mem::take(&mut batch)));
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        out.push(Write::Players(batch));
    }
    out
}

async fn write_one(store: &Store, partition: i32, w: Write<'_>) -> anyhow::Result<()> {
    match w {
        Write::Players(rows) => store.write_players(&rows).await,
        Write::Channel {
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
                .write_channel_summary(partition, summary, offset)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_batches_stay_under_the_limits_and_keep_every_row_once() {
        let row = |bytes: usize| BucketRow {
            scope: crate::history::Scope::Player,
            id: "p".into(),
            step: crate::history::Step::Minute,
            start: 0,
            state: vec![0; bytes].into(),
            covered: 0,
        };
        let rows: Vec<BucketRow> =
            [vec![row(10); 130], vec![row(40_000)], vec![row(20_000); 3]].concat();
        let batches = bucket_batches(&rows);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), rows.len());
        for b in &batches {
            let bytes: usize = b.iter().map(|r| r.state.len() + r.id.len()).sum();
            assert!(b.len() <= BATCH_ROWS);
            assert!(
                b.len() == 1 || bytes <= BATCH_BYTES,
                "{} rows, {bytes} bytes",
                b.len()
            );
        }
        let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
        assert_eq!(
            sizes,
            [64, 64, 2, 1, 1, 1, 1],
            "two 20 KB rows exceed a batch"
        );
    }

    #[test]
    fn player_batches_are_small_and_in_bucket_order() {
        let batches_of = |players: u64| {
            let entities: Vec<SnapshotEntity> = (0..players)
                .map(|n| player_row(format!("player-{n}"), &vec![0u8; 40], n as i64))
                .collect();
            let writes = requests(&entities);
            let mut rows = 0;
            let mut buckets_per_batch = Vec::new();
            let mut last = -1;
            for w in &writes {
                let Write::Players(batch) = w else {
                    panic!("only players here")
                };
                assert!(!batch.is_empty() && batch.len() <= BATCH_ROWS);
                for (bucket, key, _) in batch {
                    assert_eq!(*bucket, player_bucket(key));
                    assert!(*bucket >= last, "rows in bucket order");
                    last = *bucket;
                }
                let mut b: Vec<i32> = batch.iter().map(|r| r.0).collect();
                b.dedup();
                buckets_per_batch.push(b.len());
                rows += batch.len();
            }
            assert_eq!(rows as u64, players);
            buckets_per_batch
        };
        // Dense (about 200 rows a bucket): a batch spans at most two buckets.
        assert!(batches_of(100_000).iter().all(|&b| b <= 2));
        // Sparse (about 2 rows a bucket): still full batches, not one request per bucket.
        let sparse = batches_of(1_000);
        assert_eq!(sparse.len(), 1_000usize.div_ceil(BATCH_ROWS));
    }
}
