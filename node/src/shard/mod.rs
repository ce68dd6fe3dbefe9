//! The shard actor: one ractor actor per owned partition, hosting that partition's players
//! or channels as virtual actors.
//!
//! A shard applies its partition's records in offset order to entities kept in a map
//! (single writer, one event at a time), activates an entity on its first event or query
//! (loading it from Cassandra when a row may exist), passivates idle ones after
//! checkpointing them, and checkpoints dirty entities on an interval (see
//! `store::checkpoint`). Per-entity actors were measured too heavy (about 6.7 KB each); a
//! map entry costs a few hundred bytes.
//!
//! The host is written once, generic over the kind of entity ([`Hosted`]):
//! - [`batch`]: record batches and their buffer pool;
//! - `apply`: activation and the offset-ordered apply;
//! - `checkpointing`: snapshots, their pace, passivation;
//! - [`query`]: freshness, stats and the per-shard top-N;
//! - [`crate::resident`] (beside the shard): the slab and index that hold resident entities;
//! - [`hosted`]: what each kind of entity supplies.
//!
//! Not for: talking to Kafka (see `source`) or deciding ownership.

mod apply;
pub mod batch;
mod checkpointing;
pub mod dedupe;
mod history;
pub mod hosted;
pub mod query;
mod watch;

use std::collections::{HashSet, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use compact_str::CompactString;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::OwnedSemaphorePermit;
use tracing::info;

use crate::config::ShardConfig;
use crate::dead_letter::DeadLetters;
use crate::dirty::DirtyQueue;
use crate::entity::{Channel, Player};
use crate::history::History;
use crate::kind::ShardKind;
use crate::metrics::{Metrics, ShardMetrics};
use crate::store::{Progress, Store};

pub use batch::{Record, RecordRef, Records, RecordsPool};
pub use hosted::{EventClock, Hosted, View};
pub use query::{sort_top, Freshness, ShardStats, TopBy, TopEntry};
pub use watch::{EntityState, StateFeed};

use crate::resident::Resident;
use apply::Deferred;
use dedupe::DedupeWindow;
use watch::Watchers;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The entity may be stored, and reading it failed.
    #[error("loading from cassandra failed: {0:#}")]
    Load(anyhow::Error),
}

/// Why a checkpoint did not complete; the shard retries on its next tick.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint of partition {partition} failed: {source:#}")]
pub struct CheckpointError {
    pub partition: i32,
    pub source: anyhow::Error,
}

/// The answer to a query: the entity's view and how fresh it is, or None when the entity
/// has seen no event.
pub type QueryReply = RpcReplyPort<Result<Option<(View, Freshness)>, QueryError>>;

/// Messages a shard handles.
pub enum ShardMsg {
    /// Records of this partition, in offset order. The permit returns to the poll loop
    /// when the batch is applied, bounding the records in flight.
    Records(Records, OwnedSemaphorePermit),
    /// Periodic: start a checkpoint if none is running, passivate idle entities.
    Tick,
    /// A checkpoint task finished; the keys are the entities it wrote.
    CheckpointDone(Result<Progress, CheckpointError>, Vec<String>),
    /// The view of one entity by id.
    Query(String, QueryReply),
    Top(TopBy, usize, RpcReplyPort<Vec<TopEntry>>),
    Stats(RpcReplyPort<ShardStats>),
    /// Watch one entity for pushed updates (see `watch`).
    Watch(String, RpcReplyPort<Result<StateFeed, QueryError>>),
    /// Periodic: publish the watched entities that changed.
    PushTick,
    /// Write everything, wait for it, reply with the durable progress (shutdown, handover).
    Flush(RpcReplyPort<Result<Progress, CheckpointError>>),
}

/// A point a shard may resume at: the start of a batch, with the watermark the shard had
/// before it, and where a new owner must read from to rebuild the dedupe window as it was
/// there. A replay from it applies and deduplicates every record as it first was.
#[derive(Debug, Clone, Copy)]
struct ResumeMark {
    progress: Progress,
    dedupe_from: i64,
}

/// What a shard is started with.
pub struct ShardArgs {
    pub kind: ShardKind,
    pub topic: String,
    pub partition: i32,
    pub store: Arc<Store>,
    pub cfg: ShardConfig,
    pub owner: String,
    /// Progress read from Cassandra before the shard starts (None: never checkpointed).
    pub progress: Option<Progress>,
    /// Where its partition is read from, the dedupe mark stored with that progress (None:
    /// from the resume offset).
    pub dedupe_from: Option<i64>,
    pub metrics: Arc<Metrics>,
    /// Where records that are not applied go (None: only counted, as in tests).
    pub dead_letters: Option<Arc<DeadLetters>>,
    /// How often watched entities that changed are published (`push.interval_ms`).
    pub push_interval: std::time::Duration,
    /// `[history]`: whether buckets are kept, and for how long.
    pub history: crate::config::HistoryConfig,
    /// The node's cache of stored buckets, which its checkpoints write through to (None:
    /// no cache, as in tests).
    pub history_cache: Option<Arc<crate::history::cache::HistoryCache>>,
}

/// Starts the shard of `args.kind` for `args.partition`.
pub async fn spawn(args: ShardArgs) -> Result<ActorRef<ShardMsg>, ractor::SpawnErr> {
    let actor = match args.kind {
        ShardKind::Players => Actor::spawn(None, Shard::<Player>::default(), args).await?,
        ShardKind::Channels => Actor::spawn(None, Shard::<Channel>::default(), args).await?,
    };
    Ok(actor.0)
}

/// The actor; its state is [`ShardState`].
pub struct Shard<E>(PhantomData<fn() -> E>);

impl<E> Default for Shard<E> {
    fn default() -> Self {
        Shard(PhantomData)
    }
}

/// A shard's state: the resident entities of one kind and the partition's progress.
pub struct ShardState<E: Hosted> {
    args: ShardArgs,
    entities: Resident<E>,
    /// What this kind keeps beside its entities (channels: log places, summaries).
    extra: E::Extra,
    /// Keys changed since they were last written, oldest first change first (see
    /// `Slot::dirty` and `crate::dirty`).
    dirty: DirtyQueue,
    /// Keys that may have a stored row not in memory: anything, if the partition was ever
    /// checkpointed before this shard started; else just what this shard passivated.
    passivated: HashSet<String>,
    stored_before_start: bool,
    /// Next offset to apply.
    next_offset: i64,
    /// Max event time applied in the partition (never beyond an arrival plus
    /// `shard.future_tolerance_secs`: later records are not applied).
    watermark: i64,
    /// Event ids seen within the dedupe window (see `dedupe`).
    dedupe: DedupeWindow,
    /// Progress known durable in Cassandra.
    durable: Progress,
    /// Where batches began since the durable progress, oldest first (the durable progress
    /// is the first): a checkpoint that leaves changes unwritten resumes at the last of
    /// these at or before the oldest of them (see `checkpointing`).
    resume_marks: VecDeque<ResumeMark>,
    checkpoint_running: bool,
    /// The dedupe mark the running checkpoint writes beside its progress.
    running_dedupe_from: i64,
    last_checkpoint: Option<Instant>,
    /// When idle entities were last looked for.
    last_passivation_scan: Instant,
    /// When a batch last arrived full (the partition has a backlog).
    last_full_batch: Option<Instant>,
    /// Replies waiting for a flush to finish.
    flush_waiters: Vec<RpcReplyPort<Result<Progress, CheckpointError>>>,
    /// The deferred-records buffer, kept between batches (emptied, and trimmed to
    /// `apply::SPARE_DEFERRED` after a bulk load).
    spare_deferred: Vec<Deferred>,
    started: Instant,
    /// This shard's own series (records applied, lag, last checkpoint, resident).
    series: ShardMetrics,
    /// Apply spans of traced records since the last checkpoint snapshot (at most
    /// `telemetry::MAX_LINKS`), for the checkpoint span's links.
    traced: Vec<opentelemetry::trace::SpanContext>,
    /// Entities watched for pushed updates.
    watchers: Watchers,
    /// Resident history buckets (see `history`).
    history: History<E::Bucket>,
    /// The partition's watermark when this shard started (see `Hosted::frontier`).
    start_watermark: i64,
    /// The event time of the record the apply loop paused before (see `sample_until`).
    pause_ts: i64,
}

impl<E: Hosted> ShardState<E> {
    fn now_secs(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    /// The shard's clock for when changes happened, milliseconds since it started.
    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How long a change of this kind may wait before it is written
    /// (`shard.flush_period_ms`). Channels are written at every checkpoint: their buckets
    /// take samples up to the partition's watermark, past the channel's own events, and a
    /// replay finds which may be stored from the watermark the shard started at, so that
    /// watermark must be the one they were written at.
    fn flush_period_ms(&self) -> u64 {
        if E::SAMPLES {
            0
        } else {
            self.args.cfg.flush_period_ms
        }
    }

    fn may_be_stored(&self, key: &str) -> bool {
        self.stored_before_start || self.passivated.contains(key)
    }

    fn clock(&self) -> EventClock {
        EventClock {
            watermark: self.watermark,
            timeout_ms: self.args.cfg.viewer_timeout_secs as i64 * 1000,
        }
    }
}

impl<E: Hosted> Actor for Shard<E> {
    type Msg = ShardMsg;
    type State = ShardState<E>;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ShardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let durable = args.progress.unwrap_or(Progress {
            resume_offset: 0,
            watermark_ms: 0,
        });
        let extra = E::prepare(&args.store, args.partition, args.progress.is_some()).await?;
        myself.send_interval(args.cfg.checkpoint_interval(), || ShardMsg::Tick);
        // Ten ticks per push interval: a change waits at most a tenth of it past its turn
        // (25 ms at the default 250). A tick with nothing due is a scan of the watched.
        let push_tick = (args.push_interval / 10)
            .max(std::time::Duration::from_millis(5))
            .min(args.push_interval);
        myself.send_interval(push_tick, || ShardMsg::PushTick);
        info!(topic = %args.topic, partition = args.partition, resume_offset = durable.resume_offset, "shard started");
        let mut state = ShardState {
            entities: Resident::default(),
            stored_before_start: args.progress.is_some(),
            passivated: E::stored_keys(&extra).into_iter().collect(),
            extra,
            dirty: DirtyQueue::default(),
            next_offset: durable.resume_offset,
            watermark: durable.watermark_ms,
            dedupe: DedupeWindow::new(args.cfg.dedupe_window_ms()),
            durable,
            resume_marks: VecDeque::from([ResumeMark {
                progress: durable,
                dedupe_from: args.dedupe_from.unwrap_or(durable.resume_offset),
            }]),
            checkpoint_running: false,
            running_dedupe_from: 0,
            last_checkpoint: None,
            last_passivation_scan: Instant::now(),
            last_full_batch: None,
            flush_waiters: Vec::new(),
            spare_deferred: Vec::new(),
            started: Instant::now(),
            series: args.metrics.shard(E::KIND, args.partition),
            traced: Vec::new(),
            watchers: Watchers::default(),
            history: History::new(args.history.enabled, durable.watermark_ms)
                .with_retention(crate::history::Step::ALL.map(|s| args.history.retention_secs(s))),
            start_watermark: durable.watermark_ms,
            pause_ts: 0,
            args,
        };
        if E::SAMPLES && state.history.enabled {
            // Channels with viewers are sampled at every point: they must be resident.
            let live: Vec<CompactString> = E::live_at_start(&state.extra)
                .into_iter()
                .map(CompactString::from)
                .collect();
            state.activate_stored(live.clone()).await?;
            state.note_live(&live);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Records(records, permit) => state.apply_batch(records, permit).await,
            ShardMsg::Tick => state.tick(&myself),
            ShardMsg::CheckpointDone(result, keys) => state.checkpoint_done(&myself, result, keys),
            ShardMsg::Query(id, reply) => _ = reply.send(state.query(&id).await),
            ShardMsg::Top(by, limit, reply) => _ = reply.send(E::top(state, by, limit).await),
            ShardMsg::Stats(reply) => _ = reply.send(state.stats()),
            ShardMsg::Watch(id, reply) => _ = reply.send(state.watch(&id).await),
            ShardMsg::PushTick => state.push_tick(),
            ShardMsg::Flush(reply) => state.flush(&myself, reply),
        }
        Ok(())
    }
}
