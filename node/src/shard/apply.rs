//! Activation and the offset-ordered apply: how a batch of records reaches the entities.
//!
//! Records of resident entities are applied at once; the others wait (in order) until
//! their entities are loaded, then apply with the watermark they would have seen. Records
//! at or below an entity's offset are skipped: its stored state already reflects them.
//!
//! Not for: deciding what to write or evict (see `shard::checkpointing`).

use compact_str::CompactString;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{error, warn};

use super::dedupe::{self, Verdict};
use super::{EventClock, Hosted, RecordRef, Records, ResumeMark, ShardState};
use crate::dead_letter::DeadLetter;
use crate::dirty::DirtyQueue;
use crate::entity;
use crate::event::Event;
use crate::history::History;
use crate::log_limit::LogLimit;
use crate::resident::Resident;
use crate::retry::Backoff;
use crate::store::Progress;
use crate::telemetry;
use foldhash::HashSet;

/// Deferred records whose buffer is kept between batches.
pub(super) const SPARE_DEFERRED: usize = 256;

/// One "skipping invalid record" line per second at most, for the whole node; the
/// `tally_records_invalid_total` counter stays exact.
static INVALID_RECORD_LOG: LogLimit = LogLimit::new(std::time::Duration::from_secs(1));

/// The same for records too far ahead of their arrival.
static FUTURE_RECORD_LOG: LogLimit = LogLimit::new(std::time::Duration::from_secs(1));

/// Entities loaded from Cassandra at once.
const LOADS_IN_FLIGHT: usize = 64;

/// What activation does with a key that has nothing stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// Make it a new entity: a record for it is about to apply.
    Create,
    /// Leave it absent: only a read asked for it.
    Skip,
}

/// A record whose entity was not resident when its batch arrived: applied, in order, once
/// the entity is loaded, with the watermark it would have seen.
pub(super) struct Deferred {
    pub(super) key: CompactString,
    offset: i64,
    pub(super) event: Event,
    watermark: i64,
}

/// Starts loading the entity (and its history buckets) of `next` and their table lines of
/// `after`.
fn prefetch<E, B>(m: &Resident<E>, h: &History<B>, next: Option<&str>, after: Option<&str>) {
    if let Some(k) = after {
        m.prefetch_index(k);
        h.prefetch_index(k);
    }
    if let Some(k) = next {
        m.prefetch(k);
        h.prefetch(k);
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

impl<E: Hosted> ShardState<E> {
    /// Applies one batch whole and in order, then returns its permit to the poll loop.
    pub(super) async fn apply_batch(&mut self, mut records: Records, permit: OwnedSemaphorePermit) {
        let started = std::time::Instant::now();
        let traces = records.take_traces();
        let started_at = std::time::SystemTime::now();
        if records.len() >= self.args.cfg.max_batch.get() / 2 {
            self.last_full_batch = Some(started);
        }
        let lag = records.records_after();
        let (read_ms, oldest_ms) = records.read_times();
        if self.flush_period_ms() > 0
            && self
                .resume_marks
                .back()
                .is_none_or(|m| m.progress.resume_offset < self.next_offset)
        {
            self.resume_marks.push_back(ResumeMark {
                progress: Progress {
                    resume_offset: self.next_offset,
                    watermark_ms: self.watermark,
                },
                dedupe_from: self.dedupe.oldest_needed(self.next_offset),
            });
        }
        let mut from = 0;
        let mut deferred;
        loop {
            let resume;
            (deferred, resume) = self.apply_resident(&records, from);
            if !deferred.is_empty() {
                let mut keys: Vec<CompactString> = deferred.iter().map(|d| d.key.clone()).collect();
                keys.sort_unstable();
                keys.dedup();
                // Storage errors while loading entities are retried: the batch must apply
                // whole and in order, or the shard would skip records.
                let mut backoff = Backoff::new(
                    std::time::Duration::from_millis(100),
                    2,
                    std::time::Duration::from_secs(5),
                );
                while let Err(e) = self.activate(keys.clone()).await {
                    error!(partition = self.args.partition, error = %format!("{e:#}"), "loading entities failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                let needed = self.deferred_bucket_loads(&deferred);
                self.load_buckets_retrying(needed).await;
                self.apply_deferred(&mut deferred);
            }
            let Some(at) = resume else { break };
            // A sample point is next: its buckets first (see `sample_until`).
            let needed = self.sampling_loads(self.pause_ts);
            self.load_buckets_retrying(needed).await;
            from = at;
        }
        drop(records);
        deferred.shrink_to(SPARE_DEFERRED);
        self.spare_deferred = deferred;
        drop(permit);
        self.push_changed();
        self.series.set_lag(lag);
        self.args.metrics.observe_apply(E::KIND, started.elapsed());
        let applied_ms = crate::event::now_ms();
        let stages = &self.args.metrics.stages;
        stages.observe_record(E::KIND, oldest_ms, read_ms, applied_ms);
        for (offset, parent) in traces {
            let kind = E::KIND.label();
            let span = telemetry::applied(&parent, kind, self.args.partition, offset, started_at);
            if self.traced.len() < telemetry::MAX_LINKS {
                self.traced.push(span);
            }
        }
    }

    /// Loads the given keys that are not resident, in parallel, and makes them resident;
    /// a key with nothing stored becomes a new entity (its first record is about to apply).
    pub(super) async fn activate(&mut self, keys: Vec<CompactString>) -> anyhow::Result<()> {
        self.load_resident(keys, Absent::Create).await
    }

    /// [`Self::activate`] for reads: a key with nothing stored stays absent, so a read
    /// never creates state and a scan of unknown ids costs no memory.
    pub(super) async fn activate_stored(&mut self, keys: Vec<CompactString>) -> anyhow::Result<()> {
        self.load_resident(keys, Absent::Skip).await
    }

    async fn load_resident(
        &mut self,
        keys: Vec<CompactString>,
        absent: Absent,
    ) -> anyhow::Result<()> {
        let store = self.args.store.clone();
        let partition = self.args.partition;
        let touched = self.now_secs();
        let missing = keys.into_iter().filter(|k| !self.entities.contains_key(k));
        let (to_load, fresh): (Vec<CompactString>, Vec<CompactString>) =
            missing.partition(|k| self.may_be_stored(k));
        let loaded: Vec<(CompactString, Option<E::Stored>)> =
            futures::stream::iter(to_load.into_iter().map(|k| {
                let store = store.clone();
                async move {
                    let stored = E::load(store, partition, k.clone()).await?;
                    anyhow::Ok((k, stored))
                }
            }))
            .buffer_unordered(LOADS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        self.args.metrics.add_entity_loads(loaded.len() as u64);
        let fresh = match absent {
            Absent::Create => fresh,
            Absent::Skip => Vec::new(),
        };
        for (key, stored) in loaded
            .into_iter()
            .chain(fresh.into_iter().map(|k| (k, None)))
        {
            if stored.is_none() && absent == Absent::Skip {
                continue;
            }
            self.passivated.remove(key.as_str());
            let (state, offset) = E::activate(&mut self.extra, &key, stored)?;
            self.entities.insert(key, state, offset, touched);
        }
        Ok(())
    }

    /// Applies a batch in offset order. Records of resident entities are applied at once;
    /// the others are returned, to be applied by [`Self::apply_deferred`] after loading
    /// their entities (each entity still sees its records in offset order, with the
    /// watermark it would have seen). Records at or below an entity's offset are skipped:
    /// its stored state already reflects them.
    ///
    /// With history on, a record also waits when a bucket it feeds must be loaded (and so
    /// do its entity's later records), and in channel shards the loop stops before a
    /// record that reaches a sample point while anything waits or a sampled bucket must
    /// be loaded: it returns that record's index to resume at.
    fn apply_resident(&mut self, records: &Records, from: usize) -> (Vec<Deferred>, Option<usize>) {
        let touched = self.now_secs();
        let now_ms = self.clock_ms();
        self.history.now_ms = now_ms;
        let timeout = self.clock().timeout_ms;
        let mut deferred = std::mem::take(&mut self.spare_deferred);
        let mut held: HashSet<CompactString> = HashSet::default();
        let mut applied = 0u64;
        // While a record decodes, the entity of the next one and the table line of the one
        // after that are fetched into the cache (see `Resident::prefetch`). Each key is
        // read once, two records ahead.
        let mut keys = records.iter().skip(from).map(|r| key_of(&r));
        let (mut next, mut after) = (keys.next(), keys.next());
        for (i, rec) in records.iter().enumerate().skip(from) {
            let key = next.take().expect("a key (or its error) per record");
            (next, after) = (after, keys.next());
            prefetch(
                &self.entities,
                &self.history,
                next.and_then(Result::ok),
                after.and_then(Result::ok),
            );
            if rec.offset < self.next_offset {
                // Below the resume offset: a new owner rebuilding the dedupe window, or a
                // record redelivered after a seek. Remembered, never applied.
                self.observe_only(&rec, key);
                continue;
            }
            let decoded = decode_record(&rec, key);
            if let Ok((_, event)) = &decoded {
                if self.must_pause(&rec, event, !deferred.is_empty()) {
                    self.series.add_applied(applied);
                    return (deferred, Some(i));
                }
            }
            self.next_offset = rec.offset + 1;
            let (key, event) = match decoded {
                Ok(decoded) => decoded,
                Err(reason) => {
                    self.args.metrics.add_invalid_records(1);
                    self.skip(&rec, "event", &reason, &INVALID_RECORD_LOG);
                    continue;
                }
            };
            if let Some(reason) = self.too_far_ahead(&rec, &event) {
                self.args.metrics.add_future_records(1);
                self.skip(&rec, "ts", &reason, &FUTURE_RECORD_LOG);
                continue;
            }
            let fp = dedupe::fingerprint(key, &event.player, &event.id);
            if self.dedupe.check(rec.offset, rec.timestamp, fp) == Verdict::Duplicate {
                self.args.metrics.add_duplicate_records(1);
                continue;
            }
            if self.history.enabled {
                if E::SAMPLES && event.ts > self.watermark {
                    self.sample_until(event.ts, rec.offset);
                }
                if !held.is_empty() && held.contains(key) || self.buckets_missing(key, event.ts) {
                    held.insert(key.into());
                }
            }
            self.watermark = self.watermark.max(event.ts);
            let watermark = self.watermark;
            let done = if !held.is_empty() && held.contains(key) {
                None
            } else {
                apply_in(
                    &mut self.entities,
                    &mut self.dirty,
                    &mut self.history,
                    key,
                    rec.offset,
                    &event,
                    (watermark, timeout, touched, now_ms),
                )
            };
            match done {
                Some(changed) => {
                    applied += changed as u64;
                    if changed {
                        self.watchers.note(key);
                    }
                }
                None => deferred.push(Deferred {
                    key: key.into(),
                    offset: rec.offset,
                    event,
                    watermark,
                }),
            }
        }
        self.series.add_applied(applied);
        (deferred, None)
    }

    /// Feeds a record that is not applied to the dedupe window, so the window holds what
    /// the partition's earlier owner held.
    fn observe_only(&mut self, rec: &RecordRef<'_>, key: Result<&str, &'static str>) {
        if !self.dedupe.enabled() {
            return;
        }
        let fp = decode_record(rec, key)
            .ok()
            .filter(|(_, event)| self.too_far_ahead(rec, event).is_none())
            .map(|(key, event)| dedupe::fingerprint(key, &event.player, &event.id));
        self.dedupe.observe(rec.offset, rec.timestamp, fp);
    }

    /// Why `event` is too far ahead of its record's arrival to apply, if it is.
    pub(super) fn too_far_ahead(&self, rec: &RecordRef<'_>, event: &Event) -> Option<String> {
        let tolerance = self.args.cfg.future_tolerance_ms();
        (rec.timestamp >= 0 && event.ts > rec.timestamp.saturating_add(tolerance)).then(|| {
            format!(
                "{} is more than shard.future_tolerance_secs ({} s) after the record's arrival {}",
                event.ts, self.args.cfg.future_tolerance_secs, rec.timestamp
            )
        })
    }

    /// A record that is not applied: remembered by the dedupe window (so a rebuilt window
    /// holds it too), sent to the dead-letter topic, and logged at most as `log` allows.
    fn skip(&mut self, rec: &RecordRef<'_>, field: &str, reason: &str, log: &LogLimit) {
        self.dedupe.observe(rec.offset, rec.timestamp, None);
        if let Some(dl) = &self.args.dead_letters {
            dl.send(DeadLetter {
                topic: &self.args.topic,
                partition: self.args.partition,
                offset: rec.offset,
                key: rec.key,
                payload: rec.payload,
                field,
                reason,
            });
        }
        if let Some(suppressed) = log.allow() {
            warn!(topic = %self.args.topic, partition = self.args.partition, offset = rec.offset, field, %reason, suppressed, "skipping a record that cannot apply");
        }
    }

    /// Applies records held back by [`Self::apply_resident`]; their entities are resident.
    fn apply_deferred(&mut self, deferred: &mut Vec<Deferred>) {
        let touched = self.now_secs();
        let now_ms = self.clock_ms();
        self.history.now_ms = now_ms;
        let timeout = self.clock().timeout_ms;
        let mut applied = 0u64;
        for d in deferred.drain(..) {
            let done = apply_in(
                &mut self.entities,
                &mut self.dirty,
                &mut self.history,
                &d.key,
                d.offset,
                &d.event,
                (d.watermark, timeout, touched, now_ms),
            );
            let changed = done.expect("deferred entities were activated");
            applied += changed as u64;
            if changed {
                self.watchers.note(&d.key);
            }
        }
        self.series.add_applied(applied);
    }
}

/// Applies one record to `key` if it is resident; a newly dirtied key joins `dirty`.
/// `at` is (watermark, viewer timeout, touch time, the shard's clock in milliseconds).
/// Returns whether the entity changed, or None when it must be loaded first.
fn apply_in<E: Hosted>(
    m: &mut Resident<E>,
    dirty: &mut DirtyQueue,
    history: &mut History<E::Bucket>,
    key: &str,
    offset: i64,
    event: &Event,
    (watermark, timeout, touched, now_ms): (i64, i64, u32, u64),
) -> Option<bool> {
    let slot = m.get_mut(key)?;
    slot.touched = touched;
    let marks = history.enabled.then(|| slot.state.marks());
    let changed = entity::apply_record(
        &mut slot.state,
        &mut slot.offset,
        offset,
        event,
        watermark,
        timeout,
    );
    if let (true, Some(marks)) = (changed, marks) {
        let clock = EventClock {
            watermark,
            timeout_ms: timeout,
        };
        E::record_history(history, key, offset, event, &marks, &slot.state, clock);
    }
    if changed && !slot.dirty {
        slot.dirty = true;
        dirty.push(slot.key.clone(), offset, now_ms);
    }
    Some(changed)
}
