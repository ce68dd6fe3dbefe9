//! Cassandra / ScyllaDB: the statements Tally runs, the migrations that create the tables,
//! and the two write paths that make checkpoints exactly once.
//!
//! - this module: connecting with retry (with a username and password, over TLS, when
//!   configured), and every statement ([`Store`]). Entity and
//!   progress rows are written `USING TIMESTAMP` derived from the Kafka offset they reflect
//!   ([`write_timestamp`]), so Cassandra's last-write-wins keeps the newest state whoever
//!   writes last.
//! - [`schema`]: versioned migrations from `cassandra-schema/`, applied at start.
//! - [`channel_log`]: channel state stored as a base and deltas.
//! - [`checkpoint`]: what one checkpoint writes, and in which order.
//!
//! Not for: deciding when to checkpoint (the shard's tick does that).

pub mod channel_log;
pub mod checkpoint;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::history::cache::StoredRow;
use crate::history::{BucketRow, Scope, Step};
use crate::retry::Backoff;

use crate::config::CassandraConfig;

/// Buckets of the `player_state` table. Part of the stored format: changing it orphans rows.
pub const PLAYER_BUCKETS: i32 = 512;

/// Rows per page of a bucket range read: a week of minute buckets (10,080) and more.
const RANGE_PAGE_ROWS: i32 = 12_000;

/// The `player_state` bucket of a player: murmur2 of the id, like Kafka's partitioner, so
/// it is stable across processes and versions.
pub fn player_bucket(id: &str) -> i32 {
    (crate::partitioner::murmur2(id.as_bytes()) & 0x7fff_ffff) % PLAYER_BUCKETS
}

/// The write timestamp of a row reflecting everything up to `offset` (inclusive).
/// Offsets start at 0 and Cassandra timestamps must be positive, hence the +1.
pub fn write_timestamp(offset: i64) -> i64 {
    offset + 1
}

/// The write timestamp of a history bucket covering `covered`: the bucket's start in
/// microseconds (never below 0) plus the offset's [`write_timestamp`]. For one row the start
/// is fixed, so the highest offset wins as for entities; across rows the timestamps follow
/// event time, which is what time-window compaction groups by.
pub fn bucket_timestamp(start_ms: i64, covered: i64) -> i64 {
    start_ms
        .max(0)
        .saturating_mul(1000)
        .saturating_add(write_timestamp(covered))
}

/// The values of a bucket insert: scope, id, start, state, covered, TTL and the write
/// timestamp (see [`bucket_timestamp`]).
fn bucket_values(row: &BucketRow, ttl_secs: i32) -> (i8, &str, i64, &[u8], i64, i32, i64) {
    (
        row.scope as i8,
        row.id.as_str(),
        row.start,
        &row.state,
        row.covered,
        ttl_secs,
        bucket_timestamp(row.start, row.covered),
    )
}

/// Prepares `cql` once per history step, `{table}` standing for the step's table.
async fn prepare_steps<F, Fut>(prepare: &F, cql: &str) -> anyhow::Result<[PreparedStatement; 3]>
where
    F: Fn(&str) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<PreparedStatement>>,
{
    let [m, h, d] = Step::ALL.map(|step| cql.replace("{table}", step.table()));
    Ok([prepare(&m).await?, prepare(&h).await?, prepare(&d).await?])
}

/// A session, logged in as `cassandra.username` and over TLS when configured.
async fn open_session(cfg: &CassandraConfig) -> anyhow::Result<Arc<Session>> {
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .connection_timeout(Duration::from_secs(3));
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        builder = builder.user(user, password.expose());
    }
    if let Some(tls) = &cfg.tls {
        let tls = crate::tls::cassandra_client_config(tls)?;
        builder = builder.tls_context(Some(Arc::new(tls)));
    }
    let session = builder
        .build()
        .await
        .with_context(|| format!("connect to cassandra at {}", cfg.contact_points.join(",")))?;
    Ok(Arc::new(session))
}

/// Opens a session, retrying with the crate's backoff until it succeeds or `give_up` has
/// passed (tests and tools, which must not wait forever).
pub async fn connect(cfg: &CassandraConfig, give_up: Duration) -> anyhow::Result<Arc<Session>> {
    let started = std::time::Instant::now();
    let mut backoff = Backoff::dependency();
    loop {
        match open_session(cfg).await {
            Ok(session) => return Ok(session),
            Err(e) if started.elapsed() >= give_up => return Err(e),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cassandra unreachable; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Opens a session, retrying until it succeeds; None only if `cancel` fires first (the
/// node is stopping before Cassandra was ever reached).
pub async fn connect_until(
    cfg: &CassandraConfig,
    cancel: &CancellationToken,
) -> Option<Arc<Session>> {
    crate::retry::until_ok("connect to cassandra", cancel, || open_session(cfg)).await
}

/// A stored entity row.
#[derive(Debug, Clone)]
pub struct EntityRow {
    pub state: Vec<u8>,
    pub applied_offset: i64,
}

/// Where a shard resumes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub resume_offset: i64,
    pub watermark_ms: i64,
}

impl From<Progress> for crate::history::cache::Durable {
    fn from(p: Progress) -> Self {
        crate::history::cache::Durable {
            watermark: p.watermark_ms,
            offset: p.resume_offset,
        }
    }
}

/// Summary columns of a channel row, enough for top-N views without loading the state.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSummary {
    pub id: String,
    pub concurrent: i32,
    pub peak: i32,
    pub follows: i64,
}

/// Prepared statements over one keyspace.
pub struct Store {
    pub session: Arc<Session>,
    insert_player: PreparedStatement,
    select_player: PreparedStatement,
    select_legacy_player: PreparedStatement,
    /// Whether the pre-bucket `players` table holds rows (checked once, at start).
    legacy_players: bool,
    insert_channel: PreparedStatement,
    select_channel: PreparedStatement,
    select_channel_summaries: PreparedStatement,
    insert_progress: PreparedStatement,
    select_progress: PreparedStatement,
    insert_dedupe: PreparedStatement,
    select_dedupe: PreparedStatement,
    insert_log_entry: PreparedStatement,
    insert_log_entry_head: PreparedStatement,
    select_log_head: PreparedStatement,
    select_log_entries: PreparedStatement,
    delete_log_gen: PreparedStatement,
    /// History buckets, indexed by `Step::index`.
    insert_bucket: [PreparedStatement; 3],
    select_bucket: [PreparedStatement; 3],
    select_bucket_range: [PreparedStatement; 3],
}

/// One entry of a channel's log (see `channel_log`).
#[derive(Debug, Clone)]
pub struct LogRow {
    pub gen: i64,
    pub seq: i32,
    pub entry: Vec<u8>,
    /// Set on the last entry of a write: the head to publish with it.
    pub head: Option<Vec<u8>>,
    /// The offset the write reflects; the row's write timestamp derives from it.
    pub offset: i64,
}

impl Store {
    // Every statement, `{ks}` standing for the keyspace. Rows that reflect a Kafka offset
    // are written `USING TIMESTAMP` from it (see `write_timestamp`).
    const INSERT_PLAYER: &'static str =
        "INSERT INTO {ks}.player_state (bucket, id, state, applied_offset) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    const SELECT_PLAYER: &'static str =
        "SELECT state, applied_offset FROM {ks}.player_state WHERE bucket = ? AND id = ?";
    const SELECT_LEGACY_PLAYER: &'static str =
        "SELECT state, applied_offset FROM {ks}.players WHERE id = ?";
    const INSERT_CHANNEL: &'static str =
        "INSERT INTO {ks}.channels (partition, id, applied_offset, concurrent, peak, follows) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    const SELECT_CHANNEL: &'static str =
        "SELECT state, applied_offset FROM {ks}.channels WHERE partition = ? AND id = ?";
    const SELECT_CHANNEL_SUMMARIES: &'static str =
        "SELECT id, concurrent, peak, follows FROM {ks}.channels WHERE partition = ?";
    const INSERT_PROGRESS: &'static str =
        "INSERT INTO {ks}.shard_progress (topic, partition, resume_offset, watermark_ms, owner, updated_at) VALUES (?, ?, ?, ?, ?, toTimestamp(now())) USING TIMESTAMP ?";
    const SELECT_PROGRESS: &'static str =
        "SELECT resume_offset, watermark_ms FROM {ks}.shard_progress WHERE topic = ? AND partition = ?";
    const INSERT_DEDUPE: &'static str =
        "INSERT INTO {ks}.shard_dedupe (topic, partition, dedupe_from) VALUES (?, ?, ?) USING TIMESTAMP ?";
    const SELECT_DEDUPE: &'static str =
        "SELECT dedupe_from FROM {ks}.shard_dedupe WHERE topic = ? AND partition = ?";
    const INSERT_LOG_ENTRY: &'static str =
        "INSERT INTO {ks}.channel_log (partition, id, gen, seq, entry) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    const INSERT_LOG_ENTRY_HEAD: &'static str =
        "INSERT INTO {ks}.channel_log (partition, id, gen, seq, entry, head) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    const SELECT_LOG_HEAD: &'static str =
        "SELECT head FROM {ks}.channel_log WHERE partition = ? AND id = ? LIMIT 1";
    const SELECT_LOG_ENTRIES: &'static str =
        "SELECT seq, entry FROM {ks}.channel_log WHERE partition = ? AND id = ? AND gen = ? AND seq <= ?";
    const INSERT_BUCKET: &'static str =
        "INSERT INTO {ks}.{table} (scope, id, start, state, covered) VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?";
    const SELECT_BUCKET: &'static str =
        "SELECT state, covered FROM {ks}.{table} WHERE scope = ? AND id = ? AND start = ?";
    const SELECT_BUCKET_RANGE: &'static str =
        "SELECT start, state, covered FROM {ks}.{table} WHERE scope = ? AND id = ? AND start >= ? AND start < ?";
    const DELETE_LOG_GEN: &'static str =
        "DELETE FROM {ks}.channel_log USING TIMESTAMP ? WHERE partition = ? AND id = ? AND gen = ?";

    /// Prepares every statement against `keyspace` (its tables must exist: see `schema`).
    pub async fn prepare(session: Arc<Session>, keyspace: &str) -> anyhow::Result<Store> {
        let prepare = |cql: &str| {
            let (session, cql) = (session.clone(), cql.replace("{ks}", keyspace));
            async move {
                session
                    .prepare(cql.clone())
                    .await
                    .with_context(|| format!("prepare {cql}"))
            }
        };
        let legacy_players = session
            .query_unpaged(format!("SELECT id FROM {keyspace}.players LIMIT 1"), ())
            .await
            .context("look for rows in the players table")?
            .into_rows_result()
            .context("look for rows in the players table")?
            .rows_num()
            > 0;
        Ok(Store {
            insert_player: prepare(Self::INSERT_PLAYER).await?,
            select_player: prepare(Self::SELECT_PLAYER).await?,
            select_legacy_player: prepare(Self::SELECT_LEGACY_PLAYER).await?,
            insert_channel: prepare(Self::INSERT_CHANNEL).await?,
            select_channel: prepare(Self::SELECT_CHANNEL).await?,
            select_channel_summaries: prepare(Self::SELECT_CHANNEL_SUMMARIES).await?,
            insert_progress: prepare(Self::INSERT_PROGRESS).await?,
            select_progress: prepare(Self::SELECT_PROGRESS).await?,
            insert_dedupe: prepare(Self::INSERT_DEDUPE).await?,
            select_dedupe: prepare(Self::SELECT_DEDUPE).await?,
            insert_log_entry: prepare(Self::INSERT_LOG_ENTRY).await?,
            insert_log_entry_head: prepare(Self::INSERT_LOG_ENTRY_HEAD).await?,
            select_log_head: prepare(Self::SELECT_LOG_HEAD).await?,
            select_log_entries: prepare(Self::SELECT_LOG_ENTRIES).await?,
            delete_log_gen: prepare(Self::DELETE_LOG_GEN).await?,
            insert_bucket: prepare_steps(&prepare, Self::INSERT_BUCKET).await?,
            select_bucket: prepare_steps(&prepare, Self::SELECT_BUCKET).await?,
            select_bucket_range: prepare_steps(&prepare, Self::SELECT_BUCKET_RANGE)
                .await?
                .map(|mut s| {
                    // A week of minutes in one page: one round trip, not three.
                    s.set_page_size(RANGE_PAGE_ROWS);
                    s
                }),
            legacy_players,
            session,
        })
    }

    /// Writes player rows, given with their buckets (see [`player_bucket`]), in one unlogged
    /// batch: one request, and one Cassandra mutation per bucket in it; each row keeps its
    /// own offset's timestamp. Keep batches to tens of kilobytes.
    pub async fn write_players(&self, rows: &[(i32, &str, &EntityRow)]) -> anyhow::Result<()> {
        debug_assert!(rows
            .iter()
            .all(|(bucket, id, _)| player_bucket(id) == *bucket));
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in rows {
            batch.append_statement(self.insert_player.clone());
        }
        let values: Vec<(i32, &str, &Vec<u8>, i64, i64)> = rows
            .iter()
            .map(|(bucket, id, row)| {
                (
                    *bucket,
                    *id,
                    &row.state,
                    row.applied_offset,
                    write_timestamp(row.applied_offset),
                )
            })
            .collect();
        self.session
            .batch(&batch, values)
            .await
            .with_context(|| format!("write {} players", rows.len()))?;
        Ok(())
    }

    /// The stored row of a player; rows written before player buckets existed are found
    /// in the older `players` table.
    pub async fn read_player(&self, id: &str) -> anyhow::Result<Option<EntityRow>> {
        let row = self
            .read_player_with(&self.select_player, (player_bucket(id), id))
            .await?;
        if row.is_some() || !self.legacy_players {
            return Ok(row);
        }
        self.read_player_with(&self.select_legacy_player, (id,))
            .await
    }

    async fn read_player_with(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> anyhow::Result<Option<EntityRow>> {
        let row: Option<(Vec<u8>, i64)> = self
            .first_row(statement, values, || "player row".to_string())
            .await?;
        Ok(row.map(|(state, applied_offset)| EntityRow {
            state,
            applied_offset,
        }))
    }

    /// Writes the summary columns of a channel (top-N views of channels not resident).
    pub async fn write_channel_summary(
        &self,
        partition: i32,
        summary: &ChannelSummary,
        offset: i64,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.insert_channel,
                (
                    partition,
                    &summary.id,
                    offset,
                    summary.concurrent,
                    summary.peak,
                    summary.follows,
                    write_timestamp(offset),
                ),
            )
            .await
            .with_context(|| format!("write channel summary {}", summary.id))?;
        Ok(())
    }

    /// Writes one entry of a channel's log, with the head when it carries one.
    pub async fn write_log_row(
        &self,
        partition: i32,
        id: &str,
        row: &LogRow,
    ) -> anyhow::Result<()> {
        let ts = write_timestamp(row.offset);
        let result = match &row.head {
            Some(head) => {
                self.session
                    .execute_unpaged(
                        &self.insert_log_entry_head,
                        (partition, id, row.gen, row.seq, &row.entry, head, ts),
                    )
                    .await
            }
            None => {
                self.session
                    .execute_unpaged(
                        &self.insert_log_entry,
                        (partition, id, row.gen, row.seq, &row.entry, ts),
                    )
                    .await
            }
        };
        result.with_context(|| format!("write channel {id} log entry {}/{}", row.gen, row.seq))?;
        Ok(())
    }

    /// The head of a channel's log, if it has one.
    pub async fn read_log_head(&self, partition: i32, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let what = || format!("channel {id} log head");
        let row: Option<(Option<Vec<u8>>,)> = self
            .first_row(&self.select_log_head, (partition, id), what)
            .await?;
        Ok(row.and_then(|(head,)| head))
    }

    /// Entries `0..=last_seq` of one generation of a channel's log, in order.
    pub async fn read_log_entries(
        &self,
        partition: i32,
        id: &str,
        gen: i64,
        last_seq: i32,
    ) -> anyhow::Result<Vec<(i32, Vec<u8>)>> {
        self.session
            .execute_iter(
                self.select_log_entries.clone(),
                (partition, id, gen, last_seq),
            )
            .await
            .with_context(|| format!("read channel {id} log {gen}"))?
            .rows_stream::<(i32, Vec<u8>)>()
            .context("decode channel log entries")?
            .try_collect::<Vec<_>>()
            .await
            .with_context(|| format!("read channel {id} log {gen}"))
    }

    /// Deletes the entries of a generation written at or below `offset`.
    pub async fn delete_log_gen(
        &self,
        partition: i32,
        id: &str,
        gen: i64,
        offset: i64,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.delete_log_gen,
                (write_timestamp(offset), partition, id, gen),
            )
            .await
            .with_context(|| format!("delete channel {id} log {gen}"))?;
        Ok(())
    }

    /// The state blob of a channel row written before channel logs existed.
    pub async fn read_legacy_channel(
        &self,
        partition: i32,
        id: &str,
    ) -> anyhow::Result<Option<EntityRow>> {
        let what = || format!("channel row {id}");
        let row: Option<(Option<Vec<u8>>, Option<i64>)> = self
            .first_row(&self.select_channel, (partition, id), what)
            .await?;
        Ok(match row {
            Some((Some(state), Some(applied_offset))) => Some(EntityRow {
                state,
                applied_offset,
            }),
            _ => None,
        })
    }

    pub async fn channel_summaries(&self, partition: i32) -> anyhow::Result<Vec<ChannelSummary>> {
        let rows = self
            .session
            .execute_iter(self.select_channel_summaries.clone(), (partition,))
            .await
            .with_context(|| format!("read channel summaries of partition {partition}"))?
            .rows_stream::<(String, Option<i32>, Option<i32>, Option<i64>)>()
            .context("decode channel summaries")?
            .try_collect::<Vec<_>>()
            .await
            .with_context(|| format!("read channel summaries of partition {partition}"))?;
        Ok(rows
            .into_iter()
            .map(|(id, concurrent, peak, follows)| ChannelSummary {
                id,
                concurrent: concurrent.unwrap_or(0),
                peak: peak.unwrap_or(0),
                follows: follows.unwrap_or(0),
            })
            .collect())
    }

    /// Records that everything below `progress.resume_offset` is durable.
    pub async fn write_progress(
        &self,
        topic: &str,
        partition: i32,
        progress: Progress,
        owner: &str,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.insert_progress,
                (
                    topic,
                    partition,
                    progress.resume_offset,
                    progress.watermark_ms,
                    owner,
                    // resume_offset r reflects records up to r - 1.
                    write_timestamp(progress.resume_offset - 1),
                ),
            )
            .await
            .with_context(|| format!("write progress of {topic}/{partition}"))?;
        Ok(())
    }

    pub async fn read_progress(
        &self,
        topic: &str,
        partition: i32,
    ) -> anyhow::Result<Option<Progress>> {
        let what = || format!("progress of {topic}/{partition}");
        let row: Option<(i64, i64)> = self
            .first_row(&self.select_progress, (topic, partition), what)
            .await?;
        Ok(row.map(|(resume_offset, watermark_ms)| Progress {
            resume_offset,
            watermark_ms,
        }))
    }

    /// Records where a new owner starts reading to rebuild the dedupe window; written
    /// after [`Store::write_progress`] with the same write timestamp.
    pub async fn write_dedupe_from(
        &self,
        topic: &str,
        partition: i32,
        progress: Progress,
        dedupe_from: i64,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.insert_dedupe,
                (
                    topic,
                    partition,
                    dedupe_from,
                    write_timestamp(progress.resume_offset - 1),
                ),
            )
            .await
            .with_context(|| format!("write dedupe mark of {topic}/{partition}"))?;
        Ok(())
    }

    /// The offset to start reading at to rebuild the dedupe window (None: none recorded).
    pub async fn read_dedupe_from(
        &self,
        topic: &str,
        partition: i32,
    ) -> anyhow::Result<Option<i64>> {
        let what = || format!("dedupe mark of {topic}/{partition}");
        let row: Option<(Option<i64>,)> = self
            .first_row(&self.select_dedupe, (topic, partition), what)
            .await?;
        Ok(row.and_then(|(from,)| from))
    }

    /// Writes one history bucket, kept for `ttl_secs` (see [`bucket_timestamp`]).
    pub async fn write_bucket(&self, row: &BucketRow, ttl_secs: i32) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.insert_bucket[row.step.index()],
                bucket_values(row, ttl_secs),
            )
            .await
            .with_context(|| {
                format!(
                    "write {} bucket {} of {:?} {}",
                    row.step.label(),
                    row.start,
                    row.scope,
                    row.id
                )
            })?;
        Ok(())
    }

    /// Writes history buckets in one unlogged batch (one request; on each replica, one
    /// mutation per row), each row kept for its step's TTL (`ttl_secs` by `Step::index`).
    /// Keep batches to tens of kilobytes.
    pub async fn write_buckets(
        &self,
        rows: &[BucketRow],
        ttl_secs: [i32; 3],
    ) -> anyhow::Result<()> {
        if let [row] = rows {
            return self.write_bucket(row, ttl_secs[row.step.index()]).await;
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for row in rows {
            batch.append_statement(self.insert_bucket[row.step.index()].clone());
        }
        let values: Vec<_> = rows
            .iter()
            .map(|row| bucket_values(row, ttl_secs[row.step.index()]))
            .collect();
        self.session
            .batch(&batch, values)
            .await
            .with_context(|| format!("write {} history buckets", rows.len()))?;
        Ok(())
    }

    /// One stored bucket: its state and covered offset.
    pub async fn read_bucket(
        &self,
        scope: Scope,
        id: &str,
        step: Step,
        start: i64,
    ) -> anyhow::Result<Option<(Vec<u8>, i64)>> {
        self.first_row(
            &self.select_bucket[step.index()],
            (scope as i8, id, start),
            || format!("{} bucket {start} of {scope:?} {id}", step.label()),
        )
        .await
    }

    /// The stored buckets of `(scope, id)` with `from <= start < to`, oldest first: start,
    /// covered offset and state.
    pub async fn read_bucket_range(
        &self,
        scope: Scope,
        id: &str,
        step: Step,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<StoredRow>> {
        let what = || format!("{} buckets of {scope:?} {id}", step.label());
        self.session
            .execute_iter(
                self.select_bucket_range[step.index()].clone(),
                (scope as i8, id, from, to),
            )
            .await
            .with_context(what)?
            .rows_stream::<(i64, Vec<u8>, i64)>()
            .with_context(what)?
            .map_ok(|(start, state, covered)| (start, covered, state))
            .try_collect()
            .await
            .with_context(what)
    }

    /// The first row `stmt` answers for `values`, if any; errors name `what` was read.
    async fn first_row<R>(
        &self,
        stmt: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        what: impl Fn() -> String,
    ) -> anyhow::Result<Option<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .with_context(|| format!("read {}", what()))?
            .into_rows_result()
            .with_context(|| format!("read {}", what()))?
            .maybe_first_row::<R>()
            .with_context(|| format!("decode {}", what()))
    }
}
