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
use crate::storage::{ChannelSummary, Progress, Store};

/// Which entities a shard hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKind {
    Players,
    Channels,
}

/// One Kafka record handed to a shard.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
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
    Records(Vec<Record>, OwnedSemaphorePermit),
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

/// An entity resident in a shard.
struct Slot<E> {
    state: E,
    /// Offset of the last record applied (-1: none).
    offset: i64,
    /// Seconds since shard start of the last event or query.
    touched: u32,
    /// Changed since the last checkpoint snapshot (its key is in `ShardState::dirty`).
    dirty: bool,
}

/// Resident entities by key. Hashed with foldhash (randomly seeded, several times faster
/// than SipHash on short keys): a lookup per record is the shard's hottest path.
type Resident<E> = foldhash::HashMap<String, Slot<E>>;

/// Applies one record to a resident entity; a newly dirtied key joins `dirty`.
#[allow(clippy::too_many_arguments)]
fn apply_in<E: entity::Entity>(
    m: &mut Resident<E>,
    key: String,
    offset: i64,
    event: &Event,
    watermark: i64,
    timeout: i64,
    touched: u32,
    dirty: &mut Vec<String>,
) -> bool {
    let slot = m.get_mut(&key).expect("activated before applying");
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
        dirty.push(key);
    }
    changed
}

/// Makes an entity resident with its stored state (or a new one) as of `offset`.
fn insert_loaded<E>(m: &mut Resident<E>, key: String, state: E, offset: i64, touched: u32) {
    m.insert(
        key,
        Slot {
            state,
            offset,
            touched,
            dirty: false,
        },
    );
}

/// An entity read from Cassandra.
enum StoredEntity {
    Player(Option<crate::storage::EntityRow>),
    Channel(Option<Box<channel_log::Loaded>>),
}

/// Marks resident entities dirty again (their checkpoint failed).
fn mark_dirty<E>(m: &mut Resident<E>, keys: Vec<String>, dirty: &mut Vec<String>) {
    for key in keys {
        if let Some(slot) = m.get_mut(&key) {
            if !slot.dirty {
                slot.dirty = true;
                dirty.push(key);
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
    dirty: Vec<String>,
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
    /// Replies waiting for a flush to finish.
    flush_waiters: Vec<RpcReplyPort<Result<Progress, String>>>,
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

    fn is_resident(&self, key: &str) -> bool {
        match &self.entities {
            Entities::Players(m) => m.contains_key(key),
            Entities::Channels(m) => m.contains_key(key),
        }
    }

    fn resident(&self) -> usize {
        match &self.entities {
            Entities::Players(m) => m.len(),
            Entities::Channels(m) => m.len(),
        }
    }

    /// Loads the given keys that are not resident, in parallel, and makes them resident.
    async fn activate(&mut self, keys: Vec<String>) -> anyhow::Result<()> {
        let store = self.args.store.clone();
        let partition = self.args.partition;
        let touched = self.now_secs();
        let missing: Vec<String> = keys
            .into_iter()
            .filter(|k| match &self.entities {
                Entities::Players(m) => !m.contains_key(k),
                Entities::Channels(m) => !m.contains_key(k),
            })
            .collect();
        let (to_load, fresh): (Vec<String>, Vec<String>) =
            missing.into_iter().partition(|k| self.may_be_stored(k));
        let loaded: Vec<(String, StoredEntity)> =
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
            self.passivated.remove(&key);
            self.summaries.remove(&key);
            match (&mut self.entities, stored) {
                (Entities::Players(m), StoredEntity::Player(row)) => {
                    let (state, offset) = match row {
                        Some(r) => (entity::decode(&r.state)?, r.applied_offset),
                        None => (Player::default(), -1),
                    };
                    insert_loaded(m, key, state, offset, touched);
                }
                (Entities::Channels(m), StoredEntity::Channel(loaded)) => {
                    let log = self.logs.entry(key.clone()).or_default();
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
                    insert_loaded(m, key, state, offset, touched);
                }
                _ => unreachable!("entities are loaded as the shard's kind"),
            }
        }
        Ok(())
    }

    /// Applies a batch in offset order. Records at or below an entity's offset are skipped
    /// (already reflected in its stored state).
    async fn apply_batch(&mut self, records: &[Record]) -> anyhow::Result<()> {
        let mut parsed: Vec<(i64, Option<(String, Event)>)> = Vec::with_capacity(records.len());
        let mut keys = Vec::new();
        for rec in records {
            if rec.offset < self.next_offset {
                continue; // redelivered after a seek
            }
            match decode_record(rec) {
                Ok((key, event)) => {
                    if !self.is_resident(&key) {
                        keys.push(key.clone());
                    }
                    parsed.push((rec.offset, Some((key, event))));
                }
                Err(reason) => {
                    self.args.metrics.add_invalid_records(1);
                    warn!(topic = %self.args.topic, partition = self.args.partition, offset = rec.offset, %reason, "skipping invalid record");
                    parsed.push((rec.offset, None));
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        self.activate(keys).await?;
        let touched = self.now_secs();
        let timeout = self.timeout_ms();
        let mut applied = 0u64;
        for (offset, item) in parsed {
            self.next_offset = offset + 1;
            let Some((key, event)) = item else { continue };
            self.watermark = self.watermark.max(event.ts);
            let watermark = self.watermark;
            let dirty = &mut self.dirty;
            let changed = match &mut self.entities {
                Entities::Players(m) => {
                    apply_in(m, key, offset, &event, watermark, timeout, touched, dirty)
                }
                Entities::Channels(m) => {
                    apply_in(m, key, offset, &event, watermark, timeout, touched, dirty)
                }
            };
            if changed {
                applied += 1;
            }
        }
        self.args.metrics.add_applied(self.args.kind, applied);
        Ok(())
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
        for key in dirty {
            match &mut self.entities {
                Entities::Players(m) => {
                    let slot = m.get_mut(&key).expect("dirty keys are resident");
                    slot.dirty = false;
                    snap.entities
                        .push(checkpoint::player_row(key, &slot.state, slot.offset));
                }
                Entities::Channels(m) => {
                    let slot = m.get_mut(&key).expect("dirty keys are resident");
                    slot.dirty = false;
                    let summary = summarize(&key, &slot.state, watermark, timeout);
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

    fn passivate_idle(&mut self) {
        if self.checkpoint_running {
            return;
        }
        let idle = self.args.cfg.passivate_after().as_secs() as u32;
        let now = self.now_secs();
        let watermark = self.watermark;
        let timeout = self.timeout_ms();
        let passivated = &mut self.passivated;
        let mut evicted = 0u64;
        match &mut self.entities {
            Entities::Players(m) => m.retain(|k, s| {
                let keep = now.saturating_sub(s.touched) < idle || s.dirty;
                if !keep {
                    passivated.insert(k.clone());
                    evicted += 1;
                }
                keep
            }),
            Entities::Channels(m) => {
                let summaries = &mut self.summaries;
                m.retain(|k, s| {
                    let keep = now.saturating_sub(s.touched) < idle || s.dirty;
                    if !keep {
                        passivated.insert(k.clone());
                        summaries.insert(k.clone(), summarize(k, &s.state, watermark, timeout));
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
            .map(|(k, s)| top_entry(k, &s.state, self.watermark, timeout))
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
                to_load.push(b.id);
            }
            if let Err(e) = self.activate(to_load).await {
                warn!(error = %format!("{e:#}"), "top-N: loading channels failed; using stored summaries");
            }
            let Entities::Channels(m) = &self.entities else {
                unreachable!()
            };
            exact = m
                .iter()
                .map(|(k, s)| top_entry(k, &s.state, self.watermark, timeout))
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

/// The key and event of a record; an error names what is wrong.
fn decode_record(rec: &Record) -> Result<(String, Event), String> {
    let key = rec
        .key
        .as_deref()
        .ok_or("record has no key")
        .and_then(|k| std::str::from_utf8(k).map_err(|_| "key is not utf-8"))?
        .to_string();
    let payload = rec.payload.as_deref().ok_or("record has no value")?;
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
            flush_waiters: Vec::new(),
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
                // Storage errors while loading entities are retried: the batch must apply
                // whole and in order, or the shard would skip records.
                let mut delay = Duration::from_millis(100);
                loop {
                    match state.apply_batch(&records).await {
                        Ok(()) => break,
                        Err(e) => {
                            error!(partition = state.args.partition, error = %format!("{e:#}"), "applying batch failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                drop(permit);
            }
            ShardMsg::Tick => {
                state.start_checkpoint(&myself);
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
                        state.activate(vec![id.clone()]).await?;
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
                        state.activate(vec![id.clone()]).await?;
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
