//! The shard actor: one ractor actor per owned partition, hosting that partition's players
//! or channels as virtual actors.
//!
//! A shard applies its partition's records in offset order to entities kept in a map
//! (single writer, one event at a time), activates an entity on its first event or query
//! (loading it from Cassandra when a row may exist), passivates idle ones after
//! checkpointing them, and checkpoints dirty entities on an interval (see `checkpoint`).
//! Per-entity actors were measured too heavy (about 6.7 KB each); a map entry costs a few
//! hundred bytes.
//!
//! Not for: talking to Kafka (see `source`) or deciding ownership.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn};

use crate::channel_log::{self, LogState};
use crate::checkpoint::{self, Snapshot, SnapshotEntity};
use crate::config::ShardConfig;
use crate::entity::{self, Channel, ChannelView, Player, PlayerView};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::resident::Resident;
use crate::storage::{ChannelSummary, Progress, Store};

/// Which entities a shard hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKind {
    Players,
    Channels,
}

/// One Kafka record, owned (tests and tools build batches from these).
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// One record of a [`Records`] batch, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// A (start, length) range of [`Records::bytes`].
type Span = (u32, u32);

/// Offset, then key and payload as spans of the batch's bytes.
type Item = (i64, Option<Span>, Option<Span>);

/// Records of one partition in offset order, handed to its shard. Keys and payloads share
/// one buffer: the poll loop copies each record once and allocates nothing per record.
/// Taken from a [`RecordsPool`], a batch goes back to it when dropped, so the buffers are
/// reused instead of allocated (and their pages faulted in) for every batch.
#[derive(Debug, Clone, Default)]
pub struct Records {
    items: Vec<Item>,
    bytes: Vec<u8>,
    pool: Option<Arc<RecordsPool>>,
}

/// Emptied [`Records`] buffers waiting to be reused by the poll loop.
#[derive(Debug, Default)]
pub struct RecordsPool {
    free: std::sync::Mutex<Vec<(Vec<Item>, Vec<u8>)>>,
}

impl RecordsPool {
    /// Buffers kept at most; more are freed. Enough for every batch in flight under a
    /// backlog (`shard.max_inflight_batches` plus a poll round's), so a bulk load reuses
    /// buffers instead of growing (and faulting in) fresh ones for most batches.
    const KEEP: usize = 128;
    /// Buffers kept after [`Self::shrink`]: what a steady stream needs.
    const KEEP_IDLE: usize = 16;
    /// A buffer that grew past this is freed rather than kept.
    const KEEP_BYTES: usize = 512 * 1024;

    /// Frees the buffers beyond what a steady stream needs; called every few seconds, so
    /// the pool's memory after a backlog does not stay resident. Under a backlog the pool
    /// refills at once, which costs a few allocations per call.
    pub fn shrink(&self) {
        let mut free = self.free.lock().expect("records pool lock");
        free.truncate(Self::KEEP_IDLE);
        free.shrink_to(Self::KEEP_IDLE);
    }

    /// An empty batch, with reused buffers when there are any.
    pub fn take(self: &Arc<Self>) -> Records {
        let reused = self.free.lock().expect("records pool lock").pop();
        let (items, bytes) =
            reused.unwrap_or_else(|| (Vec::with_capacity(256), Vec::with_capacity(64 * 1024)));
        Records {
            items,
            bytes,
            pool: Some(self.clone()),
        }
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        if self.bytes.capacity() > RecordsPool::KEEP_BYTES {
            return;
        }
        let mut free = pool.free.lock().expect("records pool lock");
        if free.len() < RecordsPool::KEEP {
            self.items.clear();
            self.bytes.clear();
            free.push((
                std::mem::take(&mut self.items),
                std::mem::take(&mut self.bytes),
            ));
        }
    }
}

impl Records {
    pub fn push(&mut self, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let mut put = |b: &[u8]| {
            let start = self.bytes.len() as u32;
            self.bytes.extend_from_slice(b);
            (start, b.len() as u32)
        };
        let key = key.map(&mut put);
        let payload = payload.map(&mut put);
        self.items.push((offset, key, payload));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> {
        let part = |r: Option<Span>| {
            r.map(|(start, len)| &self.bytes[start as usize..(start + len) as usize])
        };
        self.items
            .iter()
            .map(move |&(offset, key, payload)| RecordRef {
                offset,
                key: part(key),
                payload: part(payload),
            })
    }
}

impl From<&[Record]> for Records {
    fn from(records: &[Record]) -> Self {
        let mut out = Records::default();
        for r in records {
            out.push(r.offset, r.key.as_deref(), r.payload.as_deref());
        }
        out
    }
}

/// How fresh an answer is.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    /// Offset of the last record applied to this entity.
    pub entity_offset: i64,
    /// The partition and the next offset its shard will apply.
    pub partition: i32,
    pub partition_offset: i64,
    /// Milliseconds since the shard's last completed checkpoint (None: none yet).
    pub checkpoint_age_ms: Option<u64>,
}

/// A channel's place in a top-N view.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TopEntry {
    pub id: String,
    pub concurrent: u32,
    pub peak: u32,
    pub follows: u64,
}

/// The ordering of a top-N view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    Concurrent,
    Peak,
    Follows,
}

impl TopBy {
    pub fn value(&self, e: &TopEntry) -> u64 {
        match self {
            TopBy::Concurrent => e.concurrent as u64,
            TopBy::Peak => e.peak as u64,
            TopBy::Follows => e.follows,
        }
    }
}

/// Shard statistics for the cluster view and benchmarks.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStats {
    pub kind: ShardKind,
    pub partition: i32,
    pub next_offset: i64,
    pub resident_entities: usize,
    pub dirty_entities: usize,
    pub checkpoint_age_ms: Option<u64>,
    pub durable_offset: i64,
}

pub type QueryReply<T> = RpcReplyPort<Result<Option<(T, Freshness)>, String>>;

/// Messages a shard handles.
pub enum ShardMsg {
    /// Records of this partition, in offset order. The permit returns to the poll loop
    /// when the batch is applied, bounding the records in flight.
    Records(Records, OwnedSemaphorePermit),
    /// Periodic: start a checkpoint if none is running, passivate idle entities.
    Tick,
    /// A checkpoint task finished.
    CheckpointDone(Result<Progress, String>, Vec<String>),
    Player(String, QueryReply<PlayerView>),
    Channel(String, QueryReply<ChannelView>),
    Top(TopBy, usize, RpcReplyPort<Vec<TopEntry>>),
    Stats(RpcReplyPort<ShardStats>),
    /// Write everything, wait for it, reply with the durable progress (shutdown, handover).
    Flush(RpcReplyPort<Result<Progress, String>>),
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
    pub metrics: Arc<Metrics>,
}

/// Applies one record to `key` if it is resident; a newly dirtied key joins `dirty`.
/// Returns whether the entity changed, or None when it must be loaded first.
#[allow(clippy::too_many_arguments)]
fn apply_in<E: entity::Entity>(
    m: &mut Resident<E>,
    key: &str,
    offset: i64,
    event: &Event,
    watermark: i64,
    timeout: i64,
    touched: u32,
    dirty: &mut Vec<CompactString>,
) -> Option<bool> {
    let slot = m.get_mut(key)?;
    slot.touched = touched;
    let changed = entity::apply_record(
        &mut slot.state,
        &mut slot.offset,
        offset,
        event,
        watermark,
        timeout,
    );
    if changed && !slot.dirty {
        slot.dirty = true;
        dirty.push(slot.key.clone());
    }
    Some(changed)
}

/// A record whose entity was not resident when its batch arrived: applied, in order, once
/// the entity is loaded, with the watermark it would have seen.
/// Starts loading the entity of `next` and the table line of `after`.
fn prefetch<E>(m: &Resident<E>, next: Option<&str>, after: Option<&str>) {
    if let Some(k) = after {
        m.prefetch_index(k);
    }
    if let Some(k) = next {
        m.prefetch(k);
    }
}

/// Deferred records whose buffer is kept between batches.
const SPARE_DEFERRED: usize = 256;

struct Deferred {
    key: CompactString,
    offset: i64,
    event: Event,
    watermark: i64,
}

/// An entity read from Cassandra.
enum StoredEntity {
    Player(Option<crate::storage::EntityRow>),
    Channel(Option<Box<channel_log::Loaded>>),
}

/// Marks resident entities dirty again (their checkpoint failed).
fn mark_dirty<E>(m: &mut Resident<E>, keys: Vec<String>, dirty: &mut Vec<CompactString>) {
    for key in keys {
        if let Some(slot) = m.get_mut(&key) {
            if !slot.dirty {
                slot.dirty = true;
                dirty.push(slot.key.clone());
            }
        }
    }
}

/// The hosted entities of one kind.
enum Entities {
    Players(Resident<Player>),
    Channels(Resident<Channel>),
}

pub struct ShardState {
    args: ShardArgs,
    entities: Entities,
    /// Keys changed since the last checkpoint snapshot (each once; see `Slot::dirty`).
    dirty: Vec<CompactString>,
    /// Keys that may have a stored row not in memory: anything, if the partition was ever
    /// checkpointed before this shard started; else just what this shard passivated.
    passivated: HashSet<String>,
    stored_before_start: bool,
    /// Channel summaries of channels not resident (top-N views without loading them).
    summaries: HashMap<String, ChannelSummary>,
    /// Channels: this shard's place in each channel's stored log (kept when passivated).
    logs: HashMap<String, LogState>,
    /// Next offset to apply.
    next_offset: i64,
    /// Max event time seen in the partition.
    watermark: i64,
    /// Progress known durable in Cassandra.
    durable: Progress,
    checkpoint_running: bool,
    last_checkpoint: Option<Instant>,
    /// When idle entities were last looked for.
    last_passivation_scan: Instant,
    /// When a batch last arrived full (the partition has a backlog).
    last_full_batch: Option<Instant>,
    /// Replies waiting for a flush to finish.
    flush_waiters: Vec<RpcReplyPort<Result<Progress, String>>>,
    /// The deferred-records buffer, kept between batches (emptied, and trimmed to
    /// [`SPARE_DEFERRED`] after a bulk load).
    spare_deferred: Vec<Deferred>,
    started: Instant,
}

pub struct Shard;

impl ShardState {
    fn now_secs(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    fn may_be_stored(&self, key: &str) -> bool {
        self.stored_before_start || self.passivated.contains(key)
    }

    fn freshness(&self, entity_offset: i64) -> Freshness {
        Freshness {
            entity_offset,
            partition: self.args.partition,
            partition_offset: self.next_offset,
            checkpoint_age_ms: self.last_checkpoint.map(|t| t.elapsed().as_millis() as u64),
        }
    }

    fn timeout_ms(&self) -> i64 {
        self.args.cfg.viewer_timeout_secs as i64 * 1000
    }

    fn resident(&self) -> usize {
        match &self.entities {
            Entities::Players(m) => m.len(),
            Entities::Channels(m) => m.len(),
        }
    }

    /// Loads the given keys that are not resident, in parallel, and makes them resident.
    async fn activate(&mut self, keys: Vec<CompactString>) -> anyhow::Result<()> {
        let store = self.args.store.clone();
        let partition = self.args.partition;
        let touched = self.now_secs();
        let missing: Vec<CompactString> = keys
            .into_iter()
            .filter(|k| match &self.entities {
                Entities::Players(m) => !m.contains_key(k),
                Entities::Channels(m) => !m.contains_key(k),
            })
            .collect();
        let (to_load, fresh): (Vec<CompactString>, Vec<CompactString>) =
            missing.into_iter().partition(|k| self.may_be_stored(k));
        let loaded: Vec<(CompactString, StoredEntity)> =
            futures::stream::iter(to_load.into_iter().map(|k| {
                let store = store.clone();
                let kind = self.args.kind;
                async move {
                    let stored = match kind {
                        ShardKind::Players => StoredEntity::Player(store.read_player(&k).await?),
                        ShardKind::Channels => StoredEntity::Channel(
                            channel_log::load(&store, partition, &k)
                                .await?
                                .map(Box::new),
                        ),
                    };
                    anyhow::Ok((k, stored))
                }
            }))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        self.args.metrics.add_entity_loads(loaded.len() as u64);
        let fresh = fresh.into_iter().map(|k| {
            let none = match self.args.kind {
                ShardKind::Players => StoredEntity::Player(None),
                ShardKind::Channels => StoredEntity::Channel(None),
            };
            (k, none)
        });
        for (key, stored) in loaded.into_iter().chain(fresh) {
            self.passivated.remove(key.as_str());
            self.summaries.remove(key.as_str());
            match (&mut self.entities, stored) {
                (Entities::Players(m), StoredEntity::Player(row)) => {
                    let (state, offset) = match row {
                        Some(r) => (entity::decode(&r.state)?, r.applied_offset),
                        None => (Player::default(), -1),
                    };
                    m.insert(key, state, offset, touched);
                }
                (Entities::Channels(m), StoredEntity::Channel(loaded)) => {
                    let log = self.logs.entry(key.to_string()).or_default();
                    let (state, offset) = match loaded {
                        Some(l) => {
                            log.loaded(l.head);
                            let l = *l;
                            (l.channel, l.offset)
                        }
                        None => {
                            log.loaded(None);
                            (Channel::default(), -1)
                        }
                    };
                    m.insert(key, state, offset, touched);
                }
                _ => unreachable!("entities are loaded as the shard's kind"),
            }
        }
        Ok(())
    }

    /// Applies a batch in offset order. Records of resident entities are applied at once;
    /// the others are returned, to be applied by [`Self::apply_deferred`] after loading
    /// their entities (each entity still sees its records in offset order, with the
    /// watermark it would have seen). Records at or below an entity's offset are skipped:
    /// its stored state already reflects them.
    fn apply_resident(&mut self, records: &Records) -> Vec<Deferred> {
        let touched = self.now_secs();
        let timeout = self.timeout_ms();
        let mut deferred = std::mem::take(&mut self.spare_deferred);
        let mut applied = 0u64;
        // While a record decodes, the entity of the next one and the table line of the one
        // after that are fetched into the cache (see `Resident::prefetch`). Each key is
        // read once, two records ahead.
        let mut keys = records.iter().map(|r| key_of(&r));
        let (mut next, mut after) = (keys.next(), keys.next());
        for rec in records.iter() {
            let key = next.take().expect("a key (or its error) per record");
            (next, after) = (after, keys.next());
            let (n, a) = (next.and_then(Result::ok), after.and_then(Result::ok));
            match &self.entities {
                Entities::Players(m) => prefetch(m, n, a),
                Entities::Channels(m) => prefetch(m, n, a),
            }
            if rec.offset < self.next_offset {
                continue; // redelivered after a seek
            }
            self.next_offset = rec.offset + 1;
            let (key, event) = match decode_record(&rec, key) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    self.args.metrics.add_invalid_records(1);
                    warn!(topic = %self.args.topic, partition = self.args.partition, offset = rec.offset, %reason, "skipping invalid record");
                    continue;
                }
            };
            self.watermark = self.watermark.max(event.ts);
            let watermark = self.watermark;
            let dirty = &mut self.dirty;
            let done = match &mut self.entities {
                Entities::Players(m) => apply_in(
                    m, key, rec.offset, &event, watermark, timeout, touched, dirty,
                ),
                Entities::Channels(m) => apply_in(
                    m, key, rec.offset, &event, watermark, timeout, touched, dirty,
                ),
            };
            match done {
                Some(changed) => applied += changed as u64,
                None => deferred.push(Deferred {
                    key: key.into(),
                    offset: rec.offset,
                    event,
                    watermark,
                }),
            }
        }
        self.args.metrics.add_applied(self.args.kind, applied);
        deferred
    }

    /// Applies records held back by [`Self::apply_resident`]; their entities are resident.
    fn apply_deferred(&mut self, deferred: &mut Vec<Deferred>) {
        let touched = self.now_secs();
        let timeout = self.timeout_ms();
        let mut applied = 0u64;
        for d in deferred.drain(..) {
            let dirty = &mut self.dirty;
            let (key, offset, event, watermark) = (&d.key, d.offset, &d.event, d.watermark);
            let done = match &mut self.entities {
                Entities::Players(m) => {
                    apply_in(m, key, offset, event, watermark, timeout, touched, dirty)
                }
                Entities::Channels(m) => {
                    apply_in(m, key, offset, event, watermark, timeout, touched, dirty)
                }
            };
            applied += done.expect("deferred entities were activated") as u64;
        }
        self.args.metrics.add_applied(self.args.kind, applied);
    }

    /// Takes a consistent snapshot of every dirty entity and the progress it makes durable.
    fn snapshot(&mut self) -> Snapshot {
        let dirty = std::mem::take(&mut self.dirty);
        let timeout = self.timeout_ms();
        let watermark = self.watermark;
        let mut snap = Snapshot {
            topic: self.args.topic.clone(),
            partition: self.args.partition,
            owner: self.args.owner.clone(),
            entities: Vec::with_capacity(dirty.len()),
            progress: Progress {
                resume_offset: self.next_offset,
                watermark_ms: self.watermark,
            },
        };
        for (i, key) in dirty.iter().enumerate() {
            // As in apply_resident: the entities ahead are on their way into the cache.
            let ahead = |n: usize| dirty.get(i + n).map(CompactString::as_str);
            match &self.entities {
                Entities::Players(m) => prefetch(m, ahead(1), ahead(2)),
                Entities::Channels(m) => prefetch(m, ahead(1), ahead(2)),
            }
            match &mut self.entities {
                Entities::Players(m) => {
                    let slot = m.get_mut(key).expect("dirty keys are resident");
                    slot.dirty = false;
                    snap.entities.push(checkpoint::player_row(
                        key.to_string(),
                        &slot.state,
                        slot.offset,
                    ));
                }
                Entities::Channels(m) => {
                    let slot = m.get_mut(key).expect("dirty keys are resident");
                    slot.dirty = false;
                    let summary = summarize(key, &slot.state, watermark, timeout);
                    let key = key.to_string();
                    let write = self
                        .logs
                        .entry(key.clone())
                        .or_default()
                        .plan(&mut slot.state, slot.offset);
                    snap.entities.push(SnapshotEntity::Channel {
                        key,
                        summary,
                        write,
                        offset: slot.offset,
                    });
                }
            }
        }
        snap
    }

    fn start_checkpoint(&mut self, myself: &ActorRef<ShardMsg>) {
        if self.checkpoint_running {
            return;
        }
        if self.dirty.is_empty() && self.next_offset == self.durable.resume_offset {
            // Nothing new: answer waiting flushes at once.
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(Ok(self.durable));
            }
            self.last_checkpoint = Some(Instant::now());
            return;
        }
        let snap = self.snapshot();
        self.checkpoint_running = true;
        let store = self.args.store.clone();
        let metrics = self.args.metrics.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let keys: Vec<String> = snap.entities.iter().map(|e| e.key().to_string()).collect();
            let result = checkpoint::write(&store, &snap, &metrics)
                .await
                .map(|_| snap.progress)
                .map_err(|e| format!("{e:#}"));
            let _ = myself.cast(ShardMsg::CheckpointDone(result, keys));
        });
    }

    /// Evicts entities idle for `passivate_after`. The scan visits every resident entity,
    /// so it runs every twentieth of that period (at most once a second), not every tick:
    /// an idle entity then stays at most 5% longer than configured.
    fn passivate_idle(&mut self) {
        let every = (self.args.cfg.passivate_after() / 20).max(Duration::from_secs(1));
        if self.checkpoint_running || self.last_passivation_scan.elapsed() < every {
            return;
        }
        self.last_passivation_scan = Instant::now();
        let idle = self.args.cfg.passivate_after().as_secs() as u32;
        let now = self.now_secs();
        let watermark = self.watermark;
        let timeout = self.timeout_ms();
        let passivated = &mut self.passivated;
        let mut evicted = 0u64;
        match &mut self.entities {
            Entities::Players(m) => m.retain(|s| {
                let keep = now.saturating_sub(s.touched) < idle || s.dirty;
                if !keep {
                    passivated.insert(s.key.to_string());
                    evicted += 1;
                }
                keep
            }),
            Entities::Channels(m) => {
                let summaries = &mut self.summaries;
                m.retain(|s| {
                    let keep = now.saturating_sub(s.touched) < idle || s.dirty;
                    if !keep {
                        let k = s.key.to_string();
                        summaries.insert(k.clone(), summarize(&k, &s.state, watermark, timeout));
                        passivated.insert(k);
                        evicted += 1;
                    }
                    keep
                })
            }
        }
        if evicted > 0 {
            self.args.metrics.add_passivations(evicted);
            debug!(
                partition = self.args.partition,
                evicted, "passivated idle entities"
            );
        }
    }

    async fn top(&mut self, by: TopBy, limit: usize) -> Vec<TopEntry> {
        let timeout = self.timeout_ms();
        let Entities::Channels(m) = &self.entities else {
            return Vec::new();
        };
        let mut exact: Vec<TopEntry> = m
            .iter()
            .map(|s| top_entry(&s.key, &s.state, self.watermark, timeout))
            .collect();
        // Non-resident channels: peak and follows in the summary are exact; concurrent is
        // an upper bound (expiry only lowers it), so load the ones that could make the cut.
        let mut bounds: Vec<TopEntry> = self
            .summaries
            .values()
            .map(|s| TopEntry {
                id: s.id.clone(),
                concurrent: s.concurrent.max(0) as u32,
                peak: s.peak.max(0) as u32,
                follows: s.follows.max(0) as u64,
            })
            .collect();
        if by == TopBy::Concurrent {
            bounds.sort_by_key(|e| std::cmp::Reverse(by.value(e)));
            let mut to_load = Vec::new();
            let mut current = exact.clone();
            for b in bounds.drain(..) {
                current.sort_by_key(|e| std::cmp::Reverse(by.value(e)));
                let cut = current
                    .get(limit.saturating_sub(1))
                    .map_or(0, |e| by.value(e));
                if current.len() >= limit && by.value(&b) <= cut {
                    break;
                }
                current.push(b.clone());
                to_load.push(b.id.into());
            }
            if let Err(e) = self.activate(to_load).await {
                warn!(error = %format!("{e:#}"), "top-N: loading channels failed; using stored summaries");
            }
            let Entities::Channels(m) = &self.entities else {
                unreachable!()
            };
            exact = m
                .iter()
                .map(|s| top_entry(&s.key, &s.state, self.watermark, timeout))
                .collect();
            bounds = self
                .summaries
                .values()
                .map(|s| TopEntry {
                    id: s.id.clone(),
                    concurrent: 0,
                    peak: s.peak.max(0) as u32,
                    follows: s.follows.max(0) as u64,
                })
                .collect();
        }
        exact.extend(bounds);
        sort_top(&mut exact, by);
        exact.truncate(limit);
        exact
    }
}

/// Whether a periodic tick starts a checkpoint, given the time since the last one finished
/// and since a batch last arrived full: every tick normally; while the partition has a
/// backlog (a full batch within the last two seconds), once per catch-up interval.
fn checkpoint_due(
    since_checkpoint: Option<Duration>,
    since_full_batch: Option<Duration>,
    cfg: &ShardConfig,
) -> bool {
    let catching_up = since_full_batch.is_some_and(|d| d < Duration::from_secs(2));
    match since_checkpoint {
        Some(since) if catching_up => since >= cfg.catch_up_checkpoint_interval(),
        _ => true,
    }
}

/// Orders a top-N list: value descending, then id ascending.
pub fn sort_top(entries: &mut [TopEntry], by: TopBy) {
    entries.sort_by(|a, b| by.value(b).cmp(&by.value(a)).then_with(|| a.id.cmp(&b.id)));
}

fn top_entry(id: &str, c: &Channel, watermark: i64, timeout: i64) -> TopEntry {
    TopEntry {
        id: id.to_string(),
        concurrent: c.concurrent_at(watermark, timeout),
        peak: c.counters.peak_concurrent,
        follows: c.counters.follows,
    }
}

fn summarize(id: &str, c: &Channel, watermark: i64, timeout: i64) -> ChannelSummary {
    ChannelSummary {
        id: id.to_string(),
        concurrent: c.concurrent_at(watermark, timeout) as i32,
        peak: c.counters.peak_concurrent as i32,
        follows: c.counters.follows as i64,
    }
}

/// The key of a record, or what is wrong with it.
fn key_of<'a>(rec: &RecordRef<'a>) -> Result<&'a str, &'static str> {
    rec.key
        .ok_or("record has no key")
        .and_then(|k| std::str::from_utf8(k).map_err(|_| "key is not utf-8"))
}

/// The key (read by [`key_of`]) and event of a record; an error names what is wrong.
fn decode_record<'a>(
    rec: &RecordRef<'a>,
    key: Result<&'a str, &'static str>,
) -> Result<(&'a str, Event), String> {
    let key = key?;
    let payload = rec.payload.ok_or("record has no value")?;
    let event = Event::parse(payload).map_err(|r| format!("invalid event: {r}"))?;
    Ok((key, event))
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardState;
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
        let summaries = if args.kind == ShardKind::Channels && args.progress.is_some() {
            args.store
                .channel_summaries(args.partition)
                .await?
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect()
        } else {
            HashMap::new()
        };
        let interval = args.cfg.checkpoint_interval();
        myself.send_interval(interval, || ShardMsg::Tick);
        info!(topic = %args.topic, partition = args.partition, resume_offset = durable.resume_offset, "shard started");
        Ok(ShardState {
            entities: match args.kind {
                ShardKind::Players => Entities::Players(Resident::default()),
                ShardKind::Channels => Entities::Channels(Resident::default()),
            },
            stored_before_start: args.progress.is_some(),
            passivated: summaries.keys().cloned().collect(),
            summaries,
            logs: HashMap::new(),
            dirty: Vec::new(),
            next_offset: durable.resume_offset,
            watermark: durable.watermark_ms,
            durable,
            checkpoint_running: false,
            last_checkpoint: None,
            last_passivation_scan: Instant::now(),
            last_full_batch: None,
            flush_waiters: Vec::new(),
            spare_deferred: Vec::new(),
            started: Instant::now(),
            args,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Records(records, permit) => {
                if records.len() >= state.args.cfg.max_batch / 2 {
                    state.last_full_batch = Some(Instant::now());
                }
                let mut deferred = state.apply_resident(&records);
                drop(records);
                if !deferred.is_empty() {
                    let mut keys: Vec<CompactString> =
                        deferred.iter().map(|d| d.key.clone()).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    // Storage errors while loading entities are retried: the batch must
                    // apply whole and in order, or the shard would skip records.
                    let mut delay = Duration::from_millis(100);
                    while let Err(e) = state.activate(keys.clone()).await {
                        error!(partition = state.args.partition, error = %format!("{e:#}"), "loading entities failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    state.apply_deferred(&mut deferred);
                }
                deferred.shrink_to(SPARE_DEFERRED);
                state.spare_deferred = deferred;
                drop(permit);
            }
            ShardMsg::Tick => {
                let due = checkpoint_due(
                    state.last_checkpoint.map(|t| t.elapsed()),
                    state.last_full_batch.map(|t| t.elapsed()),
                    &state.args.cfg,
                );
                if due {
                    state.start_checkpoint(&myself);
                }
                state.passivate_idle();
            }
            ShardMsg::CheckpointDone(result, keys) => {
                state.checkpoint_running = false;
                match result {
                    Ok(progress) => {
                        for key in &keys {
                            if let Some(log) = state.logs.get_mut(key) {
                                log.written();
                            }
                        }
                        state.durable = progress;
                        state.last_checkpoint = Some(Instant::now());
                        state.args.metrics.set_durable(
                            state.args.kind,
                            state.args.partition,
                            progress.resume_offset,
                        );
                        if !state.flush_waiters.is_empty() {
                            // Anything applied since the snapshot needs one more round.
                            state.start_checkpoint(&myself);
                        }
                    }
                    Err(e) => {
                        error!(partition = state.args.partition, error = %e, "checkpoint failed; will retry");
                        for key in &keys {
                            if let Some(log) = state.logs.get_mut(key) {
                                log.failed();
                            }
                        }
                        let dirty = &mut state.dirty;
                        match &mut state.entities {
                            Entities::Players(m) => mark_dirty(m, keys, dirty),
                            Entities::Channels(m) => mark_dirty(m, keys, dirty),
                        }
                    }
                }
            }
            ShardMsg::Player(id, reply) => {
                let answer = async {
                    if state.may_be_stored(&id) {
                        state.activate(vec![id.as_str().into()]).await?;
                    }
                    let Entities::Players(m) = &mut state.entities else {
                        anyhow::bail!("not a player shard");
                    };
                    Ok(m.get_mut(&id).map(|s| (s.state.view(&id), s.offset)))
                }
                .await;
                let out = answer
                    .map(|o| {
                        o.filter(|(_, off)| *off >= 0)
                            .map(|(v, off)| (v, state.freshness(off)))
                    })
                    .map_err(|e| format!("{e:#}"));
                let _ = reply.send(out);
            }
            ShardMsg::Channel(id, reply) => {
                let answer = async {
                    if state.may_be_stored(&id) {
                        state.activate(vec![id.as_str().into()]).await?;
                    }
                    let timeout = state.timeout_ms();
                    let watermark = state.watermark;
                    let Entities::Channels(m) = &mut state.entities else {
                        anyhow::bail!("not a channel shard");
                    };
                    Ok(m.get(&id)
                        .map(|s| (s.state.view(&id, watermark, timeout), s.offset)))
                }
                .await;
                let out = answer
                    .map(|o| {
                        o.filter(|(_, off)| *off >= 0)
                            .map(|(v, off)| (v, state.freshness(off)))
                    })
                    .map_err(|e| format!("{e:#}"));
                let _ = reply.send(out);
            }
            ShardMsg::Top(by, limit, reply) => {
                let _ = reply.send(state.top(by, limit).await);
            }
            ShardMsg::Stats(reply) => {
                let _ = reply.send(ShardStats {
                    kind: state.args.kind,
                    partition: state.args.partition,
                    next_offset: state.next_offset,
                    resident_entities: state.resident(),
                    dirty_entities: state.dirty.len(),
                    checkpoint_age_ms: state
                        .last_checkpoint
                        .map(|t| t.elapsed().as_millis() as u64),
                    durable_offset: state.durable.resume_offset,
                });
            }
            ShardMsg::Flush(reply) => {
                state.flush_waiters.push(reply);
                // A running checkpoint starts the next round when it is done.
                state.start_checkpoint(&myself);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_batches_return_their_buffers_to_the_pool() {
        let pool = Arc::new(RecordsPool::default());
        let mut batch = pool.take();
        batch.push(7, Some(b"p1"), Some(b"{}"));
        let bytes_at = batch.bytes.as_ptr();
        drop(batch);
        // The next batch reuses the buffer, emptied.
        let batch = pool.take();
        assert!(batch.is_empty());
        assert_eq!(batch.bytes.as_ptr(), bytes_at);
        assert_eq!(pool.free.lock().unwrap().len(), 0);
        drop(batch);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
        // A buffer that grew too large is freed, not kept.
        let mut big = pool.take();
        let payload = vec![b'x'; RecordsPool::KEEP_BYTES + 1];
        big.push(8, None, Some(&payload));
        drop(big);
        assert_eq!(pool.free.lock().unwrap().len(), 0);
        // A batch built without a pool goes nowhere.
        drop(Records::default());
        assert_eq!(pool.free.lock().unwrap().len(), 0);
        // Every batch of a backlog returns to the pool; shrinking keeps a steady stream's.
        let batches: Vec<Records> = (0..RecordsPool::KEEP + 5).map(|_| pool.take()).collect();
        drop(batches);
        assert_eq!(pool.free.lock().unwrap().len(), RecordsPool::KEEP);
        pool.shrink();
        assert_eq!(pool.free.lock().unwrap().len(), RecordsPool::KEEP_IDLE);
    }

    #[test]
    fn checkpoints_space_out_only_while_a_backlog_lasts() {
        let cfg = ShardConfig::default();
        let s = Duration::from_secs;
        // Steady: every tick.
        assert!(checkpoint_due(Some(s(1)), None, &cfg));
        assert!(checkpoint_due(Some(s(1)), Some(s(60)), &cfg));
        // Backlog: only once the catch-up interval has passed.
        assert!(!checkpoint_due(Some(s(1)), Some(s(0)), &cfg));
        assert!(!checkpoint_due(Some(s(9)), Some(s(1)), &cfg));
        assert!(checkpoint_due(Some(s(10)), Some(s(1)), &cfg));
        // Never checkpointed yet: now, backlog or not.
        assert!(checkpoint_due(None, Some(s(0)), &cfg));
        // The backlog is over two seconds after the last full batch.
        assert!(checkpoint_due(Some(s(1)), Some(s(2)), &cfg));
        // Catch-up equal to the interval: one pace always.
        let same = ShardConfig {
            catch_up_checkpoint_interval_ms: cfg.checkpoint_interval_ms,
            ..ShardConfig::default()
        };
        assert!(checkpoint_due(Some(s(1)), Some(s(0)), &same));
    }
}
