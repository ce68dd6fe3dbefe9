//! The shard's side of history: which buckets a record needs loaded first, loading them,
//! and the concurrency samples of channel shards.
//!
//! Samples: at every multiple of `SAMPLE_MS` of event time that the partition's watermark
//! reaches, before the record that reaches it applies, every live channel (viewers present
//! at that point, as the live `concurrent_viewers` counts them) adds its concurrency to
//! its buckets of that point, and the partition's total goes to its global buckets. The
//! points come from the records alone, so a replay takes the same samples; they are
//! credited to the reaching record's offset, so a bucket that already reflects it skips.
//!
//! Not for: what a bucket holds (see `history::bucket`).

use compact_str::CompactString;
use futures::StreamExt;
use tracing::error;

use super::{Hosted, RecordRef, ShardState};
use crate::entity::Channel;
use crate::event::Event;
use crate::history::{self, step::next_sample, GlobalBucket, Step, StoredBucket, SAMPLE_MS};
use crate::retry::Backoff;

/// Buckets loaded from Cassandra at once.
const LOADS_IN_FLIGHT: usize = 64;

/// A bucket that must be loaded before a record can apply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Need {
    Entity(CompactString, Step, i64),
    Global(Step, i64),
}

/// What a load found.
enum Found<B> {
    Entity(CompactString, Step, i64, Option<StoredBucket<B>>),
    Global(Step, i64, Option<StoredBucket<GlobalBucket>>),
}

impl<E: Hosted> ShardState<E> {
    /// Whether the partition's global bucket of `step` at `start` may be stored and is not
    /// resident: any bucket up to the partition's watermark may be (written by an earlier
    /// owner, or by this shard and dropped since).
    fn global_missing(&self, step: Step, start: i64) -> bool {
        !self.history.contains_global(step, start)
            && start <= step.start(self.watermark.max(self.start_watermark))
    }

    /// Whether a record's partition bucket of `step` at `start` must be loaded before it
    /// applies. With a flush period every one that is not resident may be stored: a
    /// checkpoint writes the partition's buckets up to its own watermark but records the
    /// older watermark of the batch it resumes at, so a replay meets buckets ahead of its
    /// watermark. That costs a read per new bucket (about three a minute per partition).
    fn global_to_load(&self, step: Step, start: i64) -> bool {
        if self.flush_period_ms() > 0 {
            !self.history.contains_global(step, start)
        } else {
            self.global_missing(step, start)
        }
    }

    /// The buckets an event of `key` at `ts` feeds that must be loaded first; `state` is
    /// the entity (resident, as loaded or as it is now).
    fn needs(&self, key: &str, state: &E, ts: i64, out: &mut Vec<Need>) {
        let frontier = state.frontier(self.start_watermark);
        let starts = Step::ALL.map(|step| step.start(ts));
        let live = Step::ALL.map(|step| !self.history.expired(step, ts, self.watermark));
        // Only a bucket that may be stored is looked for among the resident ones.
        let stored = Step::ALL.map(|step| {
            live[step.index()] && history::may_be_stored(step, starts[step.index()], frontier)
        });
        let resident = self.history.resident(key, starts, stored);
        for step in Step::ALL.into_iter().filter(|s| live[s.index()]) {
            let start = starts[step.index()];
            if stored[step.index()] && !resident[step.index()] {
                out.push(Need::Entity(key.into(), step, start));
            }
            if !E::SAMPLES && self.global_to_load(step, start) {
                out.push(Need::Global(step, start));
            }
        }
    }

    /// Whether an event of resident `key` at `ts` must wait for buckets to load. False when
    /// the entity is not resident: its records wait anyway, and their buckets are found
    /// after it loads ([`Self::deferred_bucket_loads`]).
    pub(super) fn buckets_missing(&self, key: &str, ts: i64) -> bool {
        let Some(slot) = self.entities.get(key) else {
            return false;
        };
        let mut out = Vec::new();
        self.needs(key, &slot.state, ts, &mut out);
        !out.is_empty()
    }

    /// The buckets the deferred records need, their entities now resident.
    pub(super) fn deferred_bucket_loads(&self, deferred: &[super::apply::Deferred]) -> Vec<Need> {
        if !self.history.enabled {
            return Vec::new();
        }
        let mut out = Vec::new();
        for d in deferred {
            if let Some(slot) = self.entities.get(&d.key) {
                self.needs(&d.key, &slot.state, d.event.ts, &mut out);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the apply loop must stop before `event`: in a channel shard, it reaches a
    /// sample point while records wait for loads (they come first) or while a bucket to
    /// sample into must be loaded.
    pub(super) fn must_pause(&mut self, rec: &RecordRef<'_>, event: &Event, waiting: bool) -> bool {
        if !E::SAMPLES || !self.history.enabled || event.ts <= self.watermark {
            return false;
        }
        if event.ts < next_sample(self.history.sampled_to)
            || self.too_far_ahead(rec, event).is_some()
        {
            return false;
        }
        let pause = waiting || !self.sampling_loads(event.ts).is_empty();
        if pause {
            self.pause_ts = event.ts;
        }
        pause
    }

    /// The last sample point at or before `ts` that can see a viewer: none is present
    /// more than the viewer timeout after the watermark.
    fn last_point(&self, ts: i64) -> i64 {
        ts.min(self.watermark.saturating_add(self.clock().timeout_ms))
    }

    /// The buckets the samples up to `ts` go to that must be loaded first.
    pub(super) fn sampling_loads(&self, ts: i64) -> Vec<Need> {
        let mut out = Vec::new();
        if !E::SAMPLES || !self.history.enabled || self.history.live.is_empty() {
            return out;
        }
        let last = self.last_point(ts);
        let mut point = next_sample(self.history.sampled_to);
        let mut seen: Vec<(Step, i64)> = Vec::new();
        while point <= last {
            for step in Step::ALL {
                let start = step.start(point);
                if !seen.contains(&(step, start)) {
                    seen.push((step, start));
                }
            }
            point = point.saturating_add(SAMPLE_MS);
        }
        for key in &self.history.live {
            let Some(slot) = self.entities.get(key) else {
                continue;
            };
            let frontier = slot.state.frontier(self.start_watermark);
            for &(step, start) in &seen {
                if !self.history.contains(key, step, start)
                    && history::may_be_stored(step, start, frontier)
                {
                    out.push(Need::Entity(key.clone(), step, start));
                }
            }
        }
        for &(step, start) in &seen {
            if self.global_missing(step, start) {
                out.push(Need::Global(step, start));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Takes the samples of every point after the last one up to `ts` (the event time of
    /// the record at `offset`, about to apply). Points after the last that can see a
    /// viewer are skipped at once.
    pub(super) fn sample_until(&mut self, ts: i64, offset: i64) {
        let mut point = next_sample(self.history.sampled_to);
        if point > ts {
            return;
        }
        let last = self.last_point(ts);
        while point <= last && !self.history.live.is_empty() {
            E::sample(self, point, offset);
            self.history.sampled_to = point;
            point = point.saturating_add(SAMPLE_MS);
        }
        self.history.sampled_to = self.history.sampled_to.max(ts);
    }
}

impl ShardState<Channel> {
    /// One sample of every live channel at `point`, credited to the record at `offset`.
    pub(super) fn sample_channels(&mut self, point: i64, offset: i64) {
        let timeout = self.clock().timeout_ms;
        let mut total = 0u64;
        // The set leaves `history` while its channels credit their buckets there.
        let mut live = std::mem::take(&mut self.history.live);
        let (entities, history) = (&self.entities, &mut self.history);
        live.retain(|key| {
            let concurrent = entities
                .get(key)
                .map_or(0, |s| channel_concurrency(&s.state, point, timeout));
            if concurrent == 0 {
                return false;
            }
            total += concurrent as u64;
            history.credit(key, point, offset, point, false, |_, mine, _| {
                if let Some(b) = mine {
                    b.sample(concurrent);
                }
            });
            true
        });
        self.history.live = live;
        if total > 0 {
            for step in Step::ALL {
                let index = ((point - step.start(point)) / SAMPLE_MS) as usize;
                if let Some(g) = self.history.global_mut(step, point, offset) {
                    g.sample(index, total);
                }
            }
        }
    }
}

impl<E: Hosted> ShardState<E> {
    /// Adds the channels among `keys` with viewers at the watermark to the live set.
    pub(super) fn note_live(&mut self, keys: &[CompactString]) {
        let clock = self.clock();
        for key in keys {
            if let Some(slot) = self.entities.get(key) {
                if E::live(&slot.state, clock) {
                    self.history.live.insert(key.clone());
                }
            }
        }
    }

    /// Loads `needed` buckets, retrying storage errors: the batch must apply whole.
    pub(super) async fn load_buckets_retrying(&mut self, needed: Vec<Need>) {
        if needed.is_empty() {
            return;
        }
        let mut backoff = Backoff::new(
            std::time::Duration::from_millis(100),
            2,
            std::time::Duration::from_secs(5),
        );
        loop {
            match self.load_buckets(&needed).await {
                Ok(()) => return,
                Err(e) => {
                    error!(partition = self.args.partition, error = %format!("{e:#}"), "loading history buckets failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn load_buckets(&mut self, needed: &[Need]) -> anyhow::Result<()> {
        let (entity_scope, partition_scope) = E::SCOPES;
        let store = self.args.store.clone();
        let partition = self.args.partition.to_string();
        let found: Vec<Found<E::Bucket>> =
            futures::stream::iter(needed.iter().cloned().map(|need| {
                let (store, partition) = (store.clone(), partition.clone());
                async move {
                    Ok(match need {
                        Need::Entity(key, step, start) => {
                            let row = store.read_bucket(entity_scope, &key, step, start).await?;
                            let stored = row.map(decode_bucket).transpose()?;
                            Found::Entity(key, step, start, stored)
                        }
                        Need::Global(step, start) => {
                            let row = store
                                .read_bucket(partition_scope, &partition, step, start)
                                .await?;
                            let stored = row.map(decode_bucket).transpose()?;
                            Found::Global(step, start, stored)
                        }
                    })
                }
            }))
            .buffer_unordered(LOADS_IN_FLIGHT)
            .collect::<Vec<anyhow::Result<_>>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        self.args.metrics.add_bucket_loads(found.len() as u64);
        for f in found {
            match f {
                Found::Entity(key, step, start, stored) => {
                    self.history.insert(&key, step, start, stored)
                }
                Found::Global(step, start, stored) => {
                    self.history.insert_global(step, start, stored)
                }
            }
        }
        Ok(())
    }
}

/// A stored bucket row (state, covered offset) decoded.
fn decode_bucket<B: serde::de::DeserializeOwned>(
    (state, covered): (Vec<u8>, i64),
) -> anyhow::Result<StoredBucket<B>> {
    Ok(StoredBucket {
        state: crate::entity::decode(&state)?,
        covered,
    })
}

fn channel_concurrency(c: &Channel, point: i64, timeout: i64) -> u32 {
    c.concurrent_at(point, timeout)
}
