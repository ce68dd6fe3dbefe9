//! What a shard needs from the kind of entity it hosts: how to load one, what a checkpoint
//! writes for it, what passivation keeps of it, and how a query sees it.
//!
//! The shard's logic (offset-ordered apply, activation, checkpoints, passivation) is
//! written once over [`Hosted`]; players and channels are its two implementations. A new
//! kind of entity (time buckets, segments) is one more implementation here.
//!
//! Not for: state transitions (see `entity`) or the storage format (see `store`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use compact_str::CompactString;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entity::{self, Channel, ChannelCounters, ChannelView, Entity, Player, PlayerView};
use crate::event::{Event, EventBody};
use crate::history::bucket::{BucketFirsts, ChannelChange, PlayerChange, PlayerMarks};
use crate::history::{ChannelBucket, History, PlayerBucket, Scope};
use crate::kind::ShardKind;
use crate::shard::{ShardState, TopBy, TopEntry};
use crate::store::channel_log::{self, LogState};
use crate::store::checkpoint::{self, SnapshotEntity};
use crate::store::{ChannelSummary, EntityRow, Store};

/// The partition's event-time clock as an entity sees it: the watermark (max event time
/// applied so far) and the viewer timeout, both in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct EventClock {
    pub watermark: i64,
    pub timeout_ms: i64,
}

/// What a query answers: the entity's view.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum View {
    Player(PlayerView),
    Channel(ChannelView),
}

/// An entity kind a shard can host.
pub trait Hosted: Entity + Send + Sync + Sized + 'static {
    const KIND: ShardKind;
    /// What a load from Cassandra returns.
    type Stored: Send + 'static;
    /// Per-shard state only this kind needs, beside the resident entities.
    type Extra: Send + 'static;

    /// The per-shard state at start; `checkpointed` says whether the partition ever was.
    fn prepare(
        store: &Store,
        partition: i32,
        checkpointed: bool,
    ) -> impl Future<Output = anyhow::Result<Self::Extra>> + Send;

    /// Keys known at start to be stored and not resident.
    fn stored_keys(extra: &Self::Extra) -> Vec<String>;

    /// Reads one entity from Cassandra (None: never stored).
    fn load(
        store: Arc<Store>,
        partition: i32,
        key: CompactString,
    ) -> impl Future<Output = anyhow::Result<Option<Self::Stored>>> + Send;

    /// The resident state and applied offset (-1: none) of a loaded entity, or of a new
    /// one when nothing was stored.
    fn activate(
        extra: &mut Self::Extra,
        key: &str,
        stored: Option<Self::Stored>,
    ) -> anyhow::Result<(Self, i64)>;

    /// What a checkpoint writes for a dirty entity.
    fn snapshot(
        extra: &mut Self::Extra,
        key: &str,
        state: &mut Self,
        offset: i64,
        clock: EventClock,
    ) -> SnapshotEntity;

    /// An entity leaves memory (after it was checkpointed).
    fn passivated(extra: &mut Self::Extra, key: &str, state: &Self, clock: EventClock);

    /// A checkpoint of `keys` finished (`ok`) or failed.
    fn checkpointed(extra: &mut Self::Extra, keys: &[String], ok: bool);

    fn view(&self, key: &str, clock: EventClock) -> View;

    /// The history bucket this kind keeps per entity (see `history`).
    type Bucket: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What history needs of an entity from before an event.
    type Marks: Copy;
    /// The stored scopes of this kind's buckets and of its partitions' global buckets.
    const SCOPES: (Scope, Scope);
    /// Whether the partition samples concurrency at each sample point (channels).
    const SAMPLES: bool = false;

    fn marks(&self) -> Self::Marks;

    /// The latest event time of records this entity reflects, for which buckets may be
    /// stored (`start_watermark`: the partition's watermark when the shard started).
    fn frontier(&self, start_watermark: i64) -> i64;

    /// Credits an applied event to the buckets of its time; `marks` are from before it.
    fn record_history(
        h: &mut History<Self::Bucket>,
        key: &str,
        offset: i64,
        event: &Event,
        marks: &Self::Marks,
        after: &Self,
        clock: EventClock,
    );

    /// Takes one concurrency sample at `point` of every live channel (record `offset`).
    fn sample(state: &mut ShardState<Self>, point: i64, offset: i64) {
        let _ = (state, point, offset);
    }

    /// Whether this entity must be sampled (a channel with viewers at the watermark).
    fn live(&self, clock: EventClock) -> bool {
        let _ = clock;
        false
    }

    /// Keys that must be resident from the start to be sampled (channels with viewers).
    fn live_at_start(extra: &Self::Extra) -> Vec<String> {
        let _ = extra;
        Vec::new()
    }

    /// This shard's top-N entities; only channels rank.
    fn top(
        state: &mut ShardState<Self>,
        by: TopBy,
        limit: usize,
    ) -> impl Future<Output = Vec<TopEntry>> + Send {
        let _ = (state, by, limit);
        async { Vec::new() }
    }
}

impl Hosted for Player {
    const KIND: ShardKind = ShardKind::Players;
    type Stored = EntityRow;
    type Extra = ();
    type Bucket = PlayerBucket;
    type Marks = PlayerMarks;
    const SCOPES: (Scope, Scope) = (Scope::Player, Scope::PlayersPartition);

    fn marks(&self) -> PlayerMarks {
        PlayerMarks::of(self)
    }

    fn frontier(&self, _: i64) -> i64 {
        self.last_seen
    }

    fn record_history(
        h: &mut History<PlayerBucket>,
        key: &str,
        offset: i64,
        event: &Event,
        marks: &PlayerMarks,
        after: &Self,
        clock: EventClock,
    ) {
        let change = PlayerChange::between(marks, after);
        let is_purchase = matches!(event.body, EventBody::Purchase { .. });
        h.credit(
            key,
            event.ts,
            offset,
            clock.watermark,
            true,
            |step, mine, global| {
                let mut firsts = BucketFirsts::default();
                if let Some(b) = mine {
                    firsts.first_in_bucket = b.events() == 0;
                    firsts.first_purchase_in_bucket = is_purchase && b.purchases == 0;
                    b.apply(step, event, &change);
                }
                if let Some(g) = global {
                    g.apply_player(event, &change, firsts);
                }
            },
        );
    }

    async fn prepare(_: &Store, _: i32, _: bool) -> anyhow::Result<()> {
        Ok(())
    }

    fn stored_keys(_: &()) -> Vec<String> {
        Vec::new()
    }

    async fn load(
        store: Arc<Store>,
        _partition: i32,
        key: CompactString,
    ) -> anyhow::Result<Option<EntityRow>> {
        store.read_player(&key).await
    }

    fn activate(_: &mut (), _: &str, stored: Option<EntityRow>) -> anyhow::Result<(Self, i64)> {
        Ok(match stored {
            Some(row) => (entity::decode(&row.state)?, row.applied_offset),
            None => (Player::default(), -1),
        })
    }

    fn snapshot(
        _: &mut (),
        key: &str,
        state: &mut Self,
        offset: i64,
        _: EventClock,
    ) -> SnapshotEntity {
        checkpoint::player_row(key.to_string(), state, offset)
    }

    fn passivated(_: &mut (), _: &str, _: &Self, _: EventClock) {}

    fn checkpointed(_: &mut (), _: &[String], _: bool) {}

    fn view(&self, key: &str, _: EventClock) -> View {
        View::Player(Player::view(self, key))
    }
}

/// What a channel shard keeps beside its resident channels.
#[derive(Default)]
pub struct ChannelExtra {
    /// This shard's place in each channel's stored log (kept when passivated).
    pub logs: HashMap<String, LogState>,
    /// Summaries of channels not resident: top-N views without loading them.
    pub summaries: HashMap<String, ChannelSummary>,
}

impl Hosted for Channel {
    const KIND: ShardKind = ShardKind::Channels;
    type Stored = Box<channel_log::Loaded>;
    type Extra = ChannelExtra;
    type Bucket = ChannelBucket;
    type Marks = ChannelCounters;
    const SCOPES: (Scope, Scope) = (Scope::Channel, Scope::ChannelsPartition);
    const SAMPLES: bool = true;

    fn marks(&self) -> ChannelCounters {
        self.counters
    }

    fn frontier(&self, start_watermark: i64) -> i64 {
        // Samples reach the partition's watermark, past the channel's own last event.
        self.counters.last_event.max(start_watermark)
    }

    fn record_history(
        h: &mut History<ChannelBucket>,
        key: &str,
        offset: i64,
        event: &Event,
        marks: &ChannelCounters,
        after: &Self,
        clock: EventClock,
    ) {
        let change = ChannelChange {
            before: *marks,
            after: after.counters,
        };
        h.credit(
            key,
            event.ts,
            offset,
            clock.watermark,
            false,
            |_, mine, _| {
                if let Some(b) = mine {
                    b.apply(event, &change);
                }
            },
        );
        if after.concurrent_at(clock.watermark, clock.timeout_ms) > 0 && !h.live.contains(key) {
            h.live.insert(key.into());
        }
    }

    fn sample(state: &mut ShardState<Self>, point: i64, offset: i64) {
        state.sample_channels(point, offset);
    }

    fn live(&self, clock: EventClock) -> bool {
        self.concurrent_at(clock.watermark, clock.timeout_ms) > 0
    }

    fn live_at_start(extra: &ChannelExtra) -> Vec<String> {
        extra
            .summaries
            .values()
            .filter(|s| s.concurrent > 0)
            .map(|s| s.id.clone())
            .collect()
    }

    async fn prepare(
        store: &Store,
        partition: i32,
        checkpointed: bool,
    ) -> anyhow::Result<ChannelExtra> {
        let mut extra = ChannelExtra::default();
        if checkpointed {
            extra.summaries = store
                .channel_summaries(partition)
                .await?
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect();
        }
        Ok(extra)
    }

    fn stored_keys(extra: &ChannelExtra) -> Vec<String> {
        extra.summaries.keys().cloned().collect()
    }

    async fn load(
        store: Arc<Store>,
        partition: i32,
        key: CompactString,
    ) -> anyhow::Result<Option<Self::Stored>> {
        Ok(channel_log::load(&store, partition, &key)
            .await?
            .map(Box::new))
    }

    fn activate(
        extra: &mut ChannelExtra,
        key: &str,
        stored: Option<Self::Stored>,
    ) -> anyhow::Result<(Self, i64)> {
        extra.summaries.remove(key);
        let log = extra.logs.entry(key.to_string()).or_default();
        Ok(match stored {
            Some(loaded) => {
                let loaded = *loaded;
                log.loaded(loaded.head);
                (loaded.channel, loaded.offset)
            }
            None => {
                log.loaded(None);
                (Channel::default(), -1)
            }
        })
    }

    fn snapshot(
        extra: &mut ChannelExtra,
        key: &str,
        state: &mut Self,
        offset: i64,
        clock: EventClock,
    ) -> SnapshotEntity {
        let summary = summarize(key, state, clock);
        let write = extra
            .logs
            .entry(key.to_string())
            .or_default()
            .plan(state, offset);
        SnapshotEntity::Channel {
            key: key.to_string(),
            summary,
            write,
            offset,
        }
    }

    fn passivated(extra: &mut ChannelExtra, key: &str, state: &Self, clock: EventClock) {
        extra
            .summaries
            .insert(key.to_string(), summarize(key, state, clock));
    }

    fn checkpointed(extra: &mut ChannelExtra, keys: &[String], ok: bool) {
        for key in keys {
            if let Some(log) = extra.logs.get_mut(key) {
                if ok {
                    log.written();
                } else {
                    log.failed();
                }
            }
        }
    }

    fn view(&self, key: &str, clock: EventClock) -> View {
        View::Channel(Channel::view(self, key, clock.watermark, clock.timeout_ms))
    }

    fn top(
        state: &mut ShardState<Self>,
        by: TopBy,
        limit: usize,
    ) -> impl Future<Output = Vec<TopEntry>> + Send {
        state.channel_top(by, limit)
    }
}

/// A viewer count as the summary's signed CQL `int`, saturating instead of wrapping.
fn saturate(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The stored summary of a channel: what top-N views read without loading it.
pub fn summarize(id: &str, c: &Channel, clock: EventClock) -> ChannelSummary {
    ChannelSummary {
        id: id.to_string(),
        concurrent: saturate(c.concurrent_at(clock.watermark, clock.timeout_ms)),
        peak: saturate(c.counters.peak_concurrent),
        follows: i64::try_from(c.counters.follows).unwrap_or(i64::MAX),
    }
}
